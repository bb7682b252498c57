"Everything a user needs: `from fastai_ssl.all import *`, as `fastai.vision.all`; importing it fills the catalogue `ALGORITHMS` with every algorithm"
import importlib as _importlib, pkgutil as _pkgutil
from .distrib import *
from .unlabeled import *
from .steplog import *
from .learner import *
from .core import *
from .teacher import *
from .losses import *
from .align import *
from .features import *
from .augment import *
from .data import *
from .models import *
from .interpret import *
from .policies import *

def _import_all():
    "Import every other module of the package (each algorithm registers itself in `ALGORITHMS`) and take its public names: a new algorithm's notebook is all it takes"
    pkg = _importlib.import_module(__package__)
    for m in sorted(_pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if m.name.startswith('_') or m.name in ('all', 'cli'): continue
        mod = _importlib.import_module(f'{__package__}.{m.name}')
        globals().update({n: getattr(mod, n) for n in getattr(mod, '__all__', ())})

_import_all()
