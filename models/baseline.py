"""M1 ``baseline``: objects as a 3D Gaussian mixture of detections (any dimension ``D`` works).

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

The data are 3D scenes; the model itself takes the dimension from the data
(``(N, D)`` data give ``(K, D)`` locations), which the property tests use.

``weights`` and ``scale`` become fixed inputs when given as options. The
closed-form (MAP) M-step is registered as :func:`closed_form_mstep`; empty
components are re-seeded by :func:`reseed_empty` (``fit_em(empty="reinit")``).

Units of the priors
-------------------
The priors are in *data units*: ``m0 = loc_prior_mean`` and
``s0 = loc_prior_scale`` (default 0 and 10) are coordinates, ``b =
scale_prior_rate`` (default 1) is a squared length (``a``, ``alpha`` are
unitless). The defaults suit scenes measured in metres with objects within a few
tens of metres of the origin. Data on another scale (millimetres, or coordinates
of order 1e-6 or 1e6) is fitted without overflow, but the MAP estimate is then
pulled towards the prior: scale the priors with the data (``loc_prior_scale``
by the factor ``f``, ``scale_prior_rate`` by ``f^2``; the fit is then exactly
``f`` times the fit of the unscaled data) or rescale the data.
"""

from __future__ import annotations

import torch
import pyro
import pyro.distributions as dist
from torch.distributions.transforms import PowerTransform

from metagen_ppl.engine.distributions import IsotropicNormal
from metagen_ppl.engine.init import kmeans_plusplus
from metagen_ppl.errors import DataError
from metagen_ppl.util import seeded

COMPONENT_SITES = {"locs": 0, "weights": 0}
LOCATION_SITE = "locs"
#: Scenes are 3D: the JSON reader requires 3 coordinates per observation (the model itself takes any D).
DATA_DIM = 3

DEFAULTS = dict(loc_prior_mean=0.0, loc_prior_scale=10.0, weight_concentration=1.0,
                scale_prior_shape=2.0, scale_prior_rate=1.0)


def scale_prior(shape, rate, dtype=None):
    """Distribution of ``sigma`` when ``sigma^2 ~ InverseGamma(shape, rate)``."""
    a = torch.as_tensor(shape, dtype=dtype)
    b = torch.as_tensor(rate, dtype=dtype)
    return dist.TransformedDistribution(dist.InverseGamma(a, b), [PowerTransform(torch.as_tensor(0.5, dtype=dtype))])


def mixture_sites(K, dtype, weights=None, scale=None, loc_prior_mean=0.0, loc_prior_scale=10.0,
                  weight_concentration=1.0, scale_prior_shape=2.0, scale_prior_rate=1.0, dim=3):
    """The sites of the objects and the noise shared by the point models: ``"locs"`` (K, dim),
    ``"weights"`` (K,) and ``"scale"`` () as latent sample sites, or the given fixed values."""
    locs = pyro.sample("locs", dist.Normal(torch.tensor(loc_prior_mean, dtype=dtype),
                                           torch.tensor(loc_prior_scale, dtype=dtype))
                       .expand([K, int(dim)]).to_event(2))
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
        ``{"x": (N, D) tensor}`` (D = 3 for scenes); ``x`` may be ``None`` to simulate
        ``num_obs`` 3D points.
    num_objects : int
        ``K``.
    weights : tensor (K,), optional
        Fixed mixture weights; learned (site ``"weights"``) when ``None``.
    scale : float, optional
        Fixed noise scale; learned (site ``"scale"``) when ``None``.
    """
    x = data.get("x")
    if x is not None and (not torch.is_tensor(x) or x.dim() != 2):
        raise DataError(f"data['x'] must be a tensor of shape (N, D) for model 'baseline' (one scene), got shape "
                        f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    dtype = x.dtype if x is not None else torch.get_default_dtype()
    n = x.shape[0] if x is not None else int(num_obs)
    K = int(num_objects)
    locs, weights, scale = mixture_sites(K, dtype, weights, scale, loc_prior_mean, loc_prior_scale,
                                         weight_concentration, scale_prior_shape, scale_prior_rate,
                                         dim=x.shape[-1] if x is not None else 3)
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

    Numerics: every sum is taken on data centred at its mean ``c``, so
    ``sum_nk g_nk |x_n - mu_k|^2 = sum_n |x_n - c|^2 - 2 sum_k (mu_k - c).S_k
    + sum_k N_k |mu_k - c|^2`` (``S_k = sum_n g_nk (x_n - c)``) cancels terms of the
    size of the data's spread, not of its distance from the origin (the uncentred
    form lost every digit of the variance in float32 for data at 1e5 +- 1).
    Its relative rounding error is about ``eps * (spread / s)^2``: negligible in
    float64, ~1e-5 in float32 for clusters ~10 noise scales apart. A component
    with ``N_k = 0`` gets ``mu_k = m0`` and (for ``alpha = 1``) ``pi_k = 0``.
    """
    x = data["x"]
    g = marginals["z"]  # (N, K)
    n, d = x.shape
    dtype = x.dtype
    nk = g.sum(0)  # (K,)
    c = x.mean(0)
    xc = x - c
    sx = g.T @ xc  # (K, D): sum_n g_nk (x_n - c)
    s2 = (params["scale"] if scale is None else torch.as_tensor(scale, dtype=dtype)) ** 2
    # The prior precision in units of the noise precision: multiplying through by s^2
    # avoids 1 / s^2, which overflows in float32 for tiny scales.
    ratio = s2 / torch.as_tensor(loc_prior_scale, dtype=dtype) ** 2
    m0c = torch.as_tensor(loc_prior_mean, dtype=dtype) - c  # (D,)
    den = (nk + ratio).unsqueeze(-1)  # (K, 1)
    locs_c = torch.where(den > 0, (sx + ratio * m0c) / torch.where(den > 0, den, 1.0), m0c)
    out = {"locs": locs_c + c}
    if weights is None:
        w = (nk + (weight_concentration - 1.0)).clamp_min(0.0)
        out["weights"] = w / w.sum()
    if scale is None:
        flat = xc.reshape(-1)
        sq = torch.dot(flat, flat) - 2.0 * (locs_c * sx).sum() + (nk * (locs_c * locs_c).sum(-1)).sum()
        var = (sq.clamp_min(0.0) + 2.0 * scale_prior_rate) / (d * n + 2.0 * scale_prior_shape + 1.0)
        out["scale"] = var.sqrt()
    return out


def initialize(data, num_objects, generator, *, weights=None, scale=None,
               scale_prior_shape=DEFAULTS["scale_prior_shape"],
               scale_prior_rate=DEFAULTS["scale_prior_rate"], **_):
    """k-means++ seeding of the locations; uniform weights; scale from the seeding's spread.

    The starting variance is the mean squared distance to the nearest seed per
    axis; where the seeds leave no spread (``K`` at least the number of distinct
    points) it is the data's variance, and where the data has none (all points
    identical) the mode ``b / (a + 1)`` of the ``sigma^2`` prior. It scales with the
    data: no absolute floor (a floor of 1e-6 made every start on data of scale 1e-6
    a thousand noise scales wide).
    """
    x = data["x"]
    locs, sqdist = kmeans_plusplus(x, num_objects, generator)
    out = {"locs": locs}
    if weights is None:
        out["weights"] = torch.full((num_objects,), 1.0 / num_objects, dtype=x.dtype)
    if scale is None:
        finfo = torch.finfo(x.dtype)
        # below eps * |x|^2 a spread is rounding noise of the coordinates themselves
        floor = max(float(finfo.eps) * float(x.square().mean()), float(finfo.tiny) ** 0.5)
        var = float(sqdist.mean()) / x.shape[1]
        if not var > floor:
            var = float(x.var(0, correction=0).mean())
        if not var > floor:
            var = float(scale_prior_rate) / (float(scale_prior_shape) + 1.0)
        out["scale"] = torch.tensor(var, dtype=x.dtype).sqrt()
    return out


def reseed_empty(data, marginals, params, num_objects, *, threshold=1e-8, skip=(), weights=None,
                 scale=None, weight_concentration=1.0, **_):
    """Propose a new start for one empty component (the engine's ``empty="reinit"`` hook).

    A component is empty when its expected count ``N_k = sum_n g_nk`` is at most
    ``threshold * N``. The first empty component not in ``skip`` is moved onto the
    observation the current mixture explains worst (lowest ``log p(x_n | theta)``;
    scikit-learn's k-means likewise moves an empty cluster to the point farthest
    from its centre). When the weights are learned, its weight starts at the MAP
    weight of one assigned point and is then tuned by a few EM steps on that
    weight alone (the other weights shrink in proportion), which raise the
    likelihood of the proposal. The engine accepts the proposal only if it does
    not lower the log joint.

    Parameters
    ----------
    data, marginals, params, num_objects :
        As for :func:`closed_form_mstep` (``marginals["z"]`` of the E-step at ``params``).
    threshold : float
        Relative emptiness threshold (``N_k <= threshold * N``).
    skip : collection of int
        Components not to re-seed (already re-seeded, or rejected, in this run).

    Returns
    -------
    (dict, int) or (dict, None)
        New values of ``"locs"`` (and ``"weights"`` when learned) and the
        re-seeded component; ``({}, None)`` when no component qualifies.
    """
    x = data["x"]
    g = marginals["z"]
    n = x.shape[0]
    skip = set(skip)
    empty = [k for k in (g.sum(0) <= threshold * n).nonzero().flatten().tolist() if k not in skip]
    if not empty or num_objects < 2:
        return {}, None
    k = empty[0]
    dtype = x.dtype
    locs = params["locs"]
    s = params["scale"] if scale is None else torch.as_tensor(scale, dtype=dtype)
    w = params["weights"] if weights is None else torch.as_tensor(weights, dtype=dtype)
    comp = IsotropicNormal(locs.unsqueeze(-2), s).log_prob(x)  # (K, N)
    log_p = torch.logsumexp(torch.log(w).unsqueeze(-1) + comp, 0)  # (N,)
    worst = int(torch.argmin(log_p))
    new_locs = locs.clone()
    new_locs[k] = x[worst]
    out = {"locs": new_locs}
    if weights is None:
        alpha = float(weight_concentration)
        # the MAP weight of a component holding one point, as a start
        eps = torch.as_tensor(min(0.5, alpha / (n + num_objects * (alpha - 1.0))), dtype=dtype)
        rest = w.clone()
        rest[k] = 0.0
        rest = rest / rest.sum()
        log_q = IsotropicNormal(x[worst].unsqueeze(0).unsqueeze(0), s).log_prob(x)[0]  # (N,)
        # p_rest(x_n): the mixture without component k
        log_r = torch.logsumexp(torch.log(rest).unsqueeze(-1) + comp, 0)
        for _ in range(5):  # EM on the mixing weight of a two-part mixture: never decreases
            resp = torch.sigmoid(torch.log(eps) + log_q - torch.log1p(-eps) - log_r)
            eps = resp.mean().clamp(1.0 / (10.0 * n), 0.5)
        new_w = rest * (1.0 - eps)
        new_w[k] = eps
        out["weights"] = new_w
    return out, k


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
