"Per-step history and its plot for every algorithm, no host sync in a step; `PseudoLabelInterpretation` on digits, on an exported Learner"
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl import cli
from fastai_ssl.interpret import PseudoLabelInterpretation
from conftest import quiet_fit

_SYNCS = ('item', 'cpu', 'tolist', 'numpy')

class CountSyncs(Callback):
    "Count the calls of `Tensor.item`, `.cpu`, `.tolist`, `.numpy` from the start to the end of each training step"
    order = -100   # first in every event: the step starts before any other callback's `before_batch`
    def __init__(self): self.counts,self.in_step = [],False
    def before_fit(self):
        self.origs = {n: getattr(Tensor, n) for n in _SYNCS}
        def wrap(n):
            def f(t, *args, **kwargs):
                if self.in_step: self.counts[-1][n] += 1
                return self.origs[n](t, *args, **kwargs)
            return f
        for n in _SYNCS: setattr(Tensor, n, wrap(n))
    def before_batch(self):
        if not self.training: return
        self.counts.append(dict.fromkeys(_SYNCS, 0))
        self.in_step = True
    def after_batch(self): self.in_step = False
    def after_cancel_batch(self): self.in_step = False
    def after_fit(self):
        for n,f in self.origs.items(): setattr(Tensor, n, f)

@pytest.mark.parametrize('algo', cli.available_algos())
def test_history_per_step_no_sync_and_plot(digits, algo):
    dls,u_dl = digits
    counter = CountSyncs()
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=cli._callbacks(algo, u_dl) + [counter])
    try: quiet_fit(learn, 2, 1e-3)
    finally: counter.after_fit()
    cb = first(learn.cbs, risinstance(SSLCallback))
    h = cb.history
    n = 2*len(dls.train)
    assert h.step.tolist() == list(range(1, n+1)) and h.epoch.tolist() == [0]*(n//2) + [1]*(n//2)
    assert {'Lx', 'Lu', 'weight', 'pl_acc'} <= set(h.columns)
    names = list(cb.metric_names)
    means = h.groupby('epoch')[names].mean().values
    i = learn.recorder.metric_names.index(names[0]) - 1
    test_close(means, np.array([v[i:i+len(names)] for v in learn.recorder.values], dtype=float), eps=1e-4)
    # a step reads nothing from the device; an epoch's first step may (core's checks of the unlabeled data, a fresh loader's seed)
    assert len(counter.counts) == n
    syncs = [sum(c.values()) for c in counter.counts]
    once = {0, n//2} | ({1} if algo == 'dash' else set())   # Dash's first step after its warm-up measures ρ̂ on the validation set: its loader draws a seed, once a fit
    assert all(s == 0 for i,s in enumerate(syncs) if i not in once) and sum(syncs[i] for i in once) <= 4 + (algo == 'dash'), f"host reads in the steps of {algo}: {counter.counts}"
    fig = cb.plot(return_fig=True)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == 'losses' and 'pl_acc' in titles[1]
    if algo in ('flexmatch', 'freematch'):
        assert [f'thresholds_{j}' for j in range(10)] == [c for c in h.columns if c.startswith('thresholds_')]
        assert 'thresholds per class' in titles
    assert any(l.get_label() == 'weight of Lu' for ax in fig.axes for l in ax.get_lines())
    plt.close(fig)

def test_plot_before_fit_says_so(digits):
    test_fail(lambda: FixMatch(digits[1]).plot(), contains='no per-step history')

@pytest.fixture(scope='module')
def trained():
    "FixMatch on digits after 12 steps, and its unlabeled loader (with hidden labels)"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=7)
    dls.train = cli.with_steps(dls.train, 6)
    learn = Learner(dls, small_cnn(), metrics=accuracy, path=Path(tempfile.mkdtemp()), cbs=FixMatch(u_dl, flip=False))
    return quiet_fit(learn, 2, 1e-2, one_cycle=True),u_dl

def _interp(learn, src, **kwargs):
    with learn.no_bar(): return PseudoLabelInterpretation.from_learner(learn, src, **kwargs)

def test_table_matches_get_preds(trained):
    learn,u_dl = trained
    interp = _interp(learn, u_dl)
    t = interp.table()
    n = len(u_dl.dataset)
    assert len(t) == len(interp) == n and list(t.columns) == ['item', 'pseudo_label', 'confidence', 'margin', 'label']
    with learn.no_bar(): probs,y = learn.get_preds(dl=u_dl.new(shuffle=False, drop_last=False))
    test_close(t.confidence.values, probs.max(1).values.numpy(), eps=1e-6)
    top2 = probs.topk(2, 1).values
    test_close(t.margin.values, (top2[:,0] - top2[:,1]).numpy(), eps=1e-6)
    assert t.pseudo_label.tolist() == [learn.dls.vocab[i] for i in probs.argmax(1)]
    assert t.label.tolist() == [learn.dls.vocab[i] for i in y] and interp.thresh == 0.95
    d = interp.distribution()
    assert d.pseudo.sum() == n and d.hidden.sum() == n and d.labeled.tolist() == [5]*10
    assert (d['pseudo ≥ 0.95'].sum() == (interp.conf >= 0.95).sum())
    path = learn.path/'pseudo.csv'
    t.to_csv(path, index=False)
    assert len(pd.read_csv(path)) == n

def test_to_label_lowest_margins_spread_over_classes(trained):
    learn,u_dl = trained
    interp = _interp(learn, u_dl)
    for n in (1, 7, 10, 25, 300):
        idxs = interp.to_label_idxs(n).tolist()
        assert len(idxs) == len(set(idxs)) == n
        pl,margin = interp.pl.numpy(),interp.margin.numpy()
        taken = {c: sum(pl[i] == c for i in idxs) for c in range(10)}
        for c in range(10):   # each class gives its lowest-margin items
            of_c = np.where(pl == c)[0]
            chosen = sorted(margin[[i for i in idxs if pl[i] == c]])
            test_close(chosen, sorted(margin[of_c])[:taken[c]]) if taken[c] else None
        full = [c for c in range(10) if taken[c] < (pl == c).sum()]   # classes with items left: none got two more than another
        if full: assert max(taken.values()) - min(taken[c] for c in full) <= 1, taken
    items = interp.to_label(5)
    assert len(items) == 5 and all(any(o is p for p in u_dl.dataset.items) for o in items)
    test_fail(lambda: interp.to_label(len(interp)+1), contains='`n` must be in')

def test_pictures(trained):
    learn,u_dl = trained
    interp = _interp(learn, u_dl)
    for kind in ('most', 'least', 'wrong', 'margin'):
        interp.show_pseudo_labels(6, kind)
        fig = plt.gcf()
        assert sum(bool(ax.images) for ax in fig.axes) == 6, kind
        plt.close(fig)
    interp.show_pseudo_labels(3, 'most', by_class=True)
    assert sum(bool(ax.images) for ax in plt.gcf().axes) <= 30
    plt.close('all')
    c = str(interp.vocab[int(interp.pl[0])])
    assert (interp.pl[interp.top(4, 'most', cls=c)] == int(interp.pl[0])).all()
    fig = interp.plot_distribution(return_fig=True)
    assert len(fig.axes[0].patches) == 4*10   # labeled, pseudo, pseudo ≥ thresh, hidden
    plt.close(fig)
    test_fail(lambda: interp.show_pseudo_labels(3, 'nope'), contains="`kind` must be")
    test_fail(lambda: interp.top(3, cls='nope'), contains="`cls` must be one of")
    no_labels = _interp(learn, [(x,) for x,_ in u_dl.dataset.items[:50]])
    test_fail(lambda: no_labels.show_pseudo_labels(3, 'wrong'), contains="needs hidden labels")

def test_exported_learner_and_items(trained, tmp_path):
    learn,u_dl = trained
    learn.export(tmp_path/'model.pkl')
    learn2 = load_learner(tmp_path/'model.pkl')
    items = u_dl.dataset.items[:100]
    ref = _interp(learn, u_dl)
    interp = _interp(learn2, [(x,) for x,_ in items])
    test_close(interp.probs, ref.probs[:100], eps=1e-5)
    assert interp.targs is None and 'label' not in interp.table() and 'labeled' not in interp.distribution()
    with_y = _interp(learn2, list(items), with_labels=True)   # items that carry their label
    test_eq(with_y.targs, ref.targs[:100])
    interp.show_pseudo_labels(4, 'least'); plt.close('all')

def test_folder_of_images(tmp_path):
    "A Learner on images in files: `from_learner` takes the folder, the table lists the paths"
    rng = np.random.default_rng(0)
    for c in ('red', 'blue'):
        (tmp_path/c).mkdir()
        for i in range(6): Image.fromarray((rng.integers(0, 120, (12, 12, 3)) + np.array([120, 0, 0] if c == 'red' else [0, 0, 120])).astype(np.uint8)).save(tmp_path/c/f'{i}.png')
    (tmp_path/'u').mkdir()
    for i in range(5): Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(tmp_path/'u'/f'{i}.png')
    dls = ImageDataLoaders.from_folder(tmp_path, valid_pct=0.3, bs=4, item_tfms=Resize(12), num_workers=0, seed=0)
    learn = Learner(dls, small_cnn(n_in=3, n_out=dls.c))
    interp = _interp(learn, tmp_path/'u')
    t = interp.table()
    assert sorted(t.item) == sorted(str(f) for f in get_image_files(tmp_path/'u'))
    assert [str(o) for o in interp.to_label(2)] == t.item[interp.to_label_idxs(2).tolist()].tolist()
    interp.show_pseudo_labels(5, 'most'); plt.close('all')
    test_fail(lambda: _interp(learn, tmp_path/'nope'), contains='no folder')
