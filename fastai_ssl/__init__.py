__version__ = "0.1.0"

import warnings
with warnings.catch_warnings():   # fastai, at import, applies `torch.jit.script` and sets a pandas option, both deprecated: nothing a user can act on
    warnings.filterwarnings('ignore', message=r'`torch\.jit\.script`', category=FutureWarning)
    warnings.filterwarnings('ignore', message=r".*'mode\.chained_assignment'")
    import fastai.vision.all
