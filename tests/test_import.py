"The import is quiet: no third-party warning a user cannot act on"
import subprocess, sys

def _stderr(code, *flags): return subprocess.run([sys.executable, *flags, '-c', code], capture_output=True, text=True, check=True).stderr

def test_import_is_quiet():
    assert _stderr('from fastai_ssl.all import *') == ''
    assert _stderr('from fastai_ssl.all import *', '-W', 'default') == ''   # DeprecationWarnings shown too

def test_filter_is_narrow():
    "Only fastai's import is filtered: the user's own deprecated calls still warn"
    err = _stderr('import fastai_ssl.all, torch\ntorch.jit.script(torch.nn.Linear(1, 1))')
    assert 'torch.jit.script' in err
