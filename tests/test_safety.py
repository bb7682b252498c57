"Every callback under resume, exceptions, bad input and fixed seeds: the Learner is left as it was, state comes back"
import inspect, random
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st
from fastai.vision.all import *
from fastai_ssl.all import *
from conftest import quiet_fit, ssl_cb

from fastai_ssl.core import ALGORITHMS
_FLIP = ('ict', 'pseudolabel')   # run with their default flip (as the reference runs were recorded); every other algorithm without
def _takes_flip(cls): return any('flip' in inspect.signature(k.__init__).parameters for k in cls.__mro__ if '__init__' in vars(k))

# (name, class name, arguments for digits): every algorithm of the catalogue, each run by the tests below
ALGOS = [(n, cls.__name__, dict(flip=False) if _takes_flip(cls) and n not in _FLIP else {}) for n,cls in sorted(ALGORITHMS.items())]

def make_cb(algo, u_dl, **kwargs):
    name,_,args = algo
    return ALGORITHMS[name](u_dl, **{**args, **kwargs})

algos = pytest.mark.parametrize('algo', ALGOS, ids=[a[1] for a in ALGOS])

class Reseed(Callback):
    "At each epoch, seed every random source: torch/numpy/random and the loaders' own shuffling generators"
    order = -20
    def before_epoch(self):
        set_seed(100 + self.epoch)
        for dl in (self.dls.train, *[cb.u_dl for cb in self.learn.cbs if isinstance(cb, SSLCallback)]): dl.rng = random.Random(self.epoch)

class StopAfter(Callback):
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch == self.n - 1: raise CancelFitException()

def _learner(algo, path, seed=0):
    set_seed(seed)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    return Learner(dls, small_cnn(), metrics=accuracy, path=path, cbs=[make_cb(algo, u_dl, ema=0.9), Reseed()])

def _weights(learn): return torch.cat([p.detach().flatten() for p in learn.model.parameters()])

@algos
def test_resume_matches_uninterrupted(algo, tmp_path):
    "Stopped after 2 of 4 epochs, saved, loaded into a new Learner and resumed with `start_epoch`: the same weights as 4 epochs straight"
    full = quiet_fit(_learner(algo, tmp_path), 4, 3e-3, one_cycle=True)
    part = quiet_fit(_learner(algo, tmp_path), 4, 3e-3, one_cycle=True, cbs=StopAfter(2))
    part.save('half', with_opt=True)
    resumed = _learner(algo, tmp_path, seed=1).load('half', with_opt=True)
    cb,cb_full = ssl_cb(resumed),ssl_cb(full)
    assert cb.step == ssl_cb(part).step == 6
    quiet_fit(resumed, 4, 3e-3, one_cycle=True, start_epoch=2)
    assert cb.step == cb_full.step == 12
    assert torch.allclose(_weights(resumed), _weights(full), atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a,b in zip(cb.teacher.state_dict().values(), cb_full.teacher.state_dict().values()))

@algos
def test_same_seed_same_losses(algo):
    "`set_seed(s, reproducible=True)`: two runs of each callback give identical losses"
    def run():
        set_seed(3, reproducible=True)
        dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
        learn = Learner(dls, small_cnn(), cbs=make_cb(algo, u_dl))
        losses = []
        quiet_fit(learn, 2, 1e-2, cbs=LossLog(losses))
        return losses
    a,b = run(),run()
    assert len(a) == 6 and a == b

class LossLog(Callback):
    order = SSLCallback.order + 1
    def __init__(self, losses): self.losses = losses
    def after_loss(self):
        if self.training: self.losses.append(self.loss.item())

class Boom(Callback):
    "Raises `exc` at a given event of the first training batch (or of the first validation batch)"
    def __init__(self, exc, event='after_loss', valid=False): store_attr()
    def __call__(self, event_name):
        if event_name == self.event and self.training != self.valid and self.iter == 0: raise self.exc('boom')
        super().__call__(event_name)

@algos
@pytest.mark.parametrize('exc,event,valid', [(RuntimeError, 'after_loss', False), (KeyboardInterrupt, 'after_pred', False),
                                             (torch.OutOfMemoryError, 'after_pred', False), (KeyboardInterrupt, 'after_pred', True)],
                         ids=['error', 'interrupt', 'oom', 'interrupt-in-validation'])
def test_learner_left_as_it_was(algo, exc, event, valid, tmp_path):
    "Whatever raises in a step, the Learner keeps its loss, its model and BatchNorm updates, and a new fit works"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    model = small_cnn()
    learn = Learner(dls, model, path=tmp_path, cbs=make_cb(algo, u_dl, ema=0.9, eval_teacher=True))
    lf = learn.loss_func
    with pytest.raises(exc): quiet_fit(learn, 1, cbs=Boom(exc, event, valid))
    assert learn.loss_func is lf
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    quiet_fit(learn, 1)
    assert learn.model is model and math.isfinite(learn.recorder.values[-1][0])

@algos
def test_cancel_fit_from_early_stopping(algo):
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=make_cb(algo, u_dl))
    lf = learn.loss_func
    quiet_fit(learn, 20, 1e-5, cbs=EarlyStoppingCallback(monitor='accuracy', patience=0, min_delta=0.5))
    assert len(learn.recorder.values) < 20 and learn.loss_func is lf

@algos
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(n_lab=st.integers(1, 9), bs=st.integers(1, 6), mu=st.integers(1, 3), c=st.integers(2, 5))
def test_any_batch_sizes_and_classes(algo, n_lab, bs, mu, c):
    "Random labeled counts, batch sizes (a last unlabeled or validation batch of 1 included), mu and class counts: one epoch with finite losses"
    bs = min(bs, n_lab*c)   # fastai drops the last partial training batch: fewer items than `bs` would leave no step at all
    g = torch.Generator().manual_seed(n_lab*100 + bs*10 + c)
    y = torch.arange(n_lab*c) % c
    x = torch.rand(len(y), 1, 8, 8, generator=g)
    ds = [(x[i], TensorCategory(y[i])) for i in range(len(y))]
    dls = DataLoaders.from_dsets(ds, ds[:c], bs=bs)
    dls.c = c
    u_dl = TfmdDL([(o,) for o in torch.rand(64, 1, 8, 8, generator=g)], bs=bs*mu, shuffle=True)
    learn = Learner(dls, small_cnn(n_out=c), loss_func=CrossEntropyLossFlat(), cbs=make_cb(algo, u_dl))
    quiet_fit(learn, 1, 1e-3)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])

@algos
def test_bf16_autocast_finite(algo):
    "Every extra pass runs under the Learner's autocast; confidences and losses stay finite in bfloat16"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=make_cb(algo, u_dl))
    with torch.autocast('cpu', dtype=torch.bfloat16): quiet_fit(learn, 2, 1e-2)
    m = dict(zip(learn.recorder.metric_names[1:], learn.recorder.values[-1]))
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses) and math.isfinite(m['Lx']) and math.isfinite(m['Lu']), m

BAD_ARGS = [('MixMatch', dict(T=0), '`T` must be > 0'), ('MixMatch', dict(K=0), '`K` must be an int >= 1'),
            ('MixMatch', dict(alpha=0), '`alpha` must be > 0'), ('MeanTeacher', dict(ema=None), '`ema` must be set'),
            ('MeanTeacher', dict(ema=1.), '`ema` must be in [0, 1)'), ('ICT', dict(alpha=-1), '`alpha` must be > 0'),
            ('PseudoLabel', dict(thresh=1.5), '`thresh` must be in (0, 1]'), ('PiModel', dict(noise=-1), '`noise` must be >= 0'),
            ('VAT', dict(eps=0), '`eps` must be > 0'), ('VAT', dict(xi=0), '`xi` must be > 0'), ('VAT', dict(n_power=0), '`n_power` must be an int >= 1'),
            ('UDA', dict(tsa='cubic'), '`tsa` must be'), ('UDA', dict(T=0), '`T` must be > 0'), ('UDA', dict(thresh=float('nan')), '`thresh` must be in (0, 1]'),
            ('FlexMatch', dict(mapping='square'), '`mapping` must be'), ('FlexMatch', dict(thresh=2), '`thresh` must be in (0, 1]'),
            ('FreeMatch', dict(ema_p=1), '`ema_p` must be in [0, 1)'), ('FreeMatch', dict(ent_weight=-1), '`ent_weight` must be >= 0'),
            ('FreeMatch', dict(tau0=0), '`tau0` must be in (0, 1]'),
            ('AdaMatch', dict(thresh=2), '`thresh` must be in (0, 1]'), ('AdaMatch', dict(ema_p=1), '`ema_p` must be in [0, 1)'),
            ('SoftMatch', dict(n_sigma=0), '`n_sigma` must be > 0'), ('SoftMatch', dict(ema_p=-0.1), '`ema_p` must be in [0, 1)'),
            ('SoftMatch', dict(thresh=0.9), 'remove `thresh`'), ('Dash', dict(gamma=1), '`gamma` must be > 1'), ('Dash', dict(C=0), '`C` must be > 0'),
            ('Dash', dict(rho_min=0), '`rho_min` must be > 0'), ('Dash', dict(warmup=1), '`warmup` must be in [0, 1)'),
            ('Dash', dict(period=0), '`period` must be in (0, 1]'), ('Dash', dict(thresh=0.9), 'remove `thresh`'),
            ('DeFixMatch', dict(thresh=0), '`thresh` must be in (0, 1]'), ('DeFixMatch', dict(T=0), '`T` must be > 0'),
            ('ReMixMatch', dict(T=0), '`T` must be > 0'), ('ReMixMatch', dict(K=0), '`K` must be an int >= 1'),
            ('ReMixMatch', dict(alpha=0), '`alpha` must be > 0'), ('ReMixMatch', dict(lambda_kl=-1), '`lambda_kl` must be >= 0'),
            ('ReMixMatch', dict(lambda_rot=-1), '`lambda_rot` must be >= 0'), ('ReMixMatch', dict(align='labeled'), '`align` must be a `DistAlign`, True'),
            ('SimMatch', dict(thresh=0), '`thresh` must be in (0, 1]'), ('SimMatch', dict(T=0), '`T` must be > 0'),
            ('SimMatch', dict(alpha=1.5), '`alpha` must be in [0, 1]'), ('SimMatch', dict(lambda_in=-1), '`lambda_in` must be >= 0'),
            ('SimMatch', dict(bank_ema=-0.1), '`bank_ema` must be in [0, 1)'), ('SimMatch', dict(proj=0), '`proj` must be an int >= 1'),
            ('CoMatch', dict(thresh=2), '`thresh` must be in (0, 1]'), ('CoMatch', dict(lambda_c=-1), '`lambda_c` must be >= 0'),
            ('CoMatch', dict(contrast_thresh=1.5), '`contrast_thresh` must be in [0, 1]'), ('CoMatch', dict(bank_items=0), '`bank_items` must be an int >= 1'),
            ('CRMatch', dict(thresh=0), '`thresh` must be in (0, 1]'), ('CRMatch', dict(lambda_rot=-1), '`lambda_rot` must be >= 0'),
            ('CRMatch', dict(lambda_ds=-1), '`lambda_ds` must be >= 0'), ('CRMatch', dict(feats=3), '`feats` must be a module of the model')] + \
           [(cls, dict(lambda_u=v), '`lambda_u` must be >= 0') for _,cls,_ in ALGOS for v in (-1., float('nan'))] + \
           [(cls, dict(ramp=0.5), '`ramp` must be a callable') for _,cls,_ in ALGOS]

@pytest.mark.parametrize('cls,kwargs,msg', BAD_ARGS, ids=[f'{c}-{next(iter(k))}' for c,k,_ in BAD_ARGS])
def test_bad_arguments_name_the_argument(cls, kwargs, msg):
    "Out-of-range settings fail when the callback is made, with one line naming the argument"
    algo = first(a for a in ALGOS if a[1] == cls)
    with pytest.raises(ValueError) as e: make_cb(algo, [], **kwargs)
    assert msg in str(e.value) and '\n' not in str(e.value)

@algos
def test_nan_input_stops_before_a_checkpoint_is_overwritten(algo, tmp_path):
    "NaN unlabeled images: a one-line error at the first step, and the user's saved model is left alone"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    learn = Learner(dls, small_cnn(), metrics=accuracy, path=tmp_path, cbs=make_cb(algo, [(torch.full((32, 1, 8, 8), float('nan')),)]))
    saved = learn.save('model')
    before = saved.read_bytes()
    with pytest.raises(ValueError, match='NaN or infinite'): quiet_fit(learn, 2, cbs=SaveModelCallback(monitor='accuracy', fname='model'))
    assert saved.read_bytes() == before
