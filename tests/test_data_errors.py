"Data the library cannot read correctly: one line naming the problem and the fix, or one warning, and nothing lost"
import math, warnings
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.data import readable_images
from fastai_ssl.cli import main
from conftest import write_pngs

@pytest.fixture
def arrs():
    "Digits as uint8 arrays `(x_train, y_train, x_valid, y_valid)`"
    return digits_arrays()

def refused(f, *args, **kwargs):
    "The one-line message of the `ValueError` that `f(*args, **kwargs)` raises; arrays passed in are left as they were"
    before = [a.copy() for a in args if isinstance(a, np.ndarray)]
    with pytest.raises(ValueError) as e: f(*args, **kwargs)
    for a,b in zip([a for a in args if isinstance(a, np.ndarray)], before): assert np.array_equal(a, b, equal_nan=a.dtype.kind == 'f')
    msg = str(e.value)
    assert '\n' not in msg
    return msg

def arrays(*args, **kwargs): return arrays_dls(*args, n_per_class=5, bs=16, mu=2, **kwargs)

def no_warnings(f, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        return f(*args, **kwargs)

def one_warning(f, *args, **kwargs):
    "`f`'s result and the message of the one `UserWarning` it gives"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        res = f(*args, **kwargs)
    w = [str(o.message) for o in w if issubclass(o.category, UserWarning)]
    assert len(w) == 1, w
    assert '\n' not in w[0]
    return res,w[0]

# Arrays

@pytest.mark.parametrize('scale,name', [(1/255, '[0, 1]'), (1/16, "digits' 0–16")])
def test_float_images_without_scale_are_refused(arrs, scale, name):
    "Float images (in [0, 1], or scikit-learn's digits as 0–16) would reach the model nearly black: refused, naming `scale`"
    xt,yt,xv,yv = arrs
    msg = refused(arrays, xt*scale, yt, xv*scale, yv)
    assert '`x_train` holds float64 pixels from 0 to' in msg and '`scale`' in msg and 'uint8' in msg

def test_float_images_with_scale_train_as_uint8_ones(arrs):
    "With `scale`, float images give the loaders the uint8 images give, batch for batch"
    xt,yt,xv,yv = arrs
    set_seed(0); (dls,u_dl) = no_warnings(arrays, xt, yt, xv, yv)
    set_seed(0); (dls1,u_dl1) = no_warnings(arrays, xt/255, yt, xv/255, yv, scale=1)
    for a,b in ((dls.train, dls1.train), (dls.valid, dls1.valid), (u_dl, u_dl1)):
        for x,y in zip(a.new(shuffle=False).one_batch(), b.new(shuffle=False).one_batch()): test_eq(x, y)
    assert dls1.one_batch()[0].max() == 1   # white is 1 after `IntToFloatTensor`, not 1/255

@pytest.mark.parametrize('f,scale,says,fix', [(lambda x: x/255, 255, 'more than twice the brightest pixel', 'pass the value of white'),
                                              (lambda x: x/255, 0.5, 'is below the brightest pixel', 'pass the value of white'),
                                              (lambda x: x/255 - 0.5, 1, 'negative pixels', 'pass the images before normalizing'),
                                              (lambda x: x/16, None, 'from 0 to 15.9375', '`scale=16`')])
def test_a_scale_that_does_not_fit_the_data_is_refused(arrs, f, scale, says, fix):
    xt,yt,xv,yv = arrs
    msg = refused(arrays, f(xt), yt, f(xv), yv, scale=scale)
    assert says in msg and fix in msg

def test_labels_and_images_of_other_lengths(arrs):
    "540 validation images with 100 labels: refused, not validated on 100"
    xt,yt,xv,yv = arrs
    msg = refused(arrays, xt, yt, xv, yv[:100])
    assert msg == '`y_valid` has 100 labels for the 540 images of `x_valid`: pass one label per image'
    assert '`y_train` has 10 labels for the 1257 images' in refused(arrays, xt, yt[:10], xv, yv)

@pytest.mark.parametrize('f,says', [(lambda x: x[:, None], 'has shape (1257, 1, 8, 8): pass images as (N, height, width)'),
                                    (lambda x: x.reshape(len(x), -1), 'has shape (1257, 64): pass images as (N, height, width)'),
                                    (lambda x: x[:0], '`x_train` is empty')])
def test_images_of_the_wrong_shape(arrs, f, says):
    xt,yt,xv,yv = arrs
    assert says in refused(arrays, f(xt), yt, xv, yv)

def test_nan_pixels(arrs):
    xt,yt,xv,yv = arrs
    x = xt/255; x[7, 3, 3] = np.nan
    msg = refused(arrays, x, yt, xv/255, yv, scale=1)
    assert '`x_train` has 1 NaN or infinite pixels (the first in image 7): fill them or drop those images' == msg

@pytest.mark.parametrize('f,shown', [(lambda y: y + 0.5, '6.5 at 0'), (lambda y: np.array(['cat', 'dog'])[y % 2], "'cat'"),
                                     (lambda y: np.where(np.arange(len(y)) == 4, np.nan, y), 'nan at 4')])
def test_labels_that_are_not_integers(arrs, f, shown):
    xt,yt,xv,yv = arrs
    msg = refused(arrays, xt, f(yt), xv, yv)
    assert msg.startswith('`y_train` holds labels that are not integers (') and shown in msg and 'np.unique(y, return_inverse=True)[1]' in msg

def test_integral_float_labels_are_taken(arrs):
    xt,yt,xv,yv = arrs
    dls,_ = no_warnings(arrays, xt, yt.astype(float), xv, yv.astype(float))
    assert list(dls.vocab) == list(range(10))

def test_validation_images_of_another_shape_or_class(arrs):
    xt,yt,xv,yv = arrs
    assert refused(arrays, xt, yt, np.zeros((5, 9, 9), np.uint8), yv[:5]) == '`x_valid` holds images of shape (9, 9), `x_train` of (8, 8): pass both at one size'
    msg = refused(arrays, xt[yt < 5], yt[yt < 5], xv, yv)
    assert msg.startswith('`y_valid` has classes no training image has: [5, 6, 7, 8, 9]') and 'add training images' in msg

def test_unlabeled_arrays_that_are_labeled_ones_warn(arrs):
    "Validation images among the training images: the unlabeled loader's overlap is counted by pixels, and training goes on"
    xt,yt,xv,yv = arrs
    (dls,u_dl),msg = one_warning(arrays, xt, yt, xt[:30], yt[:30])
    assert msg.startswith('`items`: 30 of the 1207 unlabeled items are also labeled items of `dls` (30 validation; the same pixels)')
    assert 'check that the unlabeled items are the ones you meant' in msg and len(u_dl.dataset) == 1207
    no_warnings(arrays, xt, yt, xv, yv)

# split_labeled

def test_split_labeled_lengths_and_too_few(arrs):
    assert refused(split_labeled, list(range(10)), [0, 1]*4, 2) == '`labels` has 8 entries for the 10 `items`: pass one label per item (None or NaN for an unlabeled one)'
    msg = refused(split_labeled, list(range(10)), [0]*8 + [1]*2, 3)
    assert msg == "`n_per_class`=3 is more than these classes have: {1: 2}; lower `n_per_class`"

# Folders

def two_classes(path, rng, n=6, splits=('train', 'valid'), classes=('cat', 'dog')):
    for s in splits:
        for c in classes: write_pngs(path/s/c if s else path/c, n, (12, 12, 3), rng)
    return path

def files(path): return sorted(p.relative_to(path) for p in path.rglob('*') if p.is_file())

def test_unlabeled_dl_of_a_folder(tmp_path):
    "A folder (str or Path) gives its image files, subfolders included, as `get_image_files` finds them"
    rng = np.random.default_rng(0)
    dls,_ = folder_dls(two_classes(tmp_path/'data', rng), bs=4)
    write_pngs(tmp_path/'u'/'a', 10, (12, 12, 3), rng); write_pngs(tmp_path/'u'/'b'/'c', 10, (20, 20, 3), rng)
    (tmp_path/'u'/'notes.txt').write_text('not an image')
    for p in (tmp_path/'u', str(tmp_path/'u')):
        u_dl = no_warnings(unlabeled_dl, p, dls, mu=2)
        assert sorted(u_dl.dataset.items) == sorted(get_image_files(tmp_path/'u')) and len(u_dl.dataset) == 20
    assert u_dl.one_batch()[0].shape == (8, 3, 32, 32)

def test_unlabeled_dl_of_an_empty_or_missing_folder(tmp_path):
    rng = np.random.default_rng(0)
    dls,_ = folder_dls(two_classes(tmp_path/'data', rng), bs=4)
    (tmp_path/'empty').mkdir(); (tmp_path/'text').mkdir(); (tmp_path/'text'/'a.txt').write_text('x')
    for d in ('empty', 'text'):
        assert refused(unlabeled_dl, tmp_path/d, dls) == f"`items`: no image files in {tmp_path/d} or its subfolders: pass the folder of unlabeled images"
    with pytest.raises(FileNotFoundError, match=r'`items`: no folder .*nope: pass a folder of images'): unlabeled_dl(tmp_path/'nope', dls)

def test_unlabeled_folder_that_is_the_labeled_one_warns(tmp_path):
    "`unlabeled_dl(path/'train', dls)`: the user pointed at the wrong folder; a warning with the count, and the loader is built"
    rng = np.random.default_rng(0)
    path = two_classes(tmp_path, rng, n=8)
    dls,_ = folder_dls(path, bs=4)
    u_dl,msg = one_warning(unlabeled_dl, path/'train', dls, mu=2)
    assert msg.startswith('`items`: 16 of the 16 unlabeled items are also labeled items of `dls` (16 training; the same files)')
    assert len(u_dl.dataset) == 16
    _,msg = one_warning(unlabeled_dl, path, dls, mu=2)
    assert '32 of the 32 unlabeled items' in msg and '16 training, 16 validation' in msg

def test_folder_of_one_class(tmp_path):
    rng = np.random.default_rng(0)
    path = two_classes(tmp_path, rng, classes=('cat',))
    before = files(path)
    msg = refused(folder_dls, path)
    assert msg == f"`path`: {path/'train'} has images of 1 class (cat): put each class's images in its own subfolder, at least 2 classes"
    assert files(path) == before

def test_validation_class_that_training_lacks(tmp_path):
    "Refused before any training, not a KeyError after an epoch"
    rng = np.random.default_rng(0)
    path = two_classes(tmp_path, rng)
    write_pngs(path/'valid'/'bird', 2, (12, 12, 3), rng)
    msg = refused(folder_dls, path)
    assert msg == f"`path`: {path/'valid'} has class folders {path/'train'} lacks: bird: add training images of them, or remove them from validation"
    assert refused(get_data, str(path)) == msg

def test_a_stratified_fifth_held_out_without_valid(tmp_path):
    "`--data DIR/train`: a fifth of each class held out; where scikit-learn cannot, one line says what it needs"
    rng = np.random.default_rng(0)
    path = two_classes(tmp_path, rng, n=10, splits=('train',), classes=[f'c{i}' for i in range(3)])/'train'
    dls,_ = no_warnings(folder_dls, path, bs=4)
    assert len(dls.valid_ds) == 6 and Counter(parent_label(f) for f in dls.valid_ds.items) == {'c0': 2, 'c1': 2, 'c2': 2}
    assert not set(dls.train_ds.items) & set(dls.valid_ds.items)
    few = tmp_path/'few'
    for c in range(10): write_pngs(few/f'c{c}', 1 if c < 8 else 0, (12, 12, 3), rng)
    msg = refused(folder_dls, few)
    assert msg.startswith(f"`path`: {few} has no valid/ folder, and holding out a stratified 20% for validation needs at least 2 images of each class")
    assert 'add images, or a valid/ folder of class subfolders' in msg and '(it has 8' in msg

def test_cli_train_on_a_folder_too_small_to_split(tmp_path, capsys):
    "The command line answers with one line naming --data, exit 2, before training"
    rng = np.random.default_rng(0)
    for c in range(4): write_pngs(tmp_path/'data'/f'c{c}', 2, (12, 12, 3), rng)
    with pytest.raises(SystemExit) as e:
        main(['train', '--data', str(tmp_path/'data'), '--algo', 'fixmatch', '--epochs', '1', '--out', str(tmp_path/'run')])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert '--data' in err and 'no valid/ folder' in err and 'at least 2 images of each class' in err
    assert not (tmp_path/'run').exists()

def broken(path, kind):
    "Write an unreadable image file of `kind` at `path`"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == 'truncated':
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == 'text': path.write_text('this is not a PNG')
    else: path.write_bytes(b'')
    return path

@pytest.mark.parametrize('kind,why', [('truncated', 'image file is truncated'), ('text', 'not an image PIL can read'), ('empty', 'an empty file')])
def test_readable_images(tmp_path, kind, why):
    write_pngs(tmp_path, 5, (12, 12, 3), np.random.default_rng(0))
    bad = broken(tmp_path/'bad.png', kind)
    fs = get_image_files(tmp_path)
    ok,msg = one_warning(readable_images, fs)
    assert isinstance(ok, L) and sorted(ok) == sorted(f for f in fs if f != bad)
    assert msg == f"skipped 1 unreadable image file of 6; the first, {bad}: {why}. Remove or replace them"
    assert bad.exists()

def test_unreadable_images_in_a_folder_are_skipped_with_one_warning(tmp_path):
    "A truncated PNG in train/, a text file in valid/, an empty file in unlabeled/: one warning for the three, and training runs"
    rng = np.random.default_rng(0)
    path = two_classes(tmp_path, rng)
    write_pngs(path/'unlabeled', 20, (12, 12, 3), rng)
    bad = [broken(path/'train'/'cat'/'x.png', 'truncated'), broken(path/'valid'/'dog'/'y.png', 'text'), broken(path/'unlabeled'/'z.png', 'empty')]
    before = files(path)
    (dls,u_dl),msg = one_warning(folder_dls, path, bs=4, mu=2)
    assert msg == f"skipped 3 unreadable image files of 47; the first, {bad[0]}: image file is truncated. Remove or replace them"
    assert (len(dls.train_ds), len(dls.valid_ds), len(u_dl.dataset)) == (12, 12, 20)
    assert not set(bad) & set(dls.train_ds.items + dls.valid_ds.items + u_dl.dataset.items)
    learn = Learner(dls, small_cnn(n_in=3, n_out=2), cbs=FixMatch(u_dl))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert files(path) == before

def test_resident_decoding_names_the_file_it_cannot_read(tmp_path):
    "A list of files (used as given) with a broken one: the decoding stops naming it, not with PIL's bare OSError"
    rng = np.random.default_rng(0)
    dls,_ = folder_dls(two_classes(tmp_path/'data', rng), bs=4)
    write_pngs(tmp_path/'u', 20, (12, 12, 3), rng)
    bad = broken(tmp_path/'u'/'7.png', 'truncated')
    msg = refused(unlabeled_dl, get_image_files(tmp_path/'u'), dls, mu=2)
    assert f", {bad}, cannot be decoded (image file is truncated" in msg and 'readable_images(files)' in msg
