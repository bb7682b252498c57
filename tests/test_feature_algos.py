"ReMixMatch, SimMatch, CoMatch, CRMatch: they beat supervised training on digits; heads reach the optimizer and the saved state, banks roll, export drops both"
import pickle, random
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.features import *
from fastai_ssl.align import DistAlign
from fastai_ssl.remixmatch import ReMixMatch
from fastai_ssl.simmatch import SimMatch
from fastai_ssl.comatch import CoMatch
from fastai_ssl.crmatch import CRMatch
from fastai_ssl.cli import train_digits
from conftest import quiet_fit, assert_beats_supervised, ssl_cb

ALGOS = dict(remixmatch=lambda u, **kw: ReMixMatch(u, flip=False, **kw), simmatch=lambda u, **kw: SimMatch(u, flip=False, **kw),
             comatch=lambda u, **kw: CoMatch(u, flip=False, **kw), crmatch=lambda u, **kw: CRMatch(u, flip=False, **kw))


# Measured on 2 shared CPU cores, 40 epochs = 120 steps, 5 labels per class, in this protocol (no weak augmentation of the labeled
# images on either side), seeds 0/1 (margin: their mean): supervised 0.841/0.807; SimMatch 0.872/0.880 (+0.052); CoMatch 0.941/0.911
# (+0.102); CRMatch 0.896/0.820 (+0.034); ReMixMatch in the digits setting below
# 0.950/0.922 (+0.112). With the paper's defaults ReMixMatch is below
# supervised on this budget (0.79/0.84/0.74 against 0.88/0.90/0.90, labeled images weakly augmented): its p_model EMA of 0.999 still
# weighs the untrained model's first batch 0.89 after 120 steps, and rotation prediction on strongly augmented 8x8 digits hurts.
BEAT = dict(remixmatch=lambda u: ReMixMatch(u, flip=False, lambda_rot=0, align=DistAlign('uniform', ema_p=0.9)),
            simmatch=ALGOS['simmatch'], comatch=ALGOS['comatch'], crmatch=ALGOS['crmatch'])
MARGINS = dict(remixmatch=0.08, simmatch=0.03, comatch=0.07, crmatch=0.02)

@pytest.mark.slow
@pytest.mark.parametrize('name', list(BEAT))
def test_beats_supervised(name, supervised): assert_beats_supervised(BEAT[name], supervised, MARGINS[name])

def _learn(digits, name, path=None, model=None, **kwargs):
    dls,u_dl = digits
    return Learner(dls, ifnone(model, small_cnn()), metrics=accuracy, path=path or Path(tempfile.mkdtemp()), cbs=ALGOS[name](u_dl, **kwargs))
def _opt_ids(learn): return {id(p) for g in learn.opt.param_lists for p in g}
def _heads(cb): return {k: v.detach().clone() for k,v in cb.heads.state_dict().items()}
algos = pytest.mark.parametrize('name', list(ALGOS))

@algos
def test_heads_trained_saved_loaded(name, digits, tmp_path):
    learn = _learn(digits, name, tmp_path)
    cb = ssl_cb(learn)
    before = _heads(cb)
    quiet_fit(learn, 2, 1e-2)   # 6 steps: SimMatch's labeled bank is full after 4
    assert cb.heads is not None and len(cb.heads) and set(_opt_ids(learn)) >= {id(p) for p in cb.heads.parameters()}
    assert any(not torch.equal(before[k], v) for k,v in cb.heads.state_dict().items())   # the Learner's optimizer trains them
    learn.save('ckpt', with_opt=True)
    learn2 = _learn(digits, name, tmp_path).load('ckpt', with_opt=True)
    cb2 = ssl_cb(learn2)
    for k,v in cb.heads.state_dict().items(): test_eq(cb2.heads.state_dict()[k], v)
    p,p2 = list(cb.heads.parameters())[-1],list(cb2.heads.parameters())[-1]
    test_eq(learn2.opt.state[p2]['grad_avg'], learn.opt.state[p]['grad_avg'])
    test_eq(cb2.step, cb.step)

def test_heads_join_vision_learner_groups(digits):
    dls,u_dl = digits
    learn = vision_learner(dls, resnet18, pretrained=False, n_in=1, cbs=SimMatch(u_dl, flip=False))
    cb = learn.sim_match
    test_eq(cb.heads['proj'][0].in_features, 512)
    learn.freeze()
    assert len(learn.opt.param_lists) > 1
    last = {id(p) for p in learn.opt.param_lists[-1]}
    assert all(id(p) in last and p.requires_grad for p in cb.heads.parameters())
    quiet_fit(learn, 1, 1e-3)
    assert math.isfinite(learn.recorder.values[-1][0])

def test_heads_added_to_an_existing_optimizer(digits):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), metrics=accuracy)
    learn.create_opt()
    cb = CRMatch(u_dl, flip=False)
    quiet_fit(learn, 1, 1e-2, cbs=cb)
    assert _opt_ids(learn) >= {id(p) for p in cb.heads.parameters()}

def _labels(ds): return tensor([int(ds[i][1]) for i in range(len(ds))])

def test_simmatch_bank_one_row_per_labeled_item(digits, tmp_path):
    "After a pass over the labeled set: one row per item, with its label (class-balanced counts), unit embeddings; saved and loaded equal"
    dls,u_dl = digits
    one_pass = DataLoaders(with_steps(dls.train, 4), dls.valid)   # 4 steps of 16 draw every one of the 50 items
    learn = Learner(one_pass, small_cnn(), metrics=accuracy, path=tmp_path, cbs=SimMatch(u_dl, flip=False))
    cb = learn.sim_match
    quiet_fit(learn, 1, 1e-2)
    z,y,filled = cb.bank.get()
    assert filled.all() and cb.bank.ready
    test_eq(y, _labels(dls.train_ds))
    test_eq(y.bincount().tolist(), [5]*10)
    test_close(z.norm(dim=1), 1.)
    learn.save('ckpt')
    cb2 = Learner(one_pass, small_cnn(), path=tmp_path, cbs=SimMatch(u_dl, flip=False)).load('ckpt').sim_match
    for a,b in zip(cb2.bank.get(), cb.bank.get()): test_eq(a, b)
    test_eq((cb2.bank.seen, cb2.bank.ready), (cb.bank.seen, True))
    test_eq(cb2.align.p_model, cb.align.p_model)

class RowLog(Callback):
    "Each step's labeled positions and the SimMatch bank after the step"
    order = SSLCallback.order + 1
    def before_fit(self): self.steps = []
    def after_loss(self):
        if self.training: self.steps.append((self.learn.sim_match.labeled_index(), self.learn.sim_match.bank.get()))

def test_simmatch_writes_each_items_own_row(digits):
    "A step writes its labeled items' embeddings into their own rows, with their labels, and leaves the other rows alone"
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), cbs=[SimMatch(u_dl, flip=False), RowLog()])
    quiet_fit(learn, 2)
    (_,(z0,_,f0)),(idx,(z,y,filled)) = learn.row_log.steps[3:5]
    test_eq(y[idx], _labels(dls.train_ds)[idx])
    assert filled[idx].all() and f0[idx].any()                  # some of them written in the first epoch
    other = torch.ones(50, dtype=torch.bool); other[idx] = False
    test_eq(z[other], z0[other])
    assert not torch.allclose(z[idx], z0[idx])

def test_simmatch_bank_is_a_queue_without_positions(digits):
    "Labeled batches from a plain PyTorch loader give no positions: the bank is a queue of the last labeled embeddings, with a warning"
    dls,u_dl = digits
    items = lambda dl: [(x, y) for xb,yb in dl.new(shuffle=False, drop_last=False) for x,y in zip(xb, yb)]   # as the fastai loader gives them
    plain = DataLoaders(torch.utils.data.DataLoader(items(dls.train), batch_size=16, shuffle=True, drop_last=True),
                        torch.utils.data.DataLoader(items(dls.valid), batch_size=64))
    learn = Learner(plain, small_cnn(), loss_func=CrossEntropyLossFlat(), cbs=SimMatch(u_dl, flip=False))
    with pytest.warns(UserWarning, match='gives no item positions'): quiet_fit(learn, 2)
    z,y,filled = learn.sim_match.bank.get()
    test_eq((learn.sim_match.bank.seen, learn.sim_match.bank.ptr, int(filled.sum())), (6*16, 6*16 % 50, 50))

def test_comatch_memory_and_smoothing_start(digits, monkeypatch):
    "CoMatch's memory holds `bank_items` items; smoothing starts once more items than it holds were written (USB's `it > queue_batch`)"
    import fastai_ssl.comatch as m
    smoothed,smooth = [],m.memory_smooth
    monkeypatch.setattr(m, 'memory_smooth', lambda *a: smoothed.append(learn.co_match.step) or smooth(*a))
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), cbs=CoMatch(u_dl, flip=False, bank_items=2*48))   # 16 labeled + 32 unlabeled items a step
    quiet_fit(learn, 2)
    cb = learn.co_match
    test_eq((cb.bank.size, cb.bank.n, cb.bank.seen), (96, 96, 6*48))
    test_eq(smoothed[0], 3)   # steps 0 and 1 fill it, step 2 writes over its oldest items, step 3 smooths
    test_eq(CoMatch(u_dl).proj, 64)

@algos
def test_export_drops_heads_and_banks(name, digits, tmp_path):
    learn = _learn(digits, name, tmp_path)
    quiet_fit(learn, 1, 1e-2)
    model = learn.model
    learn.export('x.pkl')
    assert all(not m._forward_hooks for m in model.modules())
    cb = pickle.loads(pickle.dumps(ssl_cb(learn)))
    test_eq((cb.heads, cb.u_dl), (None, None))
    for n in cb.bank_names: test_eq(getattr(cb, n).seen, 0)
    learn2 = load_learner(tmp_path/'x.pkl')
    test_eq(sum(p.numel() for p in learn2.model.parameters()), sum(p.numel() for p in model.parameters()))
    test_eq(len(learn2.get_preds(dl=learn.dls.valid)[0]), len(learn.dls.valid_ds))

class Reseed(Callback):
    order = -20
    def before_epoch(self):
        set_seed(100 + self.epoch)
        for dl in (self.dls.train, ssl_cb(self.learn).u_dl): dl.rng = random.Random(self.epoch)

class StopAfter(Callback):
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch == self.n - 1: raise CancelFitException()

@algos
def test_resume_keeps_heads_and_banks(name, tmp_path):
    "Stopped after 2 of 4 epochs, saved and resumed in a new Learner: the same model, heads, banks and alignment state as 4 epochs straight"
    def mk(seed=0):
        set_seed(seed)
        dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
        return Learner(dls, small_cnn(), path=tmp_path, cbs=[ALGOS[name](u_dl), Reseed()])
    full = quiet_fit(mk(), 4, 3e-3, one_cycle=True)
    part = quiet_fit(mk(), 4, 3e-3, one_cycle=True, cbs=StopAfter(2))
    part.save('half', with_opt=True)
    resumed = quiet_fit(mk(seed=1).load('half', with_opt=True), 4, 3e-3, one_cycle=True, start_epoch=2)
    a,b = ssl_cb(resumed),ssl_cb(full)
    for x,y in zip(resumed.model.parameters(), full.model.parameters()): assert torch.allclose(x, y, atol=1e-5)
    for k,v in b.heads.state_dict().items(): assert torch.allclose(a.heads.state_dict()[k], v, atol=1e-5), k
    for n in a.bank_names:
        for x,y in zip(getattr(a, n).get(), getattr(b, n).get()): assert torch.allclose(x.float(), y.float(), atol=1e-5)
    if getattr(b, 'align', None) is not None: assert torch.allclose(a.align.p_model, b.align.p_model, atol=1e-6)

class Boom(Callback):
    def after_pred(self):
        if self.training: raise KeyboardInterrupt()

@algos
def test_no_hook_left_after_an_exception(name, digits):
    learn = _learn(digits, name)
    lf,model = learn.loss_func,learn.model
    with pytest.raises(KeyboardInterrupt): quiet_fit(learn, 1, cbs=Boom())
    test_is(learn.loss_func, lf)
    quiet_fit(learn, 1)
    assert all(not m._forward_hooks for m in model.modules())
    assert math.isfinite(learn.recorder.values[-1][0])

@algos
def test_bf16_autocast_finite(name, digits):
    learn = _learn(digits, name)
    with torch.autocast('cpu', dtype=torch.bfloat16): quiet_fit(learn, 2, 1e-2)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1]), learn.recorder.values

def test_lr_find_restores_heads(digits):
    learn = _learn(digits, 'comatch')
    cb = ssl_cb(learn)
    before = _heads(cb)
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=4, show_plot=False)
    for k,v in before.items(): test_eq(cb.heads.state_dict()[k], v)

class _Dot(Module):
    "A classifier that is not an `nn.Linear`"
    def __init__(self, ni, no): self.w = nn.Parameter(torch.randn(ni, no)/ni**0.5)
    def forward(self, x): return x @ self.w

def test_models_without_linear_pass_feats(digits):
    body = small_cnn()[:-1]
    model = nn.Sequential(*body, _Dot(128, 10))
    with pytest.raises(ValueError, match='`feats`: the model has no `nn.Linear`'): _learn(digits, 'simmatch', model=model)
    learn = _learn(digits, 'simmatch', model=model, feats=model[-1])
    quiet_fit(learn, 1, 1e-2)
    test_eq(learn.sim_match.heads['proj'][0].in_features, 128)
    with pytest.raises(ValueError, match="no module named 'fc'"): _learn(digits, 'crmatch', feats='fc')

def test_bad_arguments():
    u = [0]
    for f,msg in [(lambda: ReMixMatch(u, lambda_kl=-1), '`lambda_kl`'), (lambda: ReMixMatch(u, K=0), '`K`'),
                  (lambda: SimMatch(u, alpha=2), '`alpha`'), (lambda: SimMatch(u, bank_ema=1.), '`bank_ema`'),
                  (lambda: CoMatch(u, bank_items=0), '`bank_items`'), (lambda: CoMatch(u, contrast_thresh=-1), '`contrast_thresh`'),
                  (lambda: CRMatch(u, lambda_rot=-1), '`lambda_rot`'), (lambda: CRMatch(u, feats=1), '`feats`')]:
        with pytest.raises(ValueError, match=re.escape(msg)) as e: f()
        assert '\n' not in str(e.value)
