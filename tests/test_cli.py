"The `fastai-ssl` command: one clear line and exit code 2 for bad arguments; train and bench end to end on tiny data"
import json
import pytest
from fastai.vision.all import *
from fastai_ssl import cli
from fastai_ssl.cli import main
from fastai_ssl.data import digits_arrays, LongTail

def run_error(capsys, args):
    "Exit code and last stderr line of `main(args)`, which must exit"
    with pytest.raises(SystemExit) as e: main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code,err[-1]

@pytest.fixture
def folder(tmp_path):
    "Two classes of 6 small PNGs each (reddish and bluish noise) and 24 unlabeled PNGs"
    rng = np.random.default_rng(0)
    def img(c): return Image.fromarray((rng.integers(0, 120, (20, 20, 3)) + np.array([120, 0, 0] if c == 'red' else [0, 0, 120])).astype(np.uint8))
    for c in ('red', 'blue'):
        (tmp_path/'imgs'/c).mkdir(parents=True)
        for i in range(6): img(c).save(tmp_path/'imgs'/c/f'{i}.png')
    (tmp_path/'imgs'/'unlabeled').mkdir()
    for i in range(24): img(('red', 'blue')[i % 2]).save(tmp_path/'imgs'/'unlabeled'/f'{i}.png')
    return tmp_path/'imgs'

def test_argument_errors(capsys, tmp_path, folder, monkeypatch):
    for cmd in ('train', 'bench'):
        code,line = run_error(capsys, [cmd, '--data', 'digits', '--algos' if cmd == 'bench' else '--algo', 'nope'])
        assert code == 2 and "invalid choice: 'nope'" in line, line
        code,line = run_error(capsys, [cmd, '--data', str(tmp_path/'missing')])
        assert code == 2 and 'no such folder' in line, line
    code,line = run_error(capsys, ['train', '--data', 'digits', '--labels-per-class', '200'])
    assert code == 2 and '--labels-per-class=200 is more than these classes have' in line, line
    code,line = run_error(capsys, ['bench', '--data', 'digits', '--labels-per-class', '4', '200'])
    assert code == 2 and '--labels-per-class=200 is more than these classes have' in line, line
    code,line = run_error(capsys, ['train', '--data', str(folder), '--labels-per-class', '9'])
    assert code == 2 and '--labels-per-class=9 is more than these classes have' in line, line
    code,line = run_error(capsys, ['train', '--data', 'digits', '--epochs', '0'])
    assert code == 2 and '--epochs must be >= 1' in line, line

def test_folder_without_unlabeled_images(capsys, folder):
    shutil.rmtree(folder/'unlabeled')
    code,line = run_error(capsys, ['train', '--data', str(folder), '--algo', 'fixmatch'])
    assert code == 2 and 'has no unlabeled images' in line, line

def test_train_digits_exports_a_learner_that_predicts(tmp_path):
    main(['train', '--data', 'digits', '--labels-per-class', '5', '--algo', 'fixmatch', '--epochs', '2', '--steps', '12',
          '--out', str(tmp_path/'run')])
    rec = json.loads((tmp_path/'run'/'run.json').read_text())
    assert (rec['algo'], rec['steps'], rec['n_labeled'], len(rec['history'])) == ('fixmatch', 12, 50, 2)
    assert {'Lx', 'Lu', 'mask', 'pl_acc', 'accuracy'} <= set(rec['history'][-1]) and 0 <= rec['accuracy'] <= 1
    assert rec['seconds'] > 0
    learn = load_learner(tmp_path/'run'/'model.pkl')
    xv,yv = digits_arrays()[2:]
    with learn.no_bar():
        preds,_ = learn.get_preds(dl=learn.dls.test_dl([(x,) for x in xv[:40]]))
        label = learn.predict((xv[0],))[0]
    assert preds.shape == (40, 10) and str(label) in [str(v) for v in learn.dls.vocab]
    assert (preds.argmax(1).numpy() == yv[:40]).mean() > 0.3   # the exported model predicts (chance is 0.1)

def test_train_long_tailed_digits_with_a_correction(tmp_path, capsys):
    "`--long-tail N1,M1,RATIO,ORDER` splits digits so, `--imb` adds the correction, run.json has balanced accuracy and each class's recall"
    main(['train', '--data', 'digits', '--long-tail', '20,100,10,reversed', '--imb', 'debiaspl', '--epochs', '2', '--steps', '6',
          '--out', str(tmp_path/'run')])
    rec = json.loads((tmp_path/'run'/'run.json').read_text())
    lab,unl = LongTail(20, 100, 10, 'reversed').counts(10)
    assert (rec['n_labeled'], rec['n_unlabeled'], rec['imb']) == (sum(lab), sum(unl), 'debiaspl')
    assert rec['long_tail'] == "LongTail(n_labeled=20, n_unlabeled=100, ratio=10, unlabeled='reversed')"
    assert len(rec['recalls']) == 10 and 0 <= rec['balanced_accuracy'] <= 1 and 'balanced_accuracy' in rec['history'][-1]
    assert 'long-tailed' in capsys.readouterr().out
    for args,msg in [(['--long-tail', '20,100'], 'pass N1,M1,RATIO[,ORDER]'), (['--long-tail', '20,100,10,reverse'], "`unlabeled` must be one of"),
                     (['--long-tail', '20,100,10', '--labels-per-class', '5'], 'pass one of them'),
                     (['--long-tail', '20,100,10', '--algo', 'meanteacher', '--imb', 'saw'], 'MeanTeacher takes no long-tail correction'),
                     (['--long-tail', '900,100,10'], 'class 0 has'), (['--imb', 'nope'], "invalid choice: 'nope'")]:
        code,line = run_error(capsys, ['train', '--data', 'digits', *args, '--out', str(tmp_path/'bad')])
        assert code == 2 and msg in line, (args, line)

def test_train_image_folder(tmp_path, folder):
    main(['train', '--data', str(folder), '--algo', 'fixmatch', '--epochs', '1', '--steps', '3', '--bs', '4', '--mu', '2',
          '--size', '16', '--out', str(tmp_path/'run')])
    rec = json.loads((tmp_path/'run'/'run.json').read_text())
    assert rec['n_labeled'] == 9 and rec['steps'] == 3 and rec['mu'] == 2   # 12 labeled images, 3 held out for validation
    learn = load_learner(tmp_path/'run'/'model.pkl')
    with learn.no_bar(): label = learn.predict(folder/'red'/'0.png')[0]
    assert label in ('red', 'blue')

def test_bench_digits(tmp_path, capsys):
    main(['bench', '--data', 'digits', '--labels-per-class', '2', '4', '--steps', '6', '--out', str(tmp_path/'b')])
    out = capsys.readouterr().out
    assert 'supervised on all labels' in out and '4 labels/class' in out
    res = json.loads((tmp_path/'b'/'bench.json').read_text())
    runs = res['runs']
    assert [(r['algo'], r['labels_per_class']) for r in runs[:4]] == [('supervised', 2), ('fixmatch', 2), ('supervised', 4), ('fixmatch', 4)]
    assert runs[-1]['reference'] and len({r['steps'] for r in runs}) == 1
    assert (tmp_path/'b'/'bench.png').stat().st_size > 1000

@pytest.mark.parametrize('valid_name,unlabeled_in', [('valid', 'train'), ('test', '.')])
def test_folder_with_train_and_valid(folder, valid_name, unlabeled_in):
    "`train/` beside `valid/` (or CIFAR-10's `test/`), unlabeled images in `train/unlabeled` or `unlabeled/`: nothing leaks across"
    root = folder.parent/'split'
    for c in ('red', 'blue'):
        for i,f in enumerate(sorted((folder/c).iterdir())):
            dest = root/('train' if i < 4 else valid_name)/c
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest/f.name)
    shutil.copytree(folder/'unlabeled', root/unlabeled_in/'unlabeled')
    dls,u_dl = cli.folder_dls(root, n_per_class=3, bs=4, mu=2)
    assert (len(dls.train_ds), len(dls.valid_ds), len(u_dl.dataset)) == (6, 4, 24 + 2)
    assert all(valid_name in f.parts for f in dls.valid_ds.items)
    assert not set(dls.train_ds.items) & set(u_dl.dataset.items)

def test_train_folder_with_valid_and_unlabeled_then_pseudo_label(tmp_path, folder, capsys):
    "Labeled class folders beside `valid/` and `unlabeled/`: run.json and the summary give the three counts and their sources; `pseudo-label` writes a CSV"
    for c in ('red', 'blue'):
        (folder/'valid'/c).mkdir(parents=True)
        for i in range(3): shutil.copy(folder/c/f'{i}.png', folder/'valid'/c/f'v{i}.png')
    main(['train', '--data', str(folder), '--labels-per-class', '4', '--algo', 'fixmatch', '--epochs', '2', '--steps', '4', '--bs', '4',
          '--mu', '2', '--size', '16', '--out', str(tmp_path/'run')])
    rec = json.loads((tmp_path/'run'/'run.json').read_text())
    assert (rec['n_labeled'], rec['n_unlabeled'], rec['n_valid']) == (8, 24 + 4, 6)   # the valid/ images are not training images
    src = rec['sources']
    assert str(folder/'valid') in src['valid'] and f"{folder/'unlabeled'} (24)" in src['unlabeled'] and '4 per class of the 12' in src['labeled']
    out = capsys.readouterr().out
    assert '8 labeled' in out and '28 unlabeled' in out and '6 for validation' in out and str(folder/'valid') in out
    assert 'epoch 1/2  train_loss' in out and 'epoch 2/2' in out   # not a terminal: a line per epoch, no progress bar
    steps = pd.read_csv(tmp_path/'run'/'steps.csv')
    assert steps.step.tolist() == [1, 2, 3, 4] and {'Lx', 'Lu', 'mask', 'weight'} <= set(steps.columns)
    assert Image.open(tmp_path/'run'/'steps.png').size[0] > 400
    main(['pseudo-label', '--model', str(tmp_path/'run'/'model.pkl'), '--data', str(folder/'unlabeled'), '--out', str(tmp_path/'pl'/'pseudo.csv'),
          '--to-label', '5'])
    t = pd.read_csv(tmp_path/'pl'/'pseudo.csv')
    assert list(t.columns) == ['item', 'pseudo_label', 'confidence', 'margin'] and len(t) == 24
    assert sorted(t.item) == sorted(str(f) for f in (folder/'unlabeled').iterdir()) and set(t.pseudo_label) <= {'red', 'blue'}
    assert ((t.confidence >= 0.5) & (t.confidence <= 1) & (t.margin >= 0)).all()
    todo = (tmp_path/'pl'/'to_label.txt').read_text().splitlines()
    assert len(set(todo)) == 5 and all(Path(o).is_file() for o in todo)
    assert set(todo) == set(t.sort_values('margin').item[:5]) or len(set(t.pseudo_label)) == 2   # lowest margins, or spread over both classes
    assert 'pseudo-labeled 24 images' in capsys.readouterr().out

def test_pseudo_label_errors(capsys, tmp_path, folder):
    code,line = run_error(capsys, ['pseudo-label', '--model', str(tmp_path/'none.pkl'), '--data', str(folder/'unlabeled')])
    assert code == 2 and '--model' in line and 'no file' in line, line
    (tmp_path/'m.pkl').write_bytes(b'')
    code,line = run_error(capsys, ['pseudo-label', '--model', str(tmp_path/'m.pkl'), '--data', str(tmp_path/'nope')])
    assert code == 2 and '--data' in line and 'no folder' in line, line

def test_help_says_how_steps_epochs_and_opt_divide_the_run(capsys):
    with pytest.raises(SystemExit): main(['train', '--help'])
    out = ' '.join(capsys.readouterr().out.split())
    assert 'divided evenly into --epochs epochs' in out and 'one pass over the unlabeled images' in out
    assert 'Nesterov momentum 0.9' in out and 'fit_flat_cos' in out and "fastai's Adam" in out and 'fit_one_cycle' in out
    assert '--quiet' in out and 'one line per epoch' in out
