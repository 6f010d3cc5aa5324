"""Checks of data tensors and sizes, with errors that say what to fix."""

from __future__ import annotations

import math
import numbers

import torch

from metagen_ppl.errors import DataError


def check_data(data: dict) -> None:
    """Validate a model's data dict: tensors, finite values; ``x`` a floating tensor of observations
    ``(N, D)``, or ``(..., N, D)`` in nested plates (e.g. ``(S, M, D)``: ``S`` scenes of ``M``).

    The observations are counted in the plates of the model's observed site, whatever its data key,
    once the model is traced (:func:`metagen_ppl.engine.components.component_structure`); each
    model checks the layout it needs (the baseline: exactly ``(N, D)``)."""
    if not isinstance(data, dict) or not data:
        raise DataError("data must be a non-empty dict of tensors, e.g. {'x': tensor of shape (N, 3)}")
    for key, value in data.items():
        if not torch.is_tensor(value):
            continue
        if value.is_floating_point() and value.dim() >= 2 and value.numel() == 0:  # (N, D) under any key
            if value.shape[-1] == 0 and all(n > 0 for n in value.shape[:-1]):
                raise DataError(f"data[{key!r}] has rows of no coordinates (shape {tuple(value.shape)}); expected "
                                "(N, D), D >= 1")
            raise DataError(f"data[{key!r}] has no observations (N = 0, shape {tuple(value.shape)}); a scene "
                            "needs at least one detection")
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).nonzero()[0].tolist()
            raise DataError(f"data[{key!r}] contains NaN or inf (first at index {bad}); "
                            "remove or impute those entries")
        if value.is_floating_point() and value.dim() >= 1 and value.numel():
            # squared distances (every mixture E-step, k-means++) must not overflow
            sq = (value.double() * value.double()).sum(-1)
            if not torch.isfinite(sq).all() or not torch.isfinite(sq.to(value.dtype)).all():
                big = float(value.abs().max())
                hint = " or use float64" if value.dtype != torch.float64 else ""
                raise DataError(f"data[{key!r}] holds values up to {big:.3g}, whose squares overflow {value.dtype}; "
                                f"rescale the data (e.g. divide by its standard deviation){hint}")
    x = data.get("x")
    if x is not None:
        if not torch.is_tensor(x) or x.dim() < 1:
            raise DataError(f"data['x'] must be a tensor of shape (N, D) (or (..., N, D) in nested plates), got "
                            f"{'shape ' + str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__}")
        if x.numel() == 0:
            raise DataError(f"data['x'] has no observations (N = 0, shape {tuple(x.shape)}); a scene needs at least "
                            "one detection")
        if not x.is_floating_point():
            raise DataError("data['x'] must be a floating-point tensor")


def num_observations(x) -> int:
    """Observations in a data tensor ``x``: ``N`` of ``(N, D)``, ``S * M`` of ``(S, M, D)``, ``N`` of ``(N,)``."""
    return int(x.shape[0]) if x.dim() <= 2 else math.prod(x.shape[:-1])


def check_num_objects(num_objects, data: dict) -> None:
    """``1 <= K <= N`` (``N`` of ``data["x"]``, :func:`num_observations`; the observed site's plates are
    checked again once the model is traced, whatever the data key)."""
    if isinstance(num_objects, bool) or not isinstance(num_objects, numbers.Integral):
        raise DataError(f"num_objects must be an integer, got {num_objects!r}")
    if num_objects < 1:
        raise DataError(f"num_objects must be at least 1, got {num_objects}")
    x = data.get("x")
    if torch.is_tensor(x) and x.dim() >= 1 and num_objects > num_observations(x):
        raise DataError(f"num_objects = {num_objects} exceeds the number of observations "
                        f"N = {num_observations(x)}; use K <= N")


#: Model options (keyword arguments of the built-in models) that must be finite numbers > 0.
POSITIVE_OPTIONS = ("scale", "loc_prior_scale", "weight_concentration", "scale_prior_shape", "scale_prior_rate",
                    "rate_prior_shape", "rate_prior_rate", "hall_prior_shape", "hall_prior_rate",
                    "pixel_scale", "mark_concentration", "half_fov", "confusion_diag")
#: Model options that must be finite numbers.
FINITE_OPTIONS = ("loc_prior_mean",)
#: Model options that are vectors of finite numbers > 0 (per category).
POSITIVE_VECTOR_OPTIONS = ("rates", "hallucination")


def _option_number(key, value, where):
    if torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"{where} {key}={value!r:.60}: must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise DataError(f"{where} {key}={value}: must be a finite number")
    return value


def _option_vector(key, value, where):
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"{where} {key}={value!r:.60}: must be a list of numbers") from None
    if t.dim() != 1 or t.numel() == 0:
        raise DataError(f"{where} {key}: must be a non-empty list of numbers, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{where} {key}={t.tolist()}: must hold finite numbers")
    return t


def check_options(options: dict, num_objects=None, where: str = "option") -> None:
    """Check the values of well-known model options (the built-in models' keywords).

    Scales, prior shapes and rates must be finite and positive, ``weights`` a
    probability vector of length ``num_objects``, ``num_categories`` an integer
    >= 1, ``count_prior_p`` in (0, 1). Options with other names are left to the
    model. Raises :class:`DataError` naming the option.
    """
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in POSITIVE_OPTIONS:
            if _option_number(key, value, where) <= 0:
                raise DataError(f"{where} {key}={value}: must be > 0")
        elif key in FINITE_OPTIONS:
            _option_number(key, value, where)
        elif key in POSITIVE_VECTOR_OPTIONS:
            t = _option_vector(key, value, where)
            if bool((t <= 0).any()):
                raise DataError(f"{where} {key}={t.tolist()}: every rate must be > 0")
        elif key == "count_prior_p":
            p = _option_number(key, value, where)
            if not 0 < p < 1:
                raise DataError(f"{where} {key}={value}: must be in (0, 1)")
        elif key == "num_categories":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise DataError(f"{where} {key}={value!r:.60}: must be an integer >= 1")
        elif key == "weights":
            t = _option_vector(key, value, where)
            if num_objects is not None and t.numel() != int(num_objects):
                raise DataError(f"{where} weights has {t.numel()} entries but there are "
                                f"{int(num_objects)} objects; give one weight per object")
            if bool((t < 0).any()) or abs(float(t.sum()) - 1.0) > 1e-6:
                raise DataError(f"{where} weights={t.tolist()}: must be non-negative and sum to 1")


def degeneracy_warnings(data: dict, observed_site, params: dict, location_site, num_objects: int) -> list:
    """Warnings (each with what to do) about a fit that the data cannot support.

    * fewer distinct observations (rows of the observed site, ``(N, D)``) than objects ``K``;
    * two fitted locations (``params[location_site]``, ``(K, D)``) that coincide: closer than
      1e-6 times the spread of the data (a component duplicates another, often because the data
      sit on a scale far from the priors', e.g. values around 1e-300).
    Empty when the model has no such sites.
    """
    out = []
    K = int(num_objects)
    x = data.get(observed_site) if observed_site else None
    if torch.is_tensor(x) and x.dim() == 2 and x.is_floating_point() and K > 1:
        distinct = int(torch.unique(x, dim=0).shape[0])
        if distinct < K:
            out.append(f"the data hold only {distinct} distinct observation(s) for K = {K} objects: the fit "
                       f"cannot tell {K} objects apart; use K <= {distinct} (--num-objects)")
    locs = params.get(location_site) if location_site else None
    if not out and torch.is_tensor(locs) and locs.dim() == 2 and locs.shape[0] == K and K > 1 and torch.is_tensor(x) \
            and x.dim() == 2 and x.shape[-1] == locs.shape[-1]:
        xd = x.double()
        spread = float((xd.max(0).values - xd.min(0).values).max())       # a range: no squares to underflow
        d = torch.cdist(locs.detach().double(), locs.detach().double())
        d = d + torch.diag(torch.full((K,), math.inf, dtype=d.dtype))
        i, j = divmod(int(d.argmin()), K)
        if float(d[i, j]) <= 1e-6 * spread or (spread == 0.0 and float(d[i, j]) == 0.0):
            out.append(f"components {min(i, j)} and {max(i, j)} coincide (distance {float(d[i, j]):.3g}, data spread "
                       f"{spread:.3g}): the data do not support K = {K} distinct objects; lower --num-objects, or "
                       "rescale the data to the priors' scale (the built-in priors are in units of about 1-10)")
    return out
