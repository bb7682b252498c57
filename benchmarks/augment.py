"""Weak + strong views of a batch of 32x32x3 images: milliseconds per batch for fastai_ssl's batched transforms,
kornia's augmentation module and per-image PIL (timm's ops, one process), side by side. Prints JSON, then a table.

    python benchmarks/augment.py                    # CPU, 1 thread (as PIL in one process)
    python benchmarks/augment.py --device cuda --out benchmarks/results/augment_h100.json

Not a test: timings depend on the machine and its load (the load average is recorded).
"""
import argparse, json, os, platform, statistics, time, warnings
warnings.filterwarnings('ignore')
import torch
from fastai.vision.all import PILImage
from fastai_ssl.augment import WeakAug, StrongAug, WeakStrong, photo_crops

def device_name(device):
    if device.type == 'cuda': return torch.cuda.get_device_name(device)
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or platform.machine()

def timeit(fn, device, reps, warmup):
    "Median and minimum wall-clock ms of `fn()`, and median process CPU ms, after `warmup` calls"
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup): fn()
    sync()
    wall,cpu = [],[]
    for _ in range(reps):
        t,c = time.perf_counter(),time.process_time()
        fn(); sync()
        wall.append((time.perf_counter()-t)*1e3); cpu.append((time.process_time()-c)*1e3)
    return dict(ms=statistics.median(wall), min_ms=min(wall), cpu_ms=statistics.median(cpu))

def cuda_graphed(x):
    "(weak, strong) callables replaying one CUDA-graph capture each of `WeakAug`/`StrongAug` on a static copy of `x` (fresh random draws every replay)"
    out = []
    for aug in (WeakAug(), StrongAug()):
        static = x.clone()
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3): aug(static)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): aug(static)
        out.append(lambda _x, g=g: g.replay())
    return tuple(out)

def engines(x, ims):
    "name -> (weak, strong) callables: batched ones take `x`, the PIL one the list of images `ims`"
    res = {'fastai_ssl batched (WeakAug, StrongAug)': (WeakAug(), StrongAug())}
    try:
        import kornia, kornia.augmentation as K
        weak = lambda: [K.RandomHorizontalFlip(), K.RandomAffine(0., translate=(0.125, 0.125), padding_mode='reflection')]
        res[f'kornia {kornia.__version__} (RandAugment(2, 10) + erasing)'] = (
            K.AugmentationSequential(*weak()),
            K.AugmentationSequential(*weak(), K.auto.RandAugment(n=2, m=10),
                                     K.RandomErasing(p=1., scale=(0.01, 0.25), ratio=(1., 1.), value=0.5)))
    except ImportError: pass
    if x.device.type == 'cuda':
        try: res['fastai_ssl batched, replayed as a CUDA graph'] = cuda_graphed(x)
        except Exception as e: print(f'CUDA graph capture failed: {e!r}')
    ws = WeakStrong()
    res['PIL per image, one process (WeakStrong: timm ops)'] = (lambda ims: [ws.weak(o) for o in ims], lambda ims: [ws.strong(o) for o in ims])
    return res

def run(device='cpu', n=448, size=32, reps=30, warmup=3, threads=1):
    device = torch.device(device)
    if threads: torch.set_num_threads(threads)
    u8 = photo_crops(n, size, seed=1)
    x = (u8.float()/255).to(device)
    ims = [PILImage.create(o.permute(1, 2, 0).numpy()) for o in u8]
    rows = []
    for name,(weak,strong) in engines(x, ims).items():
        arg = ims if name.startswith('PIL') else x
        r = dict(engine=name, device='cpu' if name.startswith('PIL') else device.type)
        for view,fn in (('weak', weak), ('strong', strong), ('both', lambda: (weak(arg), strong(arg)))):
            t = timeit((lambda: fn(arg)) if view != 'both' else fn, device, reps, warmup)
            r.update({f'{view}_{k}': round(v, 2) for k,v in t.items()})
        rows.append(r)
    return dict(device=device.type, device_name=device_name(device), torch=torch.__version__, threads=torch.get_num_threads(),
                cpu_count=os.cpu_count(), load_avg=[round(o, 2) for o in os.getloadavg()], n_images=n, size=size,
                reps=reps, rows=rows)

def table(res):
    head = f"{'engine':<54}{'device':>7}{'weak ms':>9}{'strong ms':>11}{'both ms':>9}{'both cpu ms':>13}"
    lines = [f"{res['n_images']} images {res['size']}x{res['size']}x3 on {res['device_name']} ({res['threads']} thread(s)), "
             f"median of {res['reps']}, load average {res['load_avg'][0]}", head]
    for r in res['rows']:
        lines.append(f"{r['engine']:<54}{r['device']:>7}{r['weak_ms']:>9.1f}{r['strong_ms']:>11.1f}{r['both_ms']:>9.1f}{r['both_cpu_ms']:>13.1f}")
    return '\n'.join(lines)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--n', type=int, default=448)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--reps', type=int, default=30)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (0: leave as is)')
    p.add_argument('--out', help='also write the JSON to this file')
    a = p.parse_args()
    res = run(a.device, a.n, a.size, a.reps, a.warmup, a.threads)
    print(json.dumps(res, indent=1))
    print(table(res))
    if a.out:
        os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
        with open(a.out, 'w') as f: json.dump(res, f, indent=1)
