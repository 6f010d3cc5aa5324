"""The set-up shared by every inference method: validation, precision, binding, starting values.

:func:`bind` checks the data and ``K`` and binds them to a model
(:class:`~metagen_ppl.engine.enumeration.EnumeratedModel`), in the requested
precision; :func:`initial_values` draws one restart's starting point (the
model's ``initialize`` hook, else a prior draw). EM, SVI and MCMC all start here.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from pyro import poutine

from metagen_ppl.engine.components import component_structure, data_start
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.registry import ModelSpec
from metagen_ppl.engine.validate import check_data, check_num_objects, check_options
from metagen_ppl.errors import DataError, MetagenError
from metagen_ppl.util import seeded

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype, data: Optional[dict] = None) -> torch.dtype:
    """The floating dtype a fit runs in.

    Parameters
    ----------
    dtype : None, str or torch.dtype
        ``None``: the dtype of the data's first floating tensor (the default
        dtype if it has none); ``"float32"``/``"float64"`` or
        ``torch.float32``/``torch.float64``: that one. Half precisions are
        refused (Pyro's distributions and the E-step's sums are not written for them).
    data : dict, optional

    Raises
    ------
    MetagenError
        For any other value.
    """
    if dtype is None:
        for v in (data or {}).values():
            if torch.is_tensor(v) and v.is_floating_point():
                return v.dtype
        return torch.get_default_dtype()
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    raise MetagenError(f"unknown dtype {dtype!r}; choose None (the data's dtype), 'float32' or 'float64'")


def convert_floats(value, dtype):
    """Floating tensors (also inside lists, tuples and dicts) to ``dtype``; the rest unchanged."""
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: convert_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(torch.is_tensor(v) or isinstance(v, (dict, list, tuple))
                                                for v in value):
        return type(value)(convert_floats(v, dtype) for v in value)
    return value


def bind(spec: ModelSpec, data: dict, num_objects, options: Optional[dict], dtype=None,
         discrete: Sequence[str] = ()):
    """Validate ``data`` and ``K`` and bind them to the model: ``(EnumeratedModel, K, dtype)``.

    The one set-up shared by every inference method (EM, SVI, MCMC). With a
    ``dtype`` (see :func:`resolve_dtype`) every floating tensor of ``data`` and
    ``options`` is converted to it first, so the whole fit runs in that
    precision; ``em.data`` holds the converted data (pass it, not ``data``, to
    anything that runs the model). With ``dtype=None`` nothing is converted and
    the data's dtype rules. The model's ``DEFAULT_OPTIONS`` are the defaults of ``options``.
    ``discrete`` names discrete sites that EM treats as
    parameters (see :class:`~metagen_ppl.engine.enumeration.EnumeratedModel`).
    The model is traced once at its prior draw in ``dtype``
    (:meth:`~metagen_ppl.engine.enumeration.EnumeratedModel.check_dtype`): a site that computes
    in another precision is a :class:`~metagen_ppl.errors.ModelError` here, before any fit.
    """
    check_data(data)
    check_num_objects(num_objects, data)
    num_objects = int(num_objects)
    check_options(options, num_objects)
    options = dict(spec.default_options, **(options or {}))
    if dtype is not None:
        dtype = resolve_dtype(dtype)
        data = convert_floats(dict(data), dtype)
        options = convert_floats(options, dtype)
        for key, value in data.items():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                raise DataError(f"data[{key!r}] does not fit in {dtype} (values overflow to inf); "
                                "rescale the data or use float64")
    else:
        dtype = resolve_dtype(None, data)
    em = EnumeratedModel(spec.model, data, num_objects, options, discrete=discrete)
    em.check_dtype(dtype)  # one trace: a constant in another precision is reported now, not after the fit
    return em, num_objects, dtype


def initial_values(spec: ModelSpec, em: EnumeratedModel, generator: torch.Generator, dtype,
                   init: Optional[dict] = None) -> dict:
    """Starting values for one restart: the model's ``initialize`` hook, else the engine's data-driven
    start (:func:`~metagen_ppl.engine.components.data_start`: k-means++ seeds of the observations for the
    location site, uniform per-object weights) over a prior draw of the other unknowns; entries of
    ``init`` (user-given values) override both. Discrete parameters (``em.discrete``) start at their
    prior draw unless ``initialize`` or ``init`` gives them.

    The first call for ``em`` also reads the model's per-object structure
    (:func:`~metagen_ppl.engine.components.component_structure`, cached) and checks the number of
    observations in the observed site's plates against ``K`` (:class:`DataError`).
    """
    unknowns = list(em.latents) + list(em.discrete)
    unknown = sorted(set(init or {}) - set(unknowns))
    if unknown:
        raise MetagenError(f"init gives values for {unknown}, which are not unknowns of this model "
                           f"(fixed by options, or misspelt); its unknowns are {unknowns}")
    values = {}
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    with seeded(seed):
        tr = poutine.trace(em.raw_model).get_trace(em.data, em.num_objects, **em.options)
    for name in em.latents:
        values[name] = tr.nodes[name]["value"].detach().to(dtype)
    for name in em.discrete:  # discrete parameters keep their integer dtype
        values[name] = tr.nodes[name]["value"].detach()
    comps = component_structure(spec, em)  # checks the observations against K; cached for the fit
    if spec.initialize is not None:
        given = spec.initialize(em.data, em.num_objects, generator, **em.options)
        values.update({k: _as_start(v, values[k]) for k, v in given.items() if k in values})
    elif comps.location_site is not None:
        values.update({k: _as_start(v, values[k]) for k, v in data_start(spec, em, values, generator).items()})
    if init:
        values.update({k: _as_start(v, values[k]) for k, v in init.items()})
    return values


def _as_start(value, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor of ``like``'s dtype (floating sites in the fit's precision)."""
    return torch.as_tensor(value, dtype=like.dtype).detach()
