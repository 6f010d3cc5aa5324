"""M3 ``detector``: MetaGen's metacognition, a detector with misses and hallucinations.

Generative story (DESIGN.md section 2, model M3)
------------------------------------------------
Scenes ``s = 1..S`` (videos), frames ``t = 1..T_s``, categories ``c = 0..C-1``
(:data:`metagen_ppl.domain.metagen_data.CATEGORIES`). Scene ``s`` holds ``K_s``
objects, object ``k`` at ``mu_k`` in R^3 with category ``c_k``. In every frame
the detections ``(x_n, o_n)`` (3D location, observed category) form a Poisson
point process with intensity

    lambda(x, o) = sum_k r_{c_k} [o = c_k] N(x; mu_k, sigma^2 I) + h_o U(x)

``r_c`` is the expected number of detections per frame of an object of
category ``c`` (its miss behaviour), ``h_c`` the hallucination rate of category
``c`` (detections per frame), ``U`` the uniform density over the scene box.
The metacognition ``V = (r, h)`` is shared by all scenes.

As a Pyro model (one traced call covers every scene; frame likelihood
``exp(-Lambda) prod_n lambda(x_n, o_n)`` up to the data-only ``1/n!``)::

    r_c    ~ Gamma(a_r, b_r)                            site "rates"          (C,)    unless given
    h_c    ~ Gamma(a_h, b_h)                            site "hallucination"  (C,)    unless given
    sigma  : sigma^2 ~ InverseGamma(a_s, b_s)           site "scale"          ()      unless given
    mu_sk  ~ Uniform(box)   (active slots only)         site "locs"           (S, K, 3)
    plate scenes (dim -3) x frames (dim -2):
        n_st ~ Poisson(Lambda_s)                        site "num_detections" observed
        plate detections (dim -1, padded and masked):
            o_n ~ Categorical(Lambda_sc / Lambda_s)     site "o"              observed
            z_n ~ Categorical(w_j [cat_j = o_n])        site "z"              enumerated
            x_n ~ U(box) if z_n = 0 else N(mu_{z_n}, sigma^2 I)   site "x"    observed

with ``J = K + 1`` assignment values: ``z = 0`` is a hallucination (weight
``h_{o_n}``) and ``z = k`` object slot ``k`` (weight ``r_{c_k}`` if the slot is
active and ``c_k = o_n``), ``Lambda_sc = h_c + r_c #{active k: c_k = c}`` and
``Lambda_s = sum_c Lambda_sc``. The product ``Poisson(n; Lambda) prod_n
(Lambda_o / Lambda) (w_z / Lambda_o) p_z(x)`` equals ``exp(-Lambda) prod_n
lambda(x_n, o_n) / n!``: the point-process likelihood. This is the PMHT
relaxation (every detection is assigned independently; an object may produce
several detections in a frame).

Impossible assignments (an object of another category, an inactive slot) get
the finite log weight :data:`IMPOSSIBLE` = -1e4 instead of -inf: ``exp(-1e4)``
is exactly 0 in float32 and float64, and ``0 * -1e4 = 0`` keeps the expected
complete log likelihood Q and SVI's gradients free of ``0 * inf``. Padded
detections put all their mass on ``z = 0`` with log weight 0 and contribute
exactly nothing; padded frames are masked out of the Poisson count.

Structure: unknown object count
-------------------------------
The object count per scene is decided by **model selection over K** (option (b)
of DESIGN.md), not by enumerated existence indicators: enumerating an
existence-and-category state per slot couples every slot of a scene through
each detection's assignment, ``(C + 1)^K`` joint states per scene, far too many.
The model therefore takes the *structure* as options: ``cats`` (S, K) the slot
categories and ``active`` (S, K) which slots hold an object; the search over
structures (:mod:`.structure`, run by the engine's driver) scores a structure by
the penalised log marginal likelihood of :func:`structure_log_score`:

    log p(x | mu*, c, V) + log Geom(K_s; p) + K_s log(1/C)
        + sum_k [ log(1/vol) + min(0, 3/2 log(2 pi sigma^2 / n_k) + log vol) ]

the count prior (MetaGen's geometric prior on the number of objects, Gen's
convention ``P(K) = p (1 - p)^K`` with ``p = 0.9``), the uniform category prior,
the uniform location prior over the box and the Occam factor of a Laplace
approximation of each location's posterior (``n_k`` = expected number of
detections of object ``k``; the posterior volume is capped at the prior
volume). No hand-set threshold decides whether an object exists.

Categories of objects are discrete parameters. Without a confusion matrix an
object can only explain detections of its own category, so the category
M-step ``argmax_c Q`` is degenerate (every other category makes the object's
assigned detections impossible); categories are instead chosen by the
penalised marginal likelihood when objects are proposed (one candidate per
category) -- see :mod:`metagen_ppl.models.detector.structure`.

Where things are (the package :mod:`metagen_ppl.models.detector`)
-----------------------------------------------------------------
:mod:`.generative` this model and its priors; :mod:`.estep` the batched E-step
(hook ``estep``, equal to the engine's enumeration); :mod:`.mstep` the closed-form
M-step (hook ``closed_form_mstep``); :mod:`.structure` the structure moves and
scores for the engine's search; :mod:`.fit` :func:`fit_metacognition`;
:mod:`.simulate` the simulator and the JSON reader; :mod:`.comparison` the
``metagen-ppl compare`` set-up.

Data dict (built by :meth:`metagen_ppl.domain.scenes.SceneSet.data`)
-------------------------------------------------------------
``positions`` (S, T, D, 3) float, ``categories`` (S, T, D) long,
``det_mask`` (S, T, D) bool, ``num_detections`` (S, T) long, ``frame_mask``
(S, T) bool, ``box`` (2, 3) float (lower and upper corner). ``D >= 1`` (padded).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution, constraints
from pyro.ops.indexing import Vindex

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.errors import DataError, ModelError
from metagen_ppl.models.baseline import scale_prior


#: Slots are anchored by their fixed category and location; there is no
#: label switching to undo, and no ``(K, D)`` location site (locations are ``(S, K, 3)``).
COMPONENT_SITES: dict = {}


LOCATION_SITE = None


#: Log weight of an impossible assignment (see the module docstring).
IMPOSSIBLE = -1.0e4


#: Default scene box (metres): the real data's rooms are 10 m x 10 m; y is up.
DEFAULT_BOX = ((-5.0, 0.0, -5.0), (5.0, 2.0, 5.0))


#: Default hyperparameters (shared by every hook).
DEFAULTS = dict(
    rate_prior_shape=2.0, rate_prior_rate=2.0,          # r_c ~ Gamma(2, 2): mean 1, mode 0.5
    hall_prior_shape=2.0, hall_prior_rate=4.0,          # h_c ~ Gamma(2, 4): mean 0.5, mode 0.25
    scale_prior_shape=2.0, scale_prior_rate=0.1,        # sigma^2 ~ InvGamma(2, 0.1): mean 0.1
    count_prior_p=0.9,                                  # P(K) = p (1 - p)^K (Gen's geometric)
)


# --------------------------------------------------------------------------- options
def hyperparameter(options: dict, key: str):
    return options.get(key, DEFAULTS[key]) if options.get(key) is not None else DEFAULTS[key]


def prior_mean_V(num_categories: int = len(CATEGORIES), dtype=torch.float64, **options) -> dict:
    """``V`` at its prior mean: ``r_c = a_r / b_r``, ``h_c = a_h / b_h`` (the lesioned model)."""
    r = hyperparameter(options, "rate_prior_shape") / hyperparameter(options, "rate_prior_rate")
    h = hyperparameter(options, "hall_prior_shape") / hyperparameter(options, "hall_prior_rate")
    return {"rates": torch.full((num_categories,), float(r), dtype=dtype),
            "hallucination": torch.full((num_categories,), float(h), dtype=dtype)}


def check_V(V: dict, num_categories: int, dtype=torch.float64) -> dict:
    """Validate a metacognition dict ``{"rates": (C,), "hallucination": (C,)}`` (tensors or lists).

    Rates must be finite and positive (a zero hallucination rate would make a
    detection that no object explains impossible).
    """
    if not isinstance(V, dict):
        raise DataError(f"V must be a dict with 'rates' and 'hallucination', got {type(V).__name__}")
    out = {}
    for key in ("rates", "hallucination"):
        if key not in V:
            raise DataError(f"V lacks {key!r} (give per-category rates, {num_categories} values)")
        try:
            t = torch.as_tensor(V[key], dtype=dtype).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"V[{key!r}] must be {num_categories} numbers: {e}") from None
        if t.numel() != num_categories:
            raise DataError(f"V[{key!r}] has {t.numel()} values but there are {num_categories} categories")
        bad = ~torch.isfinite(t) | (t <= 0)
        if bad.any():
            i = int(bad.nonzero()[0])
            name = CATEGORIES[i] if i < len(CATEGORIES) else str(i)
            raise DataError(f"V[{key!r}] for category {name!r} is {float(t[i])}; rates must be finite and > 0")
        out[key] = t
    return out


def check_structure(cats, active, n, num_objects, *, missing: str, axis: str = "S"):
    """Slot categories ``cats`` and activity ``active`` as ``(n, K)`` tensors (``active``
    defaults to all true); ``missing`` is the error when no structure is given."""
    K = int(num_objects)
    if cats is None:
        raise ModelError(missing)
    cats = torch.as_tensor(cats, dtype=torch.long)
    active = torch.ones(n, K, dtype=torch.bool) if active is None else torch.as_tensor(active, dtype=torch.bool)
    if cats.shape != (n, K) or active.shape != (n, K):
        raise ModelError(f"cats and active must have shape ({axis}, K) = ({n}, {K}), got "
                         f"{tuple(cats.shape)} and {tuple(active.shape)}")
    return cats, active


def structure_of(data, num_objects, cats, active):
    return check_structure(
        cats, active, data["positions"].shape[0], num_objects,
        missing="model 'detector' needs the scene structure as options: cats (S, K) slot "
                "categories and active (S, K) bool; metagen_ppl.models.detector.fit.fit_metacognition "
                "searches over structures")


def check_inside_box(locs, active, lower, upper) -> None:
    """The uniform location prior's support: raise :class:`ModelError` (as the engine's E-step does, whose
    log joint is -inf there) if an active object lies outside ``[lower, upper)``."""
    outside = (((locs < lower) | (locs >= upper)).any(-1) & active).nonzero()
    if len(outside):
        s, k = outside[0].tolist()
        raise ModelError(f"the log evidence is not finite at the current parameters: object slot {k} of scene {s} "
                         f"lies outside the box {lower.tolist()}..{upper.tolist()} (prior density 0); start "
                         "inside it")


def box_bounds(data):
    box = data["box"]
    lo, hi = box[0], box[1]
    return lo, hi, float(torch.log(hi - lo).sum())


# --------------------------------------------------------------------------- distribution of x
class DetectionLocation(TorchDistribution):
    """Location of a detection given its assignment: uniform over the box (clutter) or Gaussian.

    ``log_prob(x) = -log vol`` where ``is_clutter``, ``log N(x; loc, scale^2 I)``
    elsewhere, and 0 where ``mask`` is False (padded detections).
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, loc, scale, is_clutter, lower, upper, mask=None, validate_args=None):
        self.loc = loc
        self.scale = torch.as_tensor(scale, dtype=loc.dtype)
        self.is_clutter = is_clutter
        self.lower, self.upper = lower, upper
        self.log_volume = torch.log(upper - lower).sum()
        self.mask_ = mask
        shapes = [loc.shape[:-1], is_clutter.shape] + ([mask.shape] if mask is not None else [])
        super().__init__(torch.broadcast_shapes(*shapes), loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DetectionLocation, _instance)
        for k in ("loc", "scale", "is_clutter", "lower", "upper", "log_volume", "mask_"):
            setattr(new, k, getattr(self, k))
        super(DetectionLocation, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype)
        gauss = self.loc + eps * self.scale
        unif = self.lower + torch.rand(shape, dtype=self.loc.dtype) * (self.upper - self.lower)
        return torch.where(self.is_clutter.unsqueeze(-1), unif, gauss)

    def log_prob(self, value):
        diff = value - self.loc
        d = value.shape[-1]
        normal = (-0.5 * (diff * diff).sum(-1) / self.scale ** 2 - d * torch.log(self.scale)
                  - 0.5 * d * math.log(2 * math.pi))
        out = torch.where(self.is_clutter, -self.log_volume, normal)
        if self.mask_ is not None:
            out = torch.where(self.mask_, out, torch.zeros((), dtype=out.dtype))
        shape = torch.broadcast_shapes(out.shape, self.batch_shape)
        return out.expand(shape)


# --------------------------------------------------------------------------- the model
def assignment_logits(data, rates, hallucination, cats, active):
    """Unnormalised log prior weights of ``z`` per detection, ``(S, T, D, K + 1)``.

    ``[:, :, :, 0] = log h_o``; ``[..., k] = log r_{c_k}`` where slot ``k`` is
    active and ``c_k = o``, :data:`IMPOSSIBLE` elsewhere; padded detections:
    ``[0, IMPOSSIBLE, ...]`` (all mass on ``z = 0``, with log weight 0).
    """
    o = data["categories"]
    mask = data["det_mask"]
    log_h = torch.log(hallucination)[o]                                   # (S,T,D)
    log_r = torch.log(rates)[cats]                                        # (S,K)
    ok = active[:, None, None, :] & (cats[:, None, None, :] == o.unsqueeze(-1))   # (S,T,D,K)
    imp = torch.full((), IMPOSSIBLE, dtype=log_h.dtype)
    obj = torch.where(ok, log_r[:, None, None, :], imp)
    logits = torch.cat([log_h.unsqueeze(-1), obj], -1)
    pad = torch.cat([torch.zeros(1, dtype=log_h.dtype), torch.full((obj.shape[-1],), IMPOSSIBLE,
                                                                  dtype=log_h.dtype)])
    return torch.where(mask.unsqueeze(-1), logits, pad)


def category_intensity(rates, hallucination, cats, active, num_categories):
    """``Lambda_sc = h_c + r_c #{active k: c_k = c}``, ``(S, C)``."""
    counts = torch.zeros(cats.shape[0], num_categories, dtype=rates.dtype)
    counts.scatter_add_(1, cats, active.to(rates.dtype))
    return hallucination + rates * counts


def model(data, num_objects, *, cats=None, active=None, rates=None, hallucination=None, scale=None,
          num_categories=len(CATEGORIES), rate_prior_shape=None, rate_prior_rate=None,
          hall_prior_shape=None, hall_prior_rate=None, scale_prior_shape=None, scale_prior_rate=None,
          count_prior_p=None):
    """The detector model M3 over all scenes (see the module docstring).

    Parameters
    ----------
    data : dict
        ``positions, categories, det_mask, num_detections, frame_mask, box``.
    num_objects : int
        ``K``, object slots per scene.
    cats, active : (S, K) tensors
        The structure: slot categories and which slots hold an object.
    rates, hallucination : (C,) tensors, optional
        Fixed ``V`` (fixed-V and lesioned modes); learned sites when ``None``.
    scale : float, optional
        Fixed location noise ``sigma``; learned (site ``"scale"``) when ``None``.
    """
    opts = dict(rate_prior_shape=rate_prior_shape, rate_prior_rate=rate_prior_rate,
                hall_prior_shape=hall_prior_shape, hall_prior_rate=hall_prior_rate,
                scale_prior_shape=scale_prior_shape, scale_prior_rate=scale_prior_rate)
    pos = data["positions"]
    dtype = pos.dtype
    S, T, D = pos.shape[:3]
    K = int(num_objects)
    C = int(num_categories)
    cats, active = structure_of(data, K, cats, active)
    lo, hi, _ = box_bounds(data)
    if rates is None:
        shape, rate = (float(hyperparameter(opts, k)) for k in ("rate_prior_shape", "rate_prior_rate"))
        rates = pyro.sample("rates", dist.Gamma(torch.tensor(shape, dtype=dtype), torch.tensor(rate, dtype=dtype))
                            .expand([C]).to_event(1))
    else:
        rates = torch.as_tensor(rates, dtype=dtype)
        if rates.shape != (C,):
            raise DataError(f"rates must hold {C} values (one per category), got shape {tuple(rates.shape)}")
    if hallucination is None:
        hallucination = pyro.sample(
            "hallucination", dist.Gamma(torch.tensor(float(hyperparameter(opts, "hall_prior_shape")), dtype=dtype),
                                        torch.tensor(float(hyperparameter(opts, "hall_prior_rate")), dtype=dtype))
            .expand([C]).to_event(1))
    else:
        hallucination = torch.as_tensor(hallucination, dtype=dtype)
        if hallucination.shape != (C,):
            raise DataError(f"hallucination must hold {C} values (one per category), got shape "
                            f"{tuple(hallucination.shape)}")
    if scale is None:
        scale = pyro.sample("scale", scale_prior(float(hyperparameter(opts, "scale_prior_shape")),
                                                 float(hyperparameter(opts, "scale_prior_rate")), dtype))
    else:
        scale = torch.as_tensor(float(scale), dtype=dtype)
    locs = pyro.sample("locs", dist.Uniform(lo, hi).expand([S, K, 3]).mask(active.unsqueeze(-1)).to_event(3))

    lam_c = category_intensity(rates, hallucination, cats, active, C)          # (S, C)
    lam = lam_c.sum(-1)                                                       # (S,)
    logits = assignment_logits(data, rates, hallucination, cats, active)      # (S, T, D, J)
    locs_ext = torch.cat([locs.new_zeros(S, 1, 3) + (lo + hi) / 2, locs], 1)  # (S, J, 3)
    locs_b = locs_ext[:, None, None]                                          # (S, 1, 1, J, 3)
    with pyro.plate("scenes", S, dim=-3):
        with pyro.plate("frames", T, dim=-2):
            with poutine.mask(mask=data["frame_mask"].unsqueeze(-1)):
                pyro.sample("num_detections", dist.Poisson(lam[:, None, None].expand(S, T, 1)),
                            obs=data["num_detections"].to(dtype).unsqueeze(-1))
            with pyro.plate("detections", D, dim=-1):
                with poutine.mask(mask=data["det_mask"]):
                    pyro.sample("o", dist.Categorical(probs=(lam_c / lam.unsqueeze(-1))[:, None, None, :]),
                                obs=data["categories"])
                z = pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
                loc = Vindex(locs_b)[..., z, :]
                pyro.sample("x", DetectionLocation(loc, scale, z == 0, lo, hi, data["det_mask"]),
                            obs=data["positions"])


def log_prior(data, params, *, active=None, rates=None, hallucination=None, scale=None, **options):
    """``log p(theta)`` of the learned sites (as the engine counts it): Gamma priors of ``r``, ``h``,
    the scale prior, and ``-log vol`` per active slot (locations inside the box)."""
    dtype = data["positions"].dtype
    _, _, log_vol = box_bounds(data)
    total = torch.zeros((), dtype=dtype)
    for name, given, a, b in (("rates", rates, "rate_prior_shape", "rate_prior_rate"),
                              ("hallucination", hallucination, "hall_prior_shape", "hall_prior_rate")):
        if given is None:
            g = dist.Gamma(torch.tensor(float(hyperparameter(options, a)), dtype=dtype),
                           torch.tensor(float(hyperparameter(options, b)), dtype=dtype))
            total = total + g.log_prob(params[name].to(dtype)).sum()
    if scale is None:
        # sigma^2 ~ InverseGamma(a, b), as a density of sigma (the site "scale"): IG(sigma^2) * 2 sigma
        a = float(hyperparameter(options, "scale_prior_shape"))
        b = float(hyperparameter(options, "scale_prior_rate"))
        sig = params["scale"].to(dtype).reshape(())
        v = sig * sig
        total = total + (a * math.log(b) - math.lgamma(a) - (a + 1) * torch.log(v) - b / v
                         + math.log(2.0) + torch.log(sig))
    n_active = 0 if active is None else int(torch.as_tensor(active).sum())
    return total - log_vol * n_active


# --------------------------------------------------------------------------- starting values
def random_detection_per_slot(data, cats, active, generator) -> dict:
    """For every active slot ``(s, k)``: the index ``(t, d)`` of one detection of the slot's category
    in scene ``s``, drawn uniformly with ``generator`` (slots without such a detection are left out).
    Shared by the starting values of M3 and M4 (``data`` needs ``categories`` and ``det_mask``)."""
    o, mask = data["categories"], data["det_mask"]
    picks = {}
    for s in range(cats.shape[0]):
        for k in range(cats.shape[1]):
            if not active[s, k]:
                continue
            idx = ((o[s] == cats[s, k]) & mask[s]).nonzero()
            if len(idx):
                t, d = idx[int(torch.randint(len(idx), (1,), generator=generator))].tolist()
                picks[(s, k)] = (t, d)
    return picks


def initialize(data, num_objects, generator, *, cats=None, active=None, rates=None, hallucination=None,
               scale=None, num_categories=len(CATEGORIES), **_):
    """Starting values for a known structure: each active slot at a random detection of its category."""
    pos = data["positions"]
    S = pos.shape[0]
    K = int(num_objects)
    cats, active = structure_of(data, K, cats, active)
    lo, hi, _ = box_bounds(data)
    locs = ((lo + hi) / 2).expand(S, K, 3).clone()
    for (s, k), (t, d) in random_detection_per_slot(data, cats, active, generator).items():
        locs[s, k] = pos[s, t, d]
    # a noisy detection may lie outside the box, where the location prior is zero
    eps = 1e-6 * (hi - lo)
    locs = torch.maximum(torch.minimum(locs, hi - eps), lo + eps)
    out = {"locs": locs}
    if scale is None:
        out["scale"] = torch.tensor(0.5, dtype=pos.dtype)
    V = prior_mean_V(num_categories, pos.dtype)
    if rates is None:
        out["rates"] = V["rates"]
    if hallucination is None:
        out["hallucination"] = V["hallucination"]
    return out
