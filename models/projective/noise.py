"""The pixel noise of the projective model: how far a real detection's centre lands from its object.

Every part of the projective model that touches a detection's pixel residual
``r = u - P_t(mu_k)`` goes through one :class:`PixelNoise` object: the E-step's
log density, the closed-form (or MM) update of the noise scale, the
Gauss-Newton / IRLS step of the locations and its acceptance test, the Laplace
(Occam) factor, the birth proposals, the Pyro model's observation site and the
simulator. The model option ``pixel_noise`` selects it (default
:data:`GAUSSIAN`); a variant of the model is a subclass of :class:`PixelNoise`
with its ``log_density`` and ``weights`` (see the README's user-written variant:
Student-t pixel noise in about 50 lines).

The residual enters only through its squared norm ``sq = |r|^2`` (isotropic
noise in 2D), with a scale ``sigma`` (pixels; the model's ``pixel_scale``).
"""

from __future__ import annotations

import math

import torch

from metagen_ppl.errors import ModelError


class PixelNoise:
    """Isotropic 2D noise of a detection's pixel centre around its object's projection.

    Subclasses define :meth:`log_density` and, unless Gaussian, :meth:`weights`;
    the rest follows. ``repr`` must describe the noise completely (it is part of a
    checkpoint's settings).
    """

    #: Whether :meth:`weights` depends on the residuals (``False``: all weights 1, least squares).
    reweights = True

    def log_density(self, sq: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``log p(r)`` for residuals of squared norm ``sq`` (any shape) and scale ``scale``."""
        raise NotImplementedError

    def weights(self, sq: torch.Tensor, scale: torch.Tensor):
        """EM / IRLS weights of the residuals, ``w = -2 sigma^2 d log p / d sq`` (``None``: all 1, Gaussian).

        They make the location step iteratively reweighted least squares and the
        scale update a minorise-maximise step of Q (exact for the Gaussian)."""
        raise NotImplementedError

    def expected_log_density(self, g: torch.Tensor, sq: torch.Tensor, scale: torch.Tensor, dim=None):
        """``sum_dim g log p(r)`` up to terms constant in the residuals (the location part of Q)."""
        terms = g * self.log_density(sq, scale)
        return terms.sum(dim) if dim is not None else terms.sum()

    def scale_statistics(self, g: torch.Tensor, sq: torch.Tensor, scale: torch.Tensor):
        """``(sum g w sq, sum g)``: the statistics of :meth:`scale_mstep` (weights ``w`` at ``scale``)."""
        w = self.weights(sq, scale)
        return ((g * sq).sum() if w is None else (g * w * sq).sum()), g.sum()

    def scale_mstep(self, g: torch.Tensor, sq: torch.Tensor, scale: torch.Tensor, shape: float, rate: float):
        """MAP update of ``sigma`` given responsibilities ``g`` and squared residuals ``sq`` (same shape),
        under ``sigma^2 ~ InverseGamma(shape, rate)``: ``sigma^2 = (sum g w sq + 2 rate) / (2 sum g + 2 shape + 1)``
        with the weights ``w`` at the current ``scale`` (exact M-step for the Gaussian, an MM step of Q
        otherwise: Q never decreases)."""
        w = self.weights(sq, scale)
        ss = (g * sq).sum() if w is None else (g * w * sq).sum()
        return ((ss + 2 * rate) / (2 * g.sum() + 2 * shape + 1)).sqrt()

    def sample(self, shape, scale: torch.Tensor, dtype) -> torch.Tensor:
        """Residuals ``(*shape, 2)`` drawn with torch's RNG (the model's ``u`` site)."""
        raise NotImplementedError

    def draw(self, rng, scale: float):
        """One residual (numpy ``(2,)``) drawn with the numpy generator ``rng`` (the simulator)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GaussianPixelNoise(PixelNoise):
    """``r ~ N(0, sigma^2 I_2)``: ``log p = -sq / (2 sigma^2) - 2 log sigma - log 2 pi``."""

    reweights = False

    def log_density(self, sq, scale):
        return -0.5 * sq / scale ** 2 - 2 * torch.log(scale) - math.log(2 * math.pi)

    def weights(self, sq, scale):
        return None

    def expected_log_density(self, g, sq, scale, dim=None):
        # the terms constant in the residuals dropped: -sum g sq / (2 sigma^2)
        return -0.5 * ((g * sq).sum(dim) if dim is not None else (g * sq).sum()) / scale ** 2

    def sample(self, shape, scale, dtype):
        return torch.randn(tuple(shape) + (2,), dtype=dtype) * scale

    def draw(self, rng, scale):
        return scale * rng.standard_normal(2)


#: The model's default pixel noise.
GAUSSIAN = GaussianPixelNoise()


def pixel_noise_of(options: dict) -> PixelNoise:
    """The ``pixel_noise`` option (default :data:`GAUSSIAN`), checked."""
    noise = options.get("pixel_noise")
    if noise is None:
        return GAUSSIAN
    if not isinstance(noise, PixelNoise):
        raise ModelError(f"pixel_noise must be a metagen_ppl.models.projective.noise.PixelNoise, got "
                        f"{type(noise).__name__}")
    return noise
