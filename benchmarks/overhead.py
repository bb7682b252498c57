"""What the fastai callbacks cost per training step.

1. A hand-written PyTorch FixMatch loop against `Learner(..., cbs=FixMatch(u_dl))`: same model, same
   optimizer (SGD, Nesterov momentum 0.9, weight decay 5e-4, constant lr), same labeled batches and
   the same weak/strong views, made once beforehand on the device. Both do one forward pass over
   labeled + weak + strong images, the same losses, backward and step; the ratio of their seconds
   per step is what the fastai machinery (events, Recorder, the SSL callback) adds.
2. Supervised training, hand-written and with a plain `Learner`, for reference.
3. Every available algorithm as users run it (views made by the callback on the device) against the
   supervised `Learner` step.

Variants are timed side by side: each repetition runs every variant for `--steps` steps, the two
FixMatch loops back to back (which one goes first alternates), then the two supervised ones, then
the algorithms in an order rotated from one repetition to the next; one warm-up repetition is
dropped and the table reports medians over repetitions (and, for the pairs, the median of the
per-repetition ratios, which is less sensitive to the load of a shared machine). Usage (see benchmarks/results/README.md):

    python benchmarks/overhead.py --json benchmarks/results/overhead_cpu.json
    python benchmarks/overhead.py --device cuda --model wrn28_2 --data synthetic --bs 64 --bf16 --channels-last
"""
import argparse, json, os, platform, sys, time, warnings
warnings.filterwarnings('ignore')
from statistics import median
import torch, torch.nn as nn, torch.nn.functional as F
from fastai.vision.all import Learner, TfmdDL, DataLoaders, Callback, OptimWrapper, partial, set_seed
from fastai_ssl.augment import WeakAug, StrongAug
from fastai_ssl.cli import available_algos, algo_class, make_model, _callbacks
from fastai_ssl.data import fashion_mnist_arrays
from fastai_ssl.fixmatch import FixMatch

def get_images(data, n, size, device, channels_last):
    "`n` images as float tensors in [0, 1] on `device`, and labels: Fashion-MNIST (1×28×28) or random 3×`size`×`size`"
    if data == 'fashion-mnist':
        x,y = fashion_mnist_arrays()[:2]
        x,y = torch.tensor(x[:n]).float().div(255).unsqueeze(1),torch.tensor(y[:n]).long()
    else:
        g = torch.Generator().manual_seed(0)
        x,y = torch.rand(n, 3, size, size, generator=g),torch.randint(0, 10, (n,), generator=g)
    x = x.to(device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x),y.to(device)

def clocks():
    "Wall-clock seconds and CPU seconds of this process (all its threads)"
    return time.perf_counter(),time.process_time()

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def sgd(params, lr): return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

class PlainFixMatch:
    "The hand-written loop: one forward pass over labeled, weak and strong images, CE + masked CE on the strong view"
    def __init__(self, model, lr, batches, thresh=0.95, amp=None):
        self.model,self.opt,self.batches,self.thresh,self.amp,self.i = model,sgd(model.parameters(), lr),batches,thresh,amp,0
    def step(self):
        x,y,w,s = self.batches[self.i % len(self.batches)][:4]; self.i += 1
        with (torch.autocast(x.device.type, dtype=self.amp) if self.amp else torch.autocast(x.device.type, enabled=False)):
            logits = self.model(torch.cat([x, w, s]))
        lx,lw,ls = logits.split([len(x), len(w), len(s)])
        loss = F.cross_entropy(lx.float(), y)
        conf,pl = F.softmax(lw.detach().float(), 1).max(1)
        loss = loss + (F.cross_entropy(ls.float(), pl, reduction='none')*(conf >= self.thresh).float()).mean()
        self.opt.zero_grad(); loss.backward(); self.opt.step()

class PlainSupervised(PlainFixMatch):
    "The hand-written supervised loop"
    def step(self):
        x,y = self.batches[self.i % len(self.batches)][:2]; self.i += 1
        with (torch.autocast(x.device.type, dtype=self.amp) if self.amp else torch.autocast(x.device.type, enabled=False)):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(); loss.backward(); self.opt.step()

class Timer(Callback):
    "Seconds from the first to the end of the last training batch of an epoch"
    order = 100
    def before_train(self): sync(self.dls.device); self.start = clocks()
    def after_train(self): sync(self.dls.device); self.secs = [b-a for a,b in zip(self.start, clocks())]

class FastaiRun:
    "A `Learner` over the same batches, stepping `steps` batches per `fit(1)`"
    def __init__(self, model, lr, batches, u_batches, cb_fn, device, amp):
        train = TfmdDL([b[:2] for b in batches], bs=None, num_workers=0)
        valid = TfmdDL([batches[0][:2]], bs=None, num_workers=0)
        u_dl = TfmdDL(u_batches, bs=None, num_workers=0) if u_batches is not None else None
        self.timer = Timer()
        cbs = [self.timer] + (cb_fn(u_dl) if cb_fn is not None else [])
        self.learn = Learner(DataLoaders(train, valid, device=device), model, loss_func=nn.CrossEntropyLoss(),
                             opt_func=partial(OptimWrapper, opt=sgd), lr=lr, cbs=cbs)
        if amp: self.learn.to_bf16()
    def run(self):
        with self.learn.no_bar(), self.learn.no_logging(): self.learn.fit(1)
        return self.timer.secs

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--model', default='small_cnn', help="'small_cnn', 'wrn28_2' or a timm name")
    p.add_argument('--data', default='fashion-mnist', choices=['fashion-mnist', 'synthetic'])
    p.add_argument('--size', type=int, default=32, help='image size of synthetic data')
    p.add_argument('--bs', type=int, default=16, help='labeled images per step')
    p.add_argument('--mu', type=int, default=7, help='unlabeled images per labeled image')
    p.add_argument('--steps', type=int, default=10, help='steps per variant per repetition')
    p.add_argument('--reps', type=int, default=7, help='timed repetitions (after one warm-up)')
    p.add_argument('--algos', nargs='*', default=None, help='algorithms to time against supervised (default: all available)')
    p.add_argument('--lr', type=float, default=0.03)
    p.add_argument('--bf16', action='store_true', help='bfloat16 autocast (CUDA)')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--json', default=None, help='write the results to this JSON file')
    a = p.parse_args(argv)
    device = torch.device(a.device)
    amp = torch.bfloat16 if a.bf16 else None
    set_seed(0)
    B,U,S = a.bs,a.bs*a.mu,a.steps
    x,y = get_images(a.data, S*(B+U), a.size, device, a.channels_last)
    flip = True
    weak,strong = WeakAug(flip=flip),StrongAug(flip=flip)
    batches = []
    for i in range(S):
        xl,yl,u = x[i*B:(i+1)*B],y[i*B:(i+1)*B],x[S*B+i*U:S*B+(i+1)*U]
        with torch.no_grad(): batches.append((xl, yl, weak(u), strong(u), u))
    def fmt(t): return t.contiguous(memory_format=torch.channels_last) if a.channels_last else t
    batches = [tuple(fmt(t) if t.ndim == 4 else t for t in b) for b in batches]
    n_in,n_out = x.shape[1],10
    init = make_model(a.model, n_in, n_out).state_dict()
    def model():
        m = make_model(a.model, n_in, n_out); m.load_state_dict(init); m = m.to(device)
        return m.to(memory_format=torch.channels_last) if a.channels_last else m

    algos = available_algos() if a.algos is None else a.algos
    variants = {'plain fixmatch': PlainFixMatch(model(), a.lr, batches, amp=amp),
                'fastai fixmatch': FastaiRun(model(), a.lr, batches, [b[2:4] for b in batches], lambda u: [FixMatch(u)], device, amp),
                'plain supervised': PlainSupervised(model(), a.lr, batches, amp=amp),
                'fastai supervised': FastaiRun(model(), a.lr, batches, None, None, device, amp)}
    errors = {}
    for name in algos:
        try:
            algo_class(name)
            variants[f'{name} (own views)'] = FastaiRun(model(), a.lr, batches, [(b[4],) for b in batches],
                                                       partial(_callbacks, name, flip=flip), device, amp)
        except Exception as e: errors[name] = f'{type(e).__name__}: {e}'

    def time_variant(v):
        if isinstance(v, FastaiRun): return v.run()
        sync(device); start = clocks()
        for _ in range(S): v.step()
        sync(device); return [b-a for a,b in zip(start, clocks())]

    names = list(variants)
    wall,cpu = {n:[] for n in names},{n:[] for n in names}
    paired = {k:dict(wall=[], cpu=[]) for k in ('fixmatch', 'supervised')}
    pairs,others = names[:4],names[4:]
    for rep in range(a.reps + 1):
        k = rep % max(len(others), 1)
        flip_pair = (lambda p: p[::-1]) if rep % 2 else (lambda p: p)   # each pair back to back, who goes first alternating
        order = flip_pair(pairs[:2]) + flip_pair(pairs[2:]) + others[k:] + others[:k]
        secs = {}
        for n in order:
            try: secs[n] = [t/S for t in time_variant(variants[n])]
            except Exception as e:
                errors[n] = f'{type(e).__name__}: {e}'; names.remove(n); others.remove(n); variants.pop(n); wall.pop(n); cpu.pop(n)
        if rep == 0: continue   # warm-up
        for n,(w,c) in secs.items(): wall[n].append(w); cpu[n].append(c)
        for k in paired:
            for i,clock in enumerate(('wall', 'cpu')): paired[k][clock].append(secs[f'fastai {k}'][i]/secs[f'plain {k}'][i])
        print(f"rep {rep}/{a.reps}: " + ', '.join(f"{n} {w*1000:.0f} ms" for n,(w,c) in secs.items()), flush=True)

    mw,mc = {n:median(t) for n,t in wall.items()},{n:median(t) for n,t in cpu.items()}
    def ratios(k, clock):
        m,r = (mw if clock == 'wall' else mc),paired[k][clock]
        return dict(ratio_of_medians=m[f'fastai {k}']/m[f'plain {k}'], median_of_paired_ratios=median(r), min=min(r), max=max(r))
    res = dict(command='python benchmarks/overhead.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
               device=str(device) if device.type == 'cpu' else torch.cuda.get_device_name(device),
               cpu_threads=torch.get_num_threads(), cpus=os.cpu_count(), load_average=os.getloadavg(), torch=torch.__version__,
               python=platform.python_version(), omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'),
               model=a.model, n_params=sum(p.numel() for p in make_model(a.model, n_in, n_out).parameters()),
               data=a.data, image_shape=list(x.shape[1:]), bs=B, mu=a.mu, steps_per_rep=S, reps=a.reps, bf16=a.bf16, channels_last=a.channels_last,
               sec_per_step={n:dict(wall_median=mw[n], cpu_median=mc[n], wall=wall[n], cpu=cpu[n]) for n in names},
               fastai_vs_plain_fixmatch={c:ratios('fixmatch', c) for c in ('wall', 'cpu')},
               fastai_vs_plain_supervised={c:ratios('supervised', c) for c in ('wall', 'cpu')},
               vs_fastai_supervised={n:dict(wall=mw[n]/mw['fastai supervised'], cpu=mc[n]/mc['fastai supervised']) for n in names},
               errors=errors)
    if device.type == 'cuda': res['max_gpu_memory_gb'] = torch.cuda.max_memory_allocated(device)/2**30
    print(f"\n{res['device']}, {a.model} ({res['n_params']:,} parameters), {a.data} {tuple(x.shape[1:])}, B={B}, mu={a.mu}, "
          f"{S} steps x {a.reps} repetitions (medians; wall clock and CPU time of this process)")
    print(f"{'variant':<24}{'wall s/step':>12}{'CPU s/step':>12}{'images/s':>10}{'vs supervised (wall, CPU)':>27}")
    for n in names:   # images per step are known for FixMatch (labeled + weak + strong) and supervised
        n_img = B if 'supervised' in n else B*(1+2*a.mu) if 'fixmatch' in n else None
        v = res['vs_fastai_supervised'][n]
        print(f"{n:<24}{mw[n]:>12.4f}{mc[n]:>12.4f}{f'{n_img/mw[n]:.0f}' if n_img else '-':>10}{v['wall']:>18.2f}x{v['cpu']:>7.2f}x")
    for k in paired:
        w,c = res[f'fastai_vs_plain_{k}']['wall'],res[f'fastai_vs_plain_{k}']['cpu']
        print(f"fastai {k} / hand-written loop: wall {w['median_of_paired_ratios']:.3f} (paired ratios {w['min']:.2f}-{w['max']:.2f}), "
              f"CPU {c['median_of_paired_ratios']:.3f} (paired ratios {c['min']:.2f}-{c['max']:.2f})")
    for n,e in errors.items(): print(f"{n}: not timed ({e})")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, 'w') as f: json.dump(res, f, indent=1)
    return res

if __name__ == '__main__': main()
