"Data-parallel training in 2 CPU processes (gloo): disjoint unlabeled shards, one teacher, the same banks, SSL metrics averaged over processes"
import json, os, socket
import pytest
import torch.multiprocessing as mp
from fastai.vision.all import *
from fastai_ssl.all import *

pytest.importorskip('accelerate')   # fastai's `distrib_ctx` runs on it
from fastai.distributed import *

def synth(n, c=2, seed=0):
    "Images whose class is which half of the 8×8 image is brighter"
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = torch.rand(n, 1, 8, 8, generator=g)*0.5
    x[y == 1, :, :4] += 0.5
    return x,y

class DrawLog(Callback):
    "The indices of the unlabeled items (carried as the loader's hidden labels) each step drew, per epoch"
    order = SSLCallback.order + 1
    def before_fit(self): self.draws = []
    def before_epoch(self): self.draws.append([])
    def before_batch(self):
        if self.training: self.draws[-1] += first(self.learn.cbs, risinstance(SSLCallback)).y_u.tolist()

ALGOS = dict(fixmatch=lambda u: FixMatch(u, flip=False, ema=0.9), meanteacher=lambda u: MeanTeacher(u, flip=False),
             simmatch=lambda u: SimMatch(u, flip=False), comatch=lambda u: CoMatch(u, flip=False, bank_items=64))

def _state(cb):
    "The callback's own training state, flattened: the teacher's weights, or the heads' and the bank's"
    ts = cb.teacher.state_dict().values() if getattr(cb, 'teacher', None) is not None else [*cb.heads.state_dict().values(), *cb.bank.get()]
    return torch.cat([t.flatten().float() for t in ts])

def _worker(rank, world, port, algo, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world)
    set_seed(0)
    x,y = synth(64)
    ds = [(x[i], TensorCategory(y[i])) for i in range(len(y))]
    dls = DataLoaders.from_dsets(ds, ds[:16], bs=8, device='cpu', num_workers=0)
    dls.c = 2
    xu,_ = synth(256, seed=1)
    u_dl = TfmdDL([(xu[i], tensor(i)) for i in range(len(xu))], bs=16, shuffle=True, num_workers=0)   # indices ride as hidden labels
    if algo.endswith('resident'): u_dl = resident_dl(u_dl)   # the items decoded once, each batch one index
    cb = ALGOS[algo.split('-')[0]](u_dl)
    learn = Learner(dls, small_cnn(n_out=2), loss_func=CrossEntropyLossFlat(), cbs=[cb, DrawLog()])
    with learn.distrib_ctx(sync_bn=False, cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(4, 3e-3)
    state = _state(cb)
    res = [None]*world
    torch.distributed.all_gather_object(res, dict(draws=learn.draw_log.draws, state=state, rows=cb.bank.get()[2].all().item() if algo == 'simmatch' else None, values=learn.recorder.values, seed=torch.initial_seed(),
                                                  model=torch.cat([p.detach().flatten() for p in learn.model.parameters()])))
    if rank == 0:
        Path(out).write_text(json.dumps(dict(
            disjoint=[not set(res[0]['draws'][e]) & set(res[1]['draws'][e]) for e in range(4)],
            n_drawn=[len(r['draws'][0]) for r in res],
            same_state=bool(torch.equal(res[0]['state'], res[1]['state'])),
            all_rows=[r['rows'] for r in res],
            same_model=bool(torch.equal(res[0]['model'], res[1]['model'])),
            same_metrics=res[0]['values'] == res[1]['values'],
            own_seeds=res[0]['seed'] != res[1]['seed'],
            values=[[float(v) for v in row] for row in res[0]['values']])))
    torch.distributed.destroy_process_group()

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

@pytest.mark.parametrize('algo', ['fixmatch', 'meanteacher', 'fixmatch-resident', 'simmatch', 'comatch'])
def test_two_processes(algo, tmp_path):
    out = tmp_path/'res.json'
    mp.spawn(_worker, args=(2, _free_port(), algo, str(out)), nprocs=2)
    r = json.loads(out.read_text())
    assert all(r['disjoint']) and r['n_drawn'] == [4*16, 4*16]   # 4 steps of 16 unlabeled items in each process, none shared
    assert r['same_state'] and r['same_model']   # the teacher, or the heads and the bank (of all processes' items)
    if algo == 'simmatch': assert r['all_rows'] == [True, True]   # every labeled item has its row, whichever process drew it
    assert r['same_metrics']   # Lx, Lu, … are means over both processes
    assert r['own_seeds']      # each process draws its own views from its own seed
    losses = [v[0] for v in r['values']]
    assert all(math.isfinite(l) for l in losses)
    valid = [v[1] for v in r['values']]   # the bank algorithms add their bank terms once the banks fill: their training loss rises then
    assert losses[-1] < losses[0] if algo not in ('simmatch', 'comatch') else valid[-1] < valid[0], r['values']
