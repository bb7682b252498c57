"MixMatch: beats supervised training on digits, leaves the Learner's loss and BatchNorm statistics alone, runs under bf16"
import numpy as np
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.mixmatch import MixMatch
from fastai_ssl.cli import train_digits
from conftest import quiet_fit

@pytest.mark.slow
def test_mixmatch_beats_supervised():
    # Measured on 2 shared CPU cores (40 epochs = 120 steps, mu=7, default arguments), seeds 0/1/2:
    # supervised 0.841/0.807/0.856, MixMatch 0.959/0.961/0.948; mean margin over seeds 0 and 1: 0.136
    seeds = (0, 1)
    sup = [train_digits('supervised', 5, 40, s)['accuracy'] for s in seeds]
    mm = [train_digits(lambda u: MixMatch(u, flip=False), 5, 40, s)['accuracy'] for s in seeds]
    assert all(m > s for m,s in zip(mm, sup)), (sup, mm)
    assert np.mean(mm) - np.mean(sup) >= 0.08, (sup, mm)

def _bn_stats(model): return torch.cat([b.flatten() for n,b in model.named_buffers() if 'running' in n]).clone()

class BNAround(Callback):
    "Running BatchNorm statistics just before and just after `MixMatch.before_batch` (the guessing pass) of each step"
    def __init__(self, after:bool): self.after,self.order,self.stats = after,MixMatch.order + (0.5 if after else -0.5),[]
    def before_batch(self):
        if self.training: self.stats.append(_bn_stats(self.learn.model))

@pytest.mark.parametrize('update_bn', [False, True])
def test_guessing_pass_leaves_bn_stats(digits, update_bn):
    dls,u_dl = digits
    before,after = BNAround(False),BNAround(True)
    learn = Learner(dls, small_cnn(), cbs=[MixMatch(u_dl, flip=False, update_bn=update_bn), before, after])
    lf = learn.loss_func
    quiet_fit(learn, 1, 1e-3)
    assert len(before.stats) == len(after.stats) == 3
    same = [torch.equal(a, b) for a,b in zip(before.stats, after.stats)]
    assert all(same) if not update_bn else not any(same)
    assert not torch.equal(after.stats[0], before.stats[1])   # the main pass does update them
    assert learn.loss_func is lf

def test_targets_and_split(digits):
    "One forward pass of B + K·μB mixed items; targets are distributions led by each labeled item's own label"
    dls,u_dl = digits
    seen = []
    class Probe(Callback):
        order = MixMatch.order + 1
        def before_batch(self):
            if self.training: seen.append((len(self.learn.xb[0]), self.learn.mix_match.target.clone(), self.learn.y.clone()))
    learn = Learner(dls, small_cnn(), cbs=[MixMatch(u_dl, flip=False, K=3), Probe()])
    quiet_fit(learn, 1, 1e-3)
    for n,t,y in seen:
        assert n == len(t) == 16 + 3*32
        assert torch.allclose(t.sum(1), torch.ones(n)) and (t >= 0).all()
        assert torch.equal(t[:16].argmax(1), y)

def test_bf16_autocast_cpu(digits):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=MixMatch(u_dl, flip=False, ramp=None))
    lf = learn.loss_func
    losses = []
    class LossLog(Callback):
        order = MixMatch.order + 1
        def after_loss(self):
            if self.training: losses.append((self.learn.pred.dtype, self.learn.loss.detach().float()))
    with torch.autocast('cpu', dtype=torch.bfloat16): quiet_fit(learn, 2, 1e-3, cbs=LossLog())
    assert len(losses) == 6 and all(d == torch.bfloat16 for d,_ in losses)
    assert all(torch.isfinite(l) for _,l in losses)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    assert learn.loss_func is lf

def test_partial_last_batch_and_loader_views():
    set_seed(0)
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2, drop_last=False)    # 50 labeled: 16, 16, 16, 2
    learn = quiet_fit(Learner(dls, small_cnn(), cbs=MixMatch(u_dl, flip=False, K=1)), 1, 1e-3)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])
    dls,u_dl = digits_dls(n_per_class=5, bs=16, mu=2, views=[WeakPIL(flip=False)]*3)
    learn = quiet_fit(Learner(dls, small_cnn(), cbs=MixMatch(u_dl, flip=False, K=3)), 1, 1e-3)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])

@pytest.mark.parametrize('kwargs,msg', [(dict(T=0), '`T` must be > 0'), (dict(K=0), '`K` must be an int >= 1'),
                                        (dict(K=2.), '`K` must be an int >= 1'), (dict(alpha=-1), '`alpha` must be > 0'),
                                        (dict(aug=1), '`aug` must be a callable'), (dict(lambda_u=-1), '`lambda_u` must be >= 0')])
def test_bad_arguments(digits, kwargs, msg):
    with pytest.raises(ValueError, match=re.escape(msg)): MixMatch(digits[1], **kwargs)

def test_wrong_number_of_outputs(digits):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(n_out=5), cbs=MixMatch(u_dl, flip=False))
    lf = learn.loss_func
    with pytest.raises(ValueError, match=re.escape('give the model `n_out=10`')): quiet_fit(learn, 1)
    assert learn.loss_func is lf
    assert all(m.track_running_stats for m in learn.model.modules() if isinstance(m, nn.BatchNorm2d))
