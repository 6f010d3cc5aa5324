"""Distributions tuned for the E-step's enumerated shapes."""

from __future__ import annotations

import math
import warnings

import torch
from pyro.distributions import TorchDistribution, constraints

from metagen_ppl.util import broadcast_shapes


#: Log density (nats per observation) by which a rounded-negative squared distance may exceed the
#: maximum before :class:`IsotropicNormal` warns (the clamp itself is always applied).
NEGATIVE_DISTANCE_NATS = 1e-6
#: Rounding bound (nats) of the expanded distance at or below which :class:`IsotropicNormal` skips the
#: clamp's pass (the log density may then exceed its maximum by at most this much).
ROUNDING_SKIP_NATS = 1e-9
#: What :class:`IsotropicNormal` warns when rounding made a squared distance negative.
NEGATIVE_DISTANCE_WARNING = (
    "IsotropicNormal: rounding made squared distances |x - mu|^2 negative (the noise scale is tiny "
    "next to the spread of the locations, typically a collapsed scale in float32); they were "
    "clamped at 0, but the log likelihood near such a scale is unreliable: fit in float64 "
    "(dtype='float64'), or keep the scale from collapsing (fix it with the scale option, or use a "
    "stronger scale prior)")


class IsotropicNormal(TorchDistribution):
    r"""``Normal(loc, scale^2 I)`` over the last dimension (an event of size ``D``).

    Same density as ``Normal(loc, scale).to_event(1)`` with a scalar or
    batch ``scale``; its ``log_prob`` expands
    ``|x - m|^2 = |x - c|^2 - 2 (x - c).(m - c) + |m - c|^2`` (``c`` the mean of
    the locations, which keeps the cancellation relative to the data's spread, not
    to its distance from the origin) and computes the cross term as a matrix
    product when ``loc`` does not vary along the data dimension (the enumerated
    case: ``loc`` of shape ``(K, 1, D)`` against data ``(N, D)``), so an E-step
    costs one ``(K, D) x (D, N)`` product instead of a ``(K, N, D)`` elementwise
    pass. Centring costs one extra ``(N, D)`` pass (measured ~0.4 ms of ~10 ms per
    E-step at N = 1e5, K = 10). The expanded distance can round below 0 when the
    scale is tiny next to the locations' spread (float32, collapsed scale): it is
    clamped at 0, so the density never exceeds its maximum (by more than
    :data:`ROUNDING_SKIP_NATS`, where the rounding bound says no clamp can be
    needed and the check's pass is skipped), with a RuntimeWarning when that
    changed a log density by more than :data:`NEGATIVE_DISTANCE_NATS`.

    Parameters
    ----------
    loc : tensor (..., D)
    scale : tensor or float, broadcastable to ``loc.shape[:-1]``
    """

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc = loc
        self.scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        batch_shape = broadcast_shapes(loc.shape[:-1], self.scale.shape)
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IsotropicNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        broadcast_shapes(self.loc.shape[:-1], batch_shape)  # raises if not expandable
        # keep loc unexpanded: the matmul fast path needs its broadcast (size-1) data dim
        new.loc = self.loc
        new.scale = self.scale
        super(IsotropicNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.scale.unsqueeze(-1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        loc = self.loc
        d = loc.shape[-1]
        var = self.scale * self.scale
        const = -d * torch.log(self.scale) - 0.5 * d * math.log(2 * math.pi)
        if value.dim() == 2 and loc.dim() >= 2 and loc.shape[-2] == 1 and self.scale.dim() == 0:
            # loc constant along the data dim: -|x - m|^2 / (2 s^2) as one matrix product
            # plus a broadcast sum, (..., 1, D) @ (D, N) -> (..., N)
            # Centre both sides at the mean of the locations first (|x - m| is unchanged):
            # the expansion then cancels terms of size |x - c|^2 instead of |x|^2, so its
            # rounding error is eps * (spread / s)^2 rather than eps * (|x| / s)^2 nats. In
            # float32 that is what keeps data far from the origin (x ~ 1e5 +- 1) usable.
            c = loc.detach().reshape(-1, d).mean(0)
            m = loc.squeeze(-2) - c
            xc = value - c
            coef = -0.5 / var
            x2 = xc.square() @ xc.new_ones(d)  # |x_n - c|^2, (N,): a matvec beats sum(-1)
            m2 = (m * m).sum(-1, keepdim=True)  # (..., 1)
            row = coef * m2 + const
            if m.dim() == 2:
                # one (K, N) buffer: the product, then the |x|^2 row added in place
                out = torch.addmm(row, m / var, xc.T).add_(coef * x2)
            else:
                out = (row + (m / var) @ xc.T).add_(coef * x2)
            # The expansion can round below 0 (a squared distance!) where the scale is tiny next to
            # the spread of the locations, most of all in float32: then -|x - m|^2 / (2 s^2) > 0 and
            # the density exceeds its maximum exp(const). Clamp the distance at 0 and say so.
            # Only an excess above NEGATIVE_DISTANCE_NATS is worth a warning: a point lying exactly on a
            # location (a re-seeded component) rounds to -1e-14 nats or so in float64.
            # The check (a pass over the (K, N) buffer, ~+50% of this call at N = 1e5, K = 10) is needed
            # only where rounding can matter: the computed distance is off by at most
            # (2 D + 4) eps (|x - c|^2 + |m - c|^2) (dot products of length D, three terms added), i.e.
            # `bound` nats. At or below ROUNDING_SKIP_NATS every entry of the log density carries that
            # much rounding anyway; the usual float64 fit (bound ~1e-14 nats) skips the pass.
            eps = torch.finfo(out.dtype).eps
            bound = ((2 * d + 4) * eps * float((x2.detach().max() + m2.detach().max()) * 0.5 / var.detach())
                     if out.numel() else 0.0)
            if bound > ROUNDING_SKIP_NATS:
                excess = float(out.detach().max() - const.detach())
                if excess > 0.0:
                    out = torch.minimum(out, const)
                    if excess > NEGATIVE_DISTANCE_NATS:
                        warnings.warn(NEGATIVE_DISTANCE_WARNING, RuntimeWarning, stacklevel=2)
        else:
            diff = value - loc
            out = -0.5 * (diff * diff).sum(-1) / var + const
        shape = broadcast_shapes(out.shape, self.batch_shape)
        return out if out.shape == shape else out.expand(shape)

    @property
    def mean(self):
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self):
        return (self.scale * self.scale).unsqueeze(-1).expand(self.batch_shape + self.event_shape)
