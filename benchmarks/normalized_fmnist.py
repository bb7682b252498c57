"""FixMatch on tensors normalized before they reach fastai, through the public API, against a hand-written PyTorch loop.

Fashion-MNIST with 4 labels per class; the labeled `dls` come from fastai `Datasets` of already-normalized tensors
(`(x/255 - 0.286)/0.353`, no `Normalize` in any pipeline) and `u_dl` is a plain PyTorch `DataLoader` of the same
normalized unlabeled tensors. A 3-conv CNN, B=32, mu=7, SGD 0.03 with Nesterov momentum 0.9 and weight decay 5e-4,
FixMatch's cosine decay lr·cos(7πk/16K), 300 steps, the labeled images weakly augmented in both; accuracy on the
10,000 test images. The hand-written loop makes the same views with the pixel statistics given explicitly;
`FixMatch(u_dl)` is given nothing and must find the scale itself. Usage:

    python benchmarks/normalized_fmnist.py --seeds 3 --json benchmarks/results/normalized_fmnist_cpu.json
"""
import argparse, json, math, platform, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, torch
from torch.utils.data import DataLoader, TensorDataset
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.cli import with_steps

MEAN,STD,B,MU,LR = 0.286,0.353,32,7,0.03

def cnn(n_out=10):
    "Three conv-BN-ReLU layers (two of stride 2), global pooling, a linear head"
    return nn.Sequential(ConvLayer(1, 32), ConvLayer(32, 64, stride=2), ConvLayer(64, 128, stride=2),
                         nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(128, n_out))

def data(seed):
    "Normalized float tensors: labeled (4 per class), unlabeled (the rest of the training set), test"
    xt,yt,xv,yv = fashion_mnist_arrays()
    norm = lambda x: (torch.from_numpy(np.ascontiguousarray(x)).float().div(255).unsqueeze(1) - MEAN)/STD
    lab,unl = split_labeled(np.arange(len(yt)), yt, 4, seed)
    return norm(xt[lab]),torch.from_numpy(yt[lab]).long(),norm(xt[unl]),norm(xv),torch.from_numpy(yv).long()

def schedule(k, steps): return math.cos(7*math.pi*k/(16*steps))

def run_api(seed, steps):
    "The public API: fastai `Datasets` of normalized tensors, a plain `DataLoader` as `u_dl`, `FixMatch(u_dl)`"
    set_seed(seed)
    xl,yl,xu,xv,yv = data(seed)
    items = [(x, int(y)) for x,y in zip(xl, yl)] + [(x, int(y)) for x,y in zip(xv, yv)]
    dsets = Datasets(items, tfms=[[ItemGetter(0), lambda o: TensorImage(o)], [ItemGetter(1), Categorize()]],
                     splits=[list(range(len(xl))), list(range(len(xl), len(items)))])
    dls = dsets.dataloaders(bs=B, val_bs=512, num_workers=0)
    dls.train = with_steps(dls.train, steps)
    u_dl = DataLoader(TensorDataset(xu), batch_size=B*MU, shuffle=True, drop_last=True)
    opt = partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9, nesterov=True, weight_decay=5e-4))
    learn = Learner(dls, cnn(), metrics=accuracy, opt_func=opt, cbs=[AugmentLabeled(WeakAug()), FixMatch(u_dl)])
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, LR, cbs=ParamScheduler({'lr': lambda p: LR*schedule(p, 1)}))
    secs = time.perf_counter() - start
    return dict(accuracy=float(learn.recorder.values[-1][2]), sec_per_step=secs/steps)

def run_hand(seed, steps):
    "A hand-written PyTorch FixMatch loop on the same data, model, optimizer, views (pixel statistics given) and steps"
    set_seed(seed)
    xl,yl,xu,xv,yv = data(seed)
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule(k, steps))
    weak,strong = WeakAug(),StrongAug(mean=MEAN, std=STD)
    u_dl = DataLoader(TensorDataset(xu), batch_size=B*MU, shuffle=True, drop_last=True)
    u_it,l_idx = iter(u_dl),[]
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        if len(l_idx) < B: l_idx += torch.randperm(len(xl)).tolist()
        i,l_idx = l_idx[:B],l_idx[B:]
        try: u, = next(u_it)
        except StopIteration: u_it = iter(u_dl); u, = next(u_it)
        with torch.no_grad(): x = torch.cat([weak(xl[i]), weak(u), strong(u)])
        logits = model(x)
        pw,ps = logits[B:].chunk(2)
        conf,pl = F.softmax(pw.detach(), 1).max(1)
        lu = (F.cross_entropy(ps, pl, reduction='none')*(conf >= 0.95).float()).mean()
        loss = F.cross_entropy(logits[:B], yl[i]) + lu
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    secs = time.perf_counter() - start
    model.eval()
    with torch.no_grad(): acc = torch.cat([model(o).argmax(1) for o in xv.split(512)]).eq(yv).float().mean().item()
    return dict(accuracy=acc, sec_per_step=secs/steps)

def main(seeds=3, steps=300, fname=None):
    rows = []
    for s in range(seeds):
        for name,run in (('hand-written loop', run_hand), ('FixMatch(u_dl), public API', run_api)):
            r = dict(run(s, steps), method=name, seed=s)
            rows.append(r)
            print(f"{name:<28} seed {s}  accuracy {r['accuracy']:.3f}  {r['sec_per_step']:.3f} s/step", flush=True)
    lines = [f"{'method':<28}{'mean acc':>9}  {'per seed':<22}{'s/step':>7}"]
    for name in dict.fromkeys(r['method'] for r in rows):
        rs = [r for r in rows if r['method'] == name]
        per_seed = ' / '.join(f"{r['accuracy']:.3f}" for r in rs)
        lines.append(f"{name:<28}{np.mean([r['accuracy'] for r in rs]):>9.3f}  {per_seed:<22}"
                     f"{np.median([r['sec_per_step'] for r in rs]):>7.3f}")
    print('\n'.join(lines))
    if fname: Path(fname).write_text(json.dumps(dict(
        command=f'python benchmarks/normalized_fmnist.py --seeds {seeds} --steps {steps} --json {fname}',
        setup='Fashion-MNIST, 4 labels/class, normalized tensors without Normalize, plain DataLoader u_dl, 3-conv CNN, B=32, mu=7, SGD 0.03 nesterov, cos(7pi k/16K)',
        device='cpu', cpu_threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(), runs=rows), indent=1))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--json')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    main(a.seeds, a.steps, a.json)
