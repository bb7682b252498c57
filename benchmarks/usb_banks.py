"""SimMatch and CoMatch here and in USB 0.3.2 (`semilearn`, the reference implementation) at equal budget, FixMatch as the control.

Both sides train the same `small_cnn` (the same initial weights per seed) on the same split of Fashion-MNIST (4 labels per
class, the other 59,960 training images unlabeled, the 10,000 test images for evaluation), with B=32 labeled and μ·B=224
unlabeled images a step, the same views (`WeakAug`/`StrongAug` of `fastai_ssl.augment`, flips included, the labeled images
weakly augmented), SGD 0.03 with Nesterov momentum 0.9 and weight decay 5e-4 on every parameter, and USB's schedule
lr·cos(7πk/16K) over the K steps. The raw weights are evaluated (not an average of them). Each algorithm runs with the
hyperparameters of the paper and of USB's CIFAR-10 configuration on both sides (`HP`): ours are its defaults.

- fastai_ssl: a `Learner` with the algorithm's callback, as `fastai-ssl train` builds it (`cli._callbacks`).
- USB: its algorithm class driven step by step through `usb_adapter.py` (install below), fed the same loaders' batches,
  with each labeled item's position for SimMatch's bank; one USB epoch is one pass over the 40 labeled images.

    /work/main/.venv/bin/pip install --no-deps --target /tmp/usb_pkgs semilearn==0.3.2
    python benchmarks/usb_banks.py --steps 300 --seeds 0 1 --workers 2 --out benchmarks/results/usb_banks_cpu.json

Runs go to a pool of `--workers` processes of one thread each; each finished run is appended to `<out>.runs.jsonl`, so an
interrupted benchmark resumes where it stopped. The JSON and a readable table are written at the end.
"""
import argparse, json, math, sys, time
from pathlib import Path
from pool import run_pool

ALGOS = ('simmatch', 'comatch', 'fixmatch')
LR,BS,MU = 0.03,32,7

def hp(algo:str, bs:int, mu:int)->dict:
    "USB's arguments for `algo`: the paper's and USB's CIFAR-10 configuration, CoMatch's memory in USB's unit (batches) for 2,560 items"
    return dict(fixmatch=dict(p_cutoff=0.95, lambda_u=1.),
                simmatch=dict(p_cutoff=0.95, T=0.1, proj_size=128, smoothing_alpha=0.9, da_len=32, in_loss_ratio=1., lambda_u=1.),
                comatch=dict(p_cutoff=0.95, T=0.2, proj_size=64, queue_batch=2560//((1+mu)*bs), smoothing_alpha=0.9, da_len=32,
                             contrast_p_cutoff=0.8, contrast_loss_ratio=1., lambda_u=1.))[algo]


def _setup(seed, steps, bs, mu):
    "The labeled loaders (`steps` batches a pass), the unlabeled loader and the initial model of `seed`"
    from fastai_ssl.all import fashion_mnist_dls, with_steps, small_cnn
    from fastai.vision.all import set_seed
    set_seed(seed)
    dls,u_dl = fashion_mnist_dls(n_per_class=4, bs=bs, mu=mu, seed=seed)
    dls.train = with_steps(dls.train, steps)
    set_seed(seed)
    return dls,u_dl,small_cnn(1, 10)

def _accuracy(dls, model)->float:
    from fastai.vision.all import Learner, accuracy, CrossEntropyLossFlat
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    with learn.no_bar(), learn.no_logging(): return float(learn.validate()[1])

def ours(algo, seed, steps, bs, mu)->float:
    "fastai_ssl's `algo` with its defaults, through a `Learner`"
    from fastai.vision.all import Learner, ParamScheduler
    from fastai_ssl.cli import _callbacks, OPTS
    dls,u_dl,model = _setup(seed, steps, bs, mu)
    learn = Learner(dls, model, opt_func=OPTS['sgd'][0], cbs=_callbacks(algo, u_dl, flip=True, aug_labeled=True))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, LR, cbs=ParamScheduler({'lr': lambda pos: LR*math.cos(7*math.pi*pos/16)}))
    return _accuracy(dls, model)

def usb(algo, seed, steps, bs, mu)->float:
    "USB 0.3.2's `algo`, fed the same loaders and views"
    import torch
    from torch import Tensor
    from fastai_ssl.all import WeakAug, StrongAug
    from fastai_ssl.unlabeled import batch_index
    sys.path.insert(0, str(Path(__file__).parent))
    from usb_adapter import usb_algorithm, usb_step, usb_eval_model
    dls,u_dl,model = _setup(seed, steps, bs, mu)
    alg = usb_algorithm(algo, model, model[-1].in_features, 10, steps, hp(algo, bs, mu), len(dls.train_ds), bs, mu, seed)
    for g in alg.optimizer.param_groups: g['weight_decay'] = 5e-4   # every parameter, as torch's SGD on the fastai side
    weak,strong = WeakAug(flip=True),StrongAug(flip=True).setup(dls)
    def unlabeled():
        while True: yield from u_dl
    u = unlabeled()
    plain = lambda t: t.as_subclass(Tensor)
    for i,(x,y) in enumerate(dls.train):
        xu = next(u)[0]
        usb_step(alg, dict(idx_lb=torch.tensor(batch_index(dls.train, i)), x_lb=plain(weak(x)), y_lb=plain(y).long(),
                           x_ulb_w=plain(weak(xu)), x_ulb_s=plain(strong(xu)), x_ulb_s_0=plain(strong(xu)), x_ulb_s_1=plain(strong(xu))))
    return _accuracy(dls, usb_eval_model(alg))

def run(spec:dict)->dict:
    start = time.perf_counter()
    acc = (ours if spec['lib'] == 'fastai_ssl' else usb)(spec['algo'], spec['seed'], spec['steps'], BS, MU)
    secs = time.perf_counter() - start
    return dict(spec, accuracy=acc, seconds=secs, bs=BS, mu=MU, lr=LR, hp=hp(spec['algo'], BS, MU))

def key(r): return (r['lib'], r['algo'], r['seed'], r['steps'])

def summary(runs, steps):
    "Per algorithm: each library's accuracy per seed and mean, and the difference of the means (points)"
    rows = []
    for a in ALGOS:
        acc = {lib: {r['seed']: r['accuracy'] for r in runs if (r['lib'], r['algo'], r['steps']) == (lib, a, steps)} for lib in ('fastai_ssl', 'usb')}
        seeds = sorted(set(acc['fastai_ssl']) & set(acc['usb']))
        if not seeds: continue
        mean = {lib: sum(acc[lib][s] for s in seeds)/len(seeds) for lib in acc}
        rows.append(dict(algo=a, seeds=seeds, fastai_ssl=[acc['fastai_ssl'][s] for s in seeds], usb=[acc['usb'][s] for s in seeds],
                         fastai_ssl_mean=mean['fastai_ssl'], usb_mean=mean['usb'], difference_points=100*(mean['fastai_ssl']-mean['usb'])))
    return rows

def table(rows)->str:
    lines = ['| algorithm | seeds | fastai_ssl | USB 0.3.2 | mean: fastai_ssl | mean: USB | difference (points) |', '|---|---|---|---|---|---|---|']
    f = lambda v: ' / '.join(f'{o:.3f}' for o in v)
    for r in rows: lines.append(f"| {r['algo']} | {', '.join(map(str, r['seeds']))} | {f(r['fastai_ssl'])} | {f(r['usb'])} | "
                                f"{r['fastai_ssl_mean']:.3f} | {r['usb_mean']:.3f} | {r['difference_points']:+.1f} |")
    return '\n'.join(lines)

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--algos', nargs='+', default=list(ALGOS), choices=ALGOS)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--out', default='benchmarks/results/usb_banks_cpu.json')
    a = p.parse_args()
    out = Path(a.out)
    todo = [dict(lib=lib, algo=al, seed=s, steps=a.steps) for al in a.algos for s in a.seeds for lib in ('fastai_ssl', 'usb')]
    done = run_pool(todo, run, out.with_suffix('.runs.jsonl'), key, a.workers, say=lambda r: print(f"{r['lib']:>10} {r['algo']:>8} seed {r['seed']}: {r['accuracy']:.4f} ({r['seconds']:.0f} s)", flush=True))
    rows = summary(done, a.steps)
    import torch, fastai
    out.write_text(json.dumps(dict(steps=a.steps, bs=BS, mu=MU, lr=LR, data='Fashion-MNIST, 4 labels per class, 10,000 test images',
                                   model='small_cnn', usb='semilearn 0.3.2', torch=torch.__version__, fastai=fastai.__version__,
                                   threads_per_run=1, summary=rows, runs=[r for r in done if r['steps'] == a.steps]), indent=1) + '\n')
    print(table(rows))

if __name__ == '__main__': main()
