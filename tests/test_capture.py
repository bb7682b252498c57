"Views replayed as CUDA graphs (CUDA only) and their eager fallback; no host sync in a FixMatch step on CUDA"
import pickle
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.augment import _graphs, _attrs_key, Captured
from fastai_ssl.cli import algo_class
from conftest import quiet_fit

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')

@pytest.fixture(scope='module')
def imgs(): return photo_crops(64, 32, seed=0).float()/255

@pytest.mark.parametrize('make', [WeakAug, StrongAug])
def test_eager_on_cpu(make, imgs):
    "On a CPU a call is the eager one, draw for draw, and nothing is captured"
    aug = make()
    for _ in range(4):
        torch.manual_seed(3); a = aug(imgs)
        torch.manual_seed(3); b = aug.eager(imgs)
        assert torch.equal(a, b)
    assert aug not in _graphs

def test_key_follows_settings():
    "A graph bakes in the augmentation's settings: changing one asks for another graph"
    aug = StrongAug()
    k = _attrs_key(aug)
    assert _attrs_key(aug) == k
    aug.m = 5.
    assert _attrs_key(aug) != k

def test_pickles():
    "Graphs live outside the augmentation, so a callback holding one still exports"
    aug = StrongAug()
    assert isinstance(pickle.loads(pickle.dumps(aug)), StrongAug)

def _changed(a, b): return ((a - b).abs() > 1/255).float().mean().item()

@cuda
@pytest.mark.parametrize('make', [WeakAug, StrongAug])
def test_cuda_replays_draw_afresh_like_eager(make, imgs):
    "After the warm-up calls a CUDA graph is replayed; each replay draws new parameters, and the views change as many pixels as eager ones"
    x = imgs.cuda()
    aug = make()
    for _ in range(aug.warmup + 1): aug(x)
    assert any(isinstance(o, tuple) for o in _graphs[aug].values())
    r1,r2 = aug(x),aug(x)
    assert r1.shape == x.shape and not torch.equal(r1, r2)
    eager = make(capture=False)
    rep = np.mean([_changed(aug(x), x) for _ in range(20)])
    eag = np.mean([_changed(eager(x), x) for _ in range(20)])
    assert abs(rep - eag) < 0.05, (rep, eag)
    assert aug(x[:16]).shape == (16, *x.shape[1:])   # another shape: eager until it warms up

@cuda
def test_cuda_capture_off(imgs):
    x = imgs.cuda()
    aug = WeakAug(capture=False)
    for _ in range(4): aug(x)
    assert aug not in _graphs
    defaults.capture_views = False
    try:
        aug = WeakAug()
        for _ in range(4): aug(x)
        assert aug not in _graphs
    finally: defaults.capture_views = True

class _SyncsOn(Callback):
    "From the start of the SSL callback's `before_batch` (after the epoch's first step, which checks the data once)"
    order = SSLCallback.order - 1
    def before_batch(self):
        cb = first(self.learn.cbs, risinstance(SSLCallback))
        if self.training and cb.steplog.n > 0: torch.cuda.set_sync_debug_mode('error')

class _SyncsOff(Callback):
    "... to the end of its `after_loss`: fastai's own Recorder reads the loss on the host in `after_batch`"
    order = SSLCallback.order + 1
    def after_loss(self): torch.cuda.set_sync_debug_mode(0)
    def after_cancel_batch(self): torch.cuda.set_sync_debug_mode(0)

@cuda
@pytest.mark.parametrize('algo', ['fixmatch', 'flexmatch', 'meanteacher'])
def test_cuda_no_host_sync_in_a_step(algo):
    "Views, forward pass, losses and statistics of a step make no host sync (torch raises if one does)"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=7)
    assert u_dl.resident and u_dl.dataset.device.type == 'cuda'
    dls.train = with_steps(dls.train, 6)
    cb = algo_class(algo)(u_dl, flip=False)
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=[cb, _SyncsOn(), _SyncsOff()])
    try: quiet_fit(learn, 2, 1e-2)
    finally: torch.cuda.set_sync_debug_mode(0)
    assert cb.step == 12
    augs = [v for v in vars(cb).values() if isinstance(v, Captured)]
    assert augs and all(any(isinstance(o, tuple) for o in _graphs.get(a, {}).values()) for a in augs)   # the views were replayed
