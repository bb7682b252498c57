"""Operators dispatched per training step of each algorithm: a CPU-side proxy for the kernel launches of a GPU step.

Counted with a `TorchDispatchMode` around whole training steps (from the first `before_batch` to `after_step`) of a
`Learner` on the bundled digits (small CNN, batch 16, mu=7, Adam), after one warm-up step; each operator the step
dispatches (views, forward, losses, backward, optimizer) counts once. On a CUDA device most of them become one kernel
launch each, so fewer operators per step is a faster step where launches, not arithmetic, bound it (issue 17). The counts
do not depend on the machine's load.

The unlabeled batch is drawn inside the step (in the callback's `before_batch`), so its loading counts: `ops_per_step`
is with the loaders `digits_dls(resident=...)` builds (`--resident/--no-resident`; default: the library's, images decoded
once and kept on the device, a batch one index), and unless `--no-resident`, `ops_per_step_item_loader` is the same step
with the per-item PIL loader (`resident=False`), counted in the same run.

The views (`WeakAug`, `StrongAug`: every `Captured` augmentation) are counted apart as well: `view_ops` operators in
`view_calls` calls per step. On a CUDA device each call replays a CUDA graph: one copy into the graph's input, one replay,
one clone of its output. `launches_graphed` projects the step's launches from that: `ops_per_step - view_ops +
3*view_calls`. It is a projection from CPU counts, not a GPU measurement. Usage:

    python benchmarks/ops.py --json benchmarks/results/ops_cpu.json
"""
import argparse, json, platform, statistics, sys, warnings
warnings.filterwarnings('ignore')
from collections import Counter
from pathlib import Path
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.cli import available_algos, _callbacks

class CountOps(TorchDispatchMode):
    "Count the operators dispatched while active, by name"
    def __init__(self): super().__init__(); self.ops,self.depth,self.view_ops,self.view_calls = Counter(),0,0,0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

@contextmanager
def views_counted(probe):
    "While active, the operators each step dispatches inside the outermost `Captured` calls (the views) are also counted apart, in `probe.mode`"
    orig = Captured.__call__
    def call(self, *args, **kwargs):
        m = getattr(probe, 'mode', None)
        if m is None or m.depth: return orig(self, *args, **kwargs)
        m.depth,before = 1,sum(m.ops.values())
        try: return orig(self, *args, **kwargs)
        finally: m.depth,m.view_ops,m.view_calls = 0,m.view_ops + sum(m.ops.values()) - before,m.view_calls + 1
    Captured.__call__ = call
    try: yield
    finally: Captured.__call__ = orig

class StepOps(Callback):
    "Operators dispatched by each training step, from before every other callback's `before_batch` to the end of `after_step`"
    order = -100
    def before_fit(self): self.steps = []
    def before_batch(self):
        if not self.training: return
        self.mode = CountOps()
        self.mode.__enter__()
    def after_step(self):
        if getattr(self, 'mode', None) is None: return
        self.mode.__exit__(None, None, None)
        self.steps.append(self.mode)
        self.mode = None
    def after_cancel_batch(self): self.after_step()

def count(algo:str, steps:int=4, resident:bool|None=None):
    "Median operators per step of `algo` ('supervised' or a name in `ALGOS`) over `steps` steps after one warm-up step, and the most frequent operators; `resident` is passed to `digits_dls`"
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=7, resident=resident)
    cbs = _callbacks(algo, u_dl, flip=False)   # the callback with its defaults, no flips on digits
    probe = StepOps()
    learn = Learner(dls, small_cnn(), cbs=cbs + [probe])
    dls.train = with_steps(dls.train, steps+1)
    with learn.no_bar(), learn.no_logging(), views_counted(probe): learn.fit(1, 1e-3)
    steps = probe.steps[1:]
    med = lambda f: int(statistics.median(f(o) for o in steps))
    totals = [sum(o.ops.values()) for o in steps]
    return dict(algo=algo, u_dl=type(u_dl).__name__, ops_per_step=int(statistics.median(totals)), steps=totals,
                view_ops=med(lambda o: o.view_ops), view_calls=med(lambda o: o.view_calls),
                launches_graphed=med(lambda o: sum(o.ops.values()) - o.view_ops + 3*o.view_calls), top=steps[-1].ops.most_common(8))

def measure(algo:str, resident:bool|None=None):
    "`count` with the loaders `resident` gives, and unless `resident is False`, the per-item loader's count beside it"
    r = count(algo, resident=resident)
    if resident is not False:
        o = count(algo, resident=False)
        r.update(ops_per_step_item_loader=o['ops_per_step'], steps_item_loader=o['steps'], top_item_loader=o['top'])
    return r

def main(algos=None, fname=None, resident=None, command=None):
    rows = [measure(a, resident) for a in algos or ['supervised', *available_algos()]]
    base = rows[0]['ops_per_step'] if rows[0]['algo'] == 'supervised' else None
    both = 'ops_per_step_item_loader' in rows[0]
    print(f"{'method':<12}{'ops/step':>10}" + (f"{'item loader':>13}{'difference':>12}" if both else '') +
          f"{'in views':>10}{'graphed*':>10}{'× supervised':>14}  most frequent")
    for r in rows:
        rel = f"{r['ops_per_step']/base:.1f}" if base else ''
        cols = f"{r['ops_per_step_item_loader']:>13}{r['ops_per_step']-r['ops_per_step_item_loader']:>+12}" if both else ''
        print(f"{r['algo']:<12}{r['ops_per_step']:>10}{cols}{r['view_ops']:>10}{r['launches_graphed']:>10}{rel:>14}  {', '.join(f'{k} {v}' for k,v in r['top'][:5])}")
    print("* launches projected for a CUDA device where each view is a CUDA-graph replay (copy in, replay, clone out): ops/step - in views + 3 per view call")
    setup = 'digits, small_cnn, bs 16, mu 7, Adam; median of 4 steps after 1 warm-up'
    setup += f"; ops_per_step: digits_dls(resident={resident}) (u_dl: {rows[0]['u_dl']})"
    setup += '; view_ops/view_calls: inside the views (Captured calls); launches_graphed: ops_per_step - view_ops + 3*view_calls, projected'
    if both: setup += '; ops_per_step_item_loader: digits_dls(resident=False), per-item PIL loading inside the step, same run'
    if fname: Path(fname).write_text(json.dumps(dict(
        command=command or f'python benchmarks/ops.py --json {fname}', setup=setup, resident=resident,
        torch=torch.__version__, python=platform.python_version(), rows=rows), indent=1))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--algos', nargs='+', choices=['supervised', *available_algos()])
    p.add_argument('--json')
    p.add_argument('--resident', action=argparse.BooleanOptionalAction, default=None,
                   help="passed to digits_dls: images decoded once and kept on the device, or the per-item loader (default: the library's default)")
    a = p.parse_args()
    torch.set_num_threads(1)
    main(a.algos, a.json, a.resident, ' '.join(['python benchmarks/ops.py', *sys.argv[1:]]))
