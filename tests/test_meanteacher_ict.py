"MeanTeacher and ICT: they beat supervised training on digits, and their EMA teacher is kept, saved, dropped and validated as promised"
import numpy as np
import pytest
from fastai.vision.all import *
from fastai_ssl.all import *
from fastai_ssl.meanteacher import MeanTeacher
from fastai_ssl.ict import ICT
import fastai_ssl.ict
from fastai_ssl.cli import train_digits
from conftest import quiet_fit

SEEDS = (0, 1)
ALGOS = dict(meanteacher=lambda u: MeanTeacher(u, flip=False, teacher_aug=noop),
             ict=lambda u: ICT(u, flip=False, teacher_aug=noop))

@pytest.fixture(scope='module')
def supervised(): return [train_digits('supervised', 5, 40, s)['accuracy'] for s in SEEDS]

# Measured with `train_digits` (40 epochs = 120 steps), defaults but `flip=False, teacher_aug=noop`, seeds 0/1:
# supervised 0.841/0.807, MeanTeacher 0.889/0.894 (+0.068), ICT 0.915/0.904 (+0.085); seeds 2/3 (one thread):
# supervised 0.856/0.896, MeanTeacher 0.883/0.922, ICT 0.898/0.913
@pytest.mark.parametrize('algo,margin', [('meanteacher', 0.03), ('ict', 0.05)])
def test_beats_supervised(supervised, algo, margin):
    accs = [train_digits(ALGOS[algo], 5, 40, s)['accuracy'] for s in SEEDS]
    assert np.mean(accs) - np.mean(supervised) >= margin, (supervised, accs)

def same_weights(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.mark.parametrize('make', [lambda u: MeanTeacher(u, flip=False), lambda u: ICT(u, flip=False)], ids=['meanteacher', 'ict'])
def test_teacher_kept_saved_loaded_and_exported(digits, tmp_path, make):
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), metrics=accuracy, cbs=make(u_dl), path=tmp_path), 2, 1e-2)
    cb = learn.cbs.filter(lambda o: isinstance(o, MeanTeacher))[0]
    assert not same_weights(cb.teacher.state_dict(), learn.model.state_dict())
    learn.save('x')
    learn2 = Learner(dls, small_cnn(), metrics=accuracy, cbs=make(u_dl), path=tmp_path).load('x')
    cb2 = learn2.cbs.filter(lambda o: isinstance(o, MeanTeacher))[0]
    assert same_weights(cb2.teacher.state_dict(), cb.teacher.state_dict())
    assert cb2.step == cb.step == 6
    learn.export('model.pkl')
    assert cb.teacher is not None and cb.u_dl is u_dl                  # the live Learner keeps both
    loaded = load_learner(tmp_path/'model.pkl')
    cb3 = loaded.cbs.filter(lambda o: isinstance(o, MeanTeacher))[0]
    assert cb3.teacher is None and cb3.u_dl is None and cb3.target is None
    _,_,probs = loaded.predict(PILImageBW.create(digits_arrays()[2][0]))
    assert probs.shape == (10,)

def test_eval_teacher_validates_with_the_teacher(digits):
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), metrics=accuracy, cbs=MeanTeacher(u_dl, flip=False, eval_teacher=True)), 2, 1e-2)
    in_fit = learn.recorder.values[-1][2]                       # the last epoch's accuracy, before `validate` resets the recorder
    with learn.no_bar():
        acc = learn.validate()[1]
        teacher = Learner(dls, learn.mean_teacher.teacher.model, metrics=accuracy).validate()[1]
    assert acc == teacher == in_fit
    assert learn.model is not learn.mean_teacher.teacher.model      # the student is back after validation
    assert not same_weights(learn.model.state_dict(), learn.mean_teacher.teacher.state_dict())

@pytest.mark.parametrize('make', [lambda u: MeanTeacher(u, flip=False), lambda u: ICT(u, flip=False)], ids=['meanteacher', 'ict'])
def test_bf16_autocast_on_cpu(digits, make):
    dls,u_dl = digits
    learn = Learner(dls, small_cnn(), metrics=accuracy, cbs=make(u_dl))
    with torch.autocast('cpu', dtype=torch.bfloat16): quiet_fit(learn, 2, 1e-2)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])

def test_meanteacher_two_views(digits):
    "With a `(student, teacher)` pair, the student's view goes through the model and the target is the teacher's on the other"
    dls,_ = digits
    learn = Learner(dls, small_cnn(), cbs=MeanTeacher([(torch.rand(32, 1, 8, 8),)*2], flip=False))
    quiet_fit(learn, 1)
    cb = learn.mean_teacher
    a,b = torch.rand(32, 1, 8, 8),torch.rand(32, 1, 8, 8)
    with torch.no_grad(): out = cb.unlabeled_views([a, b])
    assert list(out) == ['student'] and out['student'] is a
    assert torch.allclose(cb.target, cb.teacher_probs(b)) and torch.allclose(cb.target.sum(1), torch.ones(32))

def test_ict_mixes_teacher_predictions_of_the_unmixed_images(digits, monkeypatch):
    dls,u_dl = digits
    learn = quiet_fit(Learner(dls, small_cnn(), cbs=ICT(u_dl, flip=False, aug=noop)), 1)
    cb,calls = learn.ict,[]
    cb.y_u = None                                               # no hidden labels for this hand-made batch
    def spy(x, y, *args, **kwargs):
        out = mix_up(x, y, *args, **kwargs)
        calls.append((x, y, kwargs, out))
        return out
    monkeypatch.setattr(fastai_ssl.ict, 'mix_up', spy)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad(): xm = cb.unlabeled_views([x])['student']
    (x_in,p_in,kw,(x_mix,p_mix,lam)), = calls
    assert x_in is x and torch.allclose(p_in, cb.teacher_probs(x))     # the teacher saw the unmixed images
    assert kw['keep_first'] is False and kw['per_item'] is False and lam.unique().numel() == 1
    assert xm is x_mix and cb.target is p_mix                          # inputs and targets mixed by the same draw
    assert torch.allclose(cb.target.sum(1), torch.ones(32))

@pytest.mark.parametrize('make,msg', [
    (lambda u: MeanTeacher(u, ema=None), '`ema` must be set'),
    (lambda u: MeanTeacher(u, cons='l3'), "unknown `cons` 'l3'"),
    (lambda u: MeanTeacher(u, lambda_u=-1), '`lambda_u` must be >= 0'),
    (lambda u: ICT(u, alpha=0), '`alpha` must be > 0'),
    (lambda u: ICT(u, ema=1.), '`ema` must be in [0, 1)'),
])
def test_bad_arguments(digits, make, msg):
    with pytest.raises(ValueError) as e: make(digits[1])
    assert msg in str(e.value)
