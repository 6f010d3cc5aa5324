"""metagen_ppl: inverting MetaGen-style perception models with EM, SVI and MCMC on Pyro.

The public API of the engine; the layers are ``metagen_ppl.engine`` (inference),
``metagen_ppl.domain`` (the MetaGen world), ``metagen_ppl.models`` (the model
variants) and ``metagen_ppl.apps`` (command line, compare, evaluate, plots).
"""

from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.engine.registry import ModelSpec, builtin_models, load_model
from metagen_ppl.engine.result import FitResult, StructureFitResult
from metagen_ppl.engine.em import fit_em, run_em
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.api import fit

__version__ = "0.1.0"

__all__ = ["DataError", "MetagenError", "ModelError", "ModelSpec", "builtin_models", "load_model",
           "FitResult", "StructureFitResult", "fit_em", "run_em", "EnumeratedModel", "fit", "__version__"]
