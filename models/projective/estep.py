"""The batched E-step of the projective model: per-video log likelihoods and assignment posteriors.

It computes what the engine's Pyro enumeration computes
(:meth:`metagen_ppl.engine.enumeration.EnumeratedModel.estep`; a test checks they
are equal) in one tensor pass: the model's ``estep`` hook.
"""

from __future__ import annotations

import torch

from metagen_ppl.engine.enumeration import EStep
from metagen_ppl.models.projective.generative import (V_SITES, IMPOSSIBLE, camera_of, half_fov_of, log_area,
                                                      num_categories_of, structure_of, assignment_logits,
                                                      category_intensity, log_prior, object_pixels,
                                                      squared_residuals)
from metagen_ppl.models.detector.estep import detection_posterior
from metagen_ppl.models.detector.generative import check_inside_box
from metagen_ppl.models.projective.noise import GAUSSIAN, pixel_noise_of


def joint_log_terms(data, values, cats, active, num_categories=None, noise=GAUSSIAN, *, extras=None):
    """``log w_j + log p(u_n | j) + log q_j(b_n)`` per detection and component ``(V, T, D, K + 1)``,
    the frame intensities ``Lambda_vt`` (V, T) and the visibility ``(V, T, K)``.

    ``values`` holds ``locs, rates, hallucination, pixel_scale, mark_real, mark_hall`` (and optionally
    ``half_fov``); ``noise`` is the pixel noise (:mod:`metagen_ppl.models.projective.noise`); ``C``
    defaults to the data's number of categories; pixels through the data's camera. ``extras`` (a
    dict, optional) receives ``pixels`` (V, T, K, 2) and ``sq`` (V, T, D, K): the objects' pixels and
    the squared pixel residuals ``|u - P(mu_k)|^2`` (which the M-step's statistics reuse).
    """
    if num_categories is None:
        num_categories = num_categories_of(data)
    u = data["centers"]
    o, b = data["categories"], data["score_bins"]
    mask = data["det_mask"]
    locs = values["locs"]
    rates, hall, sigma = values["rates"], values["hallucination"], values["pixel_scale"].reshape(())
    pix, vis = object_pixels(data, locs, half_fov_of(values, camera_of(data)))       # (V,T,K,2)
    logits = assignment_logits(data, rates, hall, cats, active, vis)            # (V,T,D,J)
    sq = squared_residuals(u.unsqueeze(-2), pix.unsqueeze(2))                   # (V,T,D,K)
    gauss = noise.log_density(sq, sigma)
    if extras is not None:
        extras.update(pixels=pix, sq=sq)
    lr = torch.log(values["mark_real"])[o, b]                                   # (V,T,D)
    lh = torch.log(values["mark_hall"])[o, b]
    comp = torch.cat([(lh - log_area(data)).unsqueeze(-1), gauss + lr.unsqueeze(-1)], -1)
    joint = torch.where(logits > IMPOSSIBLE / 2, logits + comp, torch.full((), IMPOSSIBLE, dtype=u.dtype))
    joint = torch.where(mask.unsqueeze(-1), joint, logits)                      # padded: [0, IMP, ...]
    lam = category_intensity(data, rates, hall, cats, active, vis, num_categories).sum(-1)
    return joint, lam, vis


def frame_terms(data, lam):
    """``sum_t (-Lambda_vt - log n_vt!)`` over the real frames of each video, ``(V,)``."""
    n = data["num_detections"].to(lam.dtype)
    per = -lam - torch.lgamma(n + 1)
    return torch.where(data["frame_mask"], per, torch.zeros((), dtype=lam.dtype)).sum(-1)


def video_log_likelihood(data, values, cats, active, num_categories=None, noise=GAUSSIAN, *, responsibilities=True):
    """Direct batched E-step: ``log p(x_v | theta, structure)`` per video (V,) and the
    responsibilities ``(V, T, D, K + 1)`` (zero rows for padded detections; ``None`` with
    ``responsibilities=False``, which skips them: the same log likelihood).

    Equals the engine's (:class:`metagen_ppl.engine.enumeration.EnumeratedModel`) log
    likelihood summed over videos, ``-log n!`` included.
    """
    joint, lam, vis = joint_log_terms(data, values, cats, active, num_categories, noise)
    if responsibilities:
        lse, resp = detection_posterior(joint, data["det_mask"])
    else:   # detection_posterior's lse
        lse, resp = torch.where(data["det_mask"], joint.logsumexp(-1), torch.zeros((), dtype=joint.dtype)), None
    return lse.sum((-1, -2)) + frame_terms(data, lam), resp


def estep(data, params, num_objects, *, cats=None, active=None, num_categories=None, **options) -> EStep:
    """The model's E-step hook (:func:`metagen_ppl.engine.em.run_em`): :func:`video_log_likelihood` as an
    :class:`~metagen_ppl.engine.enumeration.EStep`; ``details``: ``video_log_likelihood`` (V,),
    ``joint`` and ``lse`` (the log terms and their logsumexp per detection), ``vis`` (V, T, K).

    ``params`` holds the fitted sites; fixed ones (and ``half_fov``) come from the options.
    """
    cats, active = structure_of(data, num_objects, cats, active)
    values = dict(params)
    for k in V_SITES + ("locs", "half_fov"):
        if options.get(k) is not None and k not in values:
            values[k] = torch.as_tensor(options[k], dtype=data["centers"].dtype)
    joint, lam, vis = joint_log_terms(data, values, cats, active, num_categories, pixel_noise_of(options))
    lse, resp = detection_posterior(joint, data["det_mask"])
    loglik = lse.sum((-1, -2)) + frame_terms(data, lam)
    if options.get("locs") is None:    # fitted locations: uniform prior on the room (density 0 outside)
        check_inside_box(values["locs"], active, data["box"][0], data["box"][1])
    learned = {k for k in V_SITES if options.get(k) is None}
    # the uniform location prior counts only where the locations are fitted (a site of the model)
    located = active if options.get("locs") is None else torch.zeros_like(active)
    lp = log_prior(values, learned, located, data, **{k: v for k, v in options.items() if k not in V_SITES})
    total = loglik.sum()
    return EStep(log_joint=float(total + lp), log_likelihood=float(total), log_prior=float(lp),
                 marginals={"z": resp}, weights={},
                 details={"video_log_likelihood": loglik, "joint": joint, "lse": lse, "vis": vis})
