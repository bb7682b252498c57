"Every algorithm's own training state (its `ssl_attrs` and its parts': policy, alignment): it moves in training, comes back with `learn.load`, starts afresh without a saved state, and is not pickled by `export`"
import pickle
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from conftest import quiet_fit, ssl_cb
from test_safety import ALGOS, make_cb

def _state(cb)->dict:
    "The training state of `cb`: its `ssl_attrs` and its parts' state, by name"
    return {**{k: getattr(cb, k) for k in type(cb).ssl_attrs}, **{f'{n}.{k}': v for n,p in cb.parts.items() for k,v in p.state_dict().items()}}

def _learner(algo, digits, path=None):
    dls,u_dl = digits
    return Learner(dls, small_cnn(), metrics=accuracy, path=ifnone(path, Path(tempfile.mkdtemp())), cbs=make_cb(algo, u_dl))

def _tensors(state): return {k:v for k,v in state.items() if isinstance(v, Tensor)}

# the algorithms with training state of their own, found in the catalogue (banks and heads are tested in test_feature_algos)
STATEFUL = [a for a in ALGOS if _state(make_cb(a, [0]))]
stateful = pytest.mark.parametrize('algo', STATEFUL, ids=[a[1] for a in STATEFUL])

def test_the_catalogue_has_stateful_algorithms():
    assert {'adamatch', 'softmatch', 'dash', 'flexmatch', 'freematch', 'remixmatch', 'simmatch', 'comatch'} <= {a[0] for a in STATEFUL}

@stateful
def test_state_moves_and_survives_save_load(algo, digits):
    learn = _learner(algo, digits)
    cb = ssl_cb(learn)
    assert all(v is None or not isinstance(v, Tensor) for v in _state(cb).values())   # before training: the initial values
    quiet_fit(learn, 1, 1e-2)
    first = {k: v.clone() for k,v in _tensors(_state(cb)).items()}
    assert first and all(type(v) is Tensor for v in first.values()), first   # plain tensors: `learn.save` loads with `weights_only`
    quiet_fit(learn, 1, 1e-2)
    if algo[0] != 'dash': assert any(not torch.equal(first[k], v) for k,v in _tensors(_state(cb)).items())   # Dash's ρ̂ is set once
    learn.save('ckpt')
    cb2 = ssl_cb(_learner(algo, digits, learn.path).load('ckpt'))
    for k,v in _state(cb).items(): test_eq(_state(cb2)[k], v)
    test_eq(cb2.step, cb.step)
    learn2 = cb2.learn
    quiet_fit(learn2, 1, 1e-2)   # training goes on from the restored state
    assert all(math.isfinite(v) for v in learn2.recorder.values[-1])

@stateful
def test_load_without_state_starts_afresh(algo, digits):
    learn = _learner(algo, digits)
    quiet_fit(learn, 1, 1e-2)
    learn.save('ckpt')
    (learn.path/'models'/'ckpt.ssl.pth').unlink()
    assert not _tensors(_state(ssl_cb(learn.load('ckpt'))))

@stateful
def test_export_drops_training_state(algo, digits):
    learn = _learner(algo, digits)
    quiet_fit(learn, 1, 1e-2)
    cb = pickle.loads(pickle.dumps(ssl_cb(learn)))
    assert cb.u_dl is None and not _tensors(_state(cb))
