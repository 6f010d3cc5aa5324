"""The closed-form MAP M-step of M3 (locations, noise, detection and hallucination rates)."""

from __future__ import annotations

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.models.detector.generative import box_bounds, hyperparameter, structure_of


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
    pos = data["positions"]
    dtype = pos.dtype
    S, T, D = pos.shape[:3]
    K = int(num_objects)
    C = int(num_categories)
    cats, active = structure_of(data, K, cats, active)
    g = marginals["z"].reshape(S, T, D, K + 1).to(dtype)
    g = g * data["det_mask"].unsqueeze(-1).to(dtype)
    lo, hi, _ = box_bounds(data)
    out = {}
    nk = g[..., 1:].sum((1, 2))                                           # (S, K)
    sx = torch.einsum("stdk,stdx->skx", g[..., 1:], pos)                  # (S, K, 3)
    old = params["locs"].to(dtype)
    width = hi - lo
    locs = torch.where((nk > 1e-12).unsqueeze(-1), sx / nk.clamp_min(1e-12).unsqueeze(-1), old)
    locs = torch.maximum(torch.minimum(locs, hi - 1e-9 * width), lo + 1e-9 * width)
    out["locs"] = locs
    opts = dict(options)
    if scale is None:
        gx2 = (g[..., 1:].sum(-1) * (pos * pos).sum(-1)).sum()
        ss = (gx2 - 2 * (locs * sx).sum() + (nk * (locs * locs).sum(-1)).sum()).clamp_min(0.0)
        a = float(hyperparameter(opts, "scale_prior_shape"))
        b = float(hyperparameter(opts, "scale_prior_rate"))
        out["scale"] = ((ss + 2 * b) / (3 * nk.sum() + 2 * a + 1)).sqrt()
    frames = data["frame_mask"].sum(-1).to(dtype)                        # (S,)
    if rates is None:
        n_obj = torch.zeros(C, dtype=dtype).index_add_(0, cats.reshape(-1), nk.reshape(-1))
        exposure = torch.zeros(C, dtype=dtype).index_add_(
            0, cats.reshape(-1), (active.to(dtype) * frames.unsqueeze(-1)).reshape(-1))
        a = float(hyperparameter(opts, "rate_prior_shape"))
        b = float(hyperparameter(opts, "rate_prior_rate"))
        out["rates"] = ((n_obj + a - 1) / (exposure + b)).clamp_min(1e-12)
    if hallucination is None:
        g0 = g[..., 0].reshape(-1)
        o = data["categories"].reshape(-1)
        n_h = torch.zeros(C, dtype=dtype).index_add_(0, o, g0)
        a = float(hyperparameter(opts, "hall_prior_shape"))
        b = float(hyperparameter(opts, "hall_prior_rate"))
        out["hallucination"] = ((n_h + a - 1) / (frames.sum() + b)).clamp_min(1e-12)
    return out
