"Images decoded once and kept on the device: what the loader guaranteed before still holds"
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
import fastai_ssl.data as data
from conftest import quiet_fit, write_pngs

def coded(n=600, c=3, seed=0):
    "uint8 8×8 images whose two first pixels spell their index, and labels"
    x = np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)
    x[:, 0, 0],x[:, 0, 1] = np.arange(n) % 256,np.arange(n)//256
    return x,np.arange(n) % c

def index_of(xb):
    xb = xb.as_subclass(Tensor)
    return ((xb[:, 0, 0, 0]*255).round() + 256*(xb[:, 0, 0, 1]*255).round()).long()

@pytest.fixture(scope='module')
def loaders():
    x,y = coded()
    return arrays_dls(x, y, x[:30], y[:30], n_per_class=4, bs=8, mu=7)

def test_a_pass_holds_each_item_once_and_reshuffles(loaders):
    dls,u_dl = loaders
    assert isinstance(u_dl, DeviceDL) and isinstance(dls.train, DeviceDL) and not isinstance(dls.valid, DeviceDL)
    n,bs = len(u_dl.dataset),u_dl.bs
    passes = [[index_of(b[0]) for b in u_dl] for _ in range(2)]
    for p in passes:
        assert [len(o) for o in p] == [bs]*(n//bs)                  # drop_last: full batches only
        idx = torch.cat(p)
        assert len(set(idx.tolist())) == len(idx) == n//bs*bs       # no item twice in a pass
    assert not torch.equal(torch.cat(passes[0]), torch.cat(passes[1]))   # a fresh shuffle each pass

def test_hidden_labels_follow_their_items(loaders):
    dls,u_dl = loaders
    x,y = coded()
    for xb,yb in u_dl:
        assert torch.equal(yb.as_subclass(Tensor).cpu(), torch.as_tensor(y)[index_of(xb.as_subclass(Tensor)).cpu()])

def test_batches_equal_the_item_pipelines(loaders):
    "The same items, in the same order, through both loaders: the same tensors"
    dls,u_dl = loaders
    plain = dls.valid.new(u_dl.dataset.src, bs=u_dl.bs, shuffle=False, drop_last=True)
    res = u_dl.new(shuffle=False)
    for a,b in zip(res, plain):
        assert type(a[0]) is type(b[0]) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

def test_labeled_items_once_per_pass_with_a_step_budget(loaders):
    dls,_ = loaders
    dl = with_steps(dls.train, 5)
    assert isinstance(dl, DeviceDL) and len(dl) == 5
    idx = torch.cat([index_of(b[0]) for b in dl])
    assert len(set(idx[:len(dls.train_ds)].tolist())) == len(dls.train_ds)   # the first pass holds every labeled item

def test_same_run_as_the_item_loader():
    "From one seed, the resident loaders draw the batches the per-item ones draw: the same weights at the end, and the same again"
    def run(resident):
        set_seed(0)
        x,y = coded()
        dls,u_dl = arrays_dls(x, y, x[:30], y[:30], n_per_class=4, bs=8, mu=7, resident=resident)
        assert isinstance(u_dl, DeviceDL) == (resident is not False)
        learn = quiet_fit(Learner(dls, small_cnn(n_out=3), cbs=FixMatch(u_dl, flip=False)), 2, 1e-2)
        return torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    a = run(None)
    assert torch.equal(a, run(False)) and torch.equal(a, run(None))

def test_what_decides(loaders, monkeypatch):
    "Where the items do not fit (a quarter of free memory), `resident=None` keeps the item loader and `resident=True` says why"
    x,y = coded()
    monkeypatch.setattr(data, '_host_free', lambda: 1000)
    dls,u_dl = arrays_dls(x, y, x[:30], y[:30], n_per_class=4, bs=8, mu=7)
    assert not isinstance(u_dl, DeviceDL) and not isinstance(dls.train, DeviceDL)
    test_fail(lambda: arrays_dls(x, y, x[:30], y[:30], n_per_class=4, bs=8, mu=7, resident=True),
              contains='`resident=True`')

def test_refused_where_decoding_would_change_the_data(loaders):
    dls,_ = loaders
    x,y = coded()
    views = arrays_dls(x, y, x[:30], y[:30], n_per_class=4, bs=8, mu=7, views=[WeakPIL(), StrongPIL()])[1]
    assert not isinstance(views, DeviceDL)                     # PIL views draw at random per item
    test_fail(lambda: unlabeled_dl(list(zip(x, y)), dls, mu=2, views=[WeakPIL(), StrongPIL()], resident=True),
              contains='draw at random')
    aug = dls.train.new(after_item=[*dls.train.after_item.fs, RandomResizedCrop(8)])
    test_fail(lambda: resident_dl(aug), contains='RandomResizedCrop')

def test_folder(tmp_path):
    "A folder of images of mixed sizes: the unlabeled images (centre-cropped) are decoded once, the labeled ones keep their random crop"
    rng = np.random.default_rng(0)
    for split,n in (('train', 6), ('valid', 2)):
        for c in ('a', 'b'): write_pngs(tmp_path/split/c, n, lambda i: (20+i, 24, 3), rng)
    write_pngs(tmp_path/'unlabeled', 40, lambda i: (30, 20+i%5, 3), rng)
    dls,u_dl = folder_dls(tmp_path, bs=4, mu=2, size=16)
    assert isinstance(u_dl, DeviceDL) and not isinstance(dls.train, DeviceDL)
    xb = u_dl.one_batch()[0]
    assert xb.shape == (8, 3, 16, 16) and xb.dtype == torch.float32
    test_eq(len(u_dl.dataset), 40)
    learn = quiet_fit(Learner(dls, small_cnn(n_in=3, n_out=2), cbs=FixMatch(u_dl)), 1, 1e-3)
    assert math.isfinite(learn.recorder.values[-1][0])

def test_exported_learner_gets_a_plain_loader(loaders, tmp_path):
    dls,_ = loaders
    learn = Learner(dls, small_cnn(n_out=3), path=tmp_path)
    learn.export('m.pkl')
    learn2 = load_learner(tmp_path/'m.pkl')
    assert not isinstance(learn2.dls.train, DeviceDL)
    x,_ = coded(4)
    assert int(learn2.predict(x[0])[1]) in range(3)
