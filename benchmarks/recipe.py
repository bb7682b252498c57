"""Which recipe closes the most of the label gap on Fashion-MNIST at 4 labels per class, on a CPU.

Every run trains `small_cnn` with `fastai_ssl.cli.train_ssl` (the code behind `fastai-ssl train`) for the same
number of steps, and reports two accuracies: of the weights themselves, and of their exponential moving average
(`EMAEval`, decay 0.999, lowered in the first steps), from the same run. Supervised runs on the 40 labeled images
and on all 60,000 labels, at the same budget and for each seed, bound the gap; a run's share of the gap is
(accuracy - supervised) / (all labels - supervised), with the bounds evaluated the same way (raw or EMA).

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

def run(spec:dict, ema:float)->dict:
    "One training run of `spec`; its record with both accuracies"
    import warnings; warnings.filterwarnings('ignore')
    from fastai_ssl.cli import train_ssl
    _,rec = train_ssl('fashion-mnist', spec['algo'], spec['n_per_class'], 1, spec['steps'], spec['seed'], opt=spec['opt'],
                      strength=spec['strength'], ema=ema, quiet=True)
    return dict(spec, accuracy_ema=rec['accuracy'], accuracy_raw=rec['accuracy_raw'], n_labeled=rec['n_labeled'],
                n_unlabeled=rec['n_unlabeled'], n_valid=rec['n_valid'], lr=rec['lr'], bs=rec['bs'], mu=rec['mu'],
                seconds=rec['seconds'], train_sec_per_step=rec['train_sec_per_step'],
                **{k:v for k,v in rec['history'][-1].items() if k in ('Lx', 'Lu', 'mask', 'pl_acc')})

def recipe(r): return f"{r['opt']}, strong '{r['strength']}'"

def summarise(rows):
    "Per (steps, algorithm, recipe): mean accuracies over seeds and the share of the gap, each seed against its own bounds"
    import numpy as np
    bounds = {(r['steps'], r['seed'], r['opt'], r['n_per_class']): r for r in rows if r['algo'] == 'supervised'}
    groups = {}
    for r in rows:
        if r['algo'] == 'supervised': continue
        lo,hi = bounds.get((r['steps'], r['seed'], r['opt'], 4)),bounds.get((r['steps'], r['seed'], r['opt'], None))
        if lo is None or hi is None: continue
        g = groups.setdefault((r['steps'], r['algo'], r['opt'], r['strength']), dict(runs=[]))
        g['runs'].append(dict(seed=r['seed'], **{f'{m}': r[f'accuracy_{m}'] for m in ('raw', 'ema')},
                              **{f'share_{m}': (r[f'accuracy_{m}'] - lo[f'accuracy_{m}'])/(hi[f'accuracy_{m}'] - lo[f'accuracy_{m}']) for m in ('raw', 'ema')},
                              **{f'sup_{m}': lo[f'accuracy_{m}'] for m in ('raw', 'ema')}, **{f'all_{m}': hi[f'accuracy_{m}'] for m in ('raw', 'ema')})
                         )
    out = []
    for (steps,algo,opt,strength),g in groups.items():
        rs = g['runs']
        mean = lambda k: float(np.mean([o[k] for o in rs]))
        out.append(dict(steps=steps, algo=algo, opt=opt, strength=strength, seeds=sorted(o['seed'] for o in rs),
                        **{k: mean(k) for k in ('raw', 'ema', 'share_raw', 'share_ema', 'sup_raw', 'sup_ema', 'all_raw', 'all_ema')}))
    return sorted(out, key=lambda o: (o['steps'], -o['share_ema']))

def table(summary)->str:
    lines = [f"{'steps':>6} {'method':<10} {'recipe':<24} {'seeds':>5} {'acc (raw)':>10} {'acc (EMA)':>10} {'gap closed (raw)':>17} {'gap closed (EMA)':>17}"]
    for s in summary:
        lines.append(f"{s['steps']:>6} {s['algo']:<10} {recipe(s):<24} {len(s['seeds']):>5} {s['raw']:>10.3f} {s['ema']:>10.3f} "
                     f"{s['share_raw']:>16.0%} {s['share_ema']:>16.0%}")
    for st in sorted({s['steps'] for s in summary}):
        b = next(s for s in summary if s['steps'] == st)
        lines.append(f"{st} steps, mean over seeds: supervised on 40 labels {b['sup_raw']:.3f} raw / {b['sup_ema']:.3f} EMA; "
                     f"on all labels {b['all_raw']:.3f} / {b['all_ema']:.3f} ({b['opt']})")
    return '\n'.join(lines)

def plot(summary, fname):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt, numpy as np
    fig,axs = plt.subplots(1, len({s['steps'] for s in summary}), figsize=(9, 0.45*len(summary) + 1.6), squeeze=False)
    for ax,st in zip(axs[0], sorted({s['steps'] for s in summary})):
        ss = [s for s in summary if s['steps'] == st][::-1]
        y = np.arange(len(ss))
        ax.barh(y - 0.2, [s['share_raw'] for s in ss], 0.4, label='weights', color='#9ecae1')
        ax.barh(y + 0.2, [s['share_ema'] for s in ss], 0.4, label='EMA of the weights (0.999)', color='#3182bd')
        ax.set_yticks(y, [f"{s['algo']}\n{recipe(s)}" for s in ss], fontsize=8)
        ax.axvline(0.5, color='grey', ls='--', lw=1)
        ax.set_xlabel('share of the label gap closed (mean of seeds)')
        ax.set_title(f"Fashion-MNIST, 4 labels/class, {st} steps on a CPU", fontsize=10)
        ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout(); fig.savefig(fname, dpi=100); plt.close(fig)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, nargs='+', default=[2000])
    p.add_argument('--seeds', type=int, default=2)
    p.add_argument('--algos', nargs='+', default=list(ALGOS))
    p.add_argument('--strengths', nargs='+', default=['fixmatch', 'usb'], help='the first is used for every algorithm, the others for FixMatch')
    p.add_argument('--opts', nargs='+', default=['adam'], help='the first is used for every algorithm, the others for FixMatch')
    p.add_argument('--ema', type=float, default=0.999)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--out', default='benchmarks/results/recipe_cpu.json')
    a = p.parse_args(argv)
    out = Path(a.out); log = out.with_suffix('.runs.jsonl')
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    have = {key(r) for r in done}
    todo = [dict(r, steps=st) for st in a.steps for r in plan(a.algos, range(a.seeds), a.strengths, a.opts)]
    todo = [r for r in todo if key(r) not in have]
    print(f"{len(done)} runs done, {len(todo)} to run on {a.workers} workers", flush=True)
    t0 = time.time()
    with ProcessPoolExecutor(a.workers, mp_context=get_context('spawn'), initializer=_init) as ex:
        futs = {ex.submit(run, r, a.ema): r for r in todo}
        for f in as_completed(futs):
            r = f.result()
            done.append(r)
            with open(log, 'a') as fh: fh.write(json.dumps(r) + '\n')
            print(f"[{time.time()-t0:6.0f} s] {r['steps']} steps {r['algo']:<10} {r['n_per_class'] or 'all'} labels/class seed {r['seed']} "
                  f"{recipe(r)}: raw {r['accuracy_raw']:.4f} EMA {r['accuracy_ema']:.4f} ({r['train_sec_per_step']:.3f} s/step)", flush=True)
    summary = summarise(done)
    import torch, platform
    meta = dict(command='python benchmarks/recipe.py ' + ' '.join(sys.argv[1:] if argv is None else argv), device='cpu',
                threads_per_run=1, workers=a.workers, cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                data='fashion-mnist', model='small_cnn', ema=a.ema)
    out.write_text(json.dumps(dict(meta, summary=summary, runs=sorted(done, key=key_sort)), indent=1))
    print(table(summary))
    plot(summary, out.with_suffix('.png'))
    print(f"wrote {out} and {out.with_suffix('.png')}")

def key_sort(r): return (r['steps'], r['algo'], r['n_per_class'] or 0, r['opt'], r['strength'], r['seed'])

if __name__ == '__main__': main()
