"""The generic M-step: maximise Q + log prior over any continuous sites with a torch optimiser.

It needs nothing from the model but its Pyro function: Q is evaluated by
:meth:`~metagen_ppl.engine.enumeration.EnumeratedModel.q_value` on the
E-step's weights, in the unconstrained space of each site. It is the M-step of
every site a model gives no closed form for.

Priors unbounded at the boundary. A Dirichlet prior of concentration ``a < 1``
(Pyro's GMM tutorial uses ``Dirichlet(0.5)``) has a density that grows without
bound as a weight goes to 0, so the posterior has no global mode: MAP-EM can only
return an interior *local* mode. For a simplex site ``w`` entering the model as
categorical probabilities, Q restricted to ``w`` is ``sum_k c_k log w_k`` with
``c_k = N_k + a_k - 1`` (``N_k`` the expected count of category ``k``), whose
maximiser is ``w_k ∝ c_k`` when every ``c_k > 0`` and which is unbounded (its
supremum at ``w_k = 0``) when some ``c_k <= 0``, i.e. ``N_k <= 1 - a_k``.
:func:`check_interior_mode` measures ``c`` from Q itself (any model, any site with
such a prior) before each M-step and raises :class:`NoInteriorModeError` in the
second case, instead of letting a closed form put a weight at exactly 0 or the
optimiser walk to the boundary (where the log joint is +inf).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pyro.distributions.transforms import biject_to

from metagen_ppl.engine.enumeration import EnumeratedModel, EStep
from metagen_ppl.errors import MetagenError, ModelError


def stationary_grad(dtype) -> float:
    """Gradient size (largest entry of ``Q / max(|Q|, 1)``'s gradient in the unconstrained coordinates)
    at or below which a point counts as stationary: ``sqrt(eps)`` of ``dtype`` (1.5e-8 in float64,
    3.5e-4 in float32). A step along a gradient ``g`` raises the normalised Q by about ``g^2`` (unit
    curvature), which is below Q's rounding ``eps`` when ``g < sqrt(eps)``: no optimiser can show
    progress there, so keeping the old point is convergence, not a stall."""
    return math.sqrt(torch.finfo(dtype).eps)


class NoInteriorModeError(ModelError):
    """A simplex site under a Dirichlet prior of concentration < 1 has no interior M-step maximum."""


def simplex_log_coefficients(em: EnumeratedModel, values: dict, est: EStep, name: str) -> Optional[torch.Tensor]:
    """``c`` with ``Q(w) = sum_k c_k log w_k + const`` on the simplex of site ``name`` (last dim).

    Measured from the gradient of Q, so it needs nothing from the model: at a point ``u`` of the
    simplex, ``G_k = u_k dQ/du_k = c_k + lambda u_k`` where ``lambda`` comes from normalisers (a
    ``Categorical`` divides its ``probs`` by their sum), the same at every point of the simplex.
    Two points ``u`` (uniform) and ``u'`` give ``lambda`` (per row) by least squares, hence ``c``.
    Returns ``None`` where Q is not of that form in ``w`` (the two points disagree on ``c`` by more
    than 1e-6 relative, 1.2e-4 in float32: the site enters the model otherwise; then only the
    optimiser's finite-Q guard applies) or the simplex is a point (``K = 1``).
    """
    like = values[name]
    K = like.shape[-1]
    if K < 2:
        return None
    dtype = like.dtype
    u1 = torch.full(like.shape, 1.0 / K, dtype=dtype)
    ramp = torch.arange(1, K + 1, dtype=dtype)
    u2 = (ramp / ramp.sum()).expand(like.shape).clone()
    grads = []
    for u in (u1, u2):
        w = u.clone().requires_grad_(True)
        with torch.enable_grad():
            q = em.q_value(dict(values, **{name: w}), est)
            (g,) = torch.autograd.grad(q, w)
        grads.append((u * g).detach())
    g1, g2 = grads
    du = u1 - u2
    lam = ((g1 - g2) * du).sum(-1, keepdim=True) / (du * du).sum(-1, keepdim=True)
    c1, c2 = g1 - lam * u1, g2 - lam * u2
    # rounding of Q's gradient is ~eps |Q|: 1e-6 relative (1.2e-4 in float32: 1e3 eps) only rejects a
    # site whose Q is not log-linear in w (then c differs between the two points by O(1) relative)
    rel = max(1e-6, 1e3 * torch.finfo(dtype).eps)
    if not bool(torch.isfinite(c1).all()) or float((c1 - c2).abs().max()) > rel * (float(c1.abs().max()) + 1.0):
        return None
    return c1


def check_interior_mode(em: EnumeratedModel, values: dict, est: EStep, names=None) -> None:
    """Raise :class:`NoInteriorModeError` when the next M-step has no interior maximum.

    For every latent site of ``em.boundary_priors`` (a Dirichlet prior with a concentration
    ``a_k < 1``) in ``names`` (default: all), ``c = N + a - 1`` is measured from Q
    (:func:`simplex_log_coefficients`); an entry with ``a_k < 1`` and ``c_k <= 0`` (expected count
    ``N_k <= 1 - a_k``) means Q grows without bound as ``w_k -> 0``. ``est`` must carry Q's weights.
    """
    for name, conc in em.boundary_priors.items():
        if names is not None and name not in names:
            continue
        c = simplex_log_coefficients(em, values, est, name)
        if c is None:
            continue
        a = conc.to(c.dtype).expand(c.shape)
        bad = (c <= 0) & (a < 1)
        if not bool(bad.any()):
            continue
        idx = bad.nonzero()
        where = [tuple(int(i) for i in row) for row in idx[:5]]
        where = [w[0] if len(w) == 1 else w for w in where]
        counts = [float(c[tuple(row)] - (a[tuple(row)] - 1)) for row in idx[:5]]
        a_min = float(a[bad].min())
        raise NoInteriorModeError(
            f"site {name!r} (Dirichlet prior, concentration {a_min:.3g} < 1): entry(ies) {where} have "
            f"expected count(s) {[round(n, 6) for n in counts]} <= 1 - concentration = {1 - a_min:.3g}. "
            "A Dirichlet density of concentration < 1 is unbounded where a weight reaches 0, so the "
            "posterior has no global mode, and here no interior local mode either (the M-step's "
            "objective grows without bound as that weight goes to 0). Use a concentration >= 1 (e.g. "
            "weight_concentration=1.0, the default), fewer objects (a lower K), or a method that "
            "does not maximise the density: SVI with an AutoNormal guide, or MCMC")


def optimizer_mstep(em: EnumeratedModel, values: dict, est: EStep, names, *,
                    optimizer: str = "lbfgs", steps: int = 50, lr: Optional[float] = None,
                    record: Optional[dict] = None, check_boundary: bool = True) -> dict:
    """Generic M-step: maximise ``Q + log prior`` over ``names`` with a torch optimiser.

    Works in the unconstrained space of each site (``biject_to(support)``). It is
    a generalised M-step: if the optimiser does not improve Q, or ends at a
    non-finite Q or value (a density unbounded at a boundary), the old values are
    kept, so Q never decreases and never becomes +inf.

    ``record``, if given, is filled with ``q_old``, ``q_new`` (Q at the optimiser's end),
    ``accepted`` and ``stalled``: the old point was kept although the gradient of Q there
    is not zero (largest entry of the normalised gradient above :func:`stationary_grad`),
    i.e. the optimiser stopped short rather than at a stationary point. Since the gradient
    of ``Q(. | theta_t)`` at ``theta_t`` is the gradient of the log joint, a stalled step is
    not EM convergence.

    With ``check_boundary`` (default), a site of ``names`` under a Dirichlet prior of concentration
    < 1 is first checked by :func:`check_interior_mode` (raises :class:`NoInteriorModeError` where Q
    has no interior maximum, instead of walking to the boundary); pass ``False`` if the caller did.
    """
    names = list(names)
    if record is not None:
        record.update(accepted=True, stalled=False)
    if not names:
        return values
    if check_boundary and any(n in em.boundary_priors for n in names):
        check_interior_mode(em, values, est, names)
    transforms = {n: biject_to(em.latents[n].constraint) for n in names}
    free = {}
    for n in names:
        u = transforms[n].inv(values[n]).detach().clone()
        free[n] = torch.nan_to_num(u, nan=0.0, posinf=30.0, neginf=-30.0).requires_grad_(True)

    def current():
        v = dict(values)
        v.update({n: transforms[n](free[n]) for n in names})
        return v

    with torch.no_grad():
        q_old = float(em.q_value(values, est))
    norm = max(abs(q_old), 1.0)
    params = list(free.values())
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

        def closure():
            opt.zero_grad()
            loss = -em.q_value(current(), est) / norm
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr or 0.05)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = -em.q_value(current(), est) / norm
                loss.backward()
                opt.step()
    else:
        raise MetagenError(f"unknown optimizer {optimizer!r}; choose 'lbfgs' or 'adam'")
    with torch.no_grad():
        new = {k: v.detach() for k, v in current().items()}
        q_new = float(em.q_value(new, est))
    accepted = math.isfinite(q_new) and q_new >= q_old and all(torch.isfinite(new[n]).all() for n in names)
    if record is not None:
        record.update(q_old=q_old, q_new=q_new, accepted=accepted)
    if accepted:
        return new
    # no improvement: keep the old point (GEM step); stalled unless the old point is stationary
    if record is not None:
        start = {n: transforms[n].inv(values[n]).detach().clone().requires_grad_(True) for n in names}
        with torch.enable_grad():
            v = dict(values)
            v.update({n: transforms[n](start[n]) for n in names})
            grads = torch.autograd.grad(-em.q_value(v, est) / norm, list(start.values()), allow_unused=True)
        g = max((float(t.abs().max()) for t in grads if t is not None and t.numel()), default=0.0)
        dtype = next(iter(values[n].dtype for n in names))
        record.update(grad=g, stalled=not (g <= stationary_grad(dtype)))
    return values
