"""The Occam factor of an object's location: a Laplace integral of its posterior, truncated to the room.

``log Z_k = sum_i log int_{a_i}^{b_i} exp(-lambda_i s^2 / 2) ds`` over the eigenpairs
of the exact Hessian of the object's expected complete log likelihood (see
:mod:`metagen_ppl.models.projective.generative`); with the count, category and
location priors it makes the penalised score of a structure.
"""

from __future__ import annotations

import math

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.models.projective.generative import DEFAULTS, box_bounds
from metagen_ppl.models.projective.mstep import object_batch, project_views
from metagen_ppl.models.projective.noise import GAUSSIAN


def location_hessian(mu, u, g, views, sigma, noise=GAUSSIAN, **_):
    """Exact Hessian ``-d^2 Q_k / d mu^2`` of each object's smooth location term, ``(N, 3, 3)``.

    Computed by autograd: the objects are independent given the
    responsibilities, so three backward passes of the summed gradient give
    every object's 3 x 3 block.
    """
    with torch.enable_grad():
        x = mu.detach().clone().requires_grad_(True)
        pix, _, _ = project_views(x, views)
        diff = u - pix.unsqueeze(2)
        nq = -noise.expected_log_density(g, (diff * diff).sum(-1), sigma)      # -Q (smooth part)
        (grad,) = torch.autograd.grad(nq, x, create_graph=True)
        rows = [torch.autograd.grad(grad[:, a].sum(), x, retain_graph=a < 2)[0] for a in range(3)]
    H = torch.stack(rows, -2)
    return 0.5 * (H + H.transpose(-1, -2)).detach()


def _log_gauss_interval(lam, a, b):
    """``log int_a^b exp(-lam s^2 / 2) ds`` (``a < 0 < b``), the chord length where ``lam`` -> 0."""
    s = lam.clamp_min(0).sqrt()
    small = s * (b - a) < 1e-6
    ss = torch.where(small, torch.ones_like(s), s)
    # Phi(b s) - Phi(a s) = (erf(b s / sqrt2) - erf(a s / sqrt2)) / 2
    mass = 0.5 * (torch.erf(b * ss / math.sqrt(2)) - torch.erf(a * ss / math.sqrt(2)))
    val = torch.log(mass.clamp_min(1e-300)) + 0.5 * math.log(2 * math.pi) - torch.log(ss)
    return torch.where(small, torch.log((b - a).clamp_min(1e-300)), val)


def log_occam(H, mu, lo, hi):
    """``log Z_k``: the Laplace integral of each object's location posterior, truncated to the room.

    ``sum_i log int_{a_i}^{b_i} exp(-lambda_i s^2 / 2) ds`` over the eigenpairs
    ``(lambda_i, e_i)`` of ``H`` (N, 3, 3), with ``[a_i, b_i]`` the chord of the
    box ``[lo, hi]`` through ``mu`` (N, 3) along ``e_i``. Negative eigenvalues
    count as flat directions.
    """
    lam, vec = torch.linalg.eigh(H)                                             # (N,3), (N,3,3) columns
    e = vec.transpose(-1, -2)                                                    # (N,3 dirs,3)
    m = mu.unsqueeze(1)                                                          # (N,1,3)
    tiny = 1e-12
    big = torch.full((), 1e9, dtype=mu.dtype)
    pos = torch.where(e > tiny, (hi - m) / e.clamp_min(tiny),
                      torch.where(e < -tiny, (lo - m) / e.clamp_max(-tiny), big))
    neg = torch.where(e > tiny, (lo - m) / e.clamp_min(tiny),
                      torch.where(e < -tiny, (hi - m) / e.clamp_max(-tiny), -big))
    b = pos.min(-1).values.clamp_min(1e-9)
    a = neg.max(-1).values.clamp_max(-1e-9)
    return _log_gauss_interval(lam, a, b).sum(-1)


def structure_penalty(num_active, occam_sum, log_volume, num_categories=len(CATEGORIES), count_prior_p=None):
    """``log Geom(K; p) + K (log(1/C) - log vol) + sum_k log Z_k`` per video."""
    p = float(DEFAULTS["count_prior_p"] if count_prior_p is None else count_prior_p)
    K = num_active.to(occam_sum.dtype)
    return math.log(p) + K * (math.log1p(-p) - math.log(num_categories) - log_volume) + occam_sum


def object_occam(data, values, resp, cats, active, noise=GAUSSIAN) -> torch.Tensor:
    """``log Z_k`` of every active object, ``(V, K)`` (0 for inactive slots)."""
    V, K = active.shape
    out = torch.zeros(V, K, dtype=data["centers"].dtype)
    if not bool(active.any()):
        return out
    lo, hi, _ = box_bounds(data)
    v, k, kw = object_batch(data, resp, cats, active, values, noise)
    mu = values["locs"][v, k]
    H = location_hessian(mu, **kw)
    out[v, k] = log_occam(H, mu, lo, hi)
    return out
