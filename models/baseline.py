"""M1 ``baseline``: objects as a 3D Gaussian mixture of detections.

Generative story
----------------
A scene holds ``K`` objects at unknown locations ``mu_k`` in R^3. The detector
reports ``N`` points; each point picks the object that produced it with
probability ``pi`` and lands at that object's location plus isotropic noise::

    mu_k   ~ Normal(m0, s0^2 I)                       site "locs"     (K, 3)
    pi     ~ Dirichlet(alpha 1_K)                     site "weights"  (K,)
    sigma  : sigma^2 ~ InverseGamma(a, b)             site "scale"    ()
    z_n    ~ Categorical(pi)                          site "z"        (N,)  enumerated
    x_n    ~ Normal(mu_{z_n}, sigma^2 I)              site "x"        (N, 3) observed

``weights`` and ``scale`` become fixed inputs when given as options. The
closed-form (MAP) M-step is registered as :func:`closed_form_mstep`.
"""

from __future__ import annotations

import torch
import pyro
import pyro.distributions as dist
from torch.distributions.transforms import PowerTransform

from metagen_ppl.distributions import IsotropicNormal
from metagen_ppl.init import kmeans_plusplus
from metagen_ppl.util import seeded

COMPONENT_SITES = {"locs": 0, "weights": 0}
LOCATION_SITE = "locs"

DEFAULTS = dict(loc_prior_mean=0.0, loc_prior_scale=10.0, weight_concentration=1.0,
                scale_prior_shape=2.0, scale_prior_rate=1.0)


def scale_prior(shape, rate, dtype=None):
    """Distribution of ``sigma`` when ``sigma^2 ~ InverseGamma(shape, rate)``."""
    a = torch.as_tensor(shape, dtype=dtype)
    b = torch.as_tensor(rate, dtype=dtype)
    return dist.TransformedDistribution(dist.InverseGamma(a, b), [PowerTransform(torch.as_tensor(0.5, dtype=dtype))])


def mixture_sites(K, dtype, weights=None, scale=None, loc_prior_mean=0.0, loc_prior_scale=10.0,
                  weight_concentration=1.0, scale_prior_shape=2.0, scale_prior_rate=1.0):
    """The sites of the objects and the noise shared by the point models: ``"locs"`` (K, 3),
    ``"weights"`` (K,) and ``"scale"`` () as latent sample sites, or the given fixed values."""
    locs = pyro.sample("locs", dist.Normal(torch.tensor(loc_prior_mean, dtype=dtype),
                                           torch.tensor(loc_prior_scale, dtype=dtype))
                       .expand([K, 3]).to_event(2))
    if weights is None:
        weights = pyro.sample("weights", dist.Dirichlet(torch.full((K,), float(weight_concentration), dtype=dtype)))
    else:
        weights = torch.as_tensor(weights, dtype=dtype)
    if scale is None:
        scale = pyro.sample("scale", scale_prior(scale_prior_shape, scale_prior_rate, dtype))
    else:
        scale = torch.as_tensor(scale, dtype=dtype)
    return locs, weights, scale


def model(data, num_objects, *, weights=None, scale=None, num_obs=None,
          loc_prior_mean=0.0, loc_prior_scale=10.0, weight_concentration=1.0,
          scale_prior_shape=2.0, scale_prior_rate=1.0):
    """Baseline 3D mixture (M1).

    Parameters
    ----------
    data : dict
        ``{"x": (N, 3) tensor}``; ``x`` may be ``None`` to simulate ``num_obs`` points.
    num_objects : int
        ``K``.
    weights : tensor (K,), optional
        Fixed mixture weights; learned (site ``"weights"``) when ``None``.
    scale : float, optional
        Fixed noise scale; learned (site ``"scale"``) when ``None``.
    """
    x = data.get("x")
    dtype = x.dtype if x is not None else torch.get_default_dtype()
    n = x.shape[0] if x is not None else int(num_obs)
    K = int(num_objects)
    locs, weights, scale = mixture_sites(K, dtype, weights, scale, loc_prior_mean, loc_prior_scale,
                                         weight_concentration, scale_prior_shape, scale_prior_rate)
    with pyro.plate("data", n, dim=-1):
        z = pyro.sample("z", dist.Categorical(logits=torch.log(weights)), infer={"enumerate": "parallel"})
        pyro.sample("x", IsotropicNormal(locs[z], scale), obs=x)


def closed_form_mstep(data, marginals, params, num_objects, *, weights=None, scale=None,
                      loc_prior_mean=0.0, loc_prior_scale=10.0, weight_concentration=1.0,
                      scale_prior_shape=2.0, scale_prior_rate=1.0, **_):
    """MAP M-step of M1 in closed form (one conditional-maximisation sweep).

    ``mu_k = (sum_n g_nk x_n / s^2 + m0 / s0^2) / (N_k / s^2 + 1 / s0^2)``,
    ``pi_k ∝ N_k + alpha - 1``, then
    ``s^2 = (sum_nk g_nk |x_n - mu_k|^2 + 2 b) / (D N + 2 a + 1)`` at the new ``mu``.
    """
    x = data["x"]
    g = marginals["z"]  # (N, K)
    n, d = x.shape
    nk = g.sum(0)  # (K,)
    sx = g.T @ x  # (K, D)
    s2 = (params["scale"] if scale is None else torch.as_tensor(scale, dtype=x.dtype)) ** 2
    prec0 = 1.0 / loc_prior_scale ** 2
    locs = (sx / s2 + loc_prior_mean * prec0) / (nk / s2 + prec0).unsqueeze(-1)
    out = {"locs": locs}
    if weights is None:
        w = (nk + (weight_concentration - 1.0)).clamp_min(0.0)
        out["weights"] = w / w.sum()
    if scale is None:
        sq = (x * x).sum() - 2.0 * (locs * sx).sum() + (nk * (locs * locs).sum(-1)).sum()
        var = (sq.clamp_min(0.0) + 2.0 * scale_prior_rate) / (d * n + 2.0 * scale_prior_shape + 1.0)
        out["scale"] = var.sqrt()
    return out


def initialize(data, num_objects, generator, *, weights=None, scale=None, **_):
    """k-means++ seeding of the locations; uniform weights; scale from the seeding's spread."""
    x = data["x"]
    locs, sqdist = kmeans_plusplus(x, num_objects, generator)
    out = {"locs": locs}
    if weights is None:
        out["weights"] = torch.full((num_objects,), 1.0 / num_objects, dtype=x.dtype)
    if scale is None:
        out["scale"] = (sqdist.mean() / x.shape[1]).clamp_min(1e-6).sqrt()
    return out


def simulate(num_objects, num_obs, seed, *, scale=1.0, weights=None, **options):
    """Draw a world and ``num_obs`` detections from :func:`model` itself.

    ``scale`` (default 1.0) and ``weights`` (default: drawn from the prior) are
    fixed for the simulation; locations come from the prior.
    Returns a dict in the JSON exchange format with ``"truth"``.
    """
    fixed = {"scale": torch.as_tensor(float(scale))}
    if weights is not None:
        fixed["weights"] = torch.as_tensor(weights, dtype=torch.get_default_dtype())
    with seeded(seed):
        tr = pyro.poutine.trace(pyro.poutine.condition(model, data=fixed)).get_trace(
            {"x": None}, num_objects, num_obs=num_obs, **options)
    return {
        "model": "baseline",
        "num_objects": int(num_objects),
        "observations": tr.nodes["x"]["value"].tolist(),
        "truth": {
            "locs": tr.nodes["locs"]["value"].tolist(),
            "weights": tr.nodes["weights"]["value"].tolist(),
            "scale": float(tr.nodes["scale"]["value"]),
            "z": tr.nodes["z"]["value"].tolist(),
        },
    }
