"""Drive USB's reference FixMatch, SimMatch and CoMatch (`semilearn==0.3.2`) step by step on the CPU, with our model,
batches and views, so that they can be compared with ours at equal budget.

Install (kept out of the project's venv; the adapter appends /tmp/usb_pkgs to `sys.path`, so our torch/torchvision win):

    /work/main/.venv/bin/pip install --no-deps --target /tmp/usb_pkgs semilearn==0.3.2

Nothing else is installed: the rest of USB's import chain that the venv lacks (scikit-image, transformers, torchaudio,
progress, ruamel.yaml, wandb, aim, tensorboard) is only imported, never used on this path, so it is stubbed in
`sys.modules` while semilearn is imported and the stubs are removed straight after. The venv must have scikit-learn,
scipy, timm, Pillow (it does).

What is patched, and where:
- `Tensor.cuda` and `Module.cuda` return `self` only inside `usb_algorithm` and `usb_step` (context manager `_on_cpu`);
  everything lives on the CPU.
- The algorithm is a subclass of USB's whose `set_dataset`/`set_data_loader` return None (no disk, no loaders) and
  whose hooks are USB's minus the I/O ones (evaluation, checkpoint, logging, timer, distributed-sampler seed). What
  stays is what trains: `ParamUpdateHook` (backward, SGD step, scheduler step, zero_grad), `EMAHook`, and the
  algorithm's own hooks (distribution alignment, thresholding, pseudo-labelling).
- USB's own chatter (prints at construction) is swallowed.

Epochs. USB's `AlgorithmBase.train` runs `for epoch: self.epoch = epoch; for batch in loader: train_step; hooks;
self.it += 1`, an epoch being `num_train_iter // epoch` iterations. Here an epoch is one pass of the labeled set,
`ceil(n_labeled/bs)` iterations (`algo.num_iter_per_epoch`); `usb_step` sets `algo.epoch = algo.it //
num_iter_per_epoch` before the step and increments `algo.it` after it, as the loop does. USB uses them in:
- SimMatch: `if self.epoch == 0: in_loss *= 0; probs_x_ulb_w = ema_probs_x_ulb_w` -- no similarity loss and no label
  propagation (unfolding/aggregation) during the first epoch; the labeled bank is written from the first step.
- CoMatch: memory smoothing of the pseudo-labels only `if self.epoch > 0 and self.it > self.queue_batch`.
(USB's own CIFAR configs use epoch=1024 over 2^20 iterations, i.e. 1024-iteration epochs, whatever the labeled size.)

Dataset branch: `args.dataset='cifar10'`, so SimMatch keeps its labeled bank as a normalised EMA (0.7) of the
student's labeled projections (`use_ema_teacher=False`) and sets `K = lb_dest_len = n_labeled`: `idx_lb` must index
the labeled set, 0..n_labeled-1. Note that USB 0.3.2's update there, `F.normalize(0.7*bank[:, idx] + 0.3*k.t())`,
normalises along dim 1 of the (proj_size, bs) slice, i.e. each feature across the batch, not each sample: written
bank entries are not unit vectors (norm about sqrt(proj_size/bs)). Kept as is: it is the reference's behaviour.

Optimiser: USB's SGD (lr 0.03, momentum 0.9, nesterov, weight decay 5e-4 on weights only -- USB exempts biases and
other 1-d parameters) and cosine schedule lr*cos(7*pi*k/(16*steps)), no warm-up, stepped once per iteration.
"""

import contextlib, copy, importlib, io, math, sys, types, warnings
from argparse import Namespace

import torch
from torch import nn

__all__ = ['USBNet', 'usb_algorithm', 'usb_step', 'usb_eval_model']

USB_PATH = '/tmp/usb_pkgs'
_UNUSED = ['skimage.util', 'transformers.file_utils', 'transformers.tokenization_utils_base', 'transformers.data',
           'torchaudio', 'progress.bar', 'ruamel.yaml', 'wandb', 'aim', 'torch.utils.tensorboard']

class _Stub(types.ModuleType):
    "A module that is only imported: every attribute is an empty class"
    __path__ = []
    def __getattr__(self, name):
        if name.startswith('__'): raise AttributeError(name)
        return type(name, (), {})

def _import_usb():
    "Import semilearn's algorithms, stubbing the modules its import chain names but this path never uses"
    if 'semilearn.algorithms' in sys.modules: return
    if USB_PATH not in sys.path: sys.path.append(USB_PATH)
    stubs = []
    for name in _UNUSED:
        try: importlib.import_module(name)
        except ImportError:
            parts = name.split('.')
            for i in range(1, len(parts)+1):
                p = '.'.join(parts[:i])
                if p in sys.modules: continue
                try: importlib.import_module(p)
                except ImportError: sys.modules[p] = _Stub(p); stubs.append(p)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter('ignore')
            importlib.import_module('semilearn.algorithms')
    finally:
        for p in stubs: sys.modules.pop(p, None)

@contextlib.contextmanager
def _on_cpu():
    "`.cuda(...)` is a no-op on tensors and modules inside this block"
    tc, mc = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = nn.Module.cuda = lambda self, *args, **kwargs: self
    try: yield
    finally: torch.Tensor.cuda, nn.Module.cuda = tc, mc

class USBNet(nn.Module):
    "USB's net interface around an `nn.Sequential` classifier whose last layer is an `nn.Linear` (parameters shared)"
    def __init__(self, model:nn.Sequential):
        super().__init__()
        if not (isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)):
            raise TypeError('USBNet needs an nn.Sequential whose last layer is an nn.Linear')
        self.model, self.num_features = model, model[-1].in_features

    def forward(self, x, only_fc=False, only_feat=False, **kwargs):
        if only_fc: return self.model[-1](x)
        feat = self.model[:-1](x)
        return feat if only_feat else {'logits': self.model[-1](feat), 'feat': feat}

_DROP = ('EvaluationHook', 'CheckpointHook', 'LoggingHook', 'TimerHook', 'DistSamplerSeedHook')
_COMMON = dict(ema_m=0.999, ulb_loss_ratio=1.0, optim='SGD', lr=0.03, momentum=0.9, weight_decay=5e-4,
               nesterov=True, layer_decay=1.0, num_warmup_iter=0, amp=False, use_cat=True, clip_grad=0.)

def _alg_class(name):
    _import_usb()
    from semilearn.core.utils import ALGORITHMS
    return ALGORITHMS[name]

def usb_algorithm(name:str, model:nn.Module, n_feats:int, n_classes:int, steps:int, hp:dict, n_labeled:int,
                  bs:int, mu:int, seed:int):
    "USB's `name` ('fixmatch', 'simmatch', 'comatch') training `model` in place on the CPU; `hp` over USB's defaults"
    cls = _alg_class(name)
    hp = dict(hp)
    if 'lambda_u' in hp: hp['ulb_loss_ratio'] = hp.pop('lambda_u')
    known = set(_COMMON) | {a.name.lstrip('-') for n in ('fixmatch', 'simmatch', 'comatch')
                            for a in _alg_class(n).get_argument()}
    if set(hp) - known: raise KeyError(f'unknown USB arguments: {sorted(set(hp) - known)}')
    ipe = math.ceil(n_labeled / bs)
    args = Namespace(**{a.name.lstrip('-'): a.default for a in cls.get_argument()})
    vars(args).update(_COMMON, **hp)
    vars(args).update(algorithm=name, dataset='cifar10', num_classes=n_classes, num_labels=n_labeled,
        lb_dest_len=n_labeled, batch_size=bs, uratio=mu, num_train_iter=steps, epoch=math.ceil(steps / ipe), seed=seed,
        num_eval_iter=0, num_log_iter=0, save_dir='', save_name='', resume=False, use_pretrain=False, pretrain_path='',
        gpu=None, rank=0, world_size=1, distributed=False, multiprocessing_distributed=False, use_wandb=False,
        use_aim=False, use_tensorboard=False)
    net = USBNet(model)
    if net.num_features != n_feats: raise ValueError(f'model has {net.num_features} features, not {n_feats}')
    nets = iter([net, USBNet(copy.deepcopy(model))])  # USB builds the model, then its EMA copy

    class CPUAlgorithm(cls):
        def set_dataset(self): return None
        def set_data_loader(self): return None
        def set_hooks(self):
            super().set_hooks()
            self._hooks = [h for h in self._hooks if h.name not in _DROP]
            for n in _DROP: self.hooks_dict.pop(n, None)
    CPUAlgorithm.__name__ = CPUAlgorithm.__qualname__ = f'CPU{cls.__name__}'

    quiet = Namespace(info=lambda *a, **k: None)
    with _on_cpu(), torch.random.fork_rng(devices=[]), warnings.catch_warnings(), \
         contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        torch.manual_seed(seed)  # USB's own init draws (projection head, SimMatch's bank), caller's RNG untouched
        algo = CPUAlgorithm(args, lambda **kwargs: next(nets), tb_log=None, logger=quiet)
        algo.call_hook('before_run')  # EMAHook registers the EMA shadow
    for g in algo.optimizer.param_groups: g['nesterov'] = args.nesterov
    algo.num_iter_per_epoch, algo.epochs, algo.epoch = ipe, args.epoch, 0
    algo.model.train()
    return algo

def usb_step(algo, batch:dict) -> dict:
    "One iteration of USB's training loop on `batch` (USB's argument names, extra ones ignored); returns its log dict"
    if algo.it >= algo.num_train_iter: raise RuntimeError(f'all {algo.num_train_iter} steps are done')
    with _on_cpu():
        algo.model.train()
        if algo.it % algo.num_iter_per_epoch == 0:
            algo.epoch = algo.it // algo.num_iter_per_epoch
            algo.call_hook('before_train_epoch')
        algo.call_hook('before_train_step')
        out = algo.train_step(**algo.process_batch(**batch))
        algo.out_dict, algo.log_dict = out if isinstance(out, tuple) else (out, {})
        algo.call_hook('after_train_step')
        algo.it += 1
        if algo.it % algo.num_iter_per_epoch == 0: algo.call_hook('after_train_epoch')
    return dict(algo.log_dict)

def usb_eval_model(algo, ema:bool=False) -> nn.Module:
    "The raw trained model in eval mode, images to logits (USB's own `evaluate` uses the EMA weights: `ema=True`)"
    net = algo.ema_model if ema else algo.model
    return getattr(net, 'backbone', net).model.eval()
