"""metagen_ppl: inverting MetaGen-style perception models with EM, SVI and MCMC on Pyro."""

from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.engine.registry import ModelSpec, builtin_models, load_model
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.em import fit_em
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.api import fit

__version__ = "0.1.0"

__all__ = ["DataError", "MetagenError", "ModelError", "ModelSpec", "builtin_models", "load_model",
           "FitResult", "fit_em", "EnumeratedModel", "fit", "__version__"]
