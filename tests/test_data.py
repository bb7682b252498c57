"Data helpers: stratified labeled split, unlabeled loaders, local Fashion-MNIST"
import gzip, subprocess, sys
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from conftest import write_pngs

def test_split_labeled_missing_and_too_many():
    items,labels = list(range(30)), [i % 3 for i in range(27)] + [None, float('nan'), '']
    lab,unlab = split_labeled(items, labels, 4, seed=3)
    assert len(lab) == 12 and len(unlab) == 18 and {27, 28, 29} <= set(unlab)
    assert sorted(labels[i] for i in lab) == [0]*4 + [1]*4 + [2]*4
    with pytest.raises(ValueError, match='more than these classes have'): split_labeled(items, labels, 10)
    with pytest.raises(ValueError, match='`n_per_class` must be an int'): split_labeled(items, labels, 0)

def test_unlabeled_dl_from_image_folder(tmp_path):
    "A folder where some images sit in class folders and the rest in unlabeled/"
    rng = np.random.default_rng(0)
    for split,n in (('train', 6), ('valid', 2)):
        for c in ('cat', 'dog'): write_pngs(tmp_path/split/c, n, (20, 24, 3), rng)
    write_pngs(tmp_path/'unlabeled', 20, (30, 30, 3), rng)
    dls = ImageDataLoaders.from_folder(tmp_path, item_tfms=Resize(16), batch_tfms=aug_transforms(size=16), bs=4)
    u_dl = unlabeled_dl(get_image_files(tmp_path/'unlabeled'), dls, mu=2)
    xu, = u_dl.one_batch()
    assert xu.shape == (8, 3, 16, 16)
    learn = Learner(dls, small_cnn(n_in=3, n_out=2), cbs=FixMatch(u_dl))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    with pytest.raises(ValueError, match='fewer than one batch'): unlabeled_dl(get_image_files(tmp_path/'unlabeled'), dls, mu=7)
    with pytest.raises(ValueError, match='`mu` must be an int'): unlabeled_dl(get_image_files(tmp_path/'unlabeled'), dls, mu=0)

def _write_idx(fn, arr):
    with gzip.open(fn, 'wb') as f: f.write(bytes([0, 0, 8, arr.ndim]) + b''.join(n.to_bytes(4, 'big') for n in arr.shape) + arr.tobytes())

def test_fashion_mnist_from_local_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split,n in (('train', 200), ('t10k', 50)):
        _write_idx(tmp_path/f'{split}-images-idx3-ubyte.gz', rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path/f'{split}-labels-idx1-ubyte.gz', (np.arange(n) % 10).astype(np.uint8))
    dls,u_dl = fashion_mnist_dls(n_per_class=4, bs=16, mu=2, path=tmp_path)
    assert len(dls.train_ds) == 40 and len(dls.valid_ds) == 50
    assert u_dl.one_batch()[0].shape == (32, 1, 28, 28)

@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist').exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package():
    xt,yt,xv,yv = fashion_mnist_arrays()
    assert xt.shape == (60000, 28, 28) and xv.shape == (10000, 28, 28) and set(np.unique(yt)) == set(range(10))

def test_cli_errors_and_tiny_demo(tmp_path):
    run = lambda *a: subprocess.run([str(Path(sys.executable).parent/'fastai-ssl'), *a], capture_output=True, text=True, cwd=tmp_path)
    r = run('demo', '--epochs', '0')
    assert r.returncode != 0 and '--epochs' in r.stderr.strip().splitlines()[-1]
    r = run('demo', '--labels-per-class', '1000')
    assert r.returncode == 2 and 'lower --labels-per-class' in r.stderr.strip().splitlines()[-1]   # the flag, as the command spells it
    r = run('demo', '--epochs', '1', '--plot', 'demo.png', '--json', 'demo.json')
    assert r.returncode == 0, r.stderr
    assert 'supervised' in r.stdout and 'fixmatch' in r.stdout
    assert (tmp_path/'demo.png').exists() and len(json.loads((tmp_path/'demo.json').read_text())) == 2

def _table(tmp_path, n=60, n_known=12):
    "A table of `n` image files whose `label` is missing (NaN) but for the first `n_known` rows and the validation rows"
    rng = np.random.default_rng(0)
    for i in range(n): Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path/f'{i}.png')
    df = pd.DataFrame(dict(fname=[f'{i}.png' for i in range(n)], label=[('a', 'b')[i % 2] for i in range(n)], is_valid=[i >= n - 8 for i in range(n)]))
    df.loc[n_known:n-9, 'label'] = np.nan
    return df

def _table_block(tmp_path):
    return DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader('fname', pref=tmp_path), get_y=ColReader('label'),
                     splitter=ColSplitter('is_valid'), item_tfms=Resize(8))

def test_partly_labeled_table(tmp_path):
    "Rows with missing labels go to the unlabeled loader, read by rows; no labeled batch holds one"
    df = _table(tmp_path)
    known = df.label.notna()
    dls = _table_block(tmp_path).dataloaders(df[known], bs=4, num_workers=0)
    u_dl = unlabeled_dl(df[~known], dls, mu=2)
    assert len(u_dl.dataset) == (~known).sum() == 40 and list(dls.vocab) == ['a', 'b']
    assert not set(dls.train_ds.items.fname) & set(df.fname[~known])
    lab,unlab = split_labeled(df, df.label, None)
    assert list(lab.fname) == list(df.fname[known]) and list(unlab.fname) == list(df.fname[~known])
    learn = Learner(dls, small_cnn(n_in=3, n_out=2), cbs=FixMatch(u_dl))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])

@pytest.mark.parametrize('read', [lambda s: s.fillna(''), lambda s: s.map(str)])
def test_missing_label_as_a_class_is_refused(tmp_path, read):
    "Gaps turned into '' or 'nan' make a class of their own: the callback stops before training"
    df = _table(tmp_path)
    df['label'] = read(df.label)
    dls = _table_block(tmp_path).dataloaders(df, bs=4, num_workers=0)
    learn = Learner(dls, small_cnn(n_in=3, n_out=dls.c), cbs=FixMatch(unlabeled_dl(df, dls, mu=2)))
    lf = learn.loss_func
    with pytest.raises(ValueError, match='for missing labels: build `dls` from the labeled items only'): learn.fit(1)
    assert learn.loss_func is lf
