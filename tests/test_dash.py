"Dash's ρ̂: the loss on held-out data at the end of the warm-up (the Learner's validation set, or `rho_init`), measured without touching BatchNorm statistics or gradients"
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.dash import *
import fastai_ssl.dash
from conftest import quiet_fit, ssl_cb, digits_learner

def _dash(**kwargs): return lambda u: Dash(u, flip=False, **kwargs)

def _valid_loss(learn, n=None):
    "The mean loss of `learn.model` in eval mode over (the first `n` batches of) `learn.dls.valid`, by hand"
    model,tot,cnt = learn.model,0.,0
    model.eval()
    with torch.no_grad():
        for i,(x,y) in enumerate(learn.dls.valid):
            if n is not None and i == n: break
            tot,cnt = tot + float(learn.loss_func(model(x), y))*len(y),cnt + len(y)
    model.train()
    return tot/cnt

class _Before(Callback):
    "Just before Dash's `before_batch` at the end of the warm-up: the validation loss by hand, the BatchNorm buffers, the gradients; starts counting forward passes"
    order = SSLCallback.order - 0.5
    def __init__(self): self.hand,self.calls,self.on = None,[],False
    def before_fit(self): self._hook = self.learn.model.register_forward_pre_hook(lambda m,x: self.calls.append(len(x[0])) if self.on else None)
    def after_fit(self): self._hook.remove()
    def before_batch(self):
        if not self.training or self.learn.dash.mask.rho_init is not None or self.pct_train < self.learn.dash.mask.warmup: return
        self.hand = _valid_loss(self.learn)
        self.bufs = {k: v.clone() for k,v in self.learn.model.state_dict().items()}
        self.grads = [None if p.grad is None else p.grad.clone() for p in self.learn.model.parameters()]
        self.on = True

class _After(Callback):
    "Just after Dash's `before_batch`: stops counting, and whether the pass left buffers, gradients and training modes as they were"
    order = SSLCallback.order + 0.5
    def before_batch(self):
        b = self.learn._before
        if not b.on: return
        b.on = False
        self.kept = all(torch.equal(v, self.learn.model.state_dict()[k]) for k,v in b.bufs.items()) and \
            all((g is None and p.grad is None) or (g is not None and torch.equal(g, p.grad)) for g,p in zip(b.grads, self.learn.model.parameters())) and \
            all(m.training for m in self.learn.model.modules())

def test_rho_hat_is_the_validation_loss_and_leaves_the_model_alone(digits):
    "ρ̂ is the mean validation loss of the model at the end of the warm-up, computed by hand; BatchNorm statistics, gradients and training mode stay as they were"
    learn = digits_learner(digits, _dash(warmup=0.3, period=0.1))
    before,after = _Before(),_After()
    quiet_fit(learn, 4, 1e-2, cbs=[before, after])
    cb = ssl_cb(learn)
    assert before.hand is not None and after.kept
    test_close(cb.mask.rho_init, before.hand, eps=1e-5)
    assert type(cb.mask.rho_init) is Tensor and cb.mask.rho_init.dtype == torch.float32 and cb.mask.rho_init.ndim == 0
    test_eq(before.calls, [512, 28])   # one pass over the 540 validation items, once a fit
    test_eq(cb.history.weight.tolist(), [0.]*4 + [1.]*8)

def test_rho_starts_high_and_decays(digits):
    "After a warm-up long enough for the model to fit its 50 labels, ρ̂ stands far above their loss, and ρ_t falls from it to the schedule's values"
    learn = digits_learner(digits, _dash(warmup=0.4, period=0.1))
    quiet_fit(learn, 6, 1e-2, one_cycle=True)
    cb,h = ssl_cb(learn),ssl_cb(learn).history
    after = h[h.weight > 0]
    rho_hat = cb.mask.rho_init.item()
    assert after.Lx.iloc[0]*3 < rho_hat, (after.Lx.iloc[0], rho_hat)   # the labeled loss: what ρ̂ used to be
    rho = after.rho.values
    assert rho[0] > 10*cb.mask.rho_min and (np.diff(rho) <= 1e-7).all() and rho[-1] < rho[0]/1.27**3, rho
    want = [max(1.0001*1.27**-int(((s-1)/len(h) - 0.4)/0.1 + 1e-9)*rho_hat, 0.05) for s in after.step]
    test_close(rho, want, eps=1e-5)

def _no_pass(*args, **kwargs): raise AssertionError('ρ̂ was measured')

def test_rho_init_given_skips_the_pass(digits, monkeypatch):
    "`rho_init` given: no validation pass, on a Learner without validation data too"
    monkeypatch.setattr(fastai_ssl.dash, '_held_out_loss', _no_pass)
    dls,u_dl = digits
    for d in (dls, DataLoaders(dls.train, dls.valid.new(dls.valid_ds.new_empty()))):
        learn = Learner(d, small_cnn(), cbs=Dash(u_dl, flip=False, rho_init=1.5))
        quiet_fit(learn, 1, 1e-2)
        cb = ssl_cb(learn)
        test_eq(cb.mask.rho_init, tensor(1.5))
        test_close(cb.history.rho[1:].tolist(), [max(1.0001*1.27**-int(((s-1)/3 - 0.002)/0.01 + 1e-9)*1.5, 0.05) for s in (2, 3)])

def test_rho_batches_bounds_the_pass(digits):
    "At most `rho_batches` validation batches are drawn (at random when the set has more), None draws all"
    dls,u_dl = digits
    dls = DataLoaders(dls.train, dls.valid.new(bs=16))   # 34 batches
    for n,calls in ((3, [16]*3), (None, [16]*33 + [12])):
        learn = Learner(dls, small_cnn(), cbs=[Dash(u_dl, flip=False, rho_batches=n), _Before(), _After()])
        quiet_fit(learn, 1, 1e-2)
        test_eq(learn._before.calls, calls)

def test_rho_hat_survives_save_load(digits, monkeypatch):
    "`learn.save` keeps ρ̂ and `learn.load` brings it back: the resumed run measures nothing"
    learn = quiet_fit(digits_learner(digits, _dash()), 1, 1e-2)
    rho = ssl_cb(learn).mask.rho_init
    learn.save('dash')
    monkeypatch.setattr(fastai_ssl.dash, '_held_out_loss', _no_pass)
    learn2 = digits_learner(digits, _dash(), path=learn.path).load('dash')
    test_eq(ssl_cb(learn2).mask.rho_init, rho)
    quiet_fit(learn2, 1, 1e-2)
    test_eq(ssl_cb(learn2).mask.rho_init, rho)
    assert all(math.isfinite(v) for v in learn2.recorder.values[-1])

def test_no_validation_data_names_rho_init(digits):
    "Without validation data or `rho_init`: one line naming `rho_init`, before any step, the Learner as it was"
    dls,u_dl = digits
    model = small_cnn()
    learn = Learner(DataLoaders(dls.train, dls.valid.new(dls.valid_ds.new_empty())), model, cbs=Dash(u_dl, flip=False))
    lf,w = learn.loss_func,[p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=re.escape('`rho_init`: Dash measures ρ̂ on the validation set')) as e: quiet_fit(learn, 1, 1e-2)
    msg = str(e.value).splitlines()[-1].strip()   # fastai puts a line naming the callback and event before it
    assert msg.startswith('`rho_init`: ') and 'pass `rho_init`' in msg
    assert learn.loss_func is lf and learn.model is model and ssl_cb(learn).step == 0
    assert all(torch.equal(a, p) for a,p in zip(w, model.parameters()))
    learn.dls = dls   # with validation data it trains
    quiet_fit(learn, 1, 1e-2)
    assert ssl_cb(learn).mask.rho_init is not None

def test_rho_hat_is_the_policys_state(digits):
    "ρ̂ lives on the policy (`cb.mask`), not on the callback: `learn.save` writes it among the parts' state"
    learn = quiet_fit(digits_learner(digits, _dash()), 1, 1e-2)
    cb = ssl_cb(learn)
    assert 'rho_init' not in type(cb).ssl_attrs and 'rho_init' not in cb.__dict__
    learn.save('dash')
    saved = torch.load(learn.path/'models'/'dash.ssl.pth', weights_only=True)['dash']
    assert 'rho_init' not in saved
    test_eq(saved['parts']['mask']['rho_init'], cb.mask.rho_init)

def test_old_checkpoint_with_rho_init_on_the_callback_loads(digits):
    "A checkpoint from before ρ̂ moved to the policy (`rho_init` on the callback, no `mask` part) loads; ρ̂ starts afresh and is measured again"
    learn = quiet_fit(digits_learner(digits, _dash()), 1, 1e-2)
    learn.save('old')
    f = learn.path/'models'/'old.ssl.pth'
    states = torch.load(f, weights_only=True)
    st = states['dash']
    st['rho_init'] = st['parts'].pop('mask')['rho_init']
    torch.save(states, f)
    learn2 = digits_learner(digits, _dash(), path=learn.path).load('old')
    cb = ssl_cb(learn2)
    assert cb.mask.rho_init is None and cb.step == 3
    quiet_fit(learn2, 1, 1e-2)
    assert cb.mask.rho_init is not None and all(math.isfinite(v) for v in learn2.recorder.values[-1])

class _Views(Callback):
    "Before the SSL callback's `after_loss`: each training step's progress and its weak and strong unlabeled logits"
    order = SSLCallback.order - 0.5
    def __init__(self): self.steps = []
    def after_loss(self):
        if self.training: self.steps.append((self.pct_train, *[ssl_cb(self.learn).pred_u[k].detach().float().clone() for k in ('weak', 'strong')]))

class _Logs:
    "A stand-in callback for the policy: its progress, and nothing logged"
    def __init__(self, progress): self.learn = SimpleNamespace(pct_train=progress)
    def log_stats(self, **stats): pass

def test_fixmatch_with_dash_threshold(digits, monkeypatch):
    "`FixMatch(u_dl, mask=DashThreshold())`: FixMatch's loss on the hard pseudo-labels, each weighted as the policy selects it (0 in the warm-up); ρ̂ measured once"
    n = []
    monkeypatch.setattr(fastai_ssl.dash, '_held_out_loss', lambda *a, f=fastai_ssl.dash._held_out_loss: n.append(1) or f(*a))
    views = _Views()
    learn = digits_learner(digits, lambda u: FixMatch(u, flip=False, mask=DashThreshold(warmup=0.3, period=0.1)))
    quiet_fit(learn, 4, 1e-2, cbs=views)
    cb,h = ssl_cb(learn),ssl_cb(learn).history
    pol = cb.mask
    test_eq(n, [1])
    test_eq(list(cb.metric_names[:4]), ['Lx','Lu','mask','rho'])
    test_eq(h['mask'][:4].tolist(), [0.]*4)   # the warm-up: 30% of 12 steps
    test_eq(h.weight.tolist(), [1.]*12)   # FixMatch's weight: the policy's zeros make the warm-up supervised
    test_close(h.rho[4:].tolist(), [max(1.0001*1.27**-int(((s-1)/12 - 0.3)/0.1 + 1e-9)*pol.rho_init.item(), 0.05) for s in h.step[4:]], eps=1e-5)
    for (p,weak,strong),lu in zip(views.steps, h.Lu):
        w = pol.select(weak, _Logs(p))[1]
        test_close(lu, masked_ce(strong, weak.argmax(1), w).item(), eps=1e-5)
    assert h['mask'][4:].min() > 0

def test_fixmatch_with_dash_threshold_needs_validation_data(digits):
    "Under FixMatch, no validation data and no `rho_init`: the first step stops with the error naming `rho_init`, before the weights change"
    dls,u_dl = digits
    model = small_cnn()
    learn = Learner(DataLoaders(dls.train, dls.valid.new(dls.valid_ds.new_empty())), model, cbs=FixMatch(u_dl, flip=False, mask=DashThreshold()))
    w = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=re.escape('`rho_init`: Dash measures ρ̂ on the validation set')): quiet_fit(learn, 1, 1e-2)
    assert all(torch.equal(a, p) for a,p in zip(w, model.parameters()))

@pytest.mark.parametrize('kwargs,msg', [(dict(rho_init=0.), '`rho_init` must be > 0'), (dict(rho_init=-1.), '`rho_init` must be > 0'),
                                        (dict(rho_init=float('nan')), '`rho_init` must be > 0'), (dict(rho_batches=0), '`rho_batches` must be an int >= 1'),
                                        (dict(rho_batches=2.5), '`rho_batches` must be an int >= 1')])
def test_bad_arguments(kwargs, msg):
    for make in (lambda: Dash([0], **kwargs), lambda: DashThreshold(**kwargs)):
        with pytest.raises(ValueError, match=re.escape(msg)) as e: make()
        assert '\n' not in str(e.value)

def _ddp_worker(rank, world, port, out):
    "One of two gloo processes training Dash; rank 0 writes every process's ρ̂ and its own validation loss at the end of the warm-up"
    import os, json
    from fastai.distributed import DistributedTrainer   # noqa: F401 (`distrib_ctx`)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world)
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2, val_bs=64, resident=False)
    learn = Learner(dls, small_cnn(), cbs=[Dash(u_dl, flip=False, warmup=0.3, period=0.1), _Before(), _After()])
    with learn.distrib_ctx(sync_bn=False, cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    res = [None]*world
    torch.distributed.all_gather_object(res, dict(rho=learn.dash.mask.rho_init.item(), hand=learn._before.hand))
    if rank == 0: Path(out).write_text(json.dumps(res))
    torch.distributed.destroy_process_group()

@pytest.mark.slow
def test_two_processes_hold_the_same_rho_hat(tmp_path):
    "Data-parallel training (2 CPU processes, gloo): each measures ρ̂ on the validation set and all hold the mean"
    pytest.importorskip('accelerate')
    import json, socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    out = tmp_path/'res.json'
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2)
    r = json.loads(out.read_text())
    assert r[0]['rho'] == r[1]['rho']
    test_close(r[0]['rho'], (r[0]['hand'] + r[1]['hand'])/2, eps=1e-5)
