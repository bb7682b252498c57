"FixMatch beats supervised training on digits with few labels, same steps and seeds"
import numpy as np
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.cli import train_digits

def test_fixmatch_beats_supervised():
    # Measured on 2 CPU cores (3 seeds, 40 epochs = 120 steps): supervised 0.841/0.807/0.856, FixMatch 0.913/0.870/0.902 (14-op batched RandAugment)
    seeds = (0, 1)
    sup = [train_digits('supervised', 5, 40, s)['accuracy'] for s in seeds]
    fm = [train_digits('fixmatch', 5, 40, s)['accuracy'] for s in seeds]
    assert all(f > s for f,s in zip(fm, sup)), (sup, fm)
    assert np.mean(fm) - np.mean(sup) >= 0.04, (sup, fm)

def test_vision_learner_fine_tune(digits):
    "`vision_learner` + `fine_tune`: the callback rides the frozen and the unfrozen fit, and `loss_func` is left alone"
    dls,u_dl = digits
    learn = vision_learner(dls, resnet18, pretrained=False, n_in=1, metrics=accuracy, cbs=FixMatch(u_dl, flip=False))
    lf = learn.loss_func
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert learn.fix_match.step == 2*len(dls.train)
    assert learn.recorder.metric_names[4:] == ['Lx', 'Lu', 'mask', 'pl_acc', 'time']
    assert all(math.isfinite(v) for v in learn.recorder.values[-1]) and learn.loss_func is lf
