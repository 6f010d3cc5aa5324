"""Finding model variants by name or by file path.

A *model module* is an ordinary Python file that defines

``model(data, num_objects, **options)``
    the Pyro model function (required). ``data`` is a dict of tensors (for the
    point models ``{"x": (N, 3)}``, optionally ``"o": (N,)``).  Discrete
    assignment sites are marked ``infer={"enumerate": "parallel"}``; continuous
    unknowns are ``pyro.sample`` sites (fitted as MAP by EM and SVI-MAP, sampled
    by NUTS) or ``pyro.param`` sites.

and optionally

``simulate(num_objects, num_obs, seed, **options) -> dict``
    a simulated data set in the JSON exchange format, with ``"truth"``;
``initialize(data, num_objects, generator, **options) -> dict``
    starting values of the continuous unknowns (one restart);
``closed_form_mstep(data, marginals, params, num_objects, **options) -> dict``
    the fast-path M-step: new values of the sites it knows in closed form
    (``marginals``: each enumerated site's posterior; a hook with an ``estep``
    parameter also receives the whole :class:`~metagen_ppl.engine.enumeration.EStep`);
``estep(data, params, num_objects, **options) -> EStep``
    a model's own (batched) E-step, used by EM instead of Pyro enumeration; it
    must equal :meth:`~metagen_ppl.engine.enumeration.EnumeratedModel.estep`
    (log joint, log likelihood, log prior, marginals) -- test it so;
``discrete_update(data, estep, params, num_objects, *, iteration, **options) -> (dict, bool)``
    closed-form update of the discrete parameters (``fit_em(discrete=[...])``)
    and what depends on them, after the continuous M-step; ``(updates, changed)``.
    Called with ``estep=None, iteration=0`` to start the discrete parameters of a run;
``reseed_empty(data, marginals, params, num_objects, *, threshold, skip, **options)``
    the after-E-step hook: a new start for a component that lost all
    responsibility (used by :func:`~metagen_ppl.engine.em.fit_em` with
    ``empty="reinit"``; see :mod:`metagen_ppl.engine.em`);
``DEFAULT_OPTIONS``
    a dict of defaults of the model's options (``bind`` puts the user's options
    over them): how a variant changes a component of the model it builds on;
``data_from_json(obj, dtype) -> dict``
    converts a parsed JSON data file to the model's ``data`` dict;
``prepare_comparison(obj, *, seed, dtype, num_objects, options, progress, log, source)``
    the set-up of ``metagen-ppl compare`` for a model with a discrete structure
    to search (returns a :class:`metagen_ppl.engine.comparison.ComparisonSetup`);
``COMPARE_SIMULATION``, ``COMPARE_BUDGET``, ``CATEGORY_STRATEGIES``
    ``compare``'s default simulation sizes, budget defaults, and the EM category
    strategies to run (models with per-object category sites);
``COMPONENT_SITES``
    ``{site: dim}``: sites indexed by object along ``dim`` of one value (used to
    align labels across MCMC draws, to start and re-seed objects, to match
    estimates to the truth). Optional: without it the engine reads them from the
    model's trace (:mod:`metagen_ppl.engine.components`: the unknowns with a
    dimension whose entries each select one value of the assignment site, e.g.
    ``(K, D)`` locations, ``(K,)`` scales, ``(K + 1,)`` weights with a clutter
    weight, ``(S, K, D)`` per-scene locations). ``{}`` declares that there is no
    label switching to undo;
``LOCATION_SITE``
    the name of the ``(..., K, D)`` site holding object locations (default
    ``"locs"``, else the real-valued per-object site that an observed site of
    ``D`` coordinates depends on); ``None``: the model has none;
``DATA_DIM``
    the number of coordinates per observation the JSON reader requires
    (``metagen_ppl.io.data_from_json``); absent: any, as long as every row has the same.

A model with an unknown number of objects per scene adds its structure moves
by implementing :class:`metagen_ppl.engine.structure.StructureSearch` (the
engine's :func:`~metagen_ppl.engine.structure.search_structure` runs them).

Built-in variants live in the repository's ``models/`` folder, installed as the
package ``metagen_ppl.models``, and are found by name (``"baseline"``) through one
table: the entry points of the group ``metagen_ppl.models`` (``pyproject.toml``;
another installed package may register its own models there). Any other file is
found by its path (``"my_models/variant.py"``), so a user can run their own
variant with the same commands. This module imports no model.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Optional

from metagen_ppl.errors import ModelError


@dataclass
class ModelSpec:
    """A model module, with its optional hooks resolved (``None`` if absent)."""

    name: str
    model: Callable
    module: ModuleType
    simulate: Optional[Callable] = None
    initialize: Optional[Callable] = None
    closed_form_mstep: Optional[Callable] = None
    estep: Optional[Callable] = None
    discrete_update: Optional[Callable] = None
    reseed_empty: Optional[Callable] = None
    data_from_json: Optional[Callable] = None
    component_sites: dict = field(default_factory=dict)
    location_site: str = "locs"
    default_options: dict = field(default_factory=dict)
    #: whether the module defines ``COMPONENT_SITES`` / ``LOCATION_SITE`` (else they are read from the trace)
    component_sites_declared: bool = False
    location_site_declared: bool = False
    #: coordinates per observation of the JSON reader (``DATA_DIM``; ``None``: any)
    data_dim: Optional[int] = None


#: Entry-point group of the registered (built-in and third-party) models.
ENTRY_POINT_GROUP = "metagen_ppl.models"


@functools.lru_cache(maxsize=1)
def _registered() -> dict:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def builtin_models() -> list[str]:
    """Names of the registered model variants (entry points of :data:`ENTRY_POINT_GROUP`)."""
    return sorted(_registered())


def _spec_from_module(name: str, module: ModuleType) -> ModelSpec:
    model = getattr(module, "model", None)
    if not callable(model):
        raise ModelError(
            f"model module {name!r} defines no function `model(data, num_objects, ...)`; "
            "add one (see metagen_ppl.engine.registry for the protocol)"
        )
    return ModelSpec(
        name=name,
        model=model,
        module=module,
        simulate=getattr(module, "simulate", None),
        initialize=getattr(module, "initialize", None),
        closed_form_mstep=getattr(module, "closed_form_mstep", None),
        estep=getattr(module, "estep", None),
        discrete_update=getattr(module, "discrete_update", None),
        reseed_empty=getattr(module, "reseed_empty", None),
        data_from_json=getattr(module, "data_from_json", None),
        component_sites=dict(getattr(module, "COMPONENT_SITES", None) or {}),
        location_site=getattr(module, "LOCATION_SITE", "locs"),
        default_options=dict(getattr(module, "DEFAULT_OPTIONS", None) or {}),
        component_sites_declared=hasattr(module, "COMPONENT_SITES"),
        location_site_declared=hasattr(module, "LOCATION_SITE"),
        data_dim=getattr(module, "DATA_DIM", None),
    )


def load_model(name_or_path) -> ModelSpec:
    """Return the :class:`ModelSpec` of a built-in model name or a ``.py`` path.

    Raises
    ------
    ModelError
        If no built-in model has that name and no such file exists, or the
        file does not define ``model``.
    """
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    if isinstance(name_or_path, ModuleType):
        return _spec_from_module(name_or_path.__name__.rsplit(".", 1)[-1], name_or_path)
    text = os.fspath(name_or_path)
    if text.endswith(".py") or os.sep in text or "/" in text:
        if not os.path.isfile(text):
            raise ModelError(f"model file {text!r} does not exist; give a built-in name "
                             f"({', '.join(builtin_models())}) or the path of a .py file")
        if not text.endswith(".py"):
            raise ModelError(f"model file {text!r} is not a Python file; give the path of a .py "
                             "file that defines `model`, or a built-in model name")
        mod_name = "metagen_user_model_" + os.path.splitext(os.path.basename(text))[0]
        spec = importlib.util.spec_from_file_location(mod_name, text)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a user's file that does not import is bad input
            raise ModelError(f"model file {text!r} failed to import: {type(e).__name__}: {e}") from e
        return _spec_from_module(os.path.splitext(os.path.basename(text))[0], module)
    table = _registered()
    if text not in table:
        if not table:
            raise ModelError(f"unknown model {text!r}: no models are registered; install metagen_ppl "
                             "(pip install -e .) so that its entry points exist, or give the path of a .py file")
        raise ModelError(f"unknown model {text!r}; built-in models are: {', '.join(sorted(table))} "
                         "(or give the path of a .py file that defines `model`)")
    return _spec_from_module(text, table[text].load())


def model_reference(spec: ModelSpec) -> str:
    """What another process needs to load the same model with :func:`load_model`: the importable module's
    dotted name (a built-in or installed model), else the path of the model's ``.py`` file (a user's
    file, which must then exist at that path for the other process, e.g. on every worker of a cluster)."""
    module = spec.module
    name = getattr(module, "__name__", "")
    path = getattr(module, "__file__", None)
    if name and not name.startswith("metagen_user_model_"):
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            pass
    if path:
        return os.path.abspath(path)
    raise ModelError(f"model {spec.name!r} was not loaded from a module or a file; another process cannot load it")


def load_reference(reference: str) -> ModelSpec:
    """The :class:`ModelSpec` of a :func:`model_reference` (in another process)."""
    if reference.endswith(".py") or os.sep in reference or "/" in reference:
        return load_model(reference)
    return load_model(importlib.import_module(reference))
