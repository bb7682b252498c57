"""Long-tailed Fashion-MNIST: FixMatch (or `--base`) alone and with each long-tail correction (`imb=`), beside supervised training.

The field's CIFAR-10-LT protocol on Fashion-MNIST (`fastai_ssl.data.LongTail`): N₁ = 1,500 labeled and M₁ = 3,000
unlabeled images of the head class, the counts of the next classes decaying exponentially to N₁/γ and M₁/γ with
γ = 100; the unlabeled counts in the same order as the labeled ones ('same') or reversed ('reversed': the labeled head
is the unlabeled tail); the 10,000 balanced test images for evaluation. Every run trains `small_cnn` with
`fastai_ssl.cli.train_ssl` (the code behind `fastai-ssl train --long-tail ... --imb ...`) for the same number of steps,
in `--epochs` epochs (SAW and Adsh update their class statistics at each epoch's end),
B = 32 labeled and μ·B = 64 unlabeled images a step (USB's long-tail settings use μ = 2), Adam with one-cycle; it reports
the balanced accuracy (here equal to accuracy: the test set is balanced) and each class's recall of the trained weights.

    python benchmarks/long_tail.py --steps 500 --epochs 10 --seeds 0 1 --orders reversed --workers 2 --out benchmarks/results/long_tail_cpu.json
    python benchmarks/long_tail.py --base remixmatch --seeds 0 --orders reversed --out benchmarks/results/long_tail_cpu.json   # the corrections of soft guesses

Runs go to a pool of `--workers` processes of one thread each; each finished run is appended to `<out>.runs.jsonl`, so an
interrupted benchmark resumes where it stopped, and a later one (another order or seed) adds to it. The JSON, a readable
table and a plot of the per-class recalls (`<out>` with .png) are written at the end, of every run logged at that budget.
"""
import argparse, json, time
from pathlib import Path
from pool import run_pool

N1,M1,RATIO,BS,MU = 1500,3000,100.,32,2


def methods(imbs, base='fixmatch'):
    "The runs of one order and seed: supervised, the `base` algorithm alone, and with each correction"
    return [('supervised', None), (base, None), *[(base, i) for i in imbs]]

def name(algo, imb): return algo if imb is None else f'{algo}+{imb}'

def run(spec:dict)->dict:
    from fastai_ssl.cli import train_ssl
    from fastai_ssl.data import LongTail
    lt = LongTail(N1, M1, RATIO, spec['order'])
    start = time.perf_counter()
    _,rec = train_ssl('fashion-mnist', spec['algo'], lt, spec['epochs'], spec['steps'], spec['seed'], bs=BS, mu=MU, imb=spec['imb'], quiet=True)
    return dict(spec, method=name(spec['algo'], spec['imb']), balanced_accuracy=rec['balanced_accuracy'], accuracy=rec['accuracy'],
                recalls=rec['recalls'], n_labeled=rec['n_labeled'], n_unlabeled=rec['n_unlabeled'], long_tail=rec['long_tail'],
                bs=BS, mu=MU, lr=rec['lr'], opt=rec['opt'], seconds=time.perf_counter() - start, train_sec_per_step=rec['train_sec_per_step'],
                **{k:v for k,v in rec['history'][-1].items() if k in ('Lx', 'Lu', 'mask', 'pl_acc')})

def key(r): return (r['order'], r['algo'], r['imb'], r['seed'], r['steps'], r['epochs'])

def summary(runs, steps):
    "Per order and method: balanced accuracy per seed and mean, mean recall of the 3 head and the 3 tail classes, and the difference from FixMatch alone and from its own algorithm alone"
    rows = []
    for order in dict.fromkeys(r['order'] for r in runs):
        rs = [r for r in runs if r['order'] == order and r['steps'] == steps]
        base = None
        for m in dict.fromkeys(r['method'] for r in rs):
            mine = sorted((r for r in rs if r['method'] == m), key=lambda r: r['seed'])
            mean = lambda v: sum(v)/len(v)
            recalls = [mean([r['recalls'][k] for r in mine]) for k in range(len(mine[0]['recalls']))]
            row = dict(order=order, method=m, seeds=[r['seed'] for r in mine], balanced_accuracy=[r['balanced_accuracy'] for r in mine],
                       mean=mean([r['balanced_accuracy'] for r in mine]), head_recall=mean(recalls[:3]), tail_recall=mean(recalls[-3:]), recalls=recalls)
            if m == 'fixmatch': base = row['mean']
            rows.append(row)
        alone = {row['method']: row['mean'] for row in rows if row['order'] == order}
        for row in rows:
            if row['order'] != order: continue
            if base is not None: row['vs_fixmatch_points'] = 100*(row['mean'] - base)
            algo = row['method'].split('+')[0]
            if algo != 'supervised' and algo in alone: row['vs_alone_points'] = 100*(row['mean'] - alone[algo])
    return rows

def table(rows)->str:
    lines = ['| unlabeled order | method | seeds | balanced accuracy | mean | vs FixMatch (points) | vs its algorithm alone | head recall | tail recall |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['order']} | {r['method']} | {', '.join(map(str, r['seeds']))} | {' / '.join(f'{v:.3f}' for v in r['balanced_accuracy'])} | "
                     f"{r['mean']:.3f} | {r.get('vs_fixmatch_points', float('nan')):+.1f} | {r.get('vs_alone_points', float('nan')):+.1f} | {r['head_recall']:.3f} | {r['tail_recall']:.3f} |")
    return '\n'.join(lines)

def plot(rows, fname):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    orders = list(dict.fromkeys(r['order'] for r in rows))
    fig,axs = plt.subplots(1, len(orders), figsize=(6.5*len(orders), 4), squeeze=False)
    for ax,order in zip(axs[0], orders):
        for i,r in enumerate(r for r in rows if r['order'] == order):   # 20 colours, a marker for each half: no two methods alike
            ax.plot(range(len(r['recalls'])), r['recalls'], marker='os'[i//10 % 2], color=plt.cm.tab20.colors[(2*i + i//10) % 20], label=f"{r['method']} ({r['mean']:.3f})")
        ax.set(title=f'Fashion-MNIST-LT, γ={RATIO:g}, unlabeled {order}', xlabel='class (head → tail of the labeled set)', ylabel='recall (mean of seeds)', ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(fname, dpi=100); plt.close(fig)

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=500)
    p.add_argument('--epochs', type=int, default=10, help='epochs the steps are divided into: SAW and Adsh update their class statistics at the end of each')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--orders', nargs='+', default=['reversed'], choices=['same', 'reversed', 'uniform'])
    p.add_argument('--imbs', nargs='+', default=None, help="the corrections (default: every one in the catalogue that `--base` takes)")
    p.add_argument('--base', default='fixmatch', help='the algorithm the corrections are given to (fixmatch, or remixmatch: the corrections of soft guesses)')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--out', default='benchmarks/results/long_tail_cpu.json')
    a = p.parse_args()
    from fastai_ssl.imbalance import IMBALANCE
    import fastai_ssl.all
    imbs = a.imbs or sorted(i for i,c in IMBALANCE.items() if a.base != 'remixmatch' or c.soft_labels)
    out = Path(a.out)
    todo = [dict(order=o, algo=al, imb=i, seed=s, steps=a.steps, epochs=a.epochs) for o in a.orders for s in a.seeds for al,i in methods(imbs, a.base)]
    done = run_pool(todo, run, out.with_suffix('.runs.jsonl'), key, a.workers, say=lambda r: print(f"{r['order']:>8} {r['method']:>18} seed {r['seed']}: {r['balanced_accuracy']:.4f} ({r['seconds']:.0f} s)", flush=True))
    runs = [r for r in done if (r['steps'], r['epochs']) == (a.steps, a.epochs)]   # every order and seed measured at this budget, these runs' and earlier ones'
    rows = summary(runs, a.steps)
    import torch, fastai
    out.write_text(json.dumps(dict(steps=a.steps, epochs=a.epochs, bs=BS, mu=MU, n1=N1, m1=M1, ratio=RATIO, data='Fashion-MNIST-LT, 10,000 balanced test images',
                                   model='small_cnn', opt='adam (fit_one_cycle)', torch=torch.__version__, fastai=fastai.__version__,
                                   threads_per_run=1, summary=rows, runs=runs), indent=1) + '\n')
    plot(rows, out.with_suffix('.png'))
    print(table(rows))

if __name__ == '__main__': main()
