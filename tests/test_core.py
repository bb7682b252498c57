"The SSL callback rides a standard Learner without changing what the Learner owns"
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from conftest import quiet_fit

class Boom(Callback):
    "Raises in the middle of the first training epoch"
    def __init__(self, exc=RuntimeError): self.exc = exc
    def after_loss(self):
        if self.training and self.iter == 1: raise self.exc('boom')

def test_loss_func_unchanged_after_fit_exception_and_lr_find(digits, tmp_path):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=FixMatch(u_dl, flip=False), path=tmp_path)
    lf = learn.loss_func
    quiet_fit(learn, 1, 1e-3)
    assert learn.loss_func is lf
    with pytest.raises(RuntimeError, match='boom'):
        quiet_fit(learn, 1, 1e-3, cbs=Boom())
    assert learn.loss_func is lf
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=12, show_plot=False)
    assert learn.loss_func is lf
    quiet_fit(learn, 1, 1e-3)    # a new fit works after all of it
    assert math.isfinite(learn.recorder.values[-1][0])

def test_keyboard_interrupt_leaves_learner_usable(digits):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), cbs=FixMatch(u_dl, flip=False))
    lf = learn.loss_func
    with pytest.raises(KeyboardInterrupt): quiet_fit(learn, 1, cbs=Boom(KeyboardInterrupt))
    assert learn.loss_func is lf
    quiet_fit(learn, 1)

class Seen(Callback):
    "Records, in training, the sizes of pred, targets and model input after the SSL callback"
    order = SSLCallback.order + 1
    def before_fit(self): self.sizes = []
    def after_loss(self):
        if self.training: self.sizes.append((len(self.pred), len(self.y), len(self.learn.xb[0])))

def test_metrics_and_loss_see_labeled_logits_only():
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2, drop_last=False)    # 50 labeled: 16, 16, 16, 2
    seen = []
    def n_items(inp, targ):
        seen.append((len(inp), len(targ)))
        return tensor(0.)
    learn = Learner(dls, small_cnn(), metrics=AvgMetric(n_items), cbs=[FixMatch(u_dl, flip=False), Seen()])
    learn.recorder.train_metrics = True
    quiet_fit(learn, 1)
    assert learn.seen.sizes == [(n, n, n + 2*32) for n in (16, 16, 16, 2)]     # labeled + weak + strong views
    assert seen and all(p == t for p,t in seen)

def test_validation_untouched(digits):
    dls,u_dl = digits
    model = small_cnn()
    quiet_fit(Learner(dls, model, cbs=FixMatch(u_dl, flip=False)), 1, 1e-3)
    with_cb = Learner(dls, model, metrics=accuracy, cbs=FixMatch(u_dl, flip=False))
    without = Learner(dls, model, metrics=accuracy)
    r1,r2 = with_cb.validate(),without.validate()
    assert len(r1) == len(r2) == 2
    assert r1[0] == pytest.approx(r2[0]) and r1[1] == pytest.approx(r2[1])
    p1,p2 = with_cb.get_preds()[0],without.get_preds()[0]
    assert torch.allclose(p1, p2)

class CountingLoader:
    "Wraps a loader, counting the passes started over it"
    def __init__(self, dl): self.dl,self.passes = dl,0
    def __len__(self): return len(self.dl)
    def __iter__(self):
        self.passes += 1
        return iter(self.dl)

@pytest.mark.parametrize("n_batches,passes", [(1, 6), (4, 2), (50, 2)])   # each epoch starts a fresh pass
def test_unlabeled_loader_shorter_or_longer(n_batches, passes):
    set_seed(0)
    dls,_ = digits_dls(n_per_class=5, bs=16, mu=2)
    xs = torch.rand(n_batches*32, 1, 8, 8)
    u = CountingLoader(TfmdDL([(x,) for x in xs], bs=32, drop_last=True))
    learn = Learner(dls, small_cnn(), cbs=FixMatch(u, flip=False))
    quiet_fit(learn, 2)                       # 2 epochs of 3 steps: 6 unlabeled batches
    assert u.passes == passes

def test_ramp_and_weight_override(digits):
    dls,u_dl = digits
    weights = []
    class Ramped(FixMatch):
        def unlabeled_weight(self, progress):
            w = super().unlabeled_weight(progress)
            weights.append((progress, w))
            return w
    quiet_fit(Learner(dls, small_cnn(), cbs=Ramped(u_dl, lambda_u=2., ramp=LinearRamp(0.5), flip=False)), 2)
    assert weights[0] == (0., 0.)
    assert all(w == pytest.approx(2*min(p/0.5, 1)) for p,w in weights)
    assert weights[-1][1] == 2.

@pytest.mark.parametrize('make,msg', [
    (lambda u: FixMatch(u, thresh=0.), '`thresh` must be in (0, 1]'),
    (lambda u: FixMatch(u, thresh=1.01), '`thresh` must be in (0, 1]'),
    (lambda u: FixMatch(u, lambda_u=-1.), '`lambda_u` must be >= 0'),
    (lambda u: FixMatch(u, T=0.), '`T` must be > 0'),
])
def test_bad_arguments(digits, make, msg):
    with pytest.raises(ValueError) as e: make(digits[1])
    assert msg in str(e.value)

@pytest.mark.parametrize('u,msg', [
    ([], '`u_dl` is empty'),
    ([[1, 2, 3]], 'must yield image tensors'),
    ([(torch.rand(32, 3, 8, 8),)], 'shape (3, 8, 8)'),
    ([(torch.rand(32, 1, 8, 8).double(),)], 'torch.float64 images'),
    ([(torch.rand(32, 1, 8, 8),)*3], 'takes 1 or 2'),
])
def test_bad_unlabeled_loader(digits, u, msg):
    dls,_ = digits
    learn = Learner(dls, small_cnn(), cbs=FixMatch(u))
    lf,w = learn.loss_func,[p.clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError) as e: quiet_fit(learn, 1)
    assert msg in str(e.value)
    assert learn.loss_func is lf
    assert all(torch.equal(a, b) for a,b in zip(w, learn.model.parameters()))   # no step was taken

def test_export_holds_no_unlabeled_data(digits, tmp_path):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=FixMatch(u_dl, flip=False), path=tmp_path)
    quiet_fit(learn, 1)
    learn.export('model.pkl')
    assert learn.fix_match.u_dl is u_dl                          # the live Learner keeps its data
    loaded = load_learner(tmp_path/'model.pkl')
    assert loaded.fix_match.u_dl is None and loaded.fix_match.unlabeled is None
    img = PILImageBW.create(digits_arrays()[2][0])
    pred,_,probs = loaded.predict(img)
    assert probs.shape == (10,)
    loaded.dls = dls
    with loaded.no_bar(): assert len(loaded.validate()) == 2      # validation needs no unlabeled data
    with pytest.raises(ValueError, match='`u_dl` is dropped by `export`'): quiet_fit(loaded, 1)

def test_recorder_columns(digits):
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), metrics=accuracy, cbs=FixMatch(u_dl, flip=False)), 2)
    names = learn.recorder.metric_names
    assert list(names) == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'Lx', 'Lu', 'mask', 'pl_acc', 'time']
    assert all(len(v) == len(names) - 2 for v in learn.recorder.values)
    lx,lu,mask,pl = learn.recorder.values[-1][3:]
    assert lx > 0 and lu >= 0 and 0 <= mask <= 1 and 0 <= pl <= 1
