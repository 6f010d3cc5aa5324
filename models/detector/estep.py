"""The batched E-step of M3: per-scene log likelihoods and assignment posteriors in one tensor pass.

It computes what the engine's Pyro enumeration computes
(:meth:`metagen_ppl.engine.enumeration.EnumeratedModel.estep`; a test checks they
are equal) without tracing the model: the ``estep`` hook of the model.
"""

from __future__ import annotations

import math

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.engine.enumeration import EStep
from metagen_ppl.models.detector.generative import (box_bounds, structure_of, assignment_logits, category_intensity,
                                                    check_inside_box, log_prior)


def parameter_values(params, options, dtype):
    """Full ``(rates, hallucination, scale, locs)`` from fitted sites and fixed options."""
    def get(name):
        if options.get(name) is not None:
            return torch.as_tensor(options[name], dtype=dtype)
        return params[name].to(dtype)
    return get("rates"), get("hallucination"), get("scale").reshape(()), params["locs"].to(dtype)


def component_log_density(data, locs, scale):
    """``log p_j(x_n)``, ``(S, T, D, K + 1)``: ``-log vol`` for ``j = 0``, Gaussian for the slots."""
    _, _, log_vol = box_bounds(data)
    x = data["positions"]
    # |x - m|^2 = |x|^2 - 2 x.m + |m|^2, without a (S, T, D, K, 3) temporary
    d2 = ((x * x).sum(-1).unsqueeze(-1) - 2 * torch.einsum("stdx,skx->stdk", x, locs)
          + (locs * locs).sum(-1)[:, None, None, :]).clamp_min(0.0)
    normal = -0.5 * d2 / scale ** 2 - 3 * torch.log(scale) - 1.5 * math.log(2 * math.pi)
    clutter = torch.full(normal.shape[:-1] + (1,), -log_vol, dtype=x.dtype)
    return torch.cat([clutter, normal], -1)


def joint_log_terms(data, params, cats, active, *, num_categories=len(CATEGORIES), **options):
    """``log w_j + log p_j(x_n)`` per detection and component, ``(S, T, D, K + 1)``, and ``Lambda_s`` (S,).

    ``lambda(x_n, o_n) = sum_j exp(joint[..., j])`` for real detections.
    """
    pos = data["positions"]
    rates, hall, scale, locs = parameter_values(params, options, pos.dtype)
    cats = torch.as_tensor(cats, dtype=torch.long)
    active = torch.as_tensor(active, dtype=torch.bool)
    joint = assignment_logits(data, rates, hall, cats, active) + component_log_density(data, locs, scale)
    lam = category_intensity(rates, hall, cats, active, num_categories).sum(-1)
    return joint, lam


def frame_terms(data, lam):
    """``sum_t (-Lambda_s - log n_st!)`` over the real frames of each scene, ``(S,)``."""
    dtype = data["positions"].dtype
    n = data["num_detections"].to(dtype)
    per_frame = -lam.unsqueeze(-1) - torch.lgamma(n + 1)
    return torch.where(data["frame_mask"], per_frame, torch.zeros((), dtype=dtype)).sum(-1)


def detection_posterior(joint: torch.Tensor, mask: torch.Tensor):
    """Per detection the log of its intensity ``lse = logsumexp_j joint[..., j]`` and the posterior of its
    assignment ``resp = exp(joint - lse)``, both zero for padded detections (``mask`` False).

    ``joint`` ``(..., D, J)`` holds ``log w_j + log p_j(detection)`` per assignment ``j``; shared by
    the detector and projective models' E-steps and structure moves."""
    zero = torch.zeros((), dtype=joint.dtype)
    lse = torch.where(mask, joint.logsumexp(-1), zero)
    resp = torch.where(mask.unsqueeze(-1), (joint - lse.unsqueeze(-1)).exp(), zero)
    return lse, resp


def scene_log_likelihood(data, params, cats, active, *, num_categories=len(CATEGORIES), **options):
    """Direct batched E-step: per-scene ``log p(x_s | theta, structure)`` and responsibilities.

    Equals the engine's (:class:`metagen_ppl.engine.enumeration.EnumeratedModel`)
    log likelihood summed over scenes, including the ``-log n!`` terms.

    Returns
    -------
    loglik : (S,) tensor
    resp : (S, T, D, K + 1) posterior of ``z`` (zero rows for padded detections)
    """
    joint, lam = joint_log_terms(data, params, cats, active, num_categories=num_categories, **options)
    lse, resp = detection_posterior(joint, data["det_mask"])
    return lse.sum((-1, -2)) + frame_terms(data, lam), resp


def estep(data, params, num_objects, *, cats=None, active=None, num_categories=len(CATEGORIES), **options) -> EStep:
    """The model's E-step hook (see :func:`metagen_ppl.engine.em.run_em`): :func:`scene_log_likelihood`
    as an :class:`~metagen_ppl.engine.enumeration.EStep` (``details["scene_log_likelihood"]``: (S,))."""
    cats, active = structure_of(data, num_objects, cats, active)
    # a fixed parameter (an option) given in params too takes the params' value, as in the engine's E-step
    # (which passes such values to the model as its keyword arguments)
    fixed = {k: params.get(k, options[k]) for k in ("rates", "hallucination", "scale") if options.get(k) is not None}
    full = dict(params, **fixed)
    opts = dict(options, **fixed)
    lo, hi, _ = box_bounds(data)
    check_inside_box(full["locs"], active, lo, hi)
    ll, resp = scene_log_likelihood(data, full, cats, active, num_categories=num_categories, **opts)
    lp = log_prior(data, full, active=active, **opts)
    total = ll.sum()
    return EStep(log_joint=float(total + lp), log_likelihood=float(total), log_prior=float(lp),
                 marginals={"z": resp}, weights={}, details={"scene_log_likelihood": ll})
