"Pictures read right at a glance: titled, labelled, the threshold not on the rate axis, class names apart, grids without orphan rows; `save_plots`; images of another size refused"
import math, warnings
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.interpret import PseudoLabelInterpretation, _grid_shape
from conftest import digits_learner, quiet_fit, write_pngs

@pytest.fixture(scope='module')
def trained():
    "FixMatch on digits after 12 steps (5 labels per class), and its unlabeled loader (with hidden labels)"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=7)
    dls.train = with_steps(dls.train, 6)
    learn = Learner(dls, small_cnn(), metrics=accuracy, path=Path(tempfile.mkdtemp()), cbs=FixMatch(u_dl, flip=False))
    return quiet_fit(learn, 2, 1e-2, one_cycle=True),u_dl

def _interp(learn, src, **kwargs):
    with learn.no_bar(): return PseudoLabelInterpretation.from_learner(learn, src, **kwargs)

@pytest.fixture(scope='module')
def interp(trained): return _interp(*trained)

@pytest.fixture(autouse=True)
def _close(): yield; plt.close('all')

def _suptitle(fig): return fig._suptitle.get_text() if fig._suptitle else ''

def _boxes(fig, texts):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [t.get_window_extent(r) for t in texts if t.get_visible() and t.get_text()]

def _apart(boxes):
    "No two of `boxes` overlap"
    return not any(a.overlaps(b) for i,a in enumerate(boxes) for b in boxes[i+1:])

# --- the per-step plot ---

def test_plot_titled_and_labelled(trained):
    learn,u_dl = trained
    fig = learn.fix_match.plot(return_fig=True)
    t = _suptitle(fig)
    assert t.startswith('FixMatch') and '10 classes' in t and '50 labeled' in t and f'{len(u_dl.dataset):,} unlabeled' in t and '12 steps' in t, t
    main = [ax for ax in fig.axes if ax.get_xlabel()]   # not the twin axis of the weight
    assert len(main) == 2 and all(ax.get_xlabel() == 'step' and ax.get_ylabel() and ax.get_title() for ax in main)
    assert main[1].get_ylabel() == 'share of items'

def test_threshold_not_a_line_on_the_rate_axis(trained):
    learn,_ = trained
    fig = learn.fix_match.plot(return_fig=True)
    rates = first(ax for ax in fig.axes if 'mask' in ax.get_title())
    flat = [l for l in rates.get_lines() if len(set(np.asarray(l.get_ydata(), dtype=float).round(6))) == 1]
    assert not any(float(l.get_ydata()[0]) == 0.95 for l in flat), "a horizontal line at the threshold on the rate axis"
    assert not any('threshold' in l.get_label() for l in rates.get_lines())
    labels = [t.get_text() for t in rates.get_legend().get_texts()]
    assert 'mask (confidence ≥ 0.95)' in labels, labels   # the threshold is named with the mask it defines

# --- the class distribution ---

def _classes_learner(names, rng):
    "An (untrained) `small_cnn` Learner on random 8×8 images of the classes `names`, and its unlabeled loader"
    n = len(names)
    x = rng.integers(0, 255, (5*n, 8, 8), dtype=np.uint8)
    y = np.arange(5*n) % n
    dls,u_dl = arrays_dls(x[n:], y[n:], x[:n], y[:n], n_per_class=1, bs=16, mu=2, vocab=list(range(n)), resident=False)
    dls.vocab = names
    return Learner(dls, small_cnn(n_out=n), cbs=FixMatch(u_dl)),u_dl

@pytest.mark.parametrize('names', [['cat', 'dog'], FASHION_MNIST_CLASSES, [f'class number {i}' for i in range(100)]], ids=['2', '10', '100'])
def test_distribution_class_names_apart(names):
    learn,u_dl = _classes_learner(names, np.random.default_rng(0))
    interp = _interp(learn, u_dl)
    fig = interp.plot_distribution(return_fig=True)
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]
    assert shown and set(shown) <= set(names) and len(shown) >= len(names)/2, shown   # names, thinned at most to every other one
    if len(names) <= 10: assert shown == list(names)
    assert _apart(_boxes(fig, ax.get_yticklabels())) and _apart(_boxes(fig, ax.get_xticklabels()))
    assert ax.get_xlabel() == '% of items' and ax.get_ylabel() == 'class'
    t = _suptitle(fig)
    assert 'FixMatch' in t and f'{len(names)} classes' in t and f'{len(names)} labeled' in t, t

# --- grids ---

def test_grid_shape_rule():
    for k in range(1, 101):
        r,c = _grid_shape(k)
        assert (r-1)*c < k <= r*c and c >= r and k - (r-1)*c >= c/2, (k, r, c)   # no orphan row: the last one at least half full
    assert _grid_shape(9, ncols=4) == (3, 4) and _grid_shape(2, ncols=4) == (1, 2)

def _layout(fig):
    "(rows, cols) of the grid of a figure's axes, and whether every axes shows an image"
    geo = {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes}
    assert len(geo) == 1
    return geo.pop(),all(ax.images for ax in fig.axes)

@pytest.mark.parametrize('k,shape', [(1, (1, 1)), (2, (1, 2)), (5, (1, 5)), (7, (1, 7)), (8, (2, 4)), (9, (3, 3)), (16, (4, 4))])
def test_grid_layouts(interp, k, shape):
    fig = interp.show_pseudo_labels(k, 'most', return_fig=True)
    assert _layout(fig) == (shape, True) and len(fig.axes) == k   # no empty frame
    assert 'most confident' in _suptitle(fig) and 'FixMatch' in _suptitle(fig)

def test_grid_of_100_and_given_columns(interp):
    fig = interp.show_pseudo_labels(100, 'least', return_fig=True)
    assert _layout(fig) == ((10, 10), True) and len(fig.axes) == 100
    fig = interp.show_pseudo_labels(9, 'least', ncols=4, return_fig=True)
    assert _layout(fig) == ((3, 4), True) and len(fig.axes) == 9   # the three empty cells of the last row are gone

def test_titles_show_margin_or_confidence(interp):
    for kind,score in (('margin', interp.margin), ('most', interp.conf), ('least', interp.conf)):
        fig = interp.show_pseudo_labels(6, kind, return_fig=True)
        idxs = interp.top(6, kind)
        word = 'margin' if kind == 'margin' else 'conf'
        for ax,i in zip(fig.axes, idxs.tolist()):
            t = ax.get_title()
            assert t.startswith(f"{interp.vocab[interp.pl[i]]} · {word} {score[i]:.3f}"), (kind, t)
            assert ('margin' in t) == (kind == 'margin')
        assert ('margin' in _suptitle(fig)) == (kind == 'margin')
    margins = [float(ax.get_title().split('margin ')[1].split()[0]) for ax in interp.show_pseudo_labels(6, 'margin', return_fig=True).axes]
    assert margins == sorted(margins)

def test_by_class_rows_without_empty_frames(interp):
    fig = interp.show_pseudo_labels(3, 'most', by_class=True, return_fig=True)
    visible = [ax for ax in fig.axes if ax.axison or ax.images]
    assert all(ax.images for ax in visible) and sum(bool(ax.images) for ax in fig.axes) <= 30

# --- save_plots ---

_NAMES = ['pseudo_distribution.png', 'pseudo_most_confident.png', 'pseudo_lowest_margin.png']

def test_save_plots_writes_pngs(interp, tmp_path):
    paths = interp.save_plots(tmp_path/'out')
    assert [p.name for p in paths] == _NAMES and sorted(os.listdir(tmp_path/'out')) == sorted(_NAMES)
    for p in paths:
        with Image.open(p) as im: assert im.format == 'PNG' and min(im.size) > 100
    assert [p.name for p in interp.save_plots(tmp_path/'out', prefix='run2')] == [n.replace('pseudo', 'run2') for n in _NAMES]
    assert not plt.get_fignums()   # every figure closed

def test_save_plots_does_not_clobber_on_failure(interp, tmp_path, monkeypatch):
    before = {p.name: p.read_bytes() for p in interp.save_plots(tmp_path)}
    orig = PseudoLabelInterpretation.show_pseudo_labels
    def fail_on_margin(self, k, kind, *args, **kwargs):
        if kind == 'margin': raise RuntimeError('drawing failed')
        return orig(self, k, kind, *args, **kwargs)
    monkeypatch.setattr(PseudoLabelInterpretation, 'show_pseudo_labels', fail_on_margin)
    interp.thresh = 0.5   # the distribution would differ if it were written again
    try:
        with pytest.raises(RuntimeError, match='drawing failed'): interp.save_plots(tmp_path)
    finally: interp.thresh = 0.95
    assert sorted(os.listdir(tmp_path)) == sorted(_NAMES), "temporary files left behind"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

# --- images the model was not trained on ---

def test_refuses_images_of_another_size(digits, tmp_path):
    learn = digits_learner(digits, FixMatch)   # trained on 1×8×8
    write_pngs(tmp_path/'u32', 4, (32, 32, 3), np.random.default_rng(0))
    for src in (tmp_path/'u32', get_image_files(tmp_path/'u32')):
        with pytest.raises(ValueError) as e: _interp(learn, src)
        msg = str(e.value)
        assert msg.startswith('`src`:') and '\n' not in msg and '1×32×32' in msg and '1×8×8' in msg, msg
        assert 'resize them to 8×8' in msg and '`Resize((8, 8))`' in msg, msg

def test_refuses_other_channels(digits):
    learn = digits_learner(digits, FixMatch)
    xs = [(TensorImage(torch.rand(3, 8, 8)),) for _ in range(4)]
    dl = TfmdDL(xs, bs=4)
    with pytest.raises(ValueError, match=r'`src`: the images are 3×8×8 \(channels×height×width\) but the model was trained on 1×8×8: convert them to grayscale'):
        _interp(learn, dl)

def test_exported_learner_refuses_too(trained, tmp_path):
    learn,_ = trained
    learn.export(tmp_path/'model.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn2 = load_learner(tmp_path/'model.pkl')
    write_pngs(tmp_path/'u32', 3, (32, 32), np.random.default_rng(0))
    test_fail(lambda: _interp(learn2, tmp_path/'u32'), contains='trained on 1×8×8')
    write_pngs(tmp_path/'u8', 3, (8, 8), np.random.default_rng(0))
    assert len(_interp(learn2, tmp_path/'u8')) == 3

def test_matching_images_unchanged(trained, tmp_path):
    "8×8 PNGs and the unlabeled loader pass the check; predictions are those of `get_preds`"
    learn,u_dl = trained
    write_pngs(tmp_path/'u8', 5, (8, 8, 3), np.random.default_rng(1))
    files = get_image_files(tmp_path/'u8')
    interp = _interp(learn, tmp_path/'u8')
    with learn.no_bar(): probs,_ = learn.get_preds(dl=learn.dls.test_dl(files))
    test_close(interp.probs, probs, eps=1e-6)
    ref = _interp(learn, u_dl)
    with learn.no_bar(): probs,_ = learn.get_preds(dl=u_dl.new(shuffle=False, drop_last=False))
    test_close(ref.probs, probs, eps=1e-6)

def test_resize_in_item_transforms_is_fine(tmp_path):
    "A Learner whose item transforms resize takes images of any size"
    rng = np.random.default_rng(0)
    for c in ('a', 'b'): write_pngs(tmp_path/'train'/c, 4, (12, 12, 3), rng)
    dls = ImageDataLoaders.from_folder(tmp_path/'train', valid_pct=0.25, bs=4, item_tfms=Resize(12), num_workers=0, seed=0)
    learn = Learner(dls, small_cnn(n_in=3, n_out=2))
    write_pngs(tmp_path/'u', 3, lambda i: (32 + 8*i, 20, 3), rng)
    assert len(_interp(learn, tmp_path/'u')) == 3

def test_unreadable_files_skipped_with_one_warning(trained, tmp_path):
    learn,_ = trained
    write_pngs(tmp_path/'u', 3, (8, 8), np.random.default_rng(0))
    (tmp_path/'u'/'broken.png').write_bytes(b'not a png')
    (tmp_path/'u'/'empty.png').write_bytes(b'')
    with pytest.warns(UserWarning, match='skipped 2 unreadable') as w: interp = _interp(learn, tmp_path/'u')
    assert len([o for o in w if 'unreadable' in str(o.message)]) == 1
    assert len(interp) == 3 and not any('broken' in str(o) or 'empty' in str(o) for o in interp.items)
    for f in tmp_path.joinpath('u').glob('*.png'):
        if f.stat().st_size > 20: f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        test_fail(lambda: _interp(learn, tmp_path/'u'), contains='none of the 2 image files')

@pytest.mark.parametrize('make', [lambda x: torch.utils.data.DataLoader(x, batch_size=64), lambda x: DataLoader(TensorImage(x), bs=64)], ids=['torch', 'fastai'])
def test_plain_loader_refused_in_one_line(trained, make):
    "A plain loader (torch's or fastai's) has no transforms to read its items by: refused, naming what to pass"
    x = torch.randint(0, 255, (100, 1, 8, 8), dtype=torch.uint8)
    test_fail(lambda: _interp(trained[0], make(x)), contains='`src` is a plain DataLoader: pass its items')

def test_items_the_transforms_cannot_read(trained):
    "Items of another kind than the training ones: one line naming the first item's error, before any prediction"
    test_fail(lambda: _interp(trained[0], [torch.zeros(1, 8, 8, dtype=torch.uint8)]), contains="transforms cannot read its first item")

def test_bad_k_and_save_plots_into_a_file(interp, tmp_path):
    for k in (0, -3, 2.5): test_fail(lambda: interp.show_pseudo_labels(k), contains='`k` must be an int >= 1')
    f = tmp_path/'pics'; f.write_text('keep me')
    test_fail(lambda: interp.save_plots(f), contains='is a file: pass a folder')
    assert f.read_text() == 'keep me'
