"The unlabeled images reach the model as the labeled ones do, on every path a user builds, or training stops before the first step"
import importlib
import pytest
from torch.utils.data import DataLoader, TensorDataset
from fastai.vision.all import *
from fastai.vision.learner import _add_norm
import fastai.callback.channelslast   # `Learner.to_channelslast`
from fastai_ssl.all import *
from conftest import quiet_fit
from test_safety import ALGOS, make_cb

FM_STATS = (0.286, 0.353)   # Fashion-MNIST's pixel mean and std: digits normalized with them span ~2.8 units

class FirstStep(Callback):
    "Keep what the model receives at the first training step, split into the labeled batch and each unlabeled view, then stop"
    order = SSLCallback.order + 1
    def after_pred(self):
        if not self.training: return
        cb = first(c for c in self.learn.cbs if isinstance(c, SSLCallback))
        xb = self.learn.xb[0].detach().as_subclass(Tensor).float()
        self.lab,self.views = xb[:cb.n_l],list(xb[cb.n_l:].split(list(cb.sizes_u.values())))
        if getattr(cb, 'r_adv', None) is not None: self.views[-1] = self.views[-1] - cb.r_adv   # VAT: the clean images under its perturbation
        raise CancelFitException()

def _digits_u8(n=None):
    xt,_,_,_ = digits_arrays()
    return torch.from_numpy(xt[:n]).unsqueeze(1)

def _normalized_dls(bs=16):
    "Labeled digits as fastai `Datasets` of tensors normalized before fastai sees them (no `Normalize` in any pipeline)"
    xt,yt,xv,yv = digits_arrays()
    norm = lambda x: (torch.from_numpy(x).float().div(255).unsqueeze(1) - FM_STATS[0])/FM_STATS[1]
    lab,_ = split_labeled(np.arange(len(yt)), yt, 5)
    items = [(x, int(y)) for x,y in zip(norm(xt[lab]), yt[lab])] + [(x, int(y)) for x,y in zip(norm(xv), yv)]
    dsets = Datasets(items, tfms=[[ItemGetter(0), lambda o: TensorImage(o)], [ItemGetter(1), Categorize()]],
                     splits=[list(range(len(lab))), list(range(len(lab), len(items)))])
    return dsets.dataloaders(bs=bs, num_workers=0),norm(xt)

def _add_normalize(dls, stats=FM_STATS):
    "What `vision_learner(..., pretrained=True)` does to `dls` once the unlabeled loader exists: a `Normalize` added to every loader"
    dls.add_tfms([Normalize.from_stats(*stats, cuda=False)], 'after_batch')

def _plain(x, bs=32): return DataLoader(TensorDataset(x), batch_size=bs, shuffle=True, drop_last=True)

def path_dls(path):
    "Labeled `dls` and `u_dl` as a user builds them on each path"
    set_seed(0)
    if path == 'normalized tensors, plain loader':
        dls,xn = _normalized_dls()
        return dls,_plain(xn)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    if path == 'unlabeled_dl': pass
    elif path == 'Normalize added after unlabeled_dl': _add_normalize(dls)
    elif path == 'plain loader of uint8': u_dl = _plain(_digits_u8())
    elif path == 'plain loader of [0, 1] floats': u_dl = _plain(_digits_u8().float()/255)
    elif path == 'plain [0, 1] floats, labeled normalized':
        _add_normalize(dls)
        u_dl = _plain(_digits_u8().float()/255)
    return dls,u_dl

PATHS = ['unlabeled_dl', 'Normalize added after unlabeled_dl', 'plain loader of uint8', 'plain loader of [0, 1] floats',
         'plain [0, 1] floats, labeled normalized', 'normalized tensors, plain loader']

def assert_like_labeled(x, views):
    "Every view's per-channel mean within half a labeled standard deviation of the labeled batch's, its std within 2× of it"
    mx,sx = x.mean((0, 2, 3)),x.std((0, 2, 3))
    for v in views:
        mv,sv = v.mean((0, 2, 3)),v.std((0, 2, 3))
        assert ((mv - mx).abs() <= 0.5*sx).all() and ((sv/sx > 0.5) & (sv/sx < 2)).all(), (mx, sx, mv, sv)

@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('algo', ALGOS, ids=[a[1] for a in ALGOS])
def test_views_have_the_labeled_statistics(algo, path):
    dls,u_dl = path_dls(path)
    probe = FirstStep()
    learn = Learner(dls, small_cnn(), cbs=[make_cb(algo, u_dl), probe])
    quiet_fit(learn, 1, 1e-3)
    assert len(probe.views) >= 1
    assert_like_labeled(probe.lab, probe.views)

def test_worker_pairs_get_a_normalize_added_later():
    "(weak, strong) pairs made with PIL in the loader's workers, then ImageNet-style `Normalize` added to `dls`: both views normalized"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2, resident=False)
    u_dl = worker_views(u_dl, WeakStrong(flip=False))
    _add_normalize(dls)
    probe = FirstStep()
    learn = Learner(dls, small_cnn(), cbs=[FixMatch(u_dl), probe])
    quiet_fit(learn, 1, 1e-3)
    test_eq(len(probe.views), 2)
    assert_like_labeled(probe.lab, probe.views)

@pytest.fixture
def rgb_folder(tmp_path):
    "Two classes of 8 small RGB PNGs each, and 40 unlabeled ones"
    rng = np.random.default_rng(0)
    def img(c): return Image.fromarray((rng.integers(0, 150, (24, 24, 3)) + np.array([100, 0, 0] if c else [0, 0, 100])).astype(np.uint8))
    for c in ('red', 'blue'):
        (tmp_path/'train'/c).mkdir(parents=True)
        for i in range(8): img(c == 'red').save(tmp_path/'train'/c/f'{i}.png')
    (tmp_path/'unlabeled').mkdir()
    for i in range(40): img(i % 2).save(tmp_path/'unlabeled'/f'{i}.png')
    return tmp_path

def test_vision_learner_pretrained_order(rgb_folder):
    "`unlabeled_dl` first, then `vision_learner(resnet18, pretrained=True)`, which adds ImageNet's `Normalize` to `dls` (simulated: no weights offline)"
    set_seed(0)
    dls = ImageDataLoaders.from_folder(rgb_folder/'train', valid_pct=0.25, item_tfms=Resize(24), bs=4, num_workers=0)
    u_dl = unlabeled_dl(get_image_files(rgb_folder/'unlabeled'), dls, mu=4)
    probe = FirstStep()
    learn = vision_learner(dls, resnet18, pretrained=False, cbs=[FixMatch(u_dl), probe])
    _add_norm(dls, model_meta[resnet18], pretrained=True)   # what `pretrained=True` does to `dls`
    assert dls.after_batch.fs.filter(risinstance(Normalize)) and not u_dl.after_batch.fs.filter(risinstance(Normalize))
    quiet_fit(learn, 1, 1e-3)
    assert probe.lab.min() < -1.5 and probe.lab.max() > 1.5    # ImageNet-normalized labeled images
    for v in probe.views: assert v.min() < -1.5 and v.max() > 1.5
    assert_like_labeled(probe.lab, probe.views)

BAD = {'0-255 floats against [0, 1]': lambda: (digits_dls(n_per_class=5, bs=16, mu=2)[0], _plain(_digits_u8().float())),
       'unnormalized against normalized': lambda: (_normalized_dls()[0], _plain(_digits_u8().float()/255)),
       'Normalize of other statistics': lambda: (lambda d: (_add_normalize(d[0]) or d[0], d[1].new(after_batch=[IntToFloatTensor(), Normalize.from_stats(0.5, 0.5, cuda=False)])))(
           digits_dls(n_per_class=5, bs=16, mu=2)),
       'u_dl normalized, labeled not': lambda: (lambda d: (d[0], d[1].new(after_batch=[IntToFloatTensor(), Normalize.from_stats(*FM_STATS, cuda=False)])))(
           digits_dls(n_per_class=5, bs=16, mu=2))}

@pytest.mark.parametrize('case', list(BAD))
@pytest.mark.parametrize('algo', ALGOS[:3], ids=[a[1] for a in ALGOS[:3]])
def test_mismatch_stops_before_the_first_step(algo, case):
    "A loader of another preprocessing: one line naming what differs, raised before any weight moves; the Learner as it was"
    set_seed(0)
    dls,u_dl = BAD[case]()
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=make_cb(algo, u_dl))
    lf,w = learn.loss_func,[p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError) as e: quiet_fit(learn, 1, 1e-2)
    msg = str(e.value).splitlines()[-1].strip()   # fastai puts a line naming the callback and event before it
    assert ('per-channel range' in msg or 'normalizes' in msg), msg
    assert learn.loss_func is lf and all(torch.equal(a, b) for a,b in zip(w, learn.model.parameters()))
    cb = first(c for c in learn.cbs if isinstance(c, SSLCallback))
    cb.u_dl = path_dls('unlabeled_dl')[1] if case != 'unnormalized against normalized' else _plain(_normalized_dls()[1])
    quiet_fit(learn, 1, 1e-2)   # fixed loader: the next fit trains
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])

def test_strong_views_never_leave_the_pixel_range():
    "Normalized images with no `Normalize` to say so: the strong views stay inside the images' own range (no extrapolated lookup tables)"
    _,xn = _normalized_dls()
    lo,hi = xn.min(),xn.max()
    for seed in range(3):
        set_seed(seed)
        s = StrongAug()(xn[:256])
        assert lo - 1e-4 <= s.min() and s.max() <= hi + 1e-4

@pytest.mark.parametrize('setup', ['to_bf16', 'to_channelslast'])
def test_mixed_precision_and_channels_last(setup):
    "`Learner.to_bf16()` and `to_channelslast()` change neither the unlabeled preprocessing nor the views' statistics"
    dls,u_dl = path_dls('Normalize added after unlabeled_dl')
    probe = FirstStep()
    learn = getattr(Learner(dls, small_cnn(), cbs=[FixMatch(u_dl, flip=False), probe]), setup)()
    quiet_fit(learn, 1, 1e-3)
    test_eq(len(probe.views), 2)
    assert_like_labeled(probe.lab, probe.views)
