"""metagen_ppl: inverting MetaGen-style perception models with EM, SVI and MCMC on Pyro."""

from .errors import DataError, MetagenError, ModelError
from .registry import ModelSpec, builtin_models, load_model
from .result import FitResult
from .em import fit_em
from .enumeration import EnumeratedModel
from .api import fit

__version__ = "0.1.0"

__all__ = ["DataError", "MetagenError", "ModelError", "ModelSpec", "builtin_models", "load_model",
           "FitResult", "fit_em", "EnumeratedModel", "fit", "__version__"]
