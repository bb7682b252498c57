"""Which recipe closes the most of the label gap on Fashion-MNIST at 4 labels per class, on a CPU.

Every run trains `small_cnn` with `fastai_ssl.cli.train_ssl` (the code behind `fastai-ssl train`) for the same
number of steps, and reports the accuracy of the weights themselves (`raw`) and of exponential moving averages of
them (`ema0.9`, `ema0.99`, `ema0.999`: as `EMAEval` keeps them, the decay lowered in the first steps), from the same run. Supervised runs on the 40 labeled images
and on all 60,000 labels, at the same budget and for each seed, bound the gap; a run's share of the gap is
(accuracy - supervised) / (all labels - supervised), with the bounds evaluated the same way (raw or the same average).

    python benchmarks/recipe.py --steps 2000 --seeds 2 --workers 2 --out benchmarks/results/recipe_cpu.json

Runs go to a pool of `--workers` processes of one thread each (the per-core figure); each finished run is
appended to `<out>.runs.jsonl`, so an interrupted benchmark resumes where it stopped. The JSON, a readable table
and a plot (`<out>` with .png) are written at the end.
"""
import argparse, json, os, sys, time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ALGOS = ('fixmatch', 'freematch', 'flexmatch', 'softmatch', 'adamatch')

def plan(algos, seeds, strengths=('fixmatch',), opts=('adam',)):
    "The runs, cheapest and most needed first: the bounds, then each algorithm with the default recipe, then the other recipes (FixMatch)"
    runs = [dict(algo='supervised', n_per_class=n, seed=s, opt=o, strength='fixmatch') for o in opts for s in seeds for n in (4, None)]
    runs += [dict(algo=a, n_per_class=4, seed=s, opt=opts[0], strength=strengths[0]) for a in algos for s in seeds]
    runs += [dict(algo='fixmatch', n_per_class=4, seed=s, opt=o, strength=st) for st in strengths for o in opts for s in seeds
             if (st, o) != (strengths[0], opts[0])]
    return runs

def key(r): return (r['algo'], r['n_per_class'], r['seed'], r['opt'], r['strength'], r['steps'])

def _init():
    import torch
    torch.set_num_threads(1)

def run(spec:dict, emas)->dict:
    "One training run of `spec`; its record with the accuracy of the weights (`raw`) and of each average of them in `emas`"
    import warnings; warnings.filterwarnings('ignore')
    from fastai.callback.core import Callback
    from fastai_ssl.cli import train_ssl
    from fastai_ssl.teacher import EMATeacher
    class Average(Callback):
        "An average of the weights as `EMAEval` keeps it (the same decay, lowered in the first steps), without standing in for the model"
        def __init__(self, ema): self.ema,self.n = ema,0
        def before_fit(self): self.average = EMATeacher(self.learn.model, self.ema)
        def after_step(self): self.n += 1; self.average.update(self.learn.model, self.n)
    avgs = [Average(e) for e in emas]
    learn,rec = train_ssl('fashion-mnist', spec['algo'], spec['n_per_class'], 1, spec['steps'], spec['seed'], opt=spec['opt'],
                          strength=spec['strength'], cbs=avgs, quiet=True)
    acc = dict(raw=rec['accuracy'])
    model = learn.model
    with learn.no_bar(), learn.no_logging(), learn.removed_cbs(avgs):   # `validate` runs `before_fit`
        for a in avgs:
            learn.model = a.average.model
            acc[f'ema{a.ema:g}'] = float(learn.validate()[1])
    learn.model = model
    return dict(spec, **{f'accuracy_{k}': v for k,v in acc.items()}, n_labeled=rec['n_labeled'],
                n_unlabeled=rec['n_unlabeled'], n_valid=rec['n_valid'], lr=rec['lr'], bs=rec['bs'], mu=rec['mu'],
                seconds=rec['seconds'], train_sec_per_step=rec['train_sec_per_step'],
                **{k:v for k,v in rec['history'][-1].items() if k in ('Lx', 'Lu', 'mask', 'pl_acc')})

def recipe(r): return f"{r['opt']}, strong '{r['strength']}'"

def modes(rows): return [k[len('accuracy_'):] for k in rows[0] if k.startswith('accuracy_')]

def summarise(rows):
    "Per (steps, algorithm, recipe): mean accuracies over seeds and the share of the gap, each seed against its own bounds"
    import numpy as np
    ms = modes(rows)
    bounds = {(r['steps'], r['seed'], r['opt'], r['n_per_class']): r for r in rows if r['algo'] == 'supervised'}
    groups = {}
    for r in rows:
        if r['algo'] == 'supervised': continue
        lo,hi = bounds.get((r['steps'], r['seed'], r['opt'], 4)),bounds.get((r['steps'], r['seed'], r['opt'], None))
        if lo is None or hi is None: continue
        g = groups.setdefault((r['steps'], r['algo'], r['opt'], r['strength']), dict(runs=[]))
        g['runs'].append(dict(seed=r['seed'], **{m: r[f'accuracy_{m}'] for m in ms},
                              **{f'share_{m}': (r[f'accuracy_{m}'] - lo[f'accuracy_{m}'])/(hi[f'accuracy_{m}'] - lo[f'accuracy_{m}']) for m in ms},
                              **{f'sup_{m}': lo[f'accuracy_{m}'] for m in ms}, **{f'all_{m}': hi[f'accuracy_{m}'] for m in ms}))
    out = []
    for (steps,algo,opt,strength),g in groups.items():
        rs = g['runs']
        mean = lambda k: float(np.mean([o[k] for o in rs]))
        rs = sorted(rs, key=lambda o: o['seed'])
        out.append(dict(steps=steps, algo=algo, opt=opt, strength=strength, seeds=[o['seed'] for o in rs],
                        **{k: mean(k) for k in rs[0] if k != 'seed'},
                        **{f'{k}_runs': [o[k] for o in rs] for k in ('raw', 'sup_raw', 'all_raw')}))
    return sorted(out, key=lambda o: (o['steps'], -o['share_raw']))

def table(summary, ms)->str:
    "The summary as text: accuracy and share of the gap closed, per evaluation (`raw` weights, `emaD` their average of decay D)"
    lines = [f"{'steps':>6} {'method':<10} {'recipe':<24} {'seeds':>5} " + ' '.join(f"{'acc ' + m:>13}" for m in ms) + ' '
             + ' '.join(f"{'gap closed ' + m:>20}" for m in ms)]
    for s in summary:
        lines.append(f"{s['steps']:>6} {s['algo']:<10} {recipe(s):<24} {len(s['seeds']):>5} " + ' '.join(f"{s[m]:>13.3f}" for m in ms) + ' '
                     + ' '.join(f"{s['share_' + m]:>20.0%}" for m in ms))
    for st in sorted({s['steps'] for s in summary}):
        b = next(s for s in summary if s['steps'] == st)
        lines.append(f"{st} steps, supervised on 40 labels / on all labels (mean over seeds, {b['opt']}): "
                     + ', '.join(f"{m} {b['sup_' + m]:.3f} / {b['all_' + m]:.3f}" for m in ms))
    return '\n'.join(lines)

def plot(summary, fname):
    "Bars of the share of the gap each method and recipe closes, the weights evaluated (as `fastai-ssl train` does), each seed a dot"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt, numpy as np
    steps = sorted({s['steps'] for s in summary})
    fig,axs = plt.subplots(len(steps), 1, figsize=(8, 0.45*len(summary) + 1.3*len(steps)), squeeze=False)
    for ax,st in zip(axs[:, 0], steps):
        ss = sorted([s for s in summary if s['steps'] == st], key=lambda s: s['share_raw'])
        y = np.arange(len(ss))
        ax.barh(y, [s['share_raw'] for s in ss], 0.6, color='#3182bd')
        for i,s in enumerate(ss):
            ax.plot([(s['raw_runs'][k] - s['sup_raw_runs'][k])/(s['all_raw_runs'][k] - s['sup_raw_runs'][k]) for k in range(len(s['seeds']))], [i]*len(s['seeds']), 'k.', ms=6)
        ax.set_yticks(y, [f"{s['algo']} ({recipe(s)})" for s in ss], fontsize=8)
        ax.axvline(0.5, color='grey', ls='--', lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel('share of the label gap closed (0: supervised on 40 labels, 1: on all)\nbar: mean of the seeds; dots: each seed', fontsize=9)
        ax.set_title(f"Fashion-MNIST, 4 labels per class, {st} steps, small CNN on a CPU", fontsize=10)
    fig.tight_layout(); fig.savefig(fname, dpi=100); plt.close(fig)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, nargs='+', default=[2000])
    p.add_argument('--seeds', type=int, default=2)
    p.add_argument('--algos', nargs='+', default=list(ALGOS))
    p.add_argument('--strengths', nargs='+', default=['fixmatch', 'usb'], help='the first is used for every algorithm, the others for FixMatch')
    p.add_argument('--opts', nargs='+', default=['adam'], help='the first is used for every algorithm, the others for FixMatch')
    p.add_argument('--emas', type=float, nargs='+', default=[0.9, 0.99, 0.999], help='decays of the averages of the weights evaluated beside them')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--out', default='benchmarks/results/recipe_cpu.json')
    p.add_argument('--report', action='store_true', help='run nothing: write the JSON, table and plot of the runs in <out>.runs.jsonl')
    a = p.parse_args(argv)
    out = Path(a.out); log = out.with_suffix('.runs.jsonl')
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    have = {key(r) for r in done}
    todo = [dict(r, steps=st) for st in a.steps for r in plan(a.algos, range(a.seeds), a.strengths, a.opts)]
    todo = [] if a.report else [r for r in todo if key(r) not in have]
    print(f"{len(done)} runs done, {len(todo)} to run on {a.workers} workers", flush=True)
    t0 = time.time()
    with ProcessPoolExecutor(max(a.workers, 1), mp_context=get_context('spawn'), initializer=_init) as ex:
        futs = {ex.submit(run, r, a.emas): r for r in todo}
        for f in as_completed(futs):
            r = f.result()
            done.append(r)
            with open(log, 'a') as fh: fh.write(json.dumps(r) + '\n')
            print(f"[{time.time()-t0:6.0f} s] {r['steps']} steps {r['algo']:<10} {r['n_per_class'] or 'all'} labels/class seed {r['seed']} "
                  f"{recipe(r)}: " + ', '.join(f"{m} {r['accuracy_' + m]:.4f}" for m in modes([r])) + f" ({r['train_sec_per_step']:.3f} s/step)", flush=True)
    summary = summarise(done)
    import torch, platform
    meta = dict(command='python benchmarks/recipe.py ' + ' '.join(sys.argv[1:] if argv is None else argv), device='cpu',
                threads_per_run=1, workers=a.workers, cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                data='fashion-mnist', model='small_cnn', emas=a.emas)
    out.write_text(json.dumps(dict(meta, summary=summary, runs=sorted(done, key=key_sort)), indent=1))
    print(table(summary, modes(done)))
    plot(summary, out.with_suffix('.png'))
    print(f"wrote {out} and {out.with_suffix('.png')}")

def key_sort(r): return (r['steps'], r['algo'], r['n_per_class'] or 0, r['opt'], r['strength'], r['seed'])

if __name__ == '__main__': main()
