"""Every algorithm against supervised training on the bundled 8×8 digits: 5 labels per class, 40 epochs (120 steps),
the same small CNN, Adam one-cycle schedule and seeds (`fastai_ssl.cli.train_digits`); with `--aug-labeled`, every method,
supervised included, sees weakly augmented labeled images, as in the papers' protocol. The settings per algorithm are the
ones its tests use on digits (no flips; where a default does not suit 8×8 images it is named). Usage:

    python benchmarks/digits_algos.py --seeds 3 --json benchmarks/results/digits_algos_cpu.json
    python benchmarks/digits_algos.py --seeds 3 --aug-labeled --json benchmarks/results/digits_algos_auglabeled_cpu.json
"""
import argparse, json, platform, warnings
warnings.filterwarnings('ignore')
import numpy as np, torch
from pathlib import Path
from fastai.vision.all import noop
from fastai_ssl.all import *
from fastai_ssl.cli import train_digits

SETTINGS = {   # name: (callback maker, what differs from the paper's defaults)
    'supervised': ('supervised', ''),
    'fixmatch': (lambda u: FixMatch(u, flip=False), 'flip=False'),
    'mixmatch': (lambda u: MixMatch(u, flip=False, aug_labeled=False), 'flip=False (labeled images augmented once)'),
    'meanteacher': (lambda u: MeanTeacher(u, flip=False, teacher_aug=noop), 'flip=False, teacher_aug=noop'),
    'ict': (lambda u: ICT(u, flip=False, teacher_aug=noop), 'flip=False, teacher_aug=noop'),
    'pseudolabel': (lambda u: PseudoLabel(u, lambda_u=3., aug=noop), 'lambda_u=3, aug=noop'),
    'pimodel': (lambda u: PiModel(u, aug=noop), 'aug=noop'),
    'vat': (lambda u: VAT(u, eps=1.), 'eps=1 (8×8 images)'),
    'uda': (lambda u: UDA(u, flip=False), 'flip=False'),
    'flexmatch': (lambda u: FlexMatch(u, flip=False, warmup=False), 'flip=False, warmup=False'),
    'freematch': (lambda u: FreeMatch(u, flip=False, tau0=1.), 'flip=False, tau0=1'),
    'adamatch': (lambda u: AdaMatch(u, flip=False), 'flip=False'),
    'softmatch': (lambda u: SoftMatch(u, flip=False, ema_p=0.9), 'flip=False, ema_p=0.9 (with 0.999 the weights stay ~1 over 120 steps)'),
    'dash': (lambda u: Dash(u, flip=False), 'flip=False'),
    'defixmatch': (lambda u: DeFixMatch(u, flip=False), 'flip=False'),
    'remixmatch': (lambda u: ReMixMatch(u, flip=False, lambda_rot=0, align=DistAlign('uniform', ema_p=0.9)),
                   'flip=False, lambda_rot=0, da=DistAlign(uniform, momentum=0.9) (120 steps, 8×8)'),
    'simmatch': (lambda u: SimMatch(u, flip=False), 'flip=False'),
    'comatch': (lambda u: CoMatch(u, flip=False), 'flip=False'),
    'crmatch': (lambda u: CRMatch(u, flip=False), 'flip=False'),
}

def main(seeds=3, algos=None, fname=None, aug_labeled=False):
    rows = []
    for name in algos or SETTINGS:
        make,note = SETTINGS[name]
        if name == 'mixmatch' and not aug_labeled: make,note = (lambda u: MixMatch(u, flip=False)),'flip=False (augments its labeled images itself)'
        for s in range(seeds):
            r = train_digits(make, 5, 40, s, aug_labeled=aug_labeled)
            rows.append(dict(r, algo=name, settings=note))
            print(f"{name:<12} seed {s}  accuracy {r['accuracy']:.3f}  {r['sec_per_epoch']:.2f} s/epoch", flush=True)
    lines = [f"{'method':<12}{'accuracy':>10}{'± std':>8}{'s/epoch':>9}  settings"]
    for name in dict.fromkeys(r['algo'] for r in rows):
        rs = [r for r in rows if r['algo'] == name]
        a = [r['accuracy'] for r in rs]
        lines.append(f"{name:<12}{np.mean(a):>10.3f}{np.std(a):>8.3f}{np.median([r['sec_per_epoch'] for r in rs]):>9.2f}  {rs[0]['settings']}")
    print('\n'.join(lines))
    if fname: Path(fname).write_text(json.dumps(dict(command=f'python benchmarks/digits_algos.py --seeds {seeds}' + (' --aug-labeled' if aug_labeled else '') + f' --json {fname}', aug_labeled=aug_labeled,
        device='cpu', cpu_threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(), runs=rows), indent=1))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--algos', nargs='+', default=None, choices=list(SETTINGS))
    p.add_argument('--aug-labeled', action='store_true', help='weak augmentation of the labeled images for every method')
    p.add_argument('--json', default=None)
    a = p.parse_args()
    main(a.seeds, a.algos, a.json, a.aug_labeled)
