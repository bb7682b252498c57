import os, warnings
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *

warnings.filterwarnings('ignore', category=FutureWarning)
if os.environ.get('PYTEST_XDIST_WORKER'): torch.set_num_threads(1)   # one thread per worker: `-n 2` on 2 cores, not 4 threads fighting

@pytest.fixture
def digits():
    "Digits with 5 labels per class (bs 16: 3 full steps an epoch) and its unlabeled loader at mu=2"
    set_seed(0)
    return digits_dls(n_per_class=5, bs=16, mu=2)

SEEDS = (0, 1)   # the seeds of the slow "beats supervised" tests

@pytest.fixture(scope='module')
def supervised():
    "Supervised accuracy on digits (5 labels per class, 120 steps) for each of `SEEDS`"
    from fastai_ssl.cli import train_digits
    return [train_digits('supervised', 5, 40, s)['accuracy'] for s in SEEDS]

def assert_beats_supervised(make, supervised, margin):
    "The callback `make(u_dl)` beats `supervised` on digits for each of `SEEDS`, and by `margin` on their mean"
    from fastai_ssl.cli import train_digits
    acc = [train_digits(make, 5, 40, s)['accuracy'] for s in SEEDS]
    assert all(a > s for a,s in zip(acc, supervised)), (supervised, acc)
    assert np.mean(acc) - np.mean(supervised) >= margin, (supervised, acc)

def ssl_cb(learn):
    "The Learner's SSL callback"
    return first(c for c in learn.cbs if isinstance(c, SSLCallback))

def digits_learner(digits, cb, path=None):
    "A `small_cnn` Learner on the `digits` fixture's loaders with the callback `cb(u_dl)`"
    dls,u_dl = digits
    return Learner(dls, small_cnn(), metrics=accuracy, path=path or Path(tempfile.mkdtemp()), cbs=cb(u_dl))

def write_pngs(folder, n:int, shape, rng):
    "`n` PNGs of random pixels in `folder` (made if missing); `shape` is an image's (h, w, c), or a function of its index giving it"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n): Image.fromarray(rng.integers(0, 255, shape(i) if callable(shape) else shape, dtype=np.uint8)).save(folder/f'{i}.png')

def quiet_fit(learn, *args, one_cycle=False, **kwargs):
    with learn.no_bar(), learn.no_logging():
        (learn.fit_one_cycle if one_cycle else learn.fit)(*args, **kwargs)
    return learn

def pytest_collection_modifyitems(config, items):
    "Keep only tests defined in the test modules, not `test_*` helpers that star imports bring in (fastcore's `test_eq`…)"
    items[:] = [i for i in items if getattr(i, 'function', None) is None or i.function.__module__ == i.module.__name__]
