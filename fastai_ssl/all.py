"Everything a user needs: `from fastai_ssl.all import *`, as `fastai.vision.all`"
from .core import *
from .teacher import *
from .losses import *
from .augment import *
from .data import *
from .models import *
from .fixmatch import *
from .mixmatch import *
from .meanteacher import *
from .ict import *
from .pseudolabel import *
from .pimodel import *
from .vat import *
from .uda import *
from .flexmatch import *
from .freematch import *
