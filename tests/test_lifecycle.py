"A callback belongs to one Learner; nothing it puts on a Learner outlives an interruption; history survives inference; export records the input shape"
import pickle, random
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.learner import input_shape
from fastai_ssl.simmatch import SimMatch
from conftest import quiet_fit, ssl_cb, write_pngs

def _cbs(learn): return sorted(type(c).__name__ for c in learn.cbs)   # `no_bar` puts the progress bar back last
def _weights(model): return {k: v.detach().clone() for k,v in model.state_dict().items()}
def _same(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
def _no_hooks(model): return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
def _narrow(n_feats=32):
    "A model whose features (the input of its last `nn.Linear`) are `n_feats` wide, not `small_cnn`'s 128"
    return nn.Sequential(ConvLayer(1, 16), nn.AdaptiveAvgPool2d(2), Flatten(), nn.Linear(64, n_feats), nn.ReLU(), nn.Linear(n_feats, 10))

# ---- A callback belongs to one Learner at a time ----

def test_callback_of_another_learner_refused(digits):
    "`Learner(cbs=cb)`, `add_cb(cb)` and `fit(cbs=cb)` on a second Learner are refused; the first keeps the callback and trains with it"
    dls,u_dl = digits
    cb = FixMatch(u_dl, flip=False)
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=cb)
    other = Learner(dls, small_cnn(), metrics=accuracy)
    cbs,w = _cbs(other),_weights(other.model)
    for attempt in (lambda: Learner(dls, small_cnn(), cbs=cb), lambda: other.add_cb(cb), lambda: quiet_fit(other, 1, cbs=cb)):
        with pytest.raises(ValueError, match=r"^`cbs`: this FixMatch is in another Learner's `cbs`.*make one `FixMatch\(u_dl\)` per Learner, or `learn.remove_cb\(cb\)`"):
            attempt()
    assert cb.learn is learn and any(c is cb for c in learn.cbs) and learn.fix_match is cb
    assert _cbs(other) == cbs and not hasattr(other, 'fix_match') and _same(_weights(other.model), w)
    quiet_fit(learn, 1)
    names = learn.recorder.metric_names
    assert names.count('Lx') == names.count('Lu') == 1 and cb.step == 3

def test_two_ssl_callbacks_refused(digits):
    dls,u_dl = digits
    lf = CrossEntropyLossFlat()
    with pytest.raises(ValueError, match=r"^`cbs`: this Learner already has an SSL callback \(FixMatch\).*`learn.remove_cb\(learn.fix_match\)` first"):
        Learner(dls, small_cnn(), loss_func=lf, cbs=[FixMatch(u_dl), MixMatch(u_dl)])
    learn = Learner(dls, small_cnn(), loss_func=lf, cbs=FixMatch(u_dl, flip=False))
    cbs = _cbs(learn)
    for attempt in (lambda: learn.add_cb(MixMatch(u_dl)), lambda: quiet_fit(learn, 1, cbs=FixMatch(u_dl))):
        with pytest.raises(ValueError, match=r"already has an SSL callback \(FixMatch\) and takes one"): attempt()
    assert _cbs(learn) == cbs and learn.loss_func is lf
    quiet_fit(learn, 1)
    assert learn.recorder.metric_names.count('Lu') == 1

def test_same_callback_twice_refused(digits):
    dls,u_dl = digits
    cb = FixMatch(u_dl, flip=False)
    learn = Learner(dls, small_cnn(), cbs=cb)
    cbs = _cbs(learn)
    for attempt in (lambda: learn.add_cb(cb), lambda: quiet_fit(learn, 1, cbs=cb)):
        with pytest.raises(ValueError, match=r"^`cbs`: this FixMatch is already in this Learner's `cbs`: add it once"): attempt()
    assert _cbs(learn) == cbs and cb.learn is learn and learn.fix_match is cb   # `fit(cbs=cb)` refused: the callback was not removed afterwards
    quiet_fit(learn, 1)
    assert cb.step == 3

def test_remove_add_back_and_fit_cbs_keep_state(digits):
    "`remove_cb` then `add_cb` on the same Learner, and a callback given to `fit(cbs=...)` twice, keep their step count and teacher"
    dls,u_dl = digits
    cb = FixMatch(u_dl, flip=False, ema=0.9)
    learn = quiet_fit(Learner(dls, small_cnn(), cbs=cb), 1)
    teacher = cb.teacher
    learn.remove_cb(cb)
    assert cb.learn is None and not any(isinstance(c, SSLCallback) for c in learn.cbs)
    learn.add_cb(cb)
    assert cb.step == 3 and cb.teacher is teacher
    quiet_fit(learn, 1)
    assert cb.step == 6
    plain = Learner(dls, small_cnn())
    cb2 = FixMatch(u_dl, flip=False)
    for n in (3, 6):
        quiet_fit(plain, 1, cbs=cb2)
        assert cb2.step == n and cb2.learn is None and not any(isinstance(c, SSLCallback) for c in plain.cbs)
    assert 'Lu' in plain.recorder.metric_names

def test_moved_callback_starts_afresh_with_heads_for_the_new_width(digits):
    "Removed from one Learner and added to another, a SimMatch starts afresh: heads for the new model's 32-wide features, an empty bank, step 0"
    dls,u_dl = digits
    cb = SimMatch(u_dl, flip=False)
    first_learn = quiet_fit(Learner(dls, small_cnn(), cbs=cb), 1)
    old_heads = cb.heads
    assert old_heads["proj"][0].in_features == 128 and cb.bank.seen > 0
    first_learn.remove_cb(cb)
    learn = Learner(dls, _narrow(), metrics=accuracy, cbs=cb)
    assert cb.step == 0 and cb.heads["proj"][0].in_features == 32 and cb.bank.seen == 0
    quiet_fit(learn, 1)
    assert cb.step == 3 and math.isfinite(learn.recorder.values[-1][0])
    opt_ids = {id(p) for g in learn.opt.param_lists for p in g}
    assert all(id(p) in opt_ids for p in cb.heads.parameters())
    first_learn.create_opt()   # the first Learner no longer trains the heads that went with the callback
    first_ids = {id(p) for g in first_learn.opt.param_lists for p in g}
    assert not any(id(p) in first_ids for p in cb.heads.parameters())
    quiet_fit(first_learn, 1)   # trains on, supervised

def test_new_model_of_another_width_rebuilds_heads(digits):
    "`learn.model` replaced by one with narrower features: the next fit makes new heads that the optimizer trains"
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), cbs=SimMatch(u_dl, flip=False)), 1)
    cb = ssl_cb(learn)
    learn.model = _narrow()
    quiet_fit(learn, 1, reset_opt=True)
    assert cb.heads['proj'][0].in_features == 32 and math.isfinite(learn.recorder.values[-1][0])
    w = _weights(cb.heads)
    quiet_fit(learn, 1)
    assert not _same(w, _weights(cb.heads))   # trained

def test_saved_heads_that_do_not_fit_refused(digits, tmp_path):
    "A checkpoint whose heads do not fit this callback's is refused before the model is loaded: the Learner is left as it was"
    dls,u_dl = digits
    quiet_fit(Learner(dls, small_cnn(), path=tmp_path, cbs=SimMatch(u_dl, flip=False)), 1).save('ckpt')
    learn = Learner(dls, small_cnn(), path=tmp_path, cbs=SimMatch(u_dl, flip=False, proj=64))
    w,heads = _weights(learn.model),_weights(ssl_cb(learn).heads)
    with pytest.raises(ValueError, match=r"^`file`: its SimMatch heads do not fit this callback's.*load it into a Learner with the model, `feats` and arguments it was saved with"):
        learn.load('ckpt')
    assert _same(_weights(learn.model), w) and _same(_weights(ssl_cb(learn).heads), heads) and ssl_cb(learn).step == 0

def test_export_load_learner_and_fit_after(digits, tmp_path):
    "`export` and `load_learner` keep one callback per Learner: the exported one's callback is its own, the original still trains"
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), metrics=accuracy, path=tmp_path, cbs=SimMatch(u_dl, flip=False)), 1)
    cb = ssl_cb(learn)
    learn.export('x.pkl')
    loaded = load_learner(tmp_path/'x.pkl')
    lcb = ssl_cb(loaded)
    assert lcb is not cb and lcb.learn is loaded and cb.learn is learn and len([c for c in loaded.cbs if isinstance(c, SSLCallback)]) == 1
    assert _same(_weights(loaded.model), _weights(learn.model)) and _no_hooks(loaded.model)
    assert len(loaded.get_preds(dl=dls.valid)[0]) == len(dls.valid_ds)
    quiet_fit(learn, 1)
    assert cb.step == 6

# ---- Nothing is left behind by an interruption ----

class Trip:
    "Counts forward calls while armed and raises `exc` at the `n`th; the teacher's copy of the model shares it"
    def __init__(self): self.exc,self.n,self.calls = None,0,0
    def arm(self, exc, n=1): self.exc,self.n,self.calls = exc,n,0
    def __deepcopy__(self, memo): return self
    def __call__(self):
        if self.exc is None: return
        self.calls += 1
        if self.calls == self.n:
            exc,self.exc = self.exc,None
            raise exc('tripped in forward')

class Tripwire(nn.Module):
    "`model`, whose forward raises when its `trip` says so, before any of its modules runs"
    def __init__(self, model, trip): super().__init__(); self.model,self.trip = model,trip
    def forward(self, x):
        self.trip()
        return self.model(x)

class ArmAt(Callback):
    "Arms `trip` at the start of training (`before_train`) or of validation (`before_validate`) of the first epoch"
    order = -5
    def __init__(self, trip, exc, phase, n=1): store_attr()
    def __call__(self, event_name):
        if event_name == f'before_{self.phase}' and self.epoch == 0: self.trip.arm(self.exc, self.n)
        super().__call__(event_name)

def _bns(model): return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

def _interrupted(make_cb, exc, phase, n, tmp_path):
    "A Learner whose model raises `exc` at its `n`th forward call of `phase` in the first epoch, and the checks that nothing was left behind"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2)
    trip = Trip()
    model = Tripwire(small_cnn(), trip)
    learn = Learner(dls, model, metrics=accuracy, path=tmp_path, cbs=make_cb(u_dl))
    lf,cbs = learn.loss_func,_cbs(learn)
    with pytest.raises(exc, match='tripped in forward'): quiet_fit(learn, 1, cbs=ArmAt(trip, exc, phase, n))
    assert learn.model is model and learn.loss_func is lf and _cbs(learn) == cbs
    assert ssl_cb(learn).unlabeled.stream.it is None and ssl_cb(learn).pred_u is None   # the interrupted unlabeled pass (and a loader's workers) let go
    assert _no_hooks(model) and _no_hooks(ssl_cb(learn).teacher.model if ssl_cb(learn).teacher else model)
    bns = _bns(model)
    assert all(m.track_running_stats for m in bns) and len({m.training for m in bns}) == 1   # no BatchNorm left frozen or in another mode
    w = _weights(model)
    learn.export('x.pkl')
    with open(tmp_path/'x.pkl', 'rb') as f: assert b'FeatureHook' not in f.read()
    loaded = load_learner(tmp_path/'x.pkl')
    assert _no_hooks(loaded.model) and _same(_weights(loaded.model), w)
    quiet_fit(learn, 1)
    assert math.isfinite(learn.recorder.values[-1][0]) and learn.model is model and _no_hooks(model)
    return learn

@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize('phase,n', [('train', 2), ('validate', 1)])
def test_interrupted_forward_fixmatch_with_teacher(exc, phase, n, tmp_path):
    "FixMatch validating with its EMA teacher: an exception in the forward pass of training or validation leaves the student in `learn.model`"
    _interrupted(lambda u: FixMatch(u, flip=False, ema=0.9, eval_teacher=True), exc, phase, n, tmp_path)

@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize('phase,n', [('train', 2), ('validate', 1)])
def test_interrupted_forward_simmatch_leaves_no_hook(exc, phase, n, tmp_path):
    "SimMatch's feature hook, armed for the main pass, is gone after an exception in that pass: `export` pickles no hook"
    _interrupted(lambda u: SimMatch(u, flip=False, ema=0.9, eval_teacher=True), exc, phase, n, tmp_path)

@pytest.mark.parametrize('how', ['validate', 'get_preds'])
def test_interrupted_inference_restores_the_student(how, digits):
    "An exception in the teacher's forward pass during `validate` or `get_preds(inner=True)` leaves the student in `learn.model`"
    dls,u_dl = digits
    trip = Trip()
    model = Tripwire(small_cnn(), trip)
    learn = quiet_fit(Learner(dls, model, cbs=FixMatch(u_dl, flip=False, ema=0.9, eval_teacher=True)), 1)
    trip.arm(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        learn.validate() if how == 'validate' else learn.get_preds(inner=True)
    assert learn.model is model and _no_hooks(model)
    assert len(learn.get_preds()[0]) == len(dls.valid_ds)

class CancelAt(Callback):
    "Raises fastai's `exc` at `event` of the first epoch, after the SSL callback ran there"
    order = SSLCallback.order + 1
    def __init__(self, exc, event): store_attr()
    def __call__(self, event_name):
        if event_name == self.event and self.epoch == 0 and (self.event != 'before_batch' or self.training): raise self.exc()
        super().__call__(event_name)

@pytest.mark.parametrize('exc,event', [(CancelBatchException, 'before_batch'), (CancelValidException, 'before_validate'),
                                       (CancelFitException, 'before_batch')])
def test_cancel_undoes_hook_and_teacher(exc, event, digits):
    "A `Cancel*Exception` after the hook was armed, or after the teacher took the model's place: both undone, training goes on"
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), cbs=SimMatch(u_dl, flip=False, ema=0.9, eval_teacher=True))
    model = learn.model
    quiet_fit(learn, 2, cbs=CancelAt(exc, event))
    assert learn.model is model and _no_hooks(model) and ssl_cb(learn).feats_l is None

# ---- Per-step history belongs to the last fit ----

@pytest.mark.parametrize('op', ['validate', 'get_preds', 'predict', 'show_results'])
def test_history_survives_inference(op, digits):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), metrics=accuracy, cbs=FixMatch(u_dl, flip=False)), 2)
    cb = ssl_cb(learn)
    h = cb.history.copy()
    assert len(h) == 6
    with learn.no_bar():
        if op == 'validate': learn.validate()
        elif op == 'get_preds': learn.get_preds()
        elif op == 'predict': learn.predict(dls.valid_ds.items[0])
        else: learn.show_results(max_n=2)
    plt.close('all')
    pd.testing.assert_frame_equal(cb.history, h)
    plt.close(cb.plot(return_fig=True))

def test_history_is_the_last_fits(digits):
    "Each fit starts a new history; `fine_tune` runs two fits, so it keeps the second (the unfrozen epochs), its steps counted on from the first"
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), cbs=FixMatch(u_dl, flip=False)), 1)
    cb = ssl_cb(learn)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(2, freeze_epochs=1)
    h = cb.history
    assert list(h.epoch.unique()) == [0, 1] and list(h.step) == list(range(7, 13)) and cb.step == 12

# ---- The shape of the training items, recorded at export ----

def test_input_shape_digits_export(digits, tmp_path):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), path=tmp_path, cbs=FixMatch(u_dl, flip=False))
    assert getattr(dls.train, 'resident', False)   # read from the items kept on the device
    state = random.getstate(),torch.random.get_rng_state()
    assert input_shape(learn) == (1, 8, 8)
    assert random.getstate() == state[0] and torch.equal(torch.random.get_rng_state(), state[1])
    learn.export('x.pkl')
    assert '_input_shape' not in learn.__dict__   # the live Learner keeps reading its loaders
    loaded = load_learner(tmp_path/'x.pkl')
    assert input_shape(loaded) == (1, 8, 8) and loaded._input_shape == (1, 8, 8) and not len(loaded.dls.train_ds)
    loaded.export('y.pkl')   # exported again, from a Learner without items: the recorded shape goes along
    assert input_shape(load_learner(tmp_path/'y.pkl')) == (1, 8, 8)

def test_input_shape_folder_resize(tmp_path):
    "A folder of RGB PNGs of several sizes, `Resize(32)`: (3, 32, 32), before and after `export` and `load_learner`"
    rng = np.random.default_rng(0)
    for c in ('a', 'b'): write_pngs(tmp_path/'data'/c, 6, lambda i: (20 + 3*i, 40 - i, 3), rng)
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                    splitter=RandomSplitter(0.25, seed=0), item_tfms=Resize(32)).dataloaders(tmp_path/'data', bs=4, num_workers=0)
    learn = Learner(dls, small_cnn(n_in=3, n_out=2), path=tmp_path)
    assert input_shape(learn) == (3, 32, 32)
    learn.export('f.pkl')
    assert input_shape(load_learner(tmp_path/'f.pkl')) == (3, 32, 32)
    assert input_shape(Learner(dls.new_empty(), small_cnn(), loss_func=CrossEntropyLossFlat())) is None   # no items, nothing recorded

def test_validate_before_any_fit(digits):
    "`validate` on a new Learner with heads (it runs `before_fit` without an optimizer), then `fit`: both work, and the history is the fit's"
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=SimMatch(u_dl, flip=False))
    lf = learn.loss_func
    assert len(learn.validate()) == 2 and learn.opt is None and len(ssl_cb(learn).history) == 0
    quiet_fit(learn, 1)
    opt_ids = {id(p) for g in learn.opt.param_lists for p in g}
    assert all(id(p) in opt_ids for p in ssl_cb(learn).heads.parameters()) and len(ssl_cb(learn).history) == 3 and learn.loss_func is lf

def test_labeled_dataloaders_as_u_dl_says_so(digits):
    "Passing the labeled `DataLoaders` where the unlabeled loader goes is refused when the callback is made, not at the first batch"
    dls,_ = digits
    test_fail(lambda: FixMatch(dls), contains='`u_dl` is a `DataLoaders`')
    test_fail(lambda: FixMatch(dls), contains='unlabeled_dl(items, dls)')
