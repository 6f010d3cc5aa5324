"""M4 ``projective``: the MetaGen detector model on 2D pixel detections from known cameras.

Generative story (DESIGN.md section 2, model M4; issue 5 item 2)
----------------------------------------------------------------
Videos ``v = 1..V``, frames ``t = 1..T_v``, categories ``c = 0..C-1``
(:data:`metagen_ppl.domain.metagen_data.CATEGORIES`). Video ``v`` holds ``K_v``
objects; object ``k`` has a category ``c_k`` and a 3D location ``mu_k`` (metres,
y up). Frame ``t`` has a known camera (position ``cam_t``, look-at point
``look_t``) and the angle-linear projection ``P_t`` of :mod:`metagen_ppl.domain.camera`.
Object ``k`` is *visible* in frame ``t`` iff ``P_t(mu_k)`` lies in the
256 x 256 image and its depth is positive (``vis_tk``).

The detections of frame ``t`` -- pixel centre ``u_n``, category ``o_n`` and
score bin ``b_n`` (a mark) -- form a Poisson point process with intensity

    lambda(u, o, b) = sum_k vis_tk r_{c_k} [o = c_k] N(u; P_t(mu_k), sigma_px^2 I) q^real_o(b)
                      + h_o / 256^2 q^hall_o(b)

``r_c`` is the expected number of detections per frame of a visible object of
category ``c``, ``h_c`` the expected number of hallucinated detections of
category ``c`` per frame (uniform over the image), ``sigma_px`` the pixel noise,
and ``q^real_c``, ``q^hall_c`` the distributions of the detection score of a
real and of a hallucinated detection of category ``c`` (histograms over the
score bins :data:`SCORE_EDGES`): a confident detection is stronger evidence
for an object than a faint one, by the learned likelihood ratio
``q^real_o(b) / q^hall_o(b)``. The metacognition ``V = (r, h)``, the marks and
``sigma_px`` are shared by all videos.

As a Pyro model (one traced call covers every video; the frame likelihood is
``exp(-Lambda_t) prod_n lambda(u_n, o_n, b_n)`` up to the data-only ``1/n!``)::

    r_c         ~ Gamma(a_r, b_r)                site "rates"          (C,)     unless given
    h_c         ~ Gamma(a_h, b_h)                site "hallucination"  (C,)     unless given
    sigma_px    : sigma_px^2 ~ InvGamma(a_s, b_s) site "pixel_scale"   ()       unless given
    q^real_c    ~ Dirichlet(alpha)               site "mark_real"      (C, B)   unless given
    q^hall_c    ~ Dirichlet(alpha)               site "mark_hall"      (C, B)   unless given
    mu_vk       ~ Uniform(room)  (active slots)  site "locs"           (V, K, 3) unless given
    plate videos (dim -3) x frames (dim -2):
        n_vt ~ Poisson(Lambda_vt)                site "num_detections" observed
        plate detections (dim -1, padded and masked):
            o_n ~ Categorical(Lambda_vtc / Lambda_vt)        site "o"  observed
            z_n ~ Categorical(w_j [o_n, vis, category ok])   site "z"  ENUMERATED
            u_n ~ U(image) if z_n = 0 else N(P_t(mu_{z_n}), sigma_px^2 I)   site "u" observed
            b_n ~ q^hall_{o_n} if z_n = 0 else q^real_{o_n}  site "s"  observed

with ``z = 0`` a hallucination (weight ``h_{o_n}``) and ``z = k`` object slot
``k`` (weight ``r_{c_k}`` where the slot is active, ``c_k = o_n`` and the object
is visible in the frame; :data:`IMPOSSIBLE` elsewhere),
``Lambda_vtc = h_c + sum_k vis_tk r_c [c_k = c]`` and
``Lambda_vt = sum_c Lambda_vtc``. As in :mod:`metagen_ppl.models.detector`, the product of
these factors is the point-process likelihood (the PMHT relaxation: each
detection is assigned independently, an object may yield several detections
per frame). The pixel Gaussian is not truncated to the image (objects whose
centre projects into the image put almost all their detection mass inside).

Field of view (a camera parameter learned from the detections)
---------------------------------------------------------------
``P_t`` is the angle-linear camera of DESIGN.md section 2, whose field of view
is nominally 55 degrees. On the shared data, the detections disagree with
that value in a systematic way: relative to the 55-degree projection of the
true objects they are pulled towards the image centre, by about 4-5 px at
``|px - 128| > 64``. Least squares on the true objects' matched detections
prefers a field of view of about 57-58 degrees (residual 2.2 px instead of
2.5 px; the refitted positions land 0.08 m from the truth instead of
0.19 m). The model therefore takes the half field of view as a parameter
(``half_fov``, option of :func:`model`, default the nominal
:data:`metagen_ppl.domain.camera.HALF_FOV`). :func:`fit_videos` learns it without
ground truth, by conditional maximisation of the log marginal likelihood
(ECME; :meth:`ProjectiveFit.fov_mstep`); it reaches 57.1 degrees
(RetinaNet) and 57.1-57.4 degrees (Faster R-CNN) independently. The metrics
still project with the nominal camera: they define visibility.

Room (location prior), from the data's conventions
--------------------------------------------------
The rendered rooms of ``../shared/data/metagen2021`` are 10 m x 10 m: object
centres lie in ``x, z in [-5, 5]`` (the cameras move at height 2 m along the
room's edge, ``|x|, |z| <= 5.7``, looking inward); objects stand on the floor
(y = 0) and their centres are below 1 m (the ground truth has
``0.2 <= y <= 0.53``). :data:`ROOM_BOX` is therefore
``x, z in [-5, 5], y in [0, 1]`` (volume 100 m^3), the uniform location prior.

Unknown number of objects: model selection
------------------------------------------
The object count of a video is decided by the model's own prior and a Laplace
(Occam) factor, not by a hand-set constant. The score of a structure
``(K_v, c, mu)`` of video ``v`` is its penalised log marginal likelihood

    log p(x_v | mu*, c, V) + log Geom(K_v; p) + sum_k [ log(1/C) + log(1/vol)
                                                          + log Z_k ]

with MetaGen's geometric count prior ``P(K) = p (1 - p)^K`` (p = 0.9), the
uniform category prior and the uniform location prior over the room, and
``Z_k = int_room exp(Q_k(mu) - Q_k(mu*)) dmu`` the Laplace approximation of
the integral of object ``k``'s location posterior: with ``H_k = -d^2 Q_k / d mu^2``
(the exact Hessian by autograd of the expected complete log likelihood of the
object's detections) and its eigenpairs ``(lambda_i, e_i)``,

    log Z_k = sum_i log int_{a_i}^{b_i} exp(-lambda_i s^2 / 2) ds

where ``[a_i, b_i]`` is the chord of the room through ``mu*`` along ``e_i``: the
Laplace approximation truncated to the room along each principal axis. It is
the usual ``(2 pi)^{3/2} |H_k|^{-1/2}`` for a well-localised object and the
chord length along a direction the data leave flat (an object seen in one
frame is only known up to its depth along the viewing ray).
:func:`fit_videos` searches structures by greedy birth and death (candidates
triangulated from same-category detections of two frames, or one detection's
ray at mid height; see its docstring), batched over videos.

Hooks (protocol of :mod:`metagen_ppl.engine.registry`)
-----------------------------------------------
:func:`model`, :func:`closed_form_mstep` (V, ``sigma_px`` and the marks, pooled
over videos; the locations have no closed form through the projection and are
left to the engine's generic optimiser :func:`metagen_ppl.engine.em.optimizer_mstep`,
or to the batched Gauss-Newton of :func:`location_mstep` in the fast path),
:func:`initialize`, :func:`simulate` (writes the MetaGen detection JSON).

Data dict (:func:`data_from_videos`)
------------------------------------
``cams, looks`` (V, T, 3); ``centers`` (V, T, D, 2); ``categories``,
``score_bins`` (V, T, D) long; ``det_mask`` (V, T, D) bool;
``num_detections`` (V, T) long; ``frame_mask`` (V, T) bool; ``box`` (2, 3)
(``D >= 1``, padded).
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution, constraints
from pyro.ops.indexing import Vindex

from metagen_ppl.apps.compare import ComparisonSetup
from metagen_ppl.domain.camera import camera_frame, HALF_FOV, IMAGE_SIZE, triangulate, visible
from metagen_ppl.domain.metagen_data import batch_videos, CATEGORIES, COCO_TO_CATEGORY, parse_videos, VideoBatch
from metagen_ppl.domain.objects import object_metrics
from metagen_ppl.engine.checkpoint import Checkpoint, hash_tensors, interrupted
from metagen_ppl.engine.em import optimizer_mstep
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.errors import DataError
from metagen_ppl.models.baseline import scale_prior
from metagen_ppl.models.detector import active_slots_first, check_structure, random_detection_per_slot

#: Slots are anchored by category and structure; no (K, D) location site to align.
COMPONENT_SITES: dict = {}
LOCATION_SITE = None

#: Uniform location prior (metres): x, z in [-5, 5], y in [0, 1] (see the module docstring).
ROOM_BOX = ((-5.0, 0.0, -5.0), (5.0, 1.0, 5.0))
#: Score bin edges of the marks (scores are in [0.05, 1]); bin i is ``[e_i, e_{i+1})``, the last closed.
SCORE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Log weight of an impossible assignment (finite: ``0 * IMPOSSIBLE = 0`` keeps Q free of NaN).
IMPOSSIBLE = -1.0e4
#: ``log`` of the image area (hallucinations are uniform over the 256 x 256 image).
LOG_AREA = 2 * math.log(IMAGE_SIZE)

#: Hyperparameters (every hook accepts them as keyword options).
DEFAULTS = dict(
    rate_prior_shape=2.0, rate_prior_rate=2.0,       # r_c ~ Gamma(2, 2): mean 1 detection per frame
    hall_prior_shape=2.0, hall_prior_rate=4.0,       # h_c ~ Gamma(2, 4): mean 0.5 per frame
    scale_prior_shape=3.0, scale_prior_rate=72.0,    # sigma_px^2 ~ InvGamma(3, 72): mean 36 px^2 (6 px)
    mark_concentration=2.0,                          # Dirichlet(2): add-one smoothing of the histograms
    count_prior_p=0.9,                               # P(K) = p (1 - p)^K (MetaGen's geometric prior)
)
_V_SITES = ("rates", "hallucination", "pixel_scale", "mark_real", "mark_hall")
_COCO_OF = {v: k for k, v in COCO_TO_CATEGORY.items()}


def _opt(options: dict, key: str) -> float:
    v = options.get(key)
    return float(DEFAULTS[key] if v is None else v)


def num_bins() -> int:
    return len(SCORE_EDGES) - 1


# --------------------------------------------------------------------------- data
def score_bins(scores: torch.Tensor) -> torch.Tensor:
    """Bin index of each score (:data:`SCORE_EDGES`; 1.0 falls in the last bin)."""
    edges = torch.tensor(SCORE_EDGES[1:-1], dtype=scores.dtype)
    return torch.bucketize(scores.contiguous(), edges, right=True).clamp(0, num_bins() - 1)


def data_from_videos(videos, box=ROOM_BOX, dtype=torch.float64) -> dict:
    """The model's data dict from loaded videos (or a :class:`~metagen_ppl.domain.metagen_data.VideoBatch`)."""
    b = videos if isinstance(videos, VideoBatch) else batch_videos(list(videos))
    V, T = b.cams.shape[:2]
    D = max(1, b.centers.shape[2])

    def pad(x, fill=0):
        if x.shape[2] == D:
            return x
        shape = list(x.shape)
        shape[2] = D - x.shape[2]
        return torch.cat([x, torch.full(shape, fill, dtype=x.dtype)], 2)

    centers = pad(b.centers).to(dtype)
    scores = pad(b.scores).to(dtype)
    mask = pad(b.det_mask, False)
    return {"cams": b.cams.to(dtype), "looks": b.looks.to(dtype), "centers": centers,
            "categories": pad(b.categories), "score_bins": torch.where(mask, score_bins(scores), 0),
            "scores": scores, "det_mask": mask, "num_detections": b.num_detections,
            "frame_mask": b.frame_mask, "box": torch.tensor(box, dtype=dtype)}


def select_videos(data: dict, index) -> dict:
    """The data dict of a subset of videos (``index``: a bool mask or indices over V)."""
    idx = torch.as_tensor(index)
    if idx.dtype == torch.bool:
        idx = idx.nonzero().reshape(-1)
    return {k: (v if k == "box" else v[idx]) for k, v in data.items()}


def _box(data):
    box = data["box"]
    lo, hi = box[0], box[1]
    return lo, hi, float(torch.log(hi - lo).sum())


# --------------------------------------------------------------------------- projection helpers
def project(points, cam, look, half_fov=HALF_FOV):
    """:func:`metagen_ppl.domain.camera.project` with a field of view ``2 half_fov`` (radians; a float or a
    0-dim tensor, differentiable): pixels ``(..., 2)`` and depth ``(...)``. With the default it is
    exactly the camera of DESIGN.md."""
    f, right, up = camera_frame(cam, look)
    s = points - cam
    depth = (s * f).sum(-1)
    k = IMAGE_SIZE / 2 / half_fov
    px = IMAGE_SIZE / 2 + k * torch.atan2((s * right).sum(-1), depth)
    py = IMAGE_SIZE / 2 - k * torch.atan2((s * up).sum(-1), depth)
    return torch.stack([px, py], -1), depth


def pixel_to_ray(pixels, cams, looks, half_fov=HALF_FOV):
    """:func:`metagen_ppl.domain.camera.pixel_to_ray` with a field of view ``2 half_fov``: unit ray directions."""
    f, right, up = camera_frame(cams, looks)
    a = ((pixels[..., 0] - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2) * half_fov).clamp(-1.5, 1.5)
    b = ((IMAGE_SIZE / 2 - pixels[..., 1]) / (IMAGE_SIZE / 2) * half_fov).clamp(-1.5, 1.5)
    ray = f + torch.tan(a).unsqueeze(-1) * right + torch.tan(b).unsqueeze(-1) * up
    return ray / ray.norm(dim=-1, keepdim=True)


def _half(values) -> torch.Tensor:
    h = values.get("half_fov") if values is not None else None
    return torch.tensor(HALF_FOV, dtype=torch.float64) if h is None else torch.as_tensor(h)


def object_pixels(data: dict, locs: torch.Tensor, half_fov=HALF_FOV):
    """Pixels ``(V, T, K, 2)`` and visibility ``(V, T, K)`` of objects ``locs`` (V, K, 3) in every frame."""
    pix, depth = project(locs[:, None, :, :], data["cams"][:, :, None, :], data["looks"][:, :, None, :], half_fov)
    vis = visible(pix, depth) & data["frame_mask"].unsqueeze(-1)
    return pix, vis


def _structure(data, num_objects, cats, active):
    return check_structure(
        cats, active, data["cams"].shape[0], num_objects, axis="V",
        missing="model 'projective' needs the structure as options: cats (V, K) slot categories "
                "and active (V, K) bool; metagen_ppl.models.projective.fit_videos searches over structures")


# --------------------------------------------------------------------------- distributions
class PixelDetection(TorchDistribution):
    """Pixel centre of a detection given its assignment.

    ``log_prob(u) = -log(256^2)`` where ``is_hall`` (uniform over the image),
    ``log N(u; loc, scale^2 I)`` elsewhere, and 0 where ``mask`` is False.
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, loc, scale, is_hall, mask=None, validate_args=None):
        self.loc = loc
        self.scale = torch.as_tensor(scale, dtype=loc.dtype)
        self.is_hall = is_hall
        self.mask_ = mask
        shapes = [loc.shape[:-1], is_hall.shape] + ([mask.shape] if mask is not None else [])
        super().__init__(torch.broadcast_shapes(*shapes), loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PixelDetection, _instance)
        for k in ("loc", "scale", "is_hall", "mask_"):
            setattr(new, k, getattr(self, k))
        super(PixelDetection, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        gauss = self.loc + torch.randn(shape, dtype=self.loc.dtype) * self.scale
        unif = torch.rand(shape, dtype=self.loc.dtype) * IMAGE_SIZE
        return torch.where(self.is_hall.unsqueeze(-1), unif, gauss)

    def log_prob(self, value):
        diff = value - self.loc
        normal = -0.5 * (diff * diff).sum(-1) / self.scale ** 2 - 2 * torch.log(self.scale) - math.log(2 * math.pi)
        out = torch.where(self.is_hall, torch.full((), -LOG_AREA, dtype=normal.dtype), normal)
        if self.mask_ is not None:
            out = torch.where(self.mask_, out, torch.zeros((), dtype=out.dtype))
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))


def _scale_prior(a, b, dtype):
    return scale_prior(a, b, dtype)


def _scale_log_prior(sigma, a, b):
    """``log p(sigma)`` when ``sigma^2 ~ InverseGamma(a, b)`` (the density of :func:`_scale_prior`)."""
    v = sigma * sigma
    return a * math.log(b) - math.lgamma(a) - (a + 1) * torch.log(v) - b / v + math.log(2.0) + torch.log(sigma)


# --------------------------------------------------------------------------- the model
def assignment_logits(data, rates, hallucination, cats, active, vis):
    """Unnormalised log prior weights of ``z`` per detection, ``(V, T, D, K + 1)``.

    ``[..., 0] = log h_o``; ``[..., k] = log r_{c_k}`` where slot ``k`` is active,
    ``c_k = o`` and the object is visible in the frame, :data:`IMPOSSIBLE`
    elsewhere; padded detections ``[0, IMPOSSIBLE, ...]``.
    """
    o = data["categories"]
    mask = data["det_mask"]
    log_h = torch.log(hallucination)[o]                                         # (V,T,D)
    log_r = torch.log(rates)[cats]                                              # (V,K)
    ok = (active[:, None, None, :] & (cats[:, None, None, :] == o.unsqueeze(-1))
          & vis[:, :, None, :])                                                 # (V,T,D,K)
    imp = torch.full((), IMPOSSIBLE, dtype=log_h.dtype)
    obj = torch.where(ok, log_r[:, None, None, :], imp)
    logits = torch.cat([log_h.unsqueeze(-1), obj], -1)
    pad = torch.cat([torch.zeros(1, dtype=log_h.dtype), torch.full((obj.shape[-1],), IMPOSSIBLE, dtype=log_h.dtype)])
    return torch.where(mask.unsqueeze(-1), logits, pad)


def category_intensity(data, rates, hallucination, cats, active, vis, num_categories):
    """``Lambda_vtc = h_c + sum_k vis_tk r_c [c_k = c]``, ``(V, T, C)``."""
    V, T, K = vis.shape
    w = (vis & active[:, None, :]).to(rates.dtype)                              # (V,T,K)
    onehot = torch.nn.functional.one_hot(cats, num_categories).to(rates.dtype)  # (V,K,C)
    counts = torch.einsum("vtk,vkc->vtc", w, onehot)
    return hallucination + rates * counts


def model(data, num_objects, *, cats=None, active=None, locs=None, rates=None, hallucination=None,
          pixel_scale=None, mark_real=None, mark_hall=None, half_fov=None, num_categories=len(CATEGORIES),
          rate_prior_shape=None, rate_prior_rate=None, hall_prior_shape=None, hall_prior_rate=None,
          scale_prior_shape=None, scale_prior_rate=None, mark_concentration=None, count_prior_p=None):
    """The projective detector model over all videos (see the module docstring).

    Parameters
    ----------
    data : dict (:func:`data_from_videos`)
    num_objects : int
        ``K``, object slots per video.
    cats, active : (V, K) tensors
        The structure: slot categories and which slots hold an object.
    locs : (V, K, 3) tensor, optional
        Fixed object locations (e.g. the ground truth); a latent site when ``None``.
    rates, hallucination : (C,), pixel_scale : float, mark_real, mark_hall : (C, B), optional
        Fixed parameters (fixed-V and lesioned modes); latent sites when ``None``.
    """
    opts = dict(rate_prior_shape=rate_prior_shape, rate_prior_rate=rate_prior_rate,
                hall_prior_shape=hall_prior_shape, hall_prior_rate=hall_prior_rate,
                scale_prior_shape=scale_prior_shape, scale_prior_rate=scale_prior_rate,
                mark_concentration=mark_concentration)
    centers = data["centers"]
    dtype = centers.dtype
    V, T, D = centers.shape[:3]
    K = int(num_objects)
    C = int(num_categories)
    B = num_bins()
    cats, active = _structure(data, K, cats, active)
    lo, hi, _ = _box(data)

    def gamma(a, b):
        return dist.Gamma(torch.tensor(_opt(opts, a), dtype=dtype), torch.tensor(_opt(opts, b), dtype=dtype))

    if rates is None:
        rates = pyro.sample("rates", gamma("rate_prior_shape", "rate_prior_rate").expand([C]).to_event(1))
    else:
        rates = torch.as_tensor(rates, dtype=dtype)
    if hallucination is None:
        hallucination = pyro.sample("hallucination",
                                    gamma("hall_prior_shape", "hall_prior_rate").expand([C]).to_event(1))
    else:
        hallucination = torch.as_tensor(hallucination, dtype=dtype)
    if pixel_scale is None:
        pixel_scale = pyro.sample("pixel_scale", _scale_prior(_opt(opts, "scale_prior_shape"),
                                                              _opt(opts, "scale_prior_rate"), dtype))
    else:
        pixel_scale = torch.as_tensor(float(pixel_scale), dtype=dtype)
    conc = torch.full((C, B), _opt(opts, "mark_concentration"), dtype=dtype)
    if mark_real is None:
        mark_real = pyro.sample("mark_real", dist.Dirichlet(conc).to_event(1))
    else:
        mark_real = torch.as_tensor(mark_real, dtype=dtype)
    if mark_hall is None:
        mark_hall = pyro.sample("mark_hall", dist.Dirichlet(conc).to_event(1))
    else:
        mark_hall = torch.as_tensor(mark_hall, dtype=dtype)
    if locs is None:
        locs = pyro.sample("locs", dist.Uniform(lo, hi).expand([V, K, 3]).mask(active.unsqueeze(-1)).to_event(3))
    else:
        locs = torch.as_tensor(locs, dtype=dtype)

    pix, vis = object_pixels(data, locs, HALF_FOV if half_fov is None else half_fov)   # (V,T,K,2), (V,T,K)
    lam_c = category_intensity(data, rates, hallucination, cats, active, vis, C)   # (V,T,C)
    lam = lam_c.sum(-1)                                                         # (V,T)
    logits = assignment_logits(data, rates, hallucination, cats, active, vis)   # (V,T,D,J)
    pix_ext = torch.cat([pix.new_full((V, T, 1, 2), IMAGE_SIZE / 2), pix], 2)  # (V,T,J,2)
    pix_b = pix_ext[:, :, None]                                                 # (V,T,1,J,2)
    o = data["categories"]
    mask = data["det_mask"]
    real = torch.log(mark_real)[o]                                              # (V,T,D,B)
    hall = torch.log(mark_hall)[o]
    with pyro.plate("videos", V, dim=-3):
        with pyro.plate("frames", T, dim=-2):
            with poutine.mask(mask=data["frame_mask"].unsqueeze(-1)):
                pyro.sample("num_detections", dist.Poisson(lam.unsqueeze(-1)),
                            obs=data["num_detections"].to(dtype).unsqueeze(-1))
            with pyro.plate("detections", D, dim=-1):
                with poutine.mask(mask=mask):
                    pyro.sample("o", dist.Categorical(probs=(lam_c / lam.unsqueeze(-1)).unsqueeze(-2)), obs=o)
                z = pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
                loc = Vindex(pix_b)[..., z, :]
                is_hall = z == 0
                pyro.sample("u", PixelDetection(loc, pixel_scale, is_hall, mask), obs=data["centers"])
                with poutine.mask(mask=mask):
                    pyro.sample("s", dist.Categorical(logits=torch.where(is_hall.unsqueeze(-1), hall, real)),
                                obs=data["score_bins"])


# --------------------------------------------------------------------------- direct (batched) E-step
def prior_params(num_categories=len(CATEGORIES), dtype=torch.float64, **options) -> dict:
    """V, marks and ``sigma_px`` at their prior means (the lesioned model's metacognition).

    ``r_c = a_r / b_r``, ``h_c = a_h / b_h``, uniform marks, ``sigma_px = sqrt(b_s / (a_s - 1))``.
    """
    C, B = int(num_categories), num_bins()
    a_s, b_s = _opt(options, "scale_prior_shape"), _opt(options, "scale_prior_rate")
    return {"rates": torch.full((C,), _opt(options, "rate_prior_shape") / _opt(options, "rate_prior_rate"),
                                dtype=dtype),
            "hallucination": torch.full((C,), _opt(options, "hall_prior_shape") / _opt(options, "hall_prior_rate"),
                                        dtype=dtype),
            "pixel_scale": torch.tensor(math.sqrt(b_s / max(a_s - 1.0, 0.5)), dtype=dtype),
            "mark_real": torch.full((C, B), 1.0 / B, dtype=dtype),
            "mark_hall": torch.full((C, B), 1.0 / B, dtype=dtype)}


def joint_log_terms(data, values, cats, active, num_categories=len(CATEGORIES)):
    """``log w_j + log p(u_n | j) + log q_j(b_n)`` per detection and component ``(V, T, D, K + 1)``,
    the frame intensities ``Lambda_vt`` (V, T) and the visibility ``(V, T, K)``.

    ``values`` holds ``locs, rates, hallucination, pixel_scale, mark_real, mark_hall``.
    """
    u = data["centers"]
    o, b = data["categories"], data["score_bins"]
    mask = data["det_mask"]
    locs = values["locs"]
    rates, hall, sigma = values["rates"], values["hallucination"], values["pixel_scale"].reshape(())
    pix, vis = object_pixels(data, locs, _half(values))                         # (V,T,K,2)
    logits = assignment_logits(data, rates, hall, cats, active, vis)            # (V,T,D,J)
    diff = u.unsqueeze(-2) - pix.unsqueeze(2)                                   # (V,T,D,K,2)
    gauss = -0.5 * (diff * diff).sum(-1) / sigma ** 2 - 2 * torch.log(sigma) - math.log(2 * math.pi)
    lr = torch.log(values["mark_real"])[o, b]                                   # (V,T,D)
    lh = torch.log(values["mark_hall"])[o, b]
    comp = torch.cat([(lh - LOG_AREA).unsqueeze(-1), gauss + lr.unsqueeze(-1)], -1)
    joint = torch.where(logits > IMPOSSIBLE / 2, logits + comp, torch.full((), IMPOSSIBLE, dtype=u.dtype))
    joint = torch.where(mask.unsqueeze(-1), joint, logits)                      # padded: [0, IMP, ...]
    lam = category_intensity(data, rates, hall, cats, active, vis, num_categories).sum(-1)
    return joint, lam, vis


def frame_terms(data, lam):
    """``sum_t (-Lambda_vt - log n_vt!)`` over the real frames of each video, ``(V,)``."""
    n = data["num_detections"].to(lam.dtype)
    per = -lam - torch.lgamma(n + 1)
    return torch.where(data["frame_mask"], per, torch.zeros((), dtype=lam.dtype)).sum(-1)


def video_log_likelihood(data, values, cats, active, num_categories=len(CATEGORIES)):
    """Direct batched E-step: ``log p(x_v | theta, structure)`` per video (V,) and the
    responsibilities ``(V, T, D, K + 1)`` (zero rows for padded detections).

    Equals the engine's (:class:`metagen_ppl.engine.enumeration.EnumeratedModel`) log
    likelihood summed over videos, ``-log n!`` included.
    """
    joint, lam, vis = joint_log_terms(data, values, cats, active, num_categories)
    mask = data["det_mask"]
    zero = torch.zeros((), dtype=joint.dtype)
    lse = joint.logsumexp(-1)
    resp = torch.where(mask.unsqueeze(-1), (joint - lse.unsqueeze(-1)).exp(), zero)
    loglik = torch.where(mask, lse, zero).sum((-1, -2)) + frame_terms(data, lam)
    return loglik, resp


# --------------------------------------------------------------------------- M-steps
def closed_form_mstep(data, marginals, params, num_objects, *, cats=None, active=None, locs=None, rates=None,
                      hallucination=None, pixel_scale=None, mark_real=None, mark_hall=None,
                      num_categories=len(CATEGORIES), **options):
    """MAP M-step in closed form for V, ``sigma_px`` and the marks, pooled over all videos.

    With ``g`` the posterior of ``z`` (``(V, T, D, K + 1)``) and ``vis`` the
    visibility at the current locations:

    * ``r_c = (sum_{objects of c} g + a_r - 1) / (sum_{objects of c} #visible frames + b_r)``;
    * ``h_c = (sum_{detections of c} g_0 + a_h - 1) / (#frames + b_h)``;
    * ``sigma_px^2 = (sum_k g_k |u - P(mu_k)|^2 + 2 b_s) / (2 sum_k g_k + 2 a_s + 1)``;
    * ``q^real_c(b) propto sum_{detections of c in bin b} (1 - g_0) + alpha - 1``,
      ``q^hall_c(b) propto sum g_0 + alpha - 1``.

    The locations are not updated here (no closed form through the projection).
    """
    u = data["centers"]
    dtype = u.dtype
    V, T, D = u.shape[:3]
    K = int(num_objects)
    C, B = int(num_categories), num_bins()
    cats, active = _structure(data, K, cats, active)
    mask = data["det_mask"]
    g = marginals["z"].reshape(V, T, D, K + 1).to(dtype) * mask.unsqueeze(-1).to(dtype)
    L = params["locs"].to(dtype) if locs is None else torch.as_tensor(locs, dtype=dtype)
    half = params.get("half_fov", options.get("half_fov"))
    pix, vis = object_pixels(data, L, HALF_FOV if half is None else half)
    out = {}
    gk = g[..., 1:]
    nk = gk.sum((1, 2))                                                         # (V,K)
    if rates is None:
        a, b = _opt(options, "rate_prior_shape"), _opt(options, "rate_prior_rate")
        expo = (vis & active[:, None, :]).to(dtype).sum(1)                      # (V,K)
        n_c = torch.zeros(C, dtype=dtype).index_add_(0, cats.reshape(-1), (nk * active).reshape(-1))
        e_c = torch.zeros(C, dtype=dtype).index_add_(0, cats.reshape(-1), expo.reshape(-1))
        out["rates"] = ((n_c + a - 1) / (e_c + b)).clamp_min(1e-9)
    if hallucination is None:
        a, b = _opt(options, "hall_prior_shape"), _opt(options, "hall_prior_rate")
        n_h = torch.zeros(C, dtype=dtype).index_add_(0, data["categories"].reshape(-1), g[..., 0].reshape(-1))
        frames = data["frame_mask"].sum().to(dtype)
        out["hallucination"] = ((n_h + a - 1) / (frames + b)).clamp_min(1e-9)
    if pixel_scale is None:
        a, b = _opt(options, "scale_prior_shape"), _opt(options, "scale_prior_rate")
        diff = u.unsqueeze(-2) - pix.unsqueeze(2)                               # (V,T,D,K,2)
        ss = (gk * (diff * diff).sum(-1)).sum()
        out["pixel_scale"] = ((ss + 2 * b) / (2 * gk.sum() + 2 * a + 1)).sqrt()
    alpha = _opt(options, "mark_concentration")
    flat = (data["categories"] * B + data["score_bins"]).reshape(-1)
    for name, w, given in (("mark_real", gk.sum(-1), mark_real), ("mark_hall", g[..., 0], mark_hall)):
        if given is None:
            cnt = torch.zeros(C * B, dtype=dtype).index_add_(0, flat, w.reshape(-1)).reshape(C, B) + alpha - 1
            cnt = cnt.clamp_min(1e-12)
            out[name] = cnt / cnt.sum(-1, keepdim=True)
    return out


def _camera_axes(data):
    f, right, up = camera_frame(data["cams"], data["looks"])                    # (V,T,3)
    return f, right, up


def _project_with_jacobian(mu, cams, f, right, up, half_fov=HALF_FOV, jacobian=True, R=None):
    """Pixels ``(..., 2)``, depth and the Jacobian ``d pixel / d mu`` ``(..., 2, 3)``.

    ``mu`` broadcasts against the camera tensors (all ``(..., 3)``); ``R`` (optional,
    ``(..., 3, 3)``) stacks the rows ``right, up, f``.
    """
    s = mu - cams
    if R is None:
        x = (s * right).sum(-1)
        y = (s * up).sum(-1)
        z = (s * f).sum(-1)
    else:
        x, y, z = (R @ s.unsqueeze(-1)).squeeze(-1).unbind(-1)
    k = IMAGE_SIZE / 2 / half_fov
    px = IMAGE_SIZE / 2 + k * torch.atan2(x, z)
    py = IMAGE_SIZE / 2 - k * torch.atan2(y, z)
    if not jacobian:
        return torch.stack([px, py], -1), z, None
    rx = (x * x + z * z).clamp_min(1e-12).unsqueeze(-1)
    ry = (y * y + z * z).clamp_min(1e-12).unsqueeze(-1)
    jx = k * (z.unsqueeze(-1) * right - x.unsqueeze(-1) * f) / rx
    jy = -k * (z.unsqueeze(-1) * up - y.unsqueeze(-1) * f) / ry
    return torch.stack([px, py], -1), z, torch.stack([jx, jy], -2)


def _inside(pix, depth):
    return ((pix >= 0) & (pix <= IMAGE_SIZE)).all(-1) & (depth > 0)


def _clamp_box(mu, lo, hi):
    eps = 1e-6 * (hi - lo)
    return torch.maximum(torch.minimum(mu, hi - eps), lo + eps)


def _views(cams, f, right, up, half_fov=HALF_FOV):
    """A bundle of cameras ``(N, A, 3)`` (positions and camera frames) with their half field of view."""
    return {"cams": cams, "f": f, "right": right, "up": up, "half": half_fov, "R": torch.stack([right, up, f], -2)}


def _index_views(views, idx):
    return {k: (x if k == "half" else x[idx]) for k, x in views.items()}


def _project_views(mu, views, jacobian=False):
    """Pixels ``(N, A, 2)``, depth ``(N, A)`` and (if asked) the Jacobian ``(N, A, 2, 3)`` of ``mu``
    (N, 3) in ``views``."""
    return _project_with_jacobian(mu[:, None, :], views["cams"], views["f"], views["right"], views["up"],
                                  views["half"], jacobian, views.get("R"))


def location_objective(mu, u, g, views, rate, sigma, expo_views=None, expo_mask=None):
    """The part of Q that depends on object locations, per object.

    Batched over objects ``(N, ...)``: ``mu`` (N, 3); ``u`` (N, A, D, 2) the
    detections and ``g`` (N, A, D) their responsibilities for the object, seen
    from ``views`` (cameras ``(N, A, 3)``: the frames of the object's video, or
    one camera per detection with ``D = 1``); ``rate`` (N,) the object's ``r_c``;
    ``expo_views`` / ``expo_mask`` (N, T) the frames whose visibility counts in
    the Poisson exposure (default: ``views`` and ``g``'s frames all real).

    Returns ``(N,)``: ``-sum g |u - P(mu)|^2 / (2 sigma^2) - r_c #visible frames
    + IMPOSSIBLE * sum_{invisible} g``.
    """
    pix, depth, _ = _project_views(mu, views)
    vis = _inside(pix, depth)
    diff = u - pix.unsqueeze(2)
    sq = (g * (diff * diff).sum(-1)).sum((-1, -2))
    zero = torch.zeros((), dtype=mu.dtype)
    bad = torch.where(vis, zero, g.sum(-1)).sum(-1) * (-IMPOSSIBLE)
    if expo_views is not None:
        epix, edepth, _ = _project_views(mu, expo_views)
        evis = _inside(epix, edepth)
    else:
        evis = vis
    if expo_mask is not None:
        evis = evis & expo_mask
    return -0.5 * sq / sigma ** 2 - rate * evis.to(mu.dtype).sum(-1) - bad


def gauss_newton_locations(mu, u, g, views, rate, sigma, lo, hi, *, expo_views=None, expo_mask=None, iters=8,
                           damping=1e-3):
    """Maximise :func:`location_objective` for each object by projected Levenberg-Marquardt.

    A batched Gauss-Newton on the pixel residuals (the smooth part of Q),
    with per-object damping; a step is kept only where it raises the full
    per-object objective (visibility changes included), so Q never decreases.
    Locations stay inside the room box ``[lo, hi]``.
    """
    N = mu.shape[0]
    lam = torch.full((N,), float(damping), dtype=mu.dtype)
    kw = dict(expo_views=expo_views, expo_mask=expo_mask)
    cur = location_objective(mu, u, g, views, rate, sigma, **kw)
    eye = torch.eye(3, dtype=mu.dtype)
    gt = g.sum(-1)                                                                # (N,A)
    w2 = gt.repeat_interleave(2, dim=1).unsqueeze(-1)                            # (N,2A,1)
    for _ in range(iters):
        pix, depth, J = _project_views(mu, views, True)                          # (N,A,2), (N,A,2,3)
        ge = (g.unsqueeze(-1) * (u - pix.unsqueeze(2))).sum(2)                   # (N,A,2)
        Jf = J.reshape(N, -1, 3)                                                 # (N,2A,3)
        grad = (ge.reshape(N, -1, 1) * Jf).sum(1)                                # (N,3)
        H = (Jf * w2).transpose(1, 2) @ Jf                                       # (N,3,3)
        scale = torch.diagonal(H, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-9)
        A = H + (lam * scale)[:, None, None] * eye + 1e-9 * eye
        step = torch.linalg.solve(A, grad.unsqueeze(-1)).squeeze(-1)
        new = _clamp_box(mu + step, lo, hi)
        val = location_objective(new, u, g, views, rate, sigma, **kw)
        ok = val > cur
        mu = torch.where(ok.unsqueeze(-1), new, mu)
        cur = torch.where(ok, val, cur)
        lam = torch.where(ok, lam * 0.3, lam * 10.0).clamp(1e-9, 1e9)
    return mu, cur


def _object_batch(data, resp, cats, active, values):
    """Flatten the active objects: index ``(v, k)`` pairs and their per-object inputs."""
    vk = active.nonzero()                                                        # (N,2)
    v, k = vk[:, 0], vk[:, 1]
    f, right, up = _camera_axes(data)
    return v, k, dict(u=data["centers"][v], g=resp[v, :, :, k + 1],
                      views=_views(data["cams"][v], f[v], right[v], up[v], _half(values)),
                      expo_mask=data["frame_mask"][v],
                      rate=values["rates"][cats[v, k]], sigma=values["pixel_scale"].reshape(()))


def location_mstep(data, values, resp, cats, active, iters=8) -> torch.Tensor:
    """Batched Gauss-Newton M-step for every active object's location (a generalised M-step:
    Q never decreases). Returns the new ``locs`` (V, K, 3)."""
    locs = values["locs"].clone()
    if not bool(active.any()):
        return locs
    lo, hi, _ = _box(data)
    v, k, kw = _object_batch(data, resp, cats, active, values)
    mu, _ = gauss_newton_locations(locs[v, k], lo=lo, hi=hi, iters=iters, **kw)
    locs[v, k] = mu
    return locs


# --------------------------------------------------------------------------- Occam factor
def location_hessian(mu, u, g, views, sigma, **_):
    """Exact Hessian ``-d^2 Q_k / d mu^2`` of each object's smooth location term, ``(N, 3, 3)``.

    Computed by autograd: the objects are independent given the
    responsibilities, so three backward passes of the summed gradient give
    every object's 3 x 3 block.
    """
    with torch.enable_grad():
        x = mu.detach().clone().requires_grad_(True)
        pix, _, _ = _project_views(x, views)
        diff = u - pix.unsqueeze(2)
        nq = 0.5 * (g * (diff * diff).sum(-1)).sum() / sigma ** 2               # -Q (smooth part)
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


def object_occam(data, values, resp, cats, active) -> torch.Tensor:
    """``log Z_k`` of every active object, ``(V, K)`` (0 for inactive slots)."""
    V, K = active.shape
    out = torch.zeros(V, K, dtype=data["centers"].dtype)
    if not bool(active.any()):
        return out
    lo, hi, _ = _box(data)
    v, k, kw = _object_batch(data, resp, cats, active, values)
    mu = values["locs"][v, k]
    H = location_hessian(mu, **kw)
    out[v, k] = log_occam(H, mu, lo, hi)
    return out


# --------------------------------------------------------------------------- priors of the parameters
def log_prior(values: dict, learned, active, data, **options) -> torch.Tensor:
    """``log p(theta)`` of the learned parameter sites (Gamma, scaled inverse-gamma, Dirichlet priors)
    plus ``-log vol`` per active object (uniform locations)."""
    dtype = data["centers"].dtype
    total = torch.zeros((), dtype=dtype)
    for name, a, b in (("rates", "rate_prior_shape", "rate_prior_rate"),
                       ("hallucination", "hall_prior_shape", "hall_prior_rate")):
        if name in learned:
            g = dist.Gamma(torch.tensor(_opt(options, a), dtype=dtype), torch.tensor(_opt(options, b), dtype=dtype))
            total = total + g.log_prob(values[name]).sum()
    if "pixel_scale" in learned:
        total = total + _scale_log_prior(values["pixel_scale"].reshape(()), _opt(options, "scale_prior_shape"),
                                         _opt(options, "scale_prior_rate"))
    for name in ("mark_real", "mark_hall"):
        if name in learned:
            conc = torch.full(values[name].shape, _opt(options, "mark_concentration"), dtype=dtype)
            total = total + dist.Dirichlet(conc).log_prob(values[name]).sum()
    _, _, log_vol = _box(data)
    return total - log_vol * int(torch.as_tensor(active).sum())


# --------------------------------------------------------------------------- initialisation hook
def initialize(data, num_objects, generator, *, cats=None, active=None, locs=None, num_categories=len(CATEGORIES),
               **options):
    """Starting values for a known structure: every active slot on the ray of a random detection of its
    category, at mid height of the room; the parameters at their prior means."""
    V = data["cams"].shape[0]
    K = int(num_objects)
    cats, active = _structure(data, K, cats, active)
    lo, hi, _ = _box(data)
    out = {k: v for k, v in prior_params(num_categories, data["centers"].dtype, **options).items()
           if options.get(k) is None}
    if locs is None:
        init = ((lo + hi) / 2).expand(V, K, 3).clone()
        for (v, k), (t, d) in random_detection_per_slot(data, cats, active, generator).items():
            init[v, k] = _ray_at_height(data["centers"][v, t, d], data["cams"][v, t], data["looks"][v, t],
                                        lo, hi, options.get("half_fov") or HALF_FOV)
        out["locs"] = init
    return out


def _ray_at_height(pixels, cams, looks, lo, hi, half_fov=HALF_FOV):
    """The point of each detection's viewing ray at the room's mid height (clamped into the room)."""
    ray = pixel_to_ray(pixels, cams, looks, half_fov)
    y_mid = (lo[1] + hi[1]) / 2
    dy = ray[..., 1]
    t = torch.where(dy < -1e-6, (y_mid - cams[..., 1]) / dy.clamp_max(-1e-6), torch.full_like(dy, 3.0))
    t = t.clamp(0.1, 20.0)
    return _clamp_box(cams + t.unsqueeze(-1) * ray, lo, hi)


# --------------------------------------------------------------------------- simulation
def simulate(num_videos, num_frames=20, seed=0, *, rates=None, hallucination=None, pixel_scale=5.0,
             min_objects=1, max_objects=3, real_score=(5.0, 2.0), hall_score=(1.2, 6.0),
             num_categories=len(CATEGORIES), **_):
    """Videos of the MetaGen detection JSON format drawn from the model.

    Cameras circle the room at height 2 m (radius 5.5 m), one lap over the
    video, looking at random points near the room's centre; objects are
    uniform over ``x, z in [-4, 4]`` at ``y in [0.2, 0.5]``; each visible
    object yields ``Poisson(r_c)`` detections per frame at ``P_t(mu) + N(0,
    pixel_scale^2 I)`` with scores ``Beta(*real_score)``; each frame has
    ``Poisson(h_c)`` hallucinations of category ``c`` uniform over the image
    with scores ``Beta(*hall_score)``. Detections outside the image are dropped.

    Returns
    -------
    list of video dicts (load with :func:`metagen_ppl.domain.metagen_data.load_videos`), with the
    truth ``labels`` and, per video, ``detector_truth`` ``{"detection_rate": {name: r},
    "hallucination_rate": {name: h}, "pixel_scale": sigma}``.
    """
    if num_videos < 1 or num_frames < 1:
        raise DataError("num_videos and num_frames must be at least 1")
    C = int(num_categories)
    rng = np.random.default_rng(seed)
    r = np.asarray(rates, float) if rates is not None else rng.uniform(0.2, 1.5, size=C)
    h = np.asarray(hallucination, float) if hallucination is not None else rng.uniform(0.01, 0.2, size=C)
    if r.shape != (C,) or h.shape != (C,) or (r <= 0).any() or (h <= 0).any():
        raise DataError(f"rates and hallucination must be {C} positive numbers")
    truth = {"detection_rate": {CATEGORIES[c]: float(r[c]) for c in range(C)},
             "hallucination_rate": {CATEGORIES[c]: float(h[c]) for c in range(C)},
             "pixel_scale": float(pixel_scale)}
    out = []
    for v in range(num_videos):
        k = int(rng.integers(min_objects, max_objects + 1))
        cats = rng.integers(0, C, size=k)
        pos = np.stack([rng.uniform(-4, 4, k), rng.uniform(0.2, 0.5, k), rng.uniform(-4, 4, k)], -1)
        theta0 = rng.uniform(0, 2 * math.pi)
        views = []
        for t in range(num_frames):
            th = theta0 + 2 * math.pi * t / num_frames
            cam = np.array([5.5 * math.cos(th), 2.0, 5.5 * math.sin(th)])
            look = np.array([rng.normal(0, 1.0), rng.uniform(0.0, 1.2), rng.normal(0, 1.0)])
            pix, depth = project(torch.tensor(pos), torch.tensor(cam), torch.tensor(look))
            vis = visible(pix, depth).numpy()
            pix = pix.numpy()
            rows = []
            for j in range(k):
                if not vis[j]:
                    continue
                for _n in range(int(rng.poisson(r[cats[j]]))):
                    rows.append((cats[j], pix[j] + pixel_scale * rng.standard_normal(2),
                                 rng.beta(*real_score)))
            for c in range(C):
                for _n in range(int(rng.poisson(h[c]))):
                    rows.append((c, rng.uniform(0, IMAGE_SIZE, 2), rng.beta(*hall_score)))
            rows = [row for row in rows if (row[1] >= 0).all() and (row[1] <= IMAGE_SIZE).all()]
            order = rng.permutation(len(rows))
            rows = [rows[i] for i in order]
            half = [rng.uniform(5, 20, 2) for _ in rows]
            views.append({"camera": {"x": float(cam[0]), "y": float(cam[1]), "z": float(cam[2])},
                          "lookat": {"x": float(look[0]), "y": float(look[1]), "z": float(look[2])},
                          "detections": {
                              "scores": [float(max(row[2], 0.05)) for row in rows],
                              "labels": [_COCO_OF[int(row[0])] for row in rows],
                              "center": [[float(x) for x in row[1]] for row in rows],
                              "top_left": [[float(x) for x in row[1] - hw] for row, hw in zip(rows, half)],
                              "bottom_right": [[float(x) for x in row[1] + hw] for row, hw in zip(rows, half)]}})
        out.append({"path": f"sim{v:03d}", "views": views,
                    "labels": [{"category_name": CATEGORIES[int(c)], "position": pos[j].tolist()}
                               for j, c in enumerate(cats)],
                    "detector_truth": truth})
    return out


# --------------------------------------------------------------------------- structure search
MODES = ("learn", "fixed", "lesioned", "truth")


def params_to_json(values: dict) -> dict:
    """V, ``sigma_px`` and the marks as JSON: ``{"detection_rate": {name: r}, "hallucination_rate":
    {name: h}, "pixel_scale": sigma, "score_bins": edges, "mark_real": {name: [B probs]},
    "mark_hall": {name: [B probs]}}``."""
    C = values["rates"].shape[0]
    names = CATEGORIES[:C]
    return {"detection_rate": {n: float(values["rates"][c]) for c, n in enumerate(names)},
            "hallucination_rate": {n: float(values["hallucination"][c]) for c, n in enumerate(names)},
            "pixel_scale": float(values["pixel_scale"]),
            "score_bins": list(SCORE_EDGES),
            "mark_real": {n: [float(x) for x in values["mark_real"][c]] for c, n in enumerate(names)},
            "mark_hall": {n: [float(x) for x in values["mark_hall"][c]] for c, n in enumerate(names)}}


def params_from_json(obj: dict, num_categories=len(CATEGORIES), dtype=torch.float64) -> dict:
    """Inverse of :func:`params_to_json` (validated; :class:`DataError` on a bad field)."""
    if not isinstance(obj, dict):
        raise DataError("metacognition must be a JSON object with detection_rate, hallucination_rate, "
                        "pixel_scale, mark_real, mark_hall")
    names = CATEGORIES[:num_categories]
    out = {}
    try:
        for key, name in (("detection_rate", "rates"), ("hallucination_rate", "hallucination")):
            out[name] = torch.tensor([float(obj[key][n]) for n in names], dtype=dtype)
        out["pixel_scale"] = torch.tensor(float(obj["pixel_scale"]), dtype=dtype)
        for key in ("mark_real", "mark_hall"):
            out[key] = torch.tensor([[float(x) for x in obj[key][n]] for n in names], dtype=dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"metacognition JSON lacks or has a malformed field: {e}") from None
    for k, t in out.items():
        if not torch.isfinite(t).all() or (t <= 0).any():
            raise DataError(f"metacognition field {k!r} must be finite and positive")
    if out["mark_real"].shape[-1] != num_bins() or out["mark_hall"].shape[-1] != num_bins():
        raise DataError(f"mark histograms must have {num_bins()} bins")
    for k in ("mark_real", "mark_hall"):
        out[k] = out[k] / out[k].sum(-1, keepdim=True)
    return out


class ProjectiveFit:
    """Structure-search EM for :func:`model` on many videos at once (see :func:`fit_videos`).

    Attributes after :meth:`run`: ``cats`` (V, K) long, ``active`` (V, K) bool,
    ``values`` (``locs`` and the parameters), ``loglik`` (V,), ``score`` (V,),
    ``resp`` (V, T, D, K + 1), ``trace`` (list of dicts), ``n_iter``, ``n_rounds``,
    ``births``, ``deaths``, ``converged``.
    """

    def __init__(self, data, *, mode="learn", params=None, truth=None, max_objects=8, tol=1e-7, max_iter=200,
                 max_rounds=12, gn_iters=6, half_fov=None, learn_fov=True, fov_range=(45.0, 65.0),
                 location_step="gauss-newton", num_categories=len(CATEGORIES), **options):
        if mode not in MODES:
            raise DataError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if location_step not in ("gauss-newton", "lbfgs"):
            raise DataError(f"unknown location_step {location_step!r}; choose 'gauss-newton' or 'lbfgs'")
        self.location_step = location_step
        self.data = data
        self.dtype = data["centers"].dtype
        self.V = data["cams"].shape[0]
        self.C = int(num_categories)
        self.options = {k: v for k, v in options.items() if k in DEFAULTS}
        self.mode = mode
        self.tol, self.max_iter, self.max_rounds, self.gn_iters = tol, max_iter, max_rounds, gn_iters
        self.lo, self.hi, self.log_vol = _box(data)
        prior = prior_params(self.C, self.dtype, **self.options)
        self.values = dict(prior)
        self.values["half_fov"] = torch.tensor(HALF_FOV if half_fov is None else float(half_fov), dtype=self.dtype)
        if mode == "fixed" and params is not None and params.get("half_fov") is not None and half_fov is None:
            self.values["half_fov"] = torch.as_tensor(params["half_fov"], dtype=self.dtype).reshape(())
        self.learn_fov = bool(learn_fov) and mode != "fixed"
        self._fov_searched = False
        self._fov_moved = 0.0
        self.fov_range = tuple(math.radians(x / 2) for x in fov_range)
        if mode == "learn":
            self.learned = set(_V_SITES)
        elif mode == "lesioned":
            self.learned = {"pixel_scale"}
        elif mode == "fixed":
            if params is None:
                raise DataError("mode 'fixed' needs the parameters (V, pixel_scale, marks) to use")
            self.values.update({k: torch.as_tensor(params[k], dtype=self.dtype) for k in _V_SITES})
            self.learned = set()
        else:
            self.learned = set(_V_SITES)
        if params is not None and mode == "learn":
            self.values.update({k: torch.as_tensor(params[k], dtype=self.dtype) for k in _V_SITES if k in params})
        if mode == "truth":
            if truth is None:
                raise DataError("mode 'truth' needs the true objects (cats, positions, mask)")
            cats, pos, mask = truth
            self.K = max(1, cats.shape[1])
            self.cats = torch.zeros(self.V, self.K, dtype=torch.long)
            self.active = torch.zeros(self.V, self.K, dtype=torch.bool)
            locs = ((self.lo + self.hi) / 2).expand(self.V, self.K, 3).clone()
            if cats.shape[1]:
                self.cats[:, :cats.shape[1]] = cats
                self.active[:, :cats.shape[1]] = mask
                locs[:, :cats.shape[1]] = pos.to(self.dtype)
            self.values["locs"] = locs
        else:
            self.K = int(max_objects)
            self.cats = torch.zeros(self.V, self.K, dtype=torch.long)
            self.active = torch.zeros(self.V, self.K, dtype=torch.bool)
            self.values["locs"] = ((self.lo + self.hi) / 2).expand(self.V, self.K, 3).clone()
        f, right, up = _camera_axes(data)
        self.axes = (f, right, up)
        self._build_groups()
        self.trace, self.n_iter, self.n_rounds, self.births, self.deaths = [], 0, 0, 0, 0
        self.converged = False
        self.settled = torch.zeros(self.V, dtype=torch.bool)
        self.birth_locs = self.values["locs"].clone()      # where each slot's object was proposed

        self._start_hash = hash_tensors({"values": self.values, "cats": self.cats, "active": self.active})[:16]

    # ----------------------------------------------------------------- compact object batches
    def _compact_batch(self, resp):
        """Active objects with only the detections of their (video, category) group:
        ``u`` (N, M, 1, 2), ``g`` (N, M, 1), one camera per detection, the video's frames
        for the exposure. Same objective as :func:`_object_batch`, far smaller tensors."""
        if float(self.grp["views"]["half"]) != float(self.values["half_fov"]):
            self._build_groups()
        grp = self.grp
        vk = self.active.nonzero()
        v, k = vk[:, 0], vk[:, 1]
        gi = v * self.C + self.cats[v, k]
        t, d = grp["t"][gi], grp["d"][gi]
        g = resp[v[:, None], t, d, (k + 1)[:, None]] * grp["mask"][gi].to(self.dtype)      # (N,M)
        f, right, up = self.axes
        half = _half(self.values)
        return v, k, dict(u=grp["u"][gi].unsqueeze(2), g=g.unsqueeze(-1), views=_index_views(grp["views"], gi),
                          expo_views=_views(self.data["cams"][v], f[v], right[v], up[v], half),
                          expo_mask=self.data["frame_mask"][v], rate=self.values["rates"][self.cats[v, k]],
                          sigma=self.values["pixel_scale"].reshape(()))

    def _location_mstep(self, resp):
        if self.location_step == "lbfgs":
            return self._engine_location_mstep()
        v, k, kw = self._compact_batch(resp)
        mu, _ = gauss_newton_locations(self.values["locs"][v, k], lo=self.lo, hi=self.hi, iters=self.gn_iters, **kw)
        locs = self.values["locs"].clone()
        locs[v, k] = mu
        self.values["locs"] = locs

    def _engine_location_mstep(self, steps=30):
        """The generic M-step of the engine: LBFGS on the engine's Q of :func:`model` (traced with
        Pyro's enumeration, all videos in one call) over the ``locs`` site, the other sites fixed."""

        opts = dict(self.options, cats=self.cats, active=self.active, num_categories=self.C,
                    half_fov=self.values["half_fov"],
                    **{k: self.values[k] for k in _V_SITES})
        em = EnumeratedModel(model, self.data, self.K, opts)
        est = em.estep({"locs": self.values["locs"]})
        new = optimizer_mstep(em, {"locs": self.values["locs"]}, est, ["locs"], steps=steps)
        self.values["locs"] = _clamp_box(new["locs"], self.lo, self.hi)

    def _occam(self, resp):
        out = torch.zeros(self.active.shape, dtype=self.dtype)
        if bool(self.active.any()):
            v, k, kw = self._compact_batch(resp)
            mu = self.values["locs"][v, k]
            out[v, k] = log_occam(location_hessian(mu, **kw), mu, self.lo, self.hi)
        return out

    # ----------------------------------------------------------------- E-step and scores
    def estep(self):
        joint, lam, vis = joint_log_terms(self.data, self.values, self.cats, self.active, self.C)
        mask = self.data["det_mask"]
        zero = torch.zeros((), dtype=self.dtype)
        lse = torch.where(mask, joint.logsumexp(-1), zero)
        resp = torch.where(mask.unsqueeze(-1), (joint - lse.unsqueeze(-1)).exp(), zero)
        loglik = lse.sum((-1, -2)) + frame_terms(self.data, lam)
        return joint, lse, resp, loglik, vis

    def scores(self, resp, loglik):
        occ = self._occam(resp)
        pen = structure_penalty(self.active.sum(-1), occ.sum(-1), self.log_vol, self.C,
                                self.options.get("count_prior_p"))
        return loglik + pen, occ

    def log_joint(self, loglik):
        return float(loglik.sum() + log_prior(self.values, self.learned, self.active, self.data, **self.options))

    def record(self, phase, loglik=None, resp=None):
        if loglik is None:
            _, _, resp, loglik, _ = self.estep()
        score, _ = self.scores(resp, loglik)
        self.trace.append({"iteration": self.n_iter, "round": self.n_rounds, "phase": phase,
                           "log_likelihood": float(loglik.sum()), "log_joint": self.log_joint(loglik),
                           "score": float(score.sum()), "num_objects": int(self.active.sum()),
                           "pixel_scale": float(self.values["pixel_scale"])})

    # ----------------------------------------------------------------- EM phase (fixed structure)
    def em_phase(self, move_locations=True):
        self._fov_moved = max(self._fov_moved, math.radians(0.02))   # at least one FOV step per phase
        _, _, resp, loglik, _ = self.estep()
        lj = self.log_joint(loglik)
        converged = False
        for it in range(self.max_iter):
            upd = closed_form_mstep(self.data, {"z": resp}, self.values, self.K, cats=self.cats, active=self.active,
                                    num_categories=self.C, **self.options,
                                    **{k: self.values[k] for k in _V_SITES if k not in self.learned})
            self.values.update({k: v for k, v in upd.items() if k in self.learned})
            if self.learn_fov and bool(self.active.any()) and it % 3 == 0:
                # ECM schedule: the FOV every third iteration, a global search first, then Newton steps
                if self._fov_searched:
                    if self._fov_moved > math.radians(0.005):
                        self.fov_mstep(resp, move_locations, local=True)
                else:
                    self.fov_mstep(resp, move_locations)
                    self._fov_searched = True
            if move_locations and bool(self.active.any()):
                self._location_mstep(resp)
            prev = lj
            _, _, resp, loglik, _ = self.estep()
            lj = self.log_joint(loglik)
            self.n_iter += 1
            if abs(lj - prev) <= self.tol * max(abs(lj), 1.0):
                converged = True
                break
        self.record("em", loglik, resp)
        return converged

    def fov_mstep(self, resp, move_locations=True, evals=12, local=False):
        """Conditional maximisation of the log marginal likelihood over the field of view
        (ECME): for each candidate value the locations are re-fitted by Gauss-Newton on Q
        (fixed when ``move_locations`` is False) and the exact log likelihood is evaluated
        (direct E-step). Golden-section search over ``fov_range`` (``local=False``) or one
        parabolic (Newton) step through three nearby values (``local=True``); kept only if
        the likelihood rises, so the EM objective never decreases. (Q itself is a poor
        criterion here: a global change of the projection moves some object across an
        image border in a frame where it holds responsibility, which Q punishes with
        IMPOSSIBLE although the likelihood barely changes.)"""
        v, k, kw = self._compact_batch(resp)
        mu0 = self.values["locs"][v, k]

        def profile(h):
            half = torch.as_tensor(h, dtype=self.dtype)
            args = dict(kw, views=dict(kw["views"], half=half))
            if kw.get("expo_views") is not None:
                args["expo_views"] = dict(kw["expo_views"], half=half)
            mu = mu0
            if move_locations:
                mu, _ = gauss_newton_locations(mu0, lo=self.lo, hi=self.hi, iters=4, **args)
            locs = self.values["locs"].clone()
            locs[v, k] = mu
            ll, _ = video_log_likelihood(self.data, dict(self.values, locs=locs, half_fov=half), self.cats,
                                         self.active, self.C)
            return float(ll.sum()), mu

        cur_h = float(self.values["half_fov"])
        cur_val, cur_mu = profile(cur_h)
        a, b = self.fov_range
        if local:
            d = math.radians(0.1)
            fm, fp = profile(cur_h - d)[0], profile(cur_h + d)[0]
            curv = fp + fm - 2 * cur_val
            if curv < 0:
                step = -0.5 * d * (fp - fm) / curv
            else:
                step = d if fp > fm else -d
            step = max(-math.radians(1.0), min(math.radians(1.0), step))
            h = min(b, max(a, cur_h + step))
        else:
            gr = (math.sqrt(5) - 1) / 2
            x1, x2 = b - gr * (b - a), a + gr * (b - a)
            f1, f2 = profile(x1)[0], profile(x2)[0]
            for _ in range(evals):
                if f1 >= f2:
                    b, x2, f2 = x2, x1, f1
                    x1 = b - gr * (b - a)
                    f1 = profile(x1)[0]
                else:
                    a, x1, f1 = x1, x2, f2
                    x2 = a + gr * (b - a)
                    f2 = profile(x2)[0]
            h = x1 if f1 >= f2 else x2
        val, mu = profile(h)
        if val <= cur_val:
            h, val, mu = cur_h, cur_val, cur_mu
        self._fov_moved = abs(h - cur_h)
        self.values["half_fov"] = torch.tensor(h, dtype=self.dtype)
        if move_locations:
            locs = self.values["locs"].clone()
            locs[v, k] = mu
            self.values["locs"] = locs

    # ----------------------------------------------------------------- births
    def _build_groups(self):
        """Static compact layout of the detections per (video, category) group, ``(G, M)``
        with ``G = V C`` and ``M`` the largest group, sorted by frame."""
        data = self.data
        V, T, D = data["centers"].shape[:3]
        C = self.C
        v, t, d = data["det_mask"].nonzero(as_tuple=True)
        c = data["categories"][v, t, d]
        key = v * C + c
        order = torch.argsort(key * (T * D) + t * D + d)
        v, t, d, c, key = v[order], t[order], d[order], c[order], key[order]
        G = V * C
        counts = torch.bincount(key, minlength=G)
        M = max(1, int(counts.max())) if len(key) else 1
        pos = torch.arange(len(key)) - (torch.cumsum(counts, 0) - counts)[key]
        gt = torch.zeros(G, M, dtype=torch.long)
        gd = torch.zeros(G, M, dtype=torch.long)
        gm = torch.zeros(G, M, dtype=torch.bool)
        gt[key, pos], gd[key, pos], gm[key, pos] = t, d, True
        gv = torch.arange(G) // C
        f, right, up = self.axes
        half = _half(self.values)
        rays = pixel_to_ray(data["centers"], data["cams"][:, :, None], data["looks"][:, :, None], half)
        vv = gv[:, None].expand(G, M)
        self.grp = {"v": gv, "c": torch.arange(G) % C, "t": gt, "d": gd, "mask": gm,
                    "u": data["centers"][vv, gt, gd], "bin": data["score_bins"][vv, gt, gd],
                    "views": _views(data["cams"][vv, gt], f[vv, gt], right[vv, gt], up[vv, gt], half),
                    "rays": rays[vv, gt, gd]}

    def _candidates(self, resp, kappa=3.0, rounds=4):
        """Candidate objects from the detections the current objects leave to hallucination.

        RANSAC-style over pairs: every pair of such detections of one category in
        two frames of a video is triangulated; a pair is kept if the point lies in
        front of both cameras and reprojects within ``kappa sigma_px`` of both
        detections; its inliers are the group's unexplained detections within
        ``kappa sigma_px`` of its projection. Per (video, category), the pair with
        the most inliers is taken, the pairs that use one of its inliers are
        dropped, and so on (``rounds`` times). Unexplained detections that no
        chosen pair covers propose an object on their viewing ray at mid height.

        Returns ``(group index (P,), location (P, 3))`` or ``None``.
        """
        grp = self.grp
        G, M = grp["t"].shape
        sigma = float(self.values["pixel_scale"])
        free = self.active.logical_not().any(-1)
        gv = grp["v"]
        gt, gd = grp["t"], grp["d"]
        un = grp["mask"] & (resp[gv[:, None], gt, gd, 0] > 0.5) & free[gv][:, None]        # (G,M)
        pair = un[:, :, None] & un[:, None, :] & (gt[:, :, None] < gt[:, None, :])
        gi, i, j = pair.nonzero(as_tuple=True)
        views = grp["views"]
        covered = torch.zeros(G, M, dtype=torch.bool)
        cand_g, cand_mu = [], []
        if len(gi):
            o = torch.stack([views["cams"][gi, i], views["cams"][gi, j]], 1)
            d = torch.stack([grp["rays"][gi, i], grp["rays"][gi, j]], 1)
            p, cond = triangulate(o, d, return_condition=True)
            ok = torch.isfinite(p).all(-1) & (cond > 1e-6)
            gi, i, j, p = gi[ok], i[ok], j[ok], p[ok]
            p = _clamp_box(p, self.lo, self.hi)
            gview = _index_views(views, gi)                                              # (P,M,3)
            pix, depth, _ = _project_views(p, gview)                                     # (P,M,2)
            err = (pix - grp["u"][gi]).norm(dim=-1)
            inl = un[gi] & _inside(pix, depth) & (err < kappa * sigma)                   # (P,M)
            ar = torch.arange(len(gi))
            keep = inl[ar, i] & inl[ar, j]
            gi, i, j, p, inl, err = gi[keep], i[keep], j[keep], p[keep], inl[keep], err[keep]
            if len(gi):
                n_inl = inl.sum(-1).to(self.dtype)
                mean_err = torch.where(inl, err, torch.zeros((), dtype=self.dtype)).sum(-1) / n_inl
                score = n_inl - mean_err / (kappa * sigma + 1.0)                          # ties: smaller error
                alive = torch.ones(len(gi), dtype=torch.bool)
                for _ in range(rounds):
                    s = torch.where(alive, score, torch.full((), -math.inf, dtype=self.dtype))
                    best = torch.full((G,), -math.inf, dtype=self.dtype).scatter_reduce(0, gi, s, "amax")
                    is_best = alive & (s == best[gi])
                    # one pick per group (the first of ties)
                    idx = is_best.nonzero().reshape(-1)
                    if len(idx) == 0:
                        break
                    first = torch.ones(len(idx), dtype=torch.bool)
                    first[1:] = gi[idx][1:] != gi[idx][:-1]
                    pick = idx[first]
                    cand_g.append(gi[pick])
                    cand_mu.append(p[pick])
                    covered[gi[pick]] |= inl[pick]
                    alive &= ~(covered[gi, i] | covered[gi, j])
                    alive[pick] = False
        sg, si = (un & ~covered).nonzero(as_tuple=True)
        if len(sg):
            t = gt[sg, si]
            v = gv[sg]
            cand_g.append(sg)
            cand_mu.append(_ray_at_height(grp["u"][sg, si], self.data["cams"][v, t], self.data["looks"][v, t],
                                          self.lo, self.hi, _half(self.values)))
        if not cand_g:
            return None
        return torch.cat(cand_g), torch.cat(cand_mu)

    def _candidate_terms(self, gp, mu):
        """Per candidate: its log intensity on each detection of its group ``(P, M, 1)``
        (``-inf`` where it cannot explain the detection)."""
        grp = self.grp
        c = grp["c"][gp]
        gview = _index_views(grp["views"], gp)
        pix, depth, _ = _project_views(mu, gview)                                        # (P,M,2)
        diff = grp["u"][gp] - pix
        sigma = self.values["pixel_scale"]
        gauss = -0.5 * (diff * diff).sum(-1) / sigma ** 2 - 2 * torch.log(sigma) - math.log(2 * math.pi)
        lr = torch.log(self.values["mark_real"])[c[:, None], grp["bin"][gp]]
        ok = grp["mask"][gp] & _inside(pix, depth)
        term = torch.where(ok, torch.log(self.values["rates"])[c][:, None] + gauss + lr,
                           torch.full((), -math.inf, dtype=self.dtype))
        return term.unsqueeze(-1)

    def birth_step(self) -> int:
        """Add, per video, the candidate object that raises the penalised score most (if any)."""
        if not bool((~self.active).any()):
            return 0
        if float(self.grp["views"]["half"]) != float(self.values["half_fov"]):
            self._build_groups()
        _, lse, resp, loglik, _ = self.estep()
        cand = self._candidates(resp)
        if cand is None:
            return 0
        gp, mu = cand
        grp = self.grp
        data = self.data
        vp, cp = grp["v"][gp], grp["c"][gp]
        f, right, up = self.axes
        lse_g = lse[grp["v"][:, None], grp["t"], grp["d"]][gp].unsqueeze(-1)            # (P,M,1)
        mask_g = grp["mask"][gp].unsqueeze(-1)
        rate = self.values["rates"][cp]
        kw = dict(u=grp["u"][gp].unsqueeze(2), views=_index_views(grp["views"], gp), rate=rate,
                  sigma=self.values["pixel_scale"],
                  expo_views=_views(data["cams"][vp], f[vp], right[vp], up[vp], _half(self.values)),
                  expo_mask=data["frame_mask"][vp])
        zero = torch.zeros((), dtype=self.dtype)
        for _ in range(3):                                                       # local EM on each candidate
            term = self._candidate_terms(gp, mu)
            g = torch.where(mask_g, (term - torch.logaddexp(lse_g, term)).exp(), zero)
            mu, _ = gauss_newton_locations(mu, g=g, lo=self.lo, hi=self.hi, iters=3, **kw)
        term = self._candidate_terms(gp, mu)
        new = torch.logaddexp(lse_g, term)
        g = torch.where(mask_g, (term - new).exp(), zero)
        epix, edepth, _ = _project_views(mu, kw["expo_views"])
        evis = _inside(epix, edepth) & kw["expo_mask"]
        dll = torch.where(mask_g, new - lse_g, zero).sum((-1, -2)) - rate * evis.to(self.dtype).sum(-1)
        H = location_hessian(mu, g=g, **kw)
        gain = dll + self._per_object_prior() + log_occam(H, mu, self.lo, self.hi)
        # best candidate per video
        order = torch.argsort(gain, descending=True, stable=True)
        order = order[torch.argsort(vp[order], stable=True)]
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = vp[order][1:] != vp[order][:-1]
        best = order[first]
        best = best[gain[best] > 1e-9]
        if len(best) == 0:
            return 0
        bv = vp[best]
        slot = (~self.active[bv]).to(torch.int8).argmax(-1)
        self.cats[bv, slot] = cp[best]
        self.active[bv, slot] = True
        locs = self.values["locs"].clone()
        locs[bv, slot] = mu[best]
        self.values["locs"] = locs
        self.birth_locs[bv, slot] = mu[best]
        self.settled[bv] = False
        return len(best)

    def _per_object_prior(self) -> float:
        """``log(1 - p) + log(1/C) + log(1/vol)``: count, category and location prior of one more object."""
        p = float(DEFAULTS["count_prior_p"] if self.options.get("count_prior_p") is None
                  else self.options["count_prior_p"])
        return math.log1p(-p) - math.log(self.C) - self.log_vol

    # ----------------------------------------------------------------- deaths
    def death_step(self) -> int:
        """Remove, per video, the object whose removal raises the penalised score most (if any)."""
        if not bool(self.active.any()):
            return 0
        joint, lse, resp, loglik, vis = self.estep()
        V, K = self.active.shape
        mask = self.data["det_mask"]
        zero = torch.zeros((), dtype=self.dtype)
        occ = self._occam(resp)                                                    # (V,K)
        drop = torch.eye(K + 1, dtype=torch.bool)[1:]                               # (K,J)
        jk = torch.where(drop[:, None, None, None, :], torch.full((), -math.inf, dtype=self.dtype),
                         joint.unsqueeze(0))                                        # (K,V,T,D,J)
        lse_k = torch.where(mask, jk.logsumexp(-1), zero)
        expo = (vis & self.active[:, None, :]).to(self.dtype).sum(1) * self.values["rates"][self.cats]   # (V,K)
        dll = (lse_k - lse.unsqueeze(0)).sum((-1, -2)).T + expo                    # (V,K)
        per_obj = self._per_object_prior() + occ
        gain = torch.where(self.active, dll - per_obj, torch.full((), -math.inf, dtype=self.dtype))
        best = gain.max(-1)
        rows = (best.values > 1e-9).nonzero().reshape(-1)
        if len(rows) == 0:
            return 0
        self.active[rows, best.indices[rows]] = False
        self.settled[rows] = False
        return len(rows)

    def _moves(self, step, limit=None):
        total = 0
        for _ in range(limit or self.K):
            n = step()
            total += n
            if n == 0:
                break
        return total

    # ----------------------------------------------------------------- driver
    def run(self, progress=None, checkpoint=None, resume=False):
        """Alternate births, EM and deaths until a round changes no structure.

        ``progress``: optional callable ``(n_settled_videos, info_dict)`` after each round
        (called after the round's checkpoint is written). ``checkpoint``: a file rewritten
        atomically after the initial E-step (round 0) and every round (see :meth:`state_dict`
        and :mod:`metagen_ppl.engine.checkpoint`); ``resume``: continue from it (start afresh if it
        does not exist) -- to the same result as an uninterrupted run. A Ctrl-C raises
        :class:`metagen_ppl.engine.checkpoint.FitInterrupted` naming the last saved round.
        """
        ck = None
        if checkpoint is not None:
            ck = Checkpoint(checkpoint, "projective", hash_tensors(self.data), self.settings())
        elif resume:
            raise DataError("resume=True needs checkpoint=PATH (the file a previous run wrote)")
        state = ck.load() if ck is not None and resume else None
        start, done = 1, False
        if state is not None:
            self.load_state_dict(state["state"])
            start, done = state["round"] + 1, bool(state["state"]["finished"])
            if not done and state["round"] > self.max_rounds:
                raise ck._refuse(f"holds round {state['round']}, beyond max_rounds = {self.max_rounds}")
        try:
            if state is None:
                self.record("init")
                if self.mode == "truth":
                    self.converged = self.em_phase(move_locations=False)
                    self.settled[:] = True
                    done = True
                if ck is not None:
                    ck.save(0, dict(self.state_dict(), finished=done), done=done)
            if self.mode == "truth" or done:
                return self
            for rnd in range(start, self.max_rounds + 1):
                self.n_rounds = rnd
                self.settled[:] = True
                b = self._moves(self.birth_step)
                if b:
                    self.record("birth")
                ok = self.em_phase()
                d = self._moves(self.death_step)
                if d:
                    self.record("death")
                    ok = self.em_phase()
                self.births += b
                self.deaths += d
                done = b == 0 and d == 0
                if done:
                    self.converged = bool(ok)
                if ck is not None:
                    ck.save(rnd, dict(self.state_dict(), finished=done), done=done or rnd == self.max_rounds)
                if progress is not None:
                    progress(int(self.settled.sum()), {"round": rnd, "births": b, "deaths": d,
                                                       "objects": int(self.active.sum())})
                if done:
                    break
        except KeyboardInterrupt as e:
            raise interrupted(e, ck) from e
        return self

    # ----------------------------------------------------------------- checkpoints
    def settings(self) -> dict:
        """What a checkpoint of this fit is valid for: the settings and the starting state
        (``max_rounds`` is not part of it: it may be raised on resume)."""
        return {"mode": self.mode, "max_objects": self.K, "tol": self.tol, "max_iter": self.max_iter,
                "gn_iters": self.gn_iters, "learn_fov": self.learn_fov, "fov_range": list(self.fov_range),
                "location_step": self.location_step, "num_categories": self.C, "options": dict(self.options),
                "learned": sorted(self.learned), "dtype": str(self.dtype).replace("torch.", ""),
                "start (params, truth, half_fov)": self._start_hash}

    def state_dict(self) -> dict:
        """Everything that changes during the search (the rest follows from data and settings)."""
        return {"values": dict(self.values), "cats": self.cats, "active": self.active, "trace": self.trace,
                "n_iter": self.n_iter, "n_rounds": self.n_rounds, "births": self.births, "deaths": self.deaths,
                "converged": self.converged, "settled": self.settled, "birth_locs": self.birth_locs,
                "fov_searched": self._fov_searched, "fov_moved": self._fov_moved}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (bit-identical tensors)."""
        self.values = {k: v.to(self.dtype) for k, v in state["values"].items()}
        self.cats, self.active = state["cats"].to(torch.long), state["active"].to(torch.bool)
        self.trace = list(state["trace"])
        for key in ("n_iter", "n_rounds", "births", "deaths"):
            setattr(self, key, int(state[key]))
        self.converged = bool(state["converged"])
        self.settled = state["settled"].to(torch.bool)
        self.birth_locs = state["birth_locs"].to(self.dtype)
        self._fov_searched, self._fov_moved = bool(state["fov_searched"]), float(state["fov_moved"])
        self._build_groups()

    def result(self) -> dict:
        """Final E-step: ``loglik`` (V,), ``score`` (V,), ``resp``, ``occam`` (V, K)."""
        _, _, resp, loglik, _ = self.estep()
        score, occ = self.scores(resp, loglik)
        return {"loglik": loglik, "score": score, "resp": resp, "occam": occ}

    def objects(self) -> list:
        """Per video: ``[(category index, [x, y, z]), ...]`` of the active slots."""
        out = []
        locs = self.values["locs"]
        for v in range(self.V):
            ks = self.active[v].nonzero().reshape(-1).tolist()
            out.append([(int(self.cats[v, k]), [float(x) for x in locs[v, k]]) for k in ks])
        return out


def fit_videos(data, *, mode="learn", params=None, truth=None, progress=None, checkpoint=None, resume=False,
               **kwargs) -> ProjectiveFit:
    """Fit the projective model to all videos of ``data`` (one batched structure search).

    Algorithm (deterministic; every step batched over videos, no Python loop
    over videos or detections)::

        start: no objects; V, sigma_px, marks at their prior means (learn, lesioned) or given (fixed)
        repeat (rounds):
            births:  candidates from the detections currently assigned to hallucination --
                     every pair of same-category detections in two frames, triangulated
                     (camera.pixel_to_ray + camera.triangulate), and every single detection's
                     ray at mid height; each refined by three local EM steps (responsibilities
                     against the current model, Gauss-Newton on the pixel residuals); per video
                     the candidate with the largest gain of the penalised score (log likelihood
                     + count, category and location priors + Laplace Occam factor) is added
                     if the gain is positive; repeat
            EM:      direct batched E-step, closed-form M-step for V, sigma_px and the marks
                     (pooled over videos; only the learned ones), every third iteration the
                     field of view (ECME: golden-section search of the log likelihood the first
                     time, then Newton steps), Gauss-Newton M-step for the locations (each object
                     against the detections of its category in its video), until the log joint
                     changes by less than tol (relative)
            deaths:  per video, the object whose removal raises the penalised score most is
                     removed, if any; repeat; EM again
        until a round adds and removes nothing.

    Parameters
    ----------
    data : dict from :func:`data_from_videos`
    mode : "learn" (V learned), "fixed" (V, sigma_px, marks and field of view from ``params``),
        "lesioned" (r, h and marks at their prior means; sigma_px and the field of view learned)
        or "truth" (objects fixed at ``truth = (cats (V, K), positions (V, K, 3), mask (V, K))``;
        V, sigma_px, marks and field of view learned: the ground-truth V)
    progress : callable ``(n_settled_videos, info)``, optional; called after every round
    checkpoint : path, optional
        Checkpoint file, rewritten atomically after every round (:meth:`ProjectiveFit.run`).
    resume : bool
        Continue from ``checkpoint`` to the result of an uninterrupted run; a checkpoint of
        other data or settings raises :class:`metagen_ppl.engine.checkpoint.CheckpointError`.
    kwargs : max_objects, tol, max_iter, max_rounds, gn_iters, half_fov (start or fixed value),
        learn_fov (default True), fov_range (degrees) and hyperparameters (:data:`DEFAULTS`)
    """
    return ProjectiveFit(data, mode=mode, params=params, truth=truth, **kwargs).run(progress, checkpoint, resume)


# --------------------------------------------------------------------------- helpers for SVI and MCMC
def compact_structure(fit: ProjectiveFit):
    """The fitted structure with the active slots first and ``K = max(1, most objects in a video)``:
    ``(cats (V, K), active (V, K), locs (V, K, 3), birth_locs (V, K, 3))``."""
    order = active_slots_first(fit.active)
    idx3 = order[..., None].expand(-1, -1, 3)
    return (torch.gather(fit.cats, 1, order), torch.gather(fit.active, 1, order),
            torch.gather(fit.values["locs"], 1, idx3), torch.gather(fit.birth_locs, 1, idx3))


def nuts_locations(data, values, cats, active, *, num_samples=100, warmup_steps=100, seed=0, max_tree_depth=6,
                   init_locs=None):
    """NUTS over the object locations of ONE video (V = 1), the assignments summed out exactly.

    The potential is ``-log p(x | mu, V) - log p(mu)`` of :func:`model` (the
    direct E-step's log marginal likelihood, equal to the engine's), in the
    unconstrained space ``mu = lo + (hi - lo) sigmoid(z)`` (with its log
    Jacobian); V, ``sigma_px``, marks and the field of view stay at ``values``.
    Uses :class:`pyro.infer.NUTS` with ``potential_fn``: Pyro's sampler on the
    model's exact marginal likelihood without re-tracing the model at every
    leapfrog step.

    Returns
    -------
    dict: ``samples`` (num_samples, K_active, 3), ``mean`` (K_active, 3), ``divergences``,
    ``accept_prob``, ``wall_time_s``.
    """
    import time as _time

    from pyro.infer import MCMC, NUTS

    if data["cams"].shape[0] != 1:
        raise DataError("nuts_locations samples one video at a time (V = 1)")
    t0 = _time.perf_counter()
    lo, hi, _ = _box(data)
    idx = active[0].nonzero().reshape(-1)
    n = len(idx)
    base = dict(values)
    start = (values["locs"] if init_locs is None else init_locs)[0, idx]
    if n == 0:
        return {"samples": torch.zeros(num_samples, 0, 3, dtype=lo.dtype), "mean": torch.zeros(0, 3, dtype=lo.dtype),
                "divergences": 0, "accept_prob": float("nan"), "wall_time_s": 0.0}

    def to_locs(z):
        s = torch.sigmoid(z)
        full = base["locs"][0].clone()
        full = full.index_put((idx,), lo + (hi - lo) * s)
        return full.unsqueeze(0), (torch.log(hi - lo) + torch.log(s) + torch.log1p(-s)).sum()

    def potential(params):
        locs, logdet = to_locs(params["z"])
        ll, _ = video_log_likelihood(data, dict(base, locs=locs), cats, active)
        return -(ll.sum() + logdet)

    u = ((start - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
    z0 = torch.log(u) - torch.log1p(-u)
    pyro.set_rng_seed(int(seed))
    kernel = NUTS(potential_fn=potential, max_tree_depth=max_tree_depth, target_accept_prob=0.8)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, initial_params={"z": z0},
                disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples()["z"]
    samples = lo + (hi - lo) * torch.sigmoid(z)
    diag = mcmc.diagnostics()
    div = diag.get("divergences", {})
    ndiv = sum(len(v) for v in div.values()) if isinstance(div, dict) else 0
    acc = diag.get("acceptance rate", {})
    acc = float(next(iter(acc.values()))) if isinstance(acc, dict) and acc else float("nan")
    return {"samples": samples, "mean": samples.mean(0), "divergences": int(ndiv), "accept_prob": acc,
            "wall_time_s": _time.perf_counter() - t0}


# --------------------------------------------------------------------------- metagen-ppl compare
#: ``metagen-ppl compare`` simulates ``simulate(2 videos, 12 frames, seed)`` by default.
COMPARE_SIMULATION = {"args": (2, 12)}
#: NUTS over every location and the detector's parameters of the videos at once: short chains.
COMPARE_BUDGET = {"mcmc_samples": 60, "mcmc_warmup": 60, "mcmc_max_tree_depth": 5, "svi_steps": 300,
                  "svi_lr": 0.02}


def prepare_comparison(obj, *, seed=0, dtype=torch.float64, num_objects=None, options=None, progress=False,
                       log=None, source="<data>", **_):
    """Set-up of ``metagen-ppl compare`` for M4 (see :mod:`metagen_ppl.apps.compare`).

    ``obj`` is a MetaGen detection file (a list of videos). The structure (object
    count and categories per video) and the field of view are found once by the
    structure-search EM of :func:`fit_videos` (V learned); every method then fits
    the locations, rates, hallucination rates, pixel noise and score marks with the
    structure and field of view fixed. Accuracy, when the file has ground-truth
    ``labels``: object precision / recall / F1 and location error (same category,
    within 1 m, Hungarian matching).
    """
    import time


    log = log or (lambda m: None)
    if num_objects is not None:
        raise DataError("the projective model finds the number of objects per video itself; drop --num-objects")
    videos = parse_videos(obj)
    data = data_from_videos(videos, dtype=dtype)
    log(f"structure search: projective EM over {len(videos)} videos (V learned)")
    t0 = time.perf_counter()
    fit = fit_videos(data, mode="learn")
    search_s = time.perf_counter() - t0
    cats, active, locs0, _ = compact_structure(fit)
    K = int(cats.shape[1])
    half_fov = fit.values["half_fov"].detach().clone()
    has_truth = all(v.gt_categories is not None for v in videos)
    truth = None
    if has_truth:
        truth = [{"path": v.path, "objects": [{"category_name": CATEGORIES[int(c)], "position": p.tolist()}
                                               for c, p in zip(v.gt_categories, v.gt_positions)]}
                 for v in videos]

    def objects(locs, c=cats, a=active):
        return [{"path": v.path, "objects": [{"category_name": CATEGORIES[int(c[i, k])],
                                              "position": [float(x) for x in locs[i, k]]}
                                             for k in range(c.shape[1]) if bool(a[i, k])]}
                for i, v in enumerate(videos)]

    def measures(pred):
        if truth is None:
            return {}
        m = object_metrics(pred, truth)
        return {"object F1": m["f1"], "precision": m["precision"], "recall": m["recall"],
                "location error": m["location_error"]}

    def accuracy(res):
        return measures(objects(res.params["locs"].detach()))

    def scene(res):
        return res.params["locs"].detach().double()[0][active[0]].numpy()

    true0 = videos[0].gt_positions.double().numpy().reshape(-1, 3) if has_truth else None
    search_row = {"method": "em structure search", "status": "ok", "error": None,
                  "accuracy": measures(objects(fit.values["locs"].detach(), fit.cats, fit.active)),
                  "log_likelihood": float(fit.result()["loglik"].sum()), "log_joint": None, "elbo": None,
                  "n_iter": int(fit.n_iter), "iter_kind": "iterations", "converged": bool(fit.converged),
                  "wall_time_s": float(search_s)}
    notes = [f"Structure: {int(active.sum())} objects in {len(videos)} videos (K = {K} slots) and the field of "
             f"view {math.degrees(2 * float(half_fov)):.1f} degrees, found by the projective structure-search EM "
             f"({fit.n_rounds} rounds, {search_s:.1f} s; row `em structure search`). Every other row fits the "
             "locations, rates, hallucination rates, pixel noise and score marks with both fixed, starting from "
             "the search's object locations (EM's first restart, SVI, every MCMC chain; the detector's "
             "parameters start at their prior means or each chain's own start).",
             "Scene plot: the first video, objects in room coordinates (x, y, z), with its camera positions "
             "(triangles); the observations themselves are pixels."]
    opts = {"cats": cats, "active": active, "half_fov": half_fov, **(options or {})}
    return ComparisonSetup(
        data=data, num_objects=K, options=opts, truth={"objects": truth} if truth else None, accuracy=accuracy,
        scene=scene, scene_extra={"cameras": data["cams"][0].double().numpy()}, scene_truth=true0,
        assignment_site="z", assignment_mask=data["det_mask"], notes=notes, extra_rows=[search_row],
        init={"locs": locs0.detach().clone()}, mcmc_init_chains="all")
