"Batched weak/strong views (per sample, any device) and the PIL path for the loader's workers"
import numpy as np, pytest, torch
from PIL import Image, ImageOps
from fastai.vision.all import PILImage, PILImageBW, Learner, accuracy
from fastcore.test import test_fail
import fastai_ssl.augment as A
from fastai_ssl.augment import *
from fastai_ssl.data import digits_dls
from fastai_ssl.models import small_cnn
from fastai_ssl.fixmatch import FixMatch
from conftest import quiet_fit

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device'))]
MAGNITUDE_FREE = ('Identity', 'AutoContrast', 'Equalize')

@pytest.fixture(scope='module')
def u8(): return photo_crops(16, seed=3)

def _x(u8, device): return (u8.float()/255).to(device)

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('name', [o for o in OPS if o not in MAGNITUDE_FREE])
def test_op_identity_at_zero_and_visible_at_full(u8, device, name):
    x = _x(u8, device)
    torch.testing.assert_close(apply_op(x, name, 0.), x, atol=1e-5, rtol=0)
    for sign in (1., -1.):
        d = (apply_op(x, name, 10., sign) - x).abs()
        assert d.mean() > 0.005 and (d.flatten(1).amax(1) > 0.005).all(), (name, sign)   # flat skies barely sharpen

@pytest.mark.parametrize('device', DEVICES)
def test_equalize_autocontrast_match_pil(u8, device):
    x = _x(u8, device)
    pil = lambda f: torch.stack([torch.from_numpy(np.array(f(Image.fromarray(o.permute(1, 2, 0).numpy())))).permute(2, 0, 1) for o in u8])
    assert torch.equal((equalize(x)*255).round().byte().cpu(), pil(ImageOps.equalize))
    diff = ((apply_op(x, 'AutoContrast')*255).round().cpu() - pil(ImageOps.autocontrast).float()).abs()
    assert diff.max() <= 1      # PIL truncates its table, we round

@pytest.mark.parametrize('device', DEVICES)
def test_one_channel(u8, device):
    x = _x(u8, device).mean(1, keepdim=True)
    for name in OPS:
        y = apply_op(x, name, 10.)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
        if name not in MAGNITUDE_FREE: torch.testing.assert_close(apply_op(x, name, 0.), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_op(x, 'Color', 10.), x, atol=1e-5, rtol=0)   # no colour to change
    assert StrongAug()(x).shape == x.shape

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.uint8])
def test_shape_dtype_device_range_kept(u8, device, dtype):
    x = u8.to(device) if dtype == torch.uint8 else _x(u8, device).to(dtype)
    for aug in (WeakAug(), StrongAug(), StrongAug(n=4, m=10., rand_m=False, p=1.)):
        y = aug(x)
        assert (y.shape, y.dtype, y.device) == (x.shape, x.dtype, x.device)
        if dtype != torch.uint8: assert y.min() >= 0 and y.max() <= 1

@pytest.mark.parametrize('device', DEVICES)
def test_normalized_in_normalized_out(u8, device):
    mean,std = torch.tensor([.49, .48, .45]).view(1, 3, 1, 1),torch.tensor([.25, .24, .26]).view(1, 3, 1, 1)
    x = _x(u8, device)
    xn = (x-mean.to(device))/std.to(device)
    ident = StrongAug(n=0, cutout=0., flip=False, translate=0., mean=mean, std=std)
    torch.testing.assert_close(ident(xn), xn, atol=1e-4, rtol=0)
    y = StrongAug(mean=mean, std=std)(xn)*std.to(device)+mean.to(device)
    assert y.min() >= -1e-5 and y.max() <= 1+1e-5

@pytest.mark.parametrize('device', DEVICES)
def test_identical_samples_get_their_own_ops(u8, device):
    same = _x(u8, device)[:1].expand(64, -1, -1, -1)
    aug = StrongAug(p=1., cutout=0., flip=False, translate=0.)
    pr = aug.params(64, device)
    assert len(pr['op'][0].unique()) > 5                      # each sample draws its own ops
    y = aug(same, pr)
    assert ((y[1:]-y[:1]).abs().flatten(1).amax(1) > 0.05).float().mean() > 0.8
    w = WeakAug(translate=0.125)(same)
    assert len({tuple(o.flatten().tolist()[:64]) for o in w}) > 5

@pytest.mark.parametrize('device', DEVICES)
def test_reproducible_under_seed(u8, device):
    x = _x(u8, device)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        outs.append(torch.cat([WeakAug()(x), StrongAug()(x)]))
    assert torch.equal(*outs)

def test_weak_moves_pixels_exactly(u8):
    x = _x(u8, 'cpu')
    y = WeakAug(flip=True, translate=0.)(x)
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a,b in zip(y, x))
    y = WeakAug(flip=False)(u8)                               # whole-pixel shifts copy values, in any dtype
    assert all(set(a.unique().tolist()) <= set(b.unique().tolist()) for a,b in zip(y, u8))

def test_cpu_subsets_equal_where_form(u8, monkeypatch):
    "On a CPU each branch runs on its samples only; the form other devices run (all samples, `where`) gives the same views"
    x = photo_crops(64, seed=4).float()/255
    aug = StrongAug(p=1., flip=False, translate=0.)
    torch.manual_seed(0); pr = aug.params(64)
    a = aug(x, pr)
    monkeypatch.setattr(A, '_branch', lambda out, mask, fn: torch.where(A._per(mask, out), fn(slice(None)), out))
    torch.testing.assert_close(aug(x, pr), a, atol=1e-6, rtol=0)

@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_no_host_sync_on_cuda(u8):
    x = _x(u8, 'cuda')
    weak,strong = WeakAug(),StrongAug(mean=torch.tensor([.5]*3), std=torch.tensor([.25]*3))
    strong(x)                                                 # moves mean/std once
    torch.cuda.set_sync_debug_mode('error')
    try: weak(x); strong(x)
    finally: torch.cuda.set_sync_debug_mode('default')

def test_arguments_checked():
    for kw,msg in ((dict(n=-1), '`n` must be an int >= 0'), (dict(m=11), '`m` must be in [0, 10]'), (dict(p=2), '`p` must be in [0, 1]'),
                   (dict(cutout=-0.1), '`cutout` must be in [0, 1]')):
        with pytest.raises(ValueError, match=msg.replace('[', r'\[').replace(']', r'\]')): StrongAug(**kw)
    with pytest.raises(ValueError, match='`name` must be one of'): apply_op(torch.zeros(1, 1, 8, 8), 'Invert')

@pytest.mark.parametrize('mode', ['L', 'RGB'])
def test_pil_views(u8, mode):
    im = (PILImageBW if mode == 'L' else PILImage).create(u8[0].permute(1, 2, 0).numpy()[..., :1 if mode == 'L' else 3].squeeze())
    w,s,y = WeakStrong()((im, 7))
    assert (type(w), type(s), w.size, s.size, y) == (type(im), type(im), im.size, im.size, 7)
    assert WeakStrong(n=0, cutout=0., flip=False, translate=0.)(im)[1].tobytes() == im.tobytes()

def test_worker_views_feed_fixmatch():
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2, resident=False)
    v_dl = worker_views(u_dl, WeakStrong(flip=False))
    w,s,y = v_dl.one_batch()
    assert w.shape == s.shape == (32, 1, 8, 8) and y.shape == (32,)
    learn = quiet_fit(Learner(dls, small_cnn(), metrics=accuracy, cbs=FixMatch(v_dl)), 1, 1e-2)
    assert learn.recorder.values

def test_kornia_reference(u8):
    "kornia (optional) agrees on equalize; its RandAugment draws one set of ops per batch, not per sample as FixMatch does"
    K = pytest.importorskip('kornia')
    x = _x(u8, 'cpu')
    assert torch.equal((K.enhance.equalize(x)*255).round(), (equalize(x)*255).round())
    ra = K.augmentation.auto.RandAugment(n=2, m=10)
    params = ra.forward_parameters(x.shape)
    assert len(params) == 2                                   # two ops, for the whole batch

def test_resident_loader_has_no_worker_views():
    "Images decoded on the device: the callback makes the views on the batch; asking for worker views says how to get them"
    u_dl = digits_dls(n_per_class=5, bs=16, mu=2)[1]
    assert u_dl.resident and cpu_views(u_dl, 'cpu') is u_dl
    test_fail(lambda: worker_views(u_dl), contains='resident=False')

def test_cpu_views_default():
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2, resident=False)
    assert cpu_views(u_dl, 'cuda') is u_dl
    v_dl = cpu_views(u_dl, 'cpu', flip=False)
    assert len(v_dl.one_batch()) == 3 and cpu_views(v_dl, 'cpu') is v_dl
    two = digits_dls(n_per_class=5, bs=16, mu=2, views=[WeakPIL(), StrongPIL()])[1]
    assert cpu_views(two, 'cpu') is two                       # already yields two views
