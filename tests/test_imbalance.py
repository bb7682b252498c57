"Every long-tail correction (`imb=`) with FixMatch and FlexMatch, and those of soft pseudo-labels with ReMixMatch: resumed equal to uninterrupted, the Learner left as it was after an exception, bfloat16, its state saved, loaded and not exported"
import pickle, random
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.imbalance import IMBALANCE, Rebalance, AuxClassifier, AuxRebalance
from conftest import quiet_fit, ssl_cb
from test_safety import Reseed, StopAfter, Boom

# arguments that make each correction act within the tests' few steps (its defaults wait longer)
ARGS = dict(darp=dict(warmup=0.25, refine_every=2), daso=dict(dist_every=2, pretrain=0.25))
BASES = dict(fixmatch=lambda u, imb: FixMatch(u, flip=False, imb=imb), flexmatch=lambda u, imb: FlexMatch(u, flip=False, warmup=False, imb=imb),
             remixmatch=lambda u, imb: ReMixMatch(u, flip=False, imb=imb))
SOFT = [i for i,c in sorted(IMBALANCE.items()) if c.soft_labels]
CASES = [(i, b) for i in sorted(IMBALANCE) for b in BASES if b != 'remixmatch' or i in SOFT]
cases = pytest.mark.parametrize('imb,base', CASES, ids=[f'{i}-{b}' for i,b in CASES])

def make(imb): return IMBALANCE[imb](**ARGS.get(imb, {}))

def _learner(imb, base, path=None, seed=0, **kwargs):
    set_seed(seed)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    return Learner(dls, small_cnn(), metrics=accuracy, path=ifnone(path, Path(tempfile.mkdtemp())), cbs=[BASES[base](u_dl, make(imb)), Reseed()], **kwargs)

def _weights(learn): return torch.cat([p.detach().flatten() for p in learn.model.parameters()])
def _state(cb): return {k:v for k,v in cb.imb.state_dict().items() if v is not None}
def _aux(learn): return first(m for m in learn.model.modules() if isinstance(m, AuxClassifier))
def _trained(learn):
    "What a correction learns: its part's state, and the weights of its second classifier if it puts one in the model"
    aux = _aux(learn)
    return {**_state(ssl_cb(learn)), **({} if aux is None else {f'aux.{k}': v for k,v in aux.aux.state_dict().items()})}

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
    a,b = _trained(resumed),_trained(full)
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
    before = {k: v.clone() if isinstance(v, Tensor) else v for k,v in _trained(learn).items()}
    assert before
    quiet_fit(learn, 2, 1e-2)
    assert any(not torch.equal(torch.as_tensor(before[k]), torch.as_tensor(v)) for k,v in _trained(learn).items())
    learn.save('ckpt')
    learn2 = _learner(imb, 'fixmatch', tmp_path).load('ckpt')
    for k,v in _trained(learn).items(): test_eq(_trained(learn2)[k], v)
    assert not _state(pickle.loads(pickle.dumps(cb)))

@pytest.mark.parametrize('imb', [i for i,c in sorted(IMBALANCE.items()) if issubclass(c, AuxRebalance)])
def test_second_classifier_predicts_and_is_exported(imb, tmp_path):
    "A correction with a second classifier: the Learner's predictions are that classifier's, and the exported Learner predicts the same"
    learn = quiet_fit(_learner(imb, 'fixmatch', tmp_path), 2, 1e-2)
    aux = _aux(learn)
    feats = []
    h = aux.register_forward_hook(lambda m,i,o: feats.append(i[0]))
    preds,_ = learn.get_preds(act=noop)
    h.remove()
    test_close(preds, aux.aux(torch.cat(feats)).detach(), eps=1e-5)
    assert not torch.allclose(preds, aux.main(torch.cat(feats)).detach())
    learn.remove_cb(Reseed)   # it seeds the unlabeled loader, which `export` drops
    learn.export('exported.pkl')
    inf = load_learner(tmp_path/'exported.pkl')
    test_close(inf.get_preds(dl=learn.dls.valid, act=noop)[0], preds, eps=1e-5)

MORE_BASES = dict(freematch=FreeMatch, softmatch=SoftMatch, adamatch=AdaMatch)

@pytest.mark.parametrize('base', sorted(MORE_BASES))
@pytest.mark.parametrize('imb', sorted(IMBALANCE))
def test_combines_with_the_other_bases(imb, base):
    "FreeMatch, SoftMatch and AdaMatch take every correction: two epochs give finite losses, and the history holds the class distribution of the pseudo-labels the loss learns"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    learn = quiet_fit(Learner(dls, small_cnn(), metrics=accuracy, cbs=MORE_BASES[base](u_dl, flip=False, imb=make(imb))), 2, 1e-2)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])
    s = ssl_cb(learn).history.filter(like='pl_dist').sum(axis=1)
    assert len(s) and (((s - 1).abs() < 1e-4) | (s == 0)).all()

def _remixmatch_step(imb, check):
    "Two epochs of ReMixMatch with the correction `imb`, calling `check(cb)` after each main pass"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    seen = []
    class Check(Callback):
        order,run_valid = ReMixMatch.order + 1,False
        def after_pred(self): check(self.learn.re_mix_match); seen.append(1)
    quiet_fit(Learner(dls, small_cnn(), cbs=[ReMixMatch(u_dl, flip=False, imb=make(imb)), Check()]), 2, 1e-2)
    assert seen

def test_remixmatch_guesses_refined_by_darp():
    "DARP on ReMixMatch: after its warm-up, the step's guesses are the refined rows of its items, as DARP's ReMixMatch code takes them"
    def check(cb):
        if cb.imb.refined is None: return
        test_close(cb.guess, cb.imb._dev[cb.unlabeled_index()])
        test_close(cb.guess.sum(1), 1., eps=1e-4)
    _remixmatch_step('darp', check)

@pytest.mark.parametrize('imb', [i for i in SOFT if issubclass(IMBALANCE[i], AuxRebalance)])
def test_remixmatch_second_classifier_reads_unmixed_rows(imb):
    "ABC and CoSSL on ReMixMatch read the labeled images and the first strong view unmixed, and the weak view from the guess's pass, without gradient"
    def check(cb):
        f = cb.imb.features
        test_eq(f['labeled'], cb.feats_u['plain'])
        test_eq(f['strong'], cb.feats_u['unmixed'])
        assert f['labeled'].shape[0] == cb.n_l and f['weak'].shape[0] == cb.sizes_u['unmixed'] and not f['weak'].requires_grad
        test_eq(cb.imb.aux_logits['labeled'], cb.imb._head.aux(f['labeled']))
    _remixmatch_step(imb, check)

def test_remixmatch_refuses_corrections_of_hard_labels(digits):
    dls,u_dl = digits
    for i in sorted(set(IMBALANCE) - set(SOFT)):
        test_fail(lambda: ReMixMatch(u_dl, imb=make(i)), contains="ReMixMatch's are soft guesses")
    test_fail(lambda: ReMixMatch(u_dl, imb='darp'), contains='`imb` must be a long-tail correction')

def test_only_algorithms_with_pseudo_labels_take_it(digits):
    dls,u_dl = digits
    with pytest.raises(TypeError): MeanTeacher(u_dl, imb=make('debiaspl'))
    for cls in (Dash, DeFixMatch, UDA, CRMatch, SimMatch, CoMatch):   # FixMatch's subclasses whose own losses would leave its steps unused
        test_fail(lambda: cls(u_dl, imb=make('saw')), contains=f'`imb`: {cls.__name__} takes no long-tail correction; use one of adamatch, fixmatch')
    test_fail(lambda: FixMatch(u_dl, imb='debiaspl'), contains='`imb` must be a long-tail correction')
