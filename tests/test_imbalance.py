"Every long-tail correction (`imb=`) with FixMatch and FlexMatch: resumed equal to uninterrupted, the Learner left as it was after an exception, bfloat16, its state saved, loaded and not exported"
import pickle, random
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.imbalance import IMBALANCE, Rebalance
from conftest import quiet_fit, ssl_cb
from test_safety import Reseed, StopAfter, Boom

# arguments that make each correction act within the tests' few steps (its defaults wait longer)
ARGS = dict(darp=dict(warmup=0.25, refine_every=2))
BASES = dict(fixmatch=lambda u, imb: FixMatch(u, flip=False, imb=imb), flexmatch=lambda u, imb: FlexMatch(u, flip=False, warmup=False, imb=imb))
CASES = [(i, b) for i in sorted(IMBALANCE) for b in BASES]
cases = pytest.mark.parametrize('imb,base', CASES, ids=[f'{i}-{b}' for i,b in CASES])

def make(imb): return IMBALANCE[imb](**ARGS.get(imb, {}))

def _learner(imb, base, path=None, seed=0, **kwargs):
    set_seed(seed)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    return Learner(dls, small_cnn(), metrics=accuracy, path=ifnone(path, Path(tempfile.mkdtemp())), cbs=[BASES[base](u_dl, make(imb)), Reseed()], **kwargs)

def _weights(learn): return torch.cat([p.detach().flatten() for p in learn.model.parameters()])
def _state(cb): return {k:v for k,v in cb.imb.state_dict().items() if v is not None}

def test_the_catalogue():
    assert {'debiaspl', 'saw', 'darp'} <= set(IMBALANCE)
    assert all(issubclass(c, Rebalance) for c in IMBALANCE.values())

@cases
def test_resume_matches_uninterrupted(imb, base, tmp_path):
    "Stopped after 2 of 4 epochs, saved, loaded into a new Learner and resumed: the same weights and correction state as 4 epochs straight"
    full = quiet_fit(_learner(imb, base, tmp_path), 4, 3e-3, one_cycle=True)
    part = quiet_fit(_learner(imb, base, tmp_path), 4, 3e-3, one_cycle=True, cbs=StopAfter(2))
    part.save('half', with_opt=True)
    resumed = quiet_fit(_learner(imb, base, tmp_path, seed=1).load('half', with_opt=True), 4, 3e-3, one_cycle=True, start_epoch=2)
    assert torch.allclose(_weights(resumed), _weights(full), atol=1e-5)
    a,b = _state(ssl_cb(resumed)),_state(ssl_cb(full))
    assert a.keys() == b.keys() and a
    for k,v in b.items(): assert torch.allclose(torch.as_tensor(a[k]).float(), torch.as_tensor(v).float(), atol=1e-5), k

@cases
@pytest.mark.parametrize('exc,event', [(RuntimeError, 'after_loss'), (KeyboardInterrupt, 'after_pred')], ids=['error', 'interrupt'])
def test_learner_left_as_it_was(imb, base, exc, event):
    "Whatever raises in a step, the Learner keeps its loss function and model, and a new fit works"
    learn = _learner(imb, base)
    lf,model = learn.loss_func,learn.model
    with pytest.raises(exc): quiet_fit(learn, 1, cbs=Boom(exc, event))
    assert learn.loss_func is lf
    quiet_fit(learn, 1)
    assert learn.model is model and math.isfinite(learn.recorder.values[-1][0])

@cases
def test_bf16_autocast_finite(imb, base):
    learn = _learner(imb, base)
    with torch.autocast('cpu', dtype=torch.bfloat16): quiet_fit(learn, 2, 1e-2)
    m = dict(zip(learn.recorder.metric_names[1:], learn.recorder.values[-1]))
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses) and math.isfinite(m['Lx']) and math.isfinite(m['Lu']), m

@pytest.mark.parametrize('imb', sorted(IMBALANCE))
def test_state_moves_saved_loaded_not_exported(imb, tmp_path):
    learn = quiet_fit(_learner(imb, 'fixmatch', tmp_path), 2, 1e-2)
    cb = ssl_cb(learn)
    first = {k: v.clone() if isinstance(v, Tensor) else v for k,v in _state(cb).items()}
    assert first
    quiet_fit(learn, 2, 1e-2)
    assert any(not torch.equal(torch.as_tensor(first[k]), torch.as_tensor(v)) for k,v in _state(cb).items())
    learn.save('ckpt')
    cb2 = ssl_cb(_learner(imb, 'fixmatch', tmp_path).load('ckpt'))
    for k,v in _state(cb).items(): test_eq(_state(cb2)[k], v)
    assert not _state(pickle.loads(pickle.dumps(cb)))

def test_only_algorithms_with_pseudo_labels_take_it(digits):
    dls,u_dl = digits
    with pytest.raises(TypeError): MeanTeacher(u_dl, imb=make('debiaspl'))
    test_fail(lambda: FixMatch(u_dl, imb='debiaspl'), contains='`imb` must be a long-tail correction')
