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

def quiet_fit(learn, *args, one_cycle=False, **kwargs):
    with learn.no_bar(), learn.no_logging():
        (learn.fit_one_cycle if one_cycle else learn.fit)(*args, **kwargs)
    return learn

def pytest_collection_modifyitems(config, items):
    "Keep only tests defined in the test modules, not `test_*` helpers that star imports bring in (fastcore's `test_eq`…)"
    items[:] = [i for i in items if getattr(i, 'function', None) is None or i.function.__module__ == i.module.__name__]
