"""The closed-form MAP M-step of M3 (locations, noise, detection and hallucination rates)."""

from __future__ import annotations

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.models.detector.generative import box_bounds, hyperparameter, structure_of


def _weighted_sums(data, marginals, num_objects):
    """The positions ``(S, T, D, 3)``, the masked posterior of ``z`` ``g`` ``(S, T, D, K + 1)``, and per
    object its expected count ``sum g_k`` ``(S, K)`` and weighted position sum ``sum g_k x`` ``(S, K, 3)``."""
    pos = data["positions"]
    S, T, D = pos.shape[:3]
    g = marginals["z"].reshape(S, T, D, int(num_objects) + 1).to(pos.dtype)
    g = g * data["det_mask"].unsqueeze(-1).to(pos.dtype)
    nk = g[..., 1:].sum((1, 2))                                           # (S, K)
    sx = torch.einsum("stdk,stdx->skx", g[..., 1:], pos)                  # (S, K, 3)
    return pos, g, nk, sx


def closed_form_mstep(data, marginals, params, num_objects, *, cats=None, active=None, rates=None,
                      hallucination=None, scale=None, num_categories=len(CATEGORIES), **options):
    """MAP M-step of M3 in closed form, V pooled over all scenes (one ECM sweep).

    With ``g`` the posterior of ``z`` (``(S, T, D, K + 1)``), ``F_s`` the frames of scene ``s``:

    * ``mu_sk = sum_{t,d} g_k x / sum g_k`` (uniform prior: the weighted mean,
      kept inside the box; unchanged when ``sum g_k = 0``);
    * ``sigma^2 = (sum g_k |x - mu_k|^2 + 2 b_s) / (3 sum g_k + 2 a_s + 1)``;
    * ``r_c = (sum_{objects of c} g + a_r - 1) / (sum_{active slots of c} F_s + b_r)``;
    * ``h_c = (sum_{detections of c} g_0 + a_h - 1) / (sum_s F_s + b_h)``.
    """
    K = int(num_objects)
    C = int(num_categories)
    cats, active = structure_of(data, K, cats, active)
    pos, g, nk, sx = _weighted_sums(data, marginals, K)
    dtype = pos.dtype
    lo, hi, _ = box_bounds(data)
    out = {}
    old = params["locs"].to(dtype)
    width = hi - lo
    locs = torch.where((nk > 1e-12).unsqueeze(-1), sx / nk.clamp_min(1e-12).unsqueeze(-1), old)
    locs = torch.maximum(torch.minimum(locs, hi - 1e-9 * width), lo + 1e-9 * width)
    out["locs"] = locs
    opts = dict(options)
    stats = sufficient_statistics(data, marginals, locs, K, cats=cats, active=active, num_categories=C)
    given = {"scale": scale, "rates": rates, "hallucination": hallucination}
    out.update(mstep_from_statistics(stats, 1.0, sites=[k for k in ("scale", "rates", "hallucination")
                                                         if given[k] is None], **opts))
    return out


def sufficient_statistics(data, marginals, locs, num_objects, *, cats=None, active=None,
                          num_categories=len(CATEGORIES)) -> dict:
    """Expected sufficient statistics of ``V = (r, h)`` and ``sigma`` at locations ``locs``, summed over scenes.

    ``rate_counts`` (C): ``sum_{objects of c} sum g``; ``rate_exposure`` (C): ``sum_{active slots of c} F_s``;
    ``hall_counts`` (C): ``sum_{detections of c} g_0``; ``frames`` (): ``sum_s F_s``;
    ``scale_ss`` (): ``sum g_k |x - mu_k|^2``; ``scale_g`` (): ``sum g_k``. Additive over scenes
    (online EM, :mod:`metagen_ppl.engine.online`); :func:`mstep_from_statistics` is the M-step.
    """
    K = int(num_objects)
    C = int(num_categories)
    cats, active = structure_of(data, K, cats, active)
    pos, g, nk, sx = _weighted_sums(data, marginals, K)
    dtype = pos.dtype
    locs = torch.as_tensor(locs, dtype=dtype)
    gx2 = (g[..., 1:].sum(-1) * (pos * pos).sum(-1)).sum()
    frames = data["frame_mask"].sum(-1).to(dtype)                        # (S,)
    return {"rate_counts": torch.zeros(C, dtype=dtype).index_add_(0, cats.reshape(-1), nk.reshape(-1)),
            "rate_exposure": torch.zeros(C, dtype=dtype).index_add_(
                0, cats.reshape(-1), (active.to(dtype) * frames.unsqueeze(-1)).reshape(-1)),
            "hall_counts": torch.zeros(C, dtype=dtype).index_add_(0, data["categories"].reshape(-1),
                                                                   g[..., 0].reshape(-1)),
            "frames": frames.sum(),
            "scale_ss": (gx2 - 2 * (locs * sx).sum() + (nk * (locs * locs).sum(-1)).sum()).clamp_min(0.0),
            "scale_g": nk.sum()}


def mstep_from_statistics(stats: dict, count=1.0, *, sites=("scale", "rates", "hallucination"), **options) -> dict:
    """The MAP M-step of ``r``, ``h`` and ``sigma`` from statistics ``count * stats`` (:func:`sufficient_statistics`):
    ``r_c = (n rate_counts_c + a_r - 1) / (n rate_exposure_c + b_r)``, ``h_c = (n hall_counts_c + a_h - 1) /
    (n frames + b_h)``, ``sigma^2 = (n scale_ss + 2 b_s) / (3 n scale_g + 2 a_s + 1)`` with ``n = count``."""
    n = float(count)
    out = {}
    if "scale" in sites:
        a = float(hyperparameter(options, "scale_prior_shape"))
        b = float(hyperparameter(options, "scale_prior_rate"))
        out["scale"] = ((n * stats["scale_ss"] + 2 * b) / (3 * (n * stats["scale_g"]) + 2 * a + 1)).sqrt()
    if "rates" in sites:
        a = float(hyperparameter(options, "rate_prior_shape"))
        b = float(hyperparameter(options, "rate_prior_rate"))
        out["rates"] = ((n * stats["rate_counts"] + a - 1) / (n * stats["rate_exposure"] + b)).clamp_min(1e-12)
    if "hallucination" in sites:
        a = float(hyperparameter(options, "hall_prior_shape"))
        b = float(hyperparameter(options, "hall_prior_rate"))
        out["hallucination"] = ((n * stats["hall_counts"] + a - 1) / (n * stats["frames"] + b)).clamp_min(1e-12)
    return out
