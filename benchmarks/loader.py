"""Unlabeled batches from the device-resident loader (`DeviceDL`) vs the per-item PIL loader, on CPU (issue 17).

Fashion-MNIST (28x28x1) with the tutorial's 40 labels, so 59,960 unlabeled training images, built by
`fashion_mnist_dls(..., resident=False)` (per-item PIL decoding in the process, `num_workers=0`, as `arrays_dls` builds it)
and by the library's default (`resident=None`: decoded once, one uint8 tensor in memory, a batch is one index).

1. Batches: milliseconds per unlabeled batch of 448 (bs 64 x mu 7) and 112 images (bs 16 x mu 7, the CLI's default) from
   both loaders, one torch thread, in the same process, interleaved (many resident batches, then one per-item batch);
   median, minimum, mean (the mean carries each pass's shuffle) and median process CPU time. Also the resident loader's
   one-time cost (seconds of `resident_dl` decoding the 59,960 images), how many per-item batches that equals, and
   where the time of one resident batch goes.
2. Steps: seconds per FixMatch training step in the tutorial's setup (nbs/tutorial_fixmatch.ipynb: `small_cnn`, bs 16,
   mu 7, SGD with Nesterov momentum, `AugmentLabeled(WeakAug())`), the two loaders alternating in chunks of steps,
   torch threads left as they are; the first step of each chunk (and the first round) is a warm-up, validation skipped.

    python benchmarks/loader.py --json benchmarks/results/loader_cpu.json

Not a test: timings depend on the machine and its load (the load average is recorded). Prints JSON, then a table.
"""
import argparse, contextlib, io, json, os, platform, statistics, sys, time, warnings
warnings.filterwarnings('ignore')
import torch
from fastai.vision.all import *
from fastai_ssl.all import *

def cpu_name():
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or platform.machine()

def quiet(fn, *args, **kwargs):
    "`fn(*args, **kwargs)` with its progress bar (printed to stdout outside a notebook) swallowed, and the seconds it took"
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()): res = fn(*args, **kwargs)
    return res,time.perf_counter() - t

class Batches:
    "An endless stream of `dl`'s batches (a fresh pass when one ends, as the SSL callbacks draw them), timing each"
    def __init__(self, dl): self.dl,self.it,self.wall,self.cpu,self.starts = dl,None,[],[],[]
    def step(self):
        t,c = time.perf_counter(),time.process_time()
        start = self.it is None
        if start: self.it = iter(self.dl)
        try: b = next(self.it)
        except StopIteration: self.it,start,b = iter(self.dl),True,None
        if b is None: b = next(self.it)
        self.wall.append((time.perf_counter()-t)*1e3); self.cpu.append((time.process_time()-c)*1e3)
        if start: self.starts.append(len(self.wall)-1)
        return b
    def stats(self, n_warm):
        wall,cpu = self.wall[n_warm:],self.cpu[n_warm:]
        starts = [self.wall[i] for i in self.starts if i >= n_warm]   # the batches that began a pass (its shuffle, a new iterator)
        return dict(n=len(wall), ms=round(statistics.median(wall), 3), min_ms=round(min(wall), 3), mean_ms=round(statistics.mean(wall), 3),
                    cpu_ms=round(statistics.median(cpu), 3), pass_starts=len(starts),
                    first_batch_of_pass_ms=round(statistics.median(starts), 3) if starts else None)

def time_batches(u_old, u_res, sizes=(448, 112), n_res=900, n_old=60, warmup=3):
    "Per-batch timings of both loaders at each batch size, interleaved: `n_res//n_old` resident batches, then one per-item batch"
    streams = {(n, kind): Batches(dl.new(bs=n)) for n in sizes for kind,dl in (('resident', u_res), ('item', u_old))}
    for (n, kind),s in streams.items():   # fastai's lazy setup and the first iterator out of the timings
        for _ in range(warmup): s.step()
    k = n_res//n_old
    for _ in range(n_old):
        for n in sizes:
            for _ in range(k): streams[n, 'resident'].step()
            streams[n, 'item'].step()
    return {key: s.stats(warmup) for key,s in streams.items()}

def median_ms(fn, reps=300):
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter()-t)*1e3)
    return round(statistics.median(ts), 3)

def breakdown(u_res, n=448):
    "Where the time of one resident batch of `n` goes: the index into the decoded tensors, the move to the device, the batch transforms, a pass's shuffle"
    dl = u_res.new(bs=n)
    ds,idx = dl.dataset,torch.randperm(len(dl.dataset))[:n]
    b,stream = ds.batch(idx, dl.device),Batches(dl)
    return dict(images=n, index_ms=median_ms(lambda: ds.batch(idx, dl.device)),            # `ResidentData.batch`: x[idx], y[idx], retyped
                index_select_ms=median_ms(lambda: tuple(t.index_select(0, idx) for t in ds.tensors)),   # the same rows by `index_select`: for comparison
                to_device_ms=median_ms(lambda: to_device(b, dl.device)),
                after_batch_ms=median_ms(lambda: dl.after_batch(b)),                       # IntToFloatTensor: uint8 -> float / 255
                next_batch_ms=median_ms(stream.step),                                       # all of it, through fastai's loader
                pass_shuffle_ms=median_ms(lambda: torch.as_tensor(list(dl.get_idxs()), dtype=torch.long), reps=10),   # fastai's shuffle of 59,960 indices, a Python list
                batches_per_pass=len(dl))

class StepTimer(Callback):
    "Wall and process CPU seconds of each training step, from the end of the previous one (so the labeled batch's loading counts) to `after_batch`"
    order = 100
    def before_fit(self): self.wall,self.cpu = [],[]
    def before_train(self): self.t,self.c = time.perf_counter(),time.process_time()
    def after_batch(self):
        if not self.training: return
        t,c = time.perf_counter(),time.process_time()
        self.wall.append(t-self.t); self.cpu.append(c-self.c)
        self.t,self.c = t,c
    def before_validate(self): raise CancelValidException()

def time_steps(builds, chunk=6, rounds=9, lr=0.03):
    "Seconds per FixMatch step of each `(name, (dls, u_dl))`, the learners taking turns for `rounds` chunks of `chunk` steps; the first round and the first step of each chunk are warm-up"
    sgd = partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9, nesterov=True, weight_decay=5e-4))
    learners = {}
    for name,(dls,u_dl) in builds.items():
        set_seed(0)
        dls.train = with_steps(dls.train, chunk)
        timer = StepTimer()
        learners[name] = (Learner(dls, small_cnn(), opt_func=sgd, cbs=[AugmentLabeled(WeakAug()), FixMatch(u_dl), timer]), timer, [], [])
    for r in range(rounds):
        for name,(learn,timer,wall,cpu) in learners.items():
            with learn.no_bar(), learn.no_logging(): learn.fit_flat_cos(1, lr, pct_start=0.)
            if r: wall += timer.wall[1:]; cpu += timer.cpu[1:]
    return {name: dict(n=len(wall), s_per_step=round(statistics.median(wall), 4), min_s=round(min(wall), 4),
                       cpu_s=round(statistics.median(cpu), 4), loader=type(learn.fix_match.u_dl).__name__,
                       steps_s=[round(o, 4) for o in wall])
            for name,(learn,timer,wall,cpu) in learners.items()}

def run(n_res=900, n_old=60, chunk=6, rounds=9):
    threads0 = torch.get_num_threads()
    load0 = [round(o, 2) for o in os.getloadavg()]
    (old,build_old_s) = quiet(fashion_mnist_dls, n_per_class=4, bs=16, mu=7, resident=False)
    (res,build_res_s) = quiet(fashion_mnist_dls, n_per_class=4, bs=16, mu=7)   # the library's default, resident=None
    assert isinstance(res[1], DeviceDL) and not isinstance(old[1], DeviceDL), 'the default loader is not resident on this machine'
    n_items = len(old[1].dataset)

    torch.set_num_threads(1)
    _,decode_s = quiet(resident_dl, old[1], uint8=True)   # what `unlabeled_dl(resident=None)` adds to the per-item loader
    bt = time_batches(old[1], res[1], n_res=n_res, n_old=n_old)
    rows,even = [],[]
    for n in (448, 112):
        r,o = bt[n, 'resident'],bt[n, 'item']
        rows += [dict(images=n, loader='resident (DeviceDL)', **r), dict(images=n, loader='per-item PIL (resident=False)', **o)]
        even.append(dict(images=n, speedup=round(o['ms']/r['ms'], 1), decode_in_item_batches=round(decode_s*1e3/o['ms'], 1),
                         break_even_batches=round(decode_s*1e3/(o['ms']-r['ms']), 1), batches_per_pass=n_items//n))
    bd = breakdown(res[1])
    torch.set_num_threads(threads0)

    st = time_steps({'per-item PIL (resident=False)': old, 'resident (default)': res}, chunk=chunk, rounds=rounds)
    a,b = st['per-item PIL (resident=False)']['s_per_step'],st['resident (default)']['s_per_step']
    return dict(machine=dict(cpu=cpu_name(), cpu_count=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                             load_avg_start=load0, load_avg_end=[round(o, 2) for o in os.getloadavg()]),
                data=f'Fashion-MNIST, 4 labels per class: {n_items:,} unlabeled 28x28x1 images',
                build_s={'resident=False': round(build_old_s, 2), 'resident=None (default)': round(build_res_s, 2)},
                batches=dict(threads=1, setup=f'unlabeled loader of fashion_mnist_dls(n_per_class=4, bs=16, mu=7) `.new(bs=n)`; '
                             f'{n_res} resident and {n_old} per-item batches of each size, interleaved, after 3 warm-up; ms per batch',
                             decode_s=round(decode_s, 2), decode_items=n_items, rows=rows, break_even=even, resident_breakdown=bd),
                steps=dict(threads=threads0, setup=f'tutorial FixMatch: small_cnn, bs 16, mu 7, SGD(momentum 0.9, nesterov, wd 5e-4), '
                           f'AugmentLabeled(WeakAug()), fit_flat_cos(lr 0.03); {rounds-1} rounds x {chunk-1} timed steps per loader, '
                           f'alternating, after a warm-up round; validation skipped', rows=st, change_pct=round((b-a)/a*100, 1)))

def table(res):
    m,bt,st = res['machine'],res['batches'],res['steps']
    lines = [f"{res['data']} on {m['cpu']} ({m['cpu_count']} cores), torch {m['torch']}, load average {m['load_avg_start'][0]} -> {m['load_avg_end'][0]}",
             f"1. ms per unlabeled batch, {bt['threads']} thread",
             f"{'images':>6}  {'loader':<32}{'n':>5}{'median':>9}{'min':>9}{'mean':>9}{'cpu':>9}"]
    for r in bt['rows']:
        lines.append(f"{r['images']:>6}  {r['loader']:<32}{r['n']:>5}{r['ms']:>9.2f}{r['min_ms']:>9.2f}{r['mean_ms']:>9.2f}{r['cpu_ms']:>9.2f}")
    lines.append(f"resident decode (once): {bt['decode_s']:.1f} s for {bt['decode_items']:,} images; build: "
                 + ', '.join(f"{k} {v:.1f} s" for k,v in res['build_s'].items()))
    for e in bt['break_even']:
        lines.append(f"  {e['images']} images: {e['speedup']:.0f}x faster; the decode = {e['decode_in_item_batches']:.0f} per-item batches, "
                     f"paid back after {e['break_even_batches']:.0f} batches ({e['batches_per_pass']} a pass)")
    bd = bt['resident_breakdown']
    lines.append(f"  one resident batch of {bd['images']}: {bd['next_batch_ms']:.2f} ms = index {bd['index_ms']:.2f} (index_select would take "
                 f"{bd['index_select_ms']:.3f}) + to_device {bd['to_device_ms']:.3f} + IntToFloatTensor {bd['after_batch_ms']:.2f} + fastai/loader overhead;")
    lines.append(f"  a pass's shuffle {bd['pass_shuffle_ms']:.0f} ms ({bd['pass_shuffle_ms']/bd['batches_per_pass']:.2f} ms a batch)")
    lines += [f"2. s per FixMatch step (tutorial setup), {st['threads']} threads", f"{'loader':<32}{'n':>5}{'median':>9}{'min':>9}{'cpu':>9}"]
    for k,r in st['rows'].items(): lines.append(f"{k:<32}{r['n']:>5}{r['s_per_step']:>9.4f}{r['min_s']:>9.4f}{r['cpu_s']:>9.4f}")
    lines.append(f"resident vs per-item: {st['change_pct']:+.1f}% s/step")
    return '\n'.join(lines)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n-res', type=int, default=900, help='resident batches of each size')
    p.add_argument('--n-old', type=int, default=60, help='per-item batches of each size')
    p.add_argument('--chunk', type=int, default=6, help='steps per turn of each learner, the first a warm-up')
    p.add_argument('--rounds', type=int, default=9, help='turns of each learner, the first a warm-up')
    p.add_argument('--json', help='also write the JSON to this file')
    a = p.parse_args()
    res = dict(command=' '.join(['python benchmarks/loader.py', *sys.argv[1:]]), **run(a.n_res, a.n_old, a.chunk, a.rounds))
    print(json.dumps(res, indent=1))
    print(table(res))
    if a.json:
        os.makedirs(os.path.dirname(a.json) or '.', exist_ok=True)
        with open(a.json, 'w') as f: json.dump(res, f, indent=1)
