"`fastai-ssl` with wrong input: one line on stderr naming the problem and the fix, exit code 2 (130 for Ctrl-C), no traceback, and the files of an earlier run as they were"
import json, os, signal, subprocess, sys
import pytest
from fastai.vision.all import *
from fastai_ssl.cli import main
from conftest import write_pngs

CLI = Path(sys.executable).parent/'fastai-ssl'

def cli(*args, cwd=None):
    "Run the installed `fastai-ssl` command"
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'COLUMNS': '200'}
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)

def problem_lines(err:str):
    "The lines of stderr that are not warnings"
    return [o for o in err.strip().splitlines() if not o.startswith('fastai-ssl: warning:')]

def assert_user_error(code, err, *words):
    "Exit code 2 and one line naming the problem (every one of `words`), no traceback"
    assert code == 2, (code, err)
    assert 'Traceback' not in err, err
    lines = problem_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith('fastai-ssl ') and ': error: ' in lines[0], lines[0]
    for w in words: assert w in lines[0], (w, lines[0])
    return lines[0]

def main_error(capsys, *args):
    "Exit code and stderr of `main(args)`, which must exit"
    with pytest.raises(SystemExit) as e: main([str(o) for o in args])
    return e.value.code,capsys.readouterr().err

def snapshot(folder):
    "Bytes and modification time of every file under `folder`"
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob('*')) if p.is_file()}

@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "A folder with: `imgs/` (2 classes of 6 16×16 RGB PNGs, 8 unlabeled), `run/` (a model trained on them, its outputs), `run8/` (a model trained on 8×8 digits), `pl/pseudo.csv` of an earlier pseudo-label run"
    d = tmp_path_factory.mktemp('cli')
    rng = np.random.default_rng(0)
    for c in ('a', 'b'): write_pngs(d/'imgs'/c, 6, (16, 16, 3), rng)
    write_pngs(d/'imgs'/'unlabeled', 8, (16, 16, 3), rng)
    write_pngs(d/'big', 8, (32, 32, 3), rng)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        main(['train', '--data', str(d/'imgs'), '--algo', 'fixmatch', '--epochs', '1', '--steps', '2', '--bs', '4', '--mu', '2',
              '--size', '16', '--out', str(d/'run'), '--quiet'])
        main(['train', '--data', 'digits', '--labels-per-class', '2', '--algo', 'supervised', '--epochs', '1', '--steps', '1',
              '--out', str(d/'run8'), '--quiet'])
        main(['pseudo-label', '--model', str(d/'run'/'model.pkl'), '--data', str(d/'imgs'/'unlabeled'), '--out', str(d/'pl'/'pseudo.csv'),
              '--to-label', '2', '--quiet'])
    return d

# --- the installed command, in a subprocess

def test_train_out_names_a_file(work):
    (work/'notes.txt').write_text('keep me')
    before = snapshot(work/'run')
    r = cli('train', '--data', 'digits', '--labels-per-class', '2', '--epochs', '1', '--steps', '2', '--out', work/'notes.txt')
    assert_user_error(r.returncode, r.stderr, f"--out {work/'notes.txt'}", 'is a file, not a folder', 'pass a folder')
    assert (work/'notes.txt').read_text() == 'keep me' and snapshot(work/'run') == before
    r = cli('bench', '--data', 'digits', '--labels-per-class', '2', '--steps', '2', '--out', work/'notes.txt'/'bench')
    assert_user_error(r.returncode, r.stderr, '--out', 'notes.txt is a file, not a folder')

def test_pseudo_label_to_label_too_many_writes_nothing(work):
    before = snapshot(work/'pl')
    r = cli('pseudo-label', '--model', work/'run'/'model.pkl', '--data', work/'imgs'/'unlabeled', '--out', work/'pl'/'pseudo.csv', '--to-label', '1000')
    assert_user_error(r.returncode, r.stderr, '--to-label=1000', 'has 8 readable images', 'pass at most 8')
    assert snapshot(work/'pl') == before   # pseudo.csv, to_label.txt and the pictures of the earlier run: same bytes, same times

def test_pseudo_label_model_of_random_bytes(work):
    (work/'random.pkl').write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    before = snapshot(work/'pl')
    r = cli('pseudo-label', '--model', work/'random.pkl', '--data', work/'imgs'/'unlabeled', '--out', work/'pl'/'pseudo.csv')
    assert_user_error(r.returncode, r.stderr, f"--model: {work/'random.pkl'}", 'not a file `learn.export` wrote', 'pass a Learner saved with `learn.export`')
    assert snapshot(work/'pl') == before

def test_pseudo_label_images_of_another_size(work):
    "A model trained on 8×8 digits over a folder of 32×32 RGB images: an error, not an exit 0 with nonsense"
    before = snapshot(work/'pl')
    r = cli('pseudo-label', '--model', work/'run8'/'model.pkl', '--data', work/'big', '--out', work/'pl'/'pseudo.csv')
    assert_user_error(r.returncode, r.stderr, '--data', '32', '8×8')
    assert snapshot(work/'pl') == before

def test_train_folder_of_one_class(work):
    write_pngs(work/'one'/'a', 6, (16, 16, 3), np.random.default_rng(1))
    before = snapshot(work/'run')
    r = cli('train', '--data', work/'one', '--algo', 'supervised', '--epochs', '1', '--steps', '2', '--out', work/'run')
    assert_user_error(r.returncode, r.stderr, '--data', '1 class', 'at least 2 classes')
    assert snapshot(work/'run') == before

def test_unreadable_images_are_skipped_with_one_warning_line(work, tmp_path):
    shutil.copytree(work/'imgs'/'unlabeled', tmp_path/'u')
    (tmp_path/'u'/'broken.png').write_bytes(b'not a png')
    (tmp_path/'u'/'empty.png').write_bytes(b'')
    r = cli('pseudo-label', '--model', work/'run'/'model.pkl', '--data', tmp_path/'u', '--out', tmp_path/'out'/'pseudo.csv')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    warns = [o for o in r.stderr.splitlines() if 'unreadable' in o]
    assert len(warns) == 1 and warns[0].startswith('fastai-ssl: warning: skipped 2 unreadable image files of 10'), r.stderr
    assert 'UserWarning' not in r.stderr and '.py:' not in r.stderr, r.stderr   # not Python's `file:line: UserWarning:` format
    assert len(pd.read_csv(tmp_path/'out'/'pseudo.csv')) == 8
    pngs = sorted(o.name for o in (tmp_path/'out').glob('*.png'))
    assert len(pngs) >= 2 and all(o.startswith('pseudo_') for o in pngs), pngs
    assert all(str(tmp_path/'out'/o) in r.stdout for o in pngs), r.stdout   # the paths written are printed
    assert sorted(o.name for o in (tmp_path/'out').iterdir()) == sorted(pngs + ['pseudo.csv'])   # no temporary file left

def test_ctrl_c_during_training_exits_130_and_keeps_earlier_outputs(work):
    before = snapshot(work/'run')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    p = subprocess.Popen([str(CLI), 'train', '--data', 'digits', '--labels-per-class', '5', '--epochs', '1', '--steps', '100000',
                          '--out', str(work/'run')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first_line = p.stdout.readline()   # the data summary, printed before the first step
    assert 'labeled' in first_line, first_line
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    _,err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err)
    assert 'Traceback' not in err and len(problem_lines(err)) == 1 and 'interrupted' in err, err
    assert snapshot(work/'run') == before
    assert not list((work/'run').glob('.*'))   # no temporary file left

# --- `main` in this process

@pytest.mark.parametrize('kind', ['empty', 'folder', 'weights', 'other pickle'])
def test_pseudo_label_model_that_is_not_an_exported_learner(work, tmp_path, capsys, kind):
    fn = tmp_path/'model.pkl'
    if kind == 'empty': fn.write_bytes(b'')
    elif kind == 'folder': fn.mkdir()
    elif kind == 'weights':
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='load_learner')
            learn = load_learner(work/'run'/'model.pkl')
        fn = learn.save(tmp_path/'model')   # model.pth: weights and optimizer state, not a Learner
    else: torch.save({'a': [1, 2]}, fn)
    code,err = main_error(capsys, 'pseudo-label', '--model', fn, '--data', work/'imgs'/'unlabeled', '--out', tmp_path/'p.csv')
    why = {'empty': 'is an empty file', 'folder': 'is a folder', 'weights': 'holds model weights (as `learn.save` writes them)',
           'other pickle': 'holds a dict, not a Learner'}[kind]
    assert_user_error(code, err, f'--model: {fn} {why}', 'pass a Learner saved with `learn.export`')
    assert not (tmp_path/'p.csv').exists()

@pytest.mark.parametrize('flag,value,why', [('--out', 'dir', 'a folder; pass a file name'), ('--out', 'afile/p.csv', 'afile is a file, not a folder'),
                                            ('--to-label-out', 'afile/t.txt', 'afile is a file, not a folder')])
def test_pseudo_label_unwritable_outputs(work, tmp_path, capsys, flag, value, why):
    (tmp_path/'dir').mkdir(); (tmp_path/'afile').write_text('x')
    args = ['--out', tmp_path/'p.csv', '--to-label', '2'] + [flag, tmp_path/value]
    code,err = main_error(capsys, 'pseudo-label', '--model', work/'run'/'model.pkl', '--data', work/'imgs'/'unlabeled', *args)
    assert_user_error(code, err, flag, why)
    assert sorted(o.name for o in tmp_path.iterdir()) == ['afile', 'dir']

@pytest.mark.parametrize('args,words', [
    (['--plot', 'afile/bars.png'], ['--plot', 'afile is a file, not a folder']),
    (['--plot', 'bars.txt'], ['--plot', 'name a file ending in .png']),
    (['--json', 'dir'], ['--json', 'a folder; pass a file name']),
    (['--epochs', '0'], ['--epochs', '>= 1'])])
def test_demo_checks_outputs_before_training(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path/'dir').mkdir(); (tmp_path/'afile').write_text('x')
    code,err = main_error(capsys, 'demo', *args)
    assert_user_error(code, err, *words)
    assert capsys.readouterr().out == ''   # nothing trained

@pytest.mark.parametrize('args,words', [
    (['--data', 'IMG'], ['--data', 'a file, not a folder']),
    (['--data', ''], ['--data', 'no such folder']),
    (['--lr', '-1'], ['--lr must be a number > 0']),
    (['--lr', 'nan'], ['--lr must be a number > 0']),
    (['--ema', '1'], ['--ema must be in [0, 1)']),
    (['--ema', 'nan'], ['--ema must be in [0, 1)']),
    (['--seed', '-1'], ['--seed must be in 0..']),
    (['--bs', '0'], ['--bs must be >= 1']),
    (['--steps', '1000000000000'], ['--steps 1000000000000', 'pass --epochs', 'or fewer --steps']),
    (['--model', 'vit_tiny_patch16_224'], ['--model vit_tiny_patch16_224 cannot take images of 1×8×8', 'choose another --model'])])
def test_train_argument_errors(work, tmp_path, capsys, args, words):
    args = [str(next((work/'imgs'/'a').iterdir())) if o == 'IMG' else o for o in args]
    base = ['train', '--data', 'digits', '--labels-per-class', '2', '--epochs', '1', '--steps', '2', '--out', tmp_path/'run']
    code,err = main_error(capsys, *base, *args)
    assert_user_error(code, err, *words)
    assert not (tmp_path/'run').exists()

def test_folder_errors_come_before_training(work, tmp_path, capsys):
    rng = np.random.default_rng(2)
    for c in ('a', 'b'): write_pngs(tmp_path/'vmiss'/c, 6, (16, 16, 3), rng)
    write_pngs(tmp_path/'vmiss'/'valid'/'c', 2, (16, 16, 3), rng)   # a validation class without training images
    (tmp_path/'empty'/'a').mkdir(parents=True)
    before = snapshot(work/'run')
    for data,words in ((tmp_path/'vmiss', ['--data', 'c', 'remove them from validation']), (tmp_path/'empty', ['--data', 'no images'])):
        code,err = main_error(capsys, 'train', '--data', data, '--algo', 'supervised', '--epochs', '1', '--steps', '2', '--out', work/'run')
        assert_user_error(code, err, *words)
    assert snapshot(work/'run') == before

def test_bench_error_keeps_earlier_bench(tmp_path, capsys):
    (tmp_path/'b').mkdir()
    (tmp_path/'b'/'bench.json').write_text('{"runs": []}')
    before = snapshot(tmp_path/'b')
    code,err = main_error(capsys, 'bench', '--data', 'digits', '--labels-per-class', '2', '500', '--steps', '2', '--out', tmp_path/'b')
    assert_user_error(code, err, '--labels-per-class=500 is more than these classes have')
    assert snapshot(tmp_path/'b') == before

def test_run_json_says_what_its_seconds_include(work):
    rec = json.loads((work/'run'/'run.json').read_text())
    assert 0 < rec['train_seconds'] < rec['seconds'] and rec['train_sec_per_step'] < rec['sec_per_step']   # the latter include validation
    assert rec['sec_per_step'] == pytest.approx(rec['seconds']/rec['steps'])

def test_supervised_run_over_an_ssl_one_replaces_all_its_files(work, tmp_path):
    shutil.copytree(work/'run', tmp_path/'run')
    assert (tmp_path/'run'/'steps.csv').exists()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        main(['train', '--data', 'digits', '--labels-per-class', '2', '--algo', 'supervised', '--epochs', '1', '--steps', '1',
              '--out', str(tmp_path/'run'), '--quiet'])
    assert sorted(o.name for o in (tmp_path/'run').iterdir()) == ['model.pkl', 'run.json']   # no stale steps of the earlier run
    assert json.loads((tmp_path/'run'/'run.json').read_text())['algo'] == 'supervised'
