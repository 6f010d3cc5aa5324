"""M4 ``projective``: the MetaGen detector model on 2D pixel detections from known cameras.

Generative story (DESIGN.md section 2, model M4; issue 5 item 2)
----------------------------------------------------------------
Videos ``v = 1..V``, frames ``t = 1..T_v``, categories ``c = 0..C-1`` (the
data file's categories, ``data["category_names"]``; the legacy files' five
:data:`metagen_ppl.domain.metagen_data.CATEGORIES`). Video ``v`` holds ``K_v``
objects; object ``k`` has a category ``c_k`` and a 3D location ``mu_k`` (metres,
y up). Frame ``t`` has a known camera pose (position ``cam_t``, look-at point
``look_t``) and the projection ``P_t`` of the data's camera ``data["camera"]``
(:mod:`metagen_ppl.domain.camera`: the shared data's angle-linear 256 x 256
camera, or any angle-linear or pinhole camera of a file). Object ``k`` is
*visible* in frame ``t`` iff ``P_t(mu_k)`` lies in the image (W x H pixels)
and its depth is positive (``vis_tk``).

The detections of frame ``t`` -- pixel centre ``u_n``, category ``o_n`` and
score bin ``b_n`` (a mark) -- form a Poisson point process with intensity

    lambda(u, o, b) = sum_k vis_tk r_{c_k} [o = c_k] N(u; P_t(mu_k), sigma_px^2 I) q^real_o(b)
                      + h_o / (W H) q^hall_o(b)

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
(``half_fov``, option of :func:`model`, default the nominal half field of
view of the data's camera, :attr:`metagen_ppl.domain.camera.Camera.half_fov`;
:data:`metagen_ppl.domain.camera.HALF_FOV` for the shared data).
:func:`~metagen_ppl.models.projective.fit.fit_videos` learns it without
ground truth, by conditional maximisation of the log marginal likelihood
(ECME; :meth:`~metagen_ppl.models.projective.structure.ProjectiveSearch.fov_mstep`); it reaches 57.1 degrees
(RetinaNet) and 57.1-57.4 degrees (Faster R-CNN) independently. The metrics
still project with the nominal camera: they define visibility.

Other cameras: for an angle-linear camera of any size ``half_fov`` is half the
horizontal field of view (the vertical one keeps its ratio to it). For a
pinhole camera the same parameter, ``half_fov = atan(W / (2 f_x))``, is a
*focal-length scale*: a value ``h`` multiplies ``f_x`` and ``f_y`` by
``tan(h_0) / tan(h)`` (``h_0`` the nominal value; principal point fixed), so
ECME refines the focal length of a roughly calibrated camera. The search range
is the nominal field of view +- 10 degrees (``fov_range``). A camera with
``"learn_fov": false`` (or the fit option ``learn_fov=False``) keeps its
intrinsics fixed.

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
:func:`~metagen_ppl.models.projective.fit.fit_videos` searches structures by greedy birth and death (candidates
triangulated from same-category detections of two frames, or one detection's
ray at mid height; see its docstring), batched over videos.

Where things are (the package :mod:`metagen_ppl.models.projective`)
-------------------------------------------------------------------
:mod:`.generative` this model, its priors, data layout and starting values;
:mod:`.estep` the batched E-step (hook ``estep``, equal to the engine's
enumeration); :mod:`.mstep` the closed-form M-step of V, ``sigma_px`` and the
marks (hook ``closed_form_mstep``) and the Gauss-Newton M-step of the locations
(the locations have no closed form through the projection; the engine's
generic optimiser :func:`metagen_ppl.engine.mstep.optimizer_mstep` is the
reference); :mod:`.occam` the Laplace factors; :mod:`.births` and
:mod:`.structure` the structure moves and the continuous phase for the engine's
search; :mod:`.fit` :func:`fit_videos`; :mod:`.simulate`, :mod:`.nuts`,
:mod:`.comparison`.

Data dict (:func:`data_from_videos`)
------------------------------------
``cams, looks`` (V, T, 3); ``centers`` (V, T, D, 2); ``categories``,
``score_bins`` (V, T, D) long; ``det_mask`` (V, T, D) bool;
``num_detections`` (V, T) long; ``frame_mask`` (V, T) bool; ``box`` (2, 3)
(``D >= 1``, padded); ``camera`` (a :class:`~metagen_ppl.domain.camera.Camera`)
and ``category_names`` (tuple of C str), shared by all videos, passed through
unchanged by :func:`select_videos` (like ``box``). A data dict without
``camera`` / ``category_names`` (built by hand) has the shared data's camera
and five categories.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution, constraints
from pyro.ops.indexing import Vindex

from metagen_ppl.domain.camera import DEFAULT_CAMERA, IMAGE_SIZE, Camera, camera_frame, visible
from metagen_ppl.domain.metagen_data import CATEGORIES, VideoBatch, batch_videos
from metagen_ppl.errors import DataError
from metagen_ppl.models.baseline import scale_prior
from metagen_ppl.models.detector.generative import check_structure, random_detection_per_slot
from metagen_ppl.models.projective.noise import GAUSSIAN, pixel_noise_of


#: Slots are anchored by category and structure; no (K, D) location site to align.
COMPONENT_SITES: dict = {}


LOCATION_SITE = None


#: Uniform location prior (metres): x, z in [-5, 5], y in [0, 1] (see the module docstring).
ROOM_BOX = ((-5.0, 0.0, -5.0), (5.0, 1.0, 5.0))


#: Score bin edges of the marks (scores are in [0.05, 1]); bin i is ``[e_i, e_{i+1})``, the last closed.
SCORE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


#: Log weight of an impossible assignment (finite: ``0 * IMPOSSIBLE = 0`` keeps Q free of NaN).
IMPOSSIBLE = -1.0e4


#: ``log`` of the image area of the shared data's camera (hallucinations are uniform over the
#: 256 x 256 image); :func:`log_area` gives the data's.
LOG_AREA = 2 * math.log(IMAGE_SIZE)


#: Hyperparameters (every hook accepts them as keyword options).
DEFAULTS = dict(
    rate_prior_shape=2.0, rate_prior_rate=2.0,       # r_c ~ Gamma(2, 2): mean 1 detection per frame
    hall_prior_shape=2.0, hall_prior_rate=4.0,       # h_c ~ Gamma(2, 4): mean 0.5 per frame
    scale_prior_shape=3.0, scale_prior_rate=72.0,    # sigma_px^2 ~ InvGamma(3, 72): mean 36 px^2 (6 px)
    mark_concentration=2.0,                          # Dirichlet(2): add-one smoothing of the histograms
    count_prior_p=0.9,                               # P(K) = p (1 - p)^K (MetaGen's geometric prior)
)


V_SITES = ("rates", "hallucination", "pixel_scale", "mark_real", "mark_hall")


def hyperparameter(options: dict, key: str) -> float:
    v = options.get(key)
    return float(DEFAULTS[key] if v is None else v)


def num_bins() -> int:
    return len(SCORE_EDGES) - 1


# --------------------------------------------------------------------------- data
def camera_of(data) -> Camera:
    """The data's camera (``data["camera"]``; the shared data's angle-linear camera when absent)."""
    cam = data.get("camera") if data is not None else None
    return DEFAULT_CAMERA if cam is None else cam


def category_names_of(data) -> tuple:
    """The data's category names (``data["category_names"]``; the five legacy categories when absent)."""
    names = data.get("category_names") if data is not None else None
    return tuple(CATEGORIES) if names is None else tuple(names)


def num_categories_of(data) -> int:
    """``C``, the number of the data's categories."""
    return len(category_names_of(data))


def log_area(data) -> float:
    """``log(W H)`` of the data's camera image (:data:`LOG_AREA` for the shared data)."""
    return camera_of(data).log_area


def score_bins(scores: torch.Tensor) -> torch.Tensor:
    """Bin index of each score (:data:`SCORE_EDGES`; 1.0 falls in the last bin)."""
    edges = torch.tensor(SCORE_EDGES[1:-1], dtype=scores.dtype)
    return torch.bucketize(scores.contiguous(), edges, right=True).clamp(0, num_bins() - 1)


def data_from_videos(videos, box=ROOM_BOX, dtype=torch.float64) -> dict:
    """The model's data dict from loaded videos (or a :class:`~metagen_ppl.domain.metagen_data.VideoBatch`);
    the videos' camera and category names come along (``data["camera"]``, ``data["category_names"]``)."""
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
            "frame_mask": b.frame_mask, "box": torch.tensor(box, dtype=dtype), "camera": b.camera,
            "category_names": tuple(b.category_names)}


def select_videos(data: dict, index) -> dict:
    """The data dict of a subset of videos (``index``: a bool mask or indices over V); ``box``, ``camera``
    and ``category_names`` (and anything else that is not a tensor) are passed through unchanged."""
    idx = torch.as_tensor(index)
    if idx.dtype == torch.bool:
        idx = idx.nonzero().reshape(-1)
    return {k: (v if k == "box" or not torch.is_tensor(v) else v[idx]) for k, v in data.items()}


def box_bounds(data):
    box = data["box"]
    lo, hi = box[0], box[1]
    return lo, hi, float(torch.log(hi - lo).sum())


# --------------------------------------------------------------------------- projection helpers
def project(points, cam, look, half_fov=None, camera=None):
    """:func:`metagen_ppl.domain.camera.project` with a refined field of view (differentiable).

    Parameters
    ----------
    points : (..., 3) tensor
    cam, look : (..., 3) tensors (broadcast against ``points``)
    half_fov : float or 0-dim tensor, optional
        Half the horizontal field of view (radians; for a pinhole camera a focal-length scale, see the
        module docstring); default the camera's nominal value.
    camera : :class:`~metagen_ppl.domain.camera.Camera`, optional
        Default the shared data's angle-linear camera (then, with the default ``half_fov``, exactly the
        camera of DESIGN.md).

    Returns
    -------
    pixels : (..., 2) tensor
    depth : (...) tensor
    """
    camera = DEFAULT_CAMERA if camera is None else camera
    f, right, up = camera_frame(cam, look)
    s = points - cam
    depth = (s * f).sum(-1)
    px, py = camera.pixels((s * right).sum(-1), (s * up).sum(-1), depth, half_fov)
    return torch.stack([px, py], -1), depth


def pixel_to_ray(pixels, cams, looks, half_fov=None, camera=None):
    """:func:`metagen_ppl.domain.camera.pixel_to_ray` with a refined field of view: unit ray directions
    ``(..., 3)`` of ``pixels`` ``(..., 2)``; angle-linear viewing angles are clamped to 1.5 rad (no error)."""
    camera = DEFAULT_CAMERA if camera is None else camera
    f, right, up = camera_frame(cams, looks)
    a, b = camera.ray_coefficients(pixels, half_fov, clamp=1.5)
    ray = f + a.unsqueeze(-1) * right + b.unsqueeze(-1) * up
    return ray / ray.norm(dim=-1, keepdim=True)


def half_fov_of(values, camera=None) -> torch.Tensor:
    """``values["half_fov"]`` as a tensor, or the camera's nominal half field of view (0-dim)."""
    h = values.get("half_fov") if values is not None else None
    if h is None:
        return torch.tensor((DEFAULT_CAMERA if camera is None else camera).half_fov, dtype=torch.float64)
    return torch.as_tensor(h)


def squared_residuals(u: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """``|u - pix|^2`` over the last axis (of 2: pixels; ``u`` and ``pix`` broadcast):
    ``(u_x - p_x)^2 + (u_y - p_y)^2``, bitwise ``((u - pix) ** 2).sum(-1)`` (one rounded sum of two
    terms either way) without the ``(..., 2)`` intermediates."""
    dx = u[..., 0] - pix[..., 0]
    dy = u[..., 1] - pix[..., 1]
    return dx * dx + dy * dy


def object_pixels(data: dict, locs: torch.Tensor, half_fov=None):
    """Pixels ``(V, T, K, 2)`` and visibility ``(V, T, K)`` of objects ``locs`` (V, K, 3) in every frame,
    through the data's camera (``half_fov``: as in :func:`project`)."""
    camera = camera_of(data)
    pix, depth = project(locs[:, None, :, :], data["cams"][:, :, None, :], data["looks"][:, :, None, :], half_fov,
                         camera)
    vis = visible(pix, depth, camera) & data["frame_mask"].unsqueeze(-1)
    return pix, vis


def structure_of(data, num_objects, cats, active):
    return check_structure(
        cats, active, data["cams"].shape[0], num_objects, axis="V",
        missing="model 'projective' needs the structure as options: cats (V, K) slot categories "
                "and active (V, K) bool; metagen_ppl.models.projective.fit_videos searches over structures")


def clamp_to_box(mu, lo, hi):
    eps = 1e-6 * (hi - lo)
    return torch.maximum(torch.minimum(mu, hi - eps), lo + eps)


# --------------------------------------------------------------------------- distributions
class PixelDetection(TorchDistribution):
    """Pixel centre of a detection given its assignment.

    ``log_prob(u) = -log(W H)`` where ``is_hall`` (uniform over the ``camera``'s image, default the
    shared data's 256 x 256), ``log N(u; loc, scale^2 I)`` elsewhere, and 0 where ``mask`` is False.
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, loc, scale, is_hall, mask=None, noise=GAUSSIAN, validate_args=None, camera=None):
        self.camera = DEFAULT_CAMERA if camera is None else camera
        self.loc = loc
        self.scale = torch.as_tensor(scale, dtype=loc.dtype)
        self.is_hall = is_hall
        self.mask_ = mask
        self.noise = noise
        shapes = [loc.shape[:-1], is_hall.shape] + ([mask.shape] if mask is not None else [])
        super().__init__(torch.broadcast_shapes(*shapes), loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PixelDetection, _instance)
        for k in ("loc", "scale", "is_hall", "mask_", "noise", "camera"):
            setattr(new, k, getattr(self, k))
        super(PixelDetection, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        gauss = self.loc + self.noise.sample(shape[:-1], self.scale, self.loc.dtype)
        w, h = self.camera.width, self.camera.height
        unif = torch.rand(shape, dtype=self.loc.dtype) * (w if w == h else torch.tensor([w, h], dtype=self.loc.dtype))
        return torch.where(self.is_hall.unsqueeze(-1), unif, gauss)

    def log_prob(self, value):
        diff = value - self.loc
        normal = self.noise.log_density((diff * diff).sum(-1), self.scale)
        out = torch.where(self.is_hall, torch.full((), -self.camera.log_area, dtype=normal.dtype), normal)
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
          pixel_scale=None, mark_real=None, mark_hall=None, half_fov=None, pixel_noise=None,
          num_categories=None,
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
    half_fov : float or 0-dim tensor, optional
        The camera's refined half field of view (default its nominal one; module docstring).
    num_categories : int, optional
        ``C``; default the data's (``data["category_names"]``, else 5).
    """
    opts = dict(rate_prior_shape=rate_prior_shape, rate_prior_rate=rate_prior_rate,
                hall_prior_shape=hall_prior_shape, hall_prior_rate=hall_prior_rate,
                scale_prior_shape=scale_prior_shape, scale_prior_rate=scale_prior_rate,
                mark_concentration=mark_concentration)
    centers = data["centers"]
    dtype = centers.dtype
    V, T, D = centers.shape[:3]
    K = int(num_objects)
    C = num_categories_of(data) if num_categories is None else int(num_categories)
    B = num_bins()
    noise = pixel_noise_of({"pixel_noise": pixel_noise})
    camera = camera_of(data)
    cats, active = structure_of(data, K, cats, active)
    lo, hi, _ = box_bounds(data)

    def gamma(a, b):
        return dist.Gamma(torch.tensor(hyperparameter(opts, a), dtype=dtype),
                          torch.tensor(hyperparameter(opts, b), dtype=dtype))

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
        pixel_scale = pyro.sample("pixel_scale", _scale_prior(hyperparameter(opts, "scale_prior_shape"),
                                                              hyperparameter(opts, "scale_prior_rate"), dtype))
    else:
        pixel_scale = torch.as_tensor(float(pixel_scale), dtype=dtype)
    conc = torch.full((C, B), hyperparameter(opts, "mark_concentration"), dtype=dtype)
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

    pix, vis = object_pixels(data, locs, half_fov)                              # (V,T,K,2), (V,T,K)
    lam_c = category_intensity(data, rates, hallucination, cats, active, vis, C)   # (V,T,C)
    lam = lam_c.sum(-1)                                                         # (V,T)
    logits = assignment_logits(data, rates, hallucination, cats, active, vis)   # (V,T,D,J)
    pix_ext = torch.cat([pix.new_full((V, T, 1, 2), camera.width / 2), pix], 2)  # (V,T,J,2) (0: unused)
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
                pyro.sample("u", PixelDetection(loc, pixel_scale, is_hall, mask, noise, camera=camera),
                            obs=data["centers"])
                with poutine.mask(mask=mask):
                    pyro.sample("s", dist.Categorical(logits=torch.where(is_hall.unsqueeze(-1), hall, real)),
                                obs=data["score_bins"])


def prior_params(num_categories=len(CATEGORIES), dtype=torch.float64, **options) -> dict:
    """V, marks and ``sigma_px`` at their prior means (the lesioned model's metacognition).

    ``r_c = a_r / b_r``, ``h_c = a_h / b_h``, uniform marks, ``sigma_px = sqrt(b_s / (a_s - 1))``.
    """
    C, B = int(num_categories), num_bins()
    def h(key):
        return hyperparameter(options, key)

    a_s, b_s = h("scale_prior_shape"), h("scale_prior_rate")
    return {"rates": torch.full((C,), h("rate_prior_shape") / h("rate_prior_rate"), dtype=dtype),
            "hallucination": torch.full((C,), h("hall_prior_shape") / h("hall_prior_rate"), dtype=dtype),
            "pixel_scale": torch.tensor(math.sqrt(b_s / max(a_s - 1.0, 0.5)), dtype=dtype),
            "mark_real": torch.full((C, B), 1.0 / B, dtype=dtype),
            "mark_hall": torch.full((C, B), 1.0 / B, dtype=dtype)}


def log_prior(values: dict, learned, active, data, **options) -> torch.Tensor:
    """``log p(theta)`` of the learned parameter sites (Gamma, scaled inverse-gamma, Dirichlet priors)
    plus ``-log vol`` per active object (uniform locations)."""
    dtype = data["centers"].dtype
    total = torch.zeros((), dtype=dtype)
    for name, a, b in (("rates", "rate_prior_shape", "rate_prior_rate"),
                       ("hallucination", "hall_prior_shape", "hall_prior_rate")):
        if name in learned:
            g = dist.Gamma(torch.tensor(hyperparameter(options, a), dtype=dtype),
                           torch.tensor(hyperparameter(options, b), dtype=dtype))
            total = total + g.log_prob(values[name]).sum()
    if "pixel_scale" in learned:
        total = total + _scale_log_prior(values["pixel_scale"].reshape(()), hyperparameter(options, "scale_prior_shape"),
                                         hyperparameter(options, "scale_prior_rate"))
    for name in ("mark_real", "mark_hall"):
        if name in learned:
            conc = torch.full(values[name].shape, hyperparameter(options, "mark_concentration"), dtype=dtype)
            total = total + dist.Dirichlet(conc).log_prob(values[name]).sum()
    _, _, log_vol = box_bounds(data)
    return total - log_vol * int(torch.as_tensor(active).sum())


# --------------------------------------------------------------------------- starting values
def initialize(data, num_objects, generator, *, cats=None, active=None, locs=None, num_categories=None,
               **options):
    """Starting values for a known structure: every active slot on the ray of a random detection of its
    category, at mid height of the room; the parameters at their prior means (``C`` default the data's)."""
    num_categories = num_categories_of(data) if num_categories is None else num_categories
    V = data["cams"].shape[0]
    K = int(num_objects)
    cats, active = structure_of(data, K, cats, active)
    lo, hi, _ = box_bounds(data)
    out = {k: v for k, v in prior_params(num_categories, data["centers"].dtype, **options).items()
           if options.get(k) is None}
    if locs is None:
        init = ((lo + hi) / 2).expand(V, K, 3).clone()
        for (v, k), (t, d) in random_detection_per_slot(data, cats, active, generator).items():
            init[v, k] = ray_at_mid_height(data["centers"][v, t, d], data["cams"][v, t], data["looks"][v, t],
                                        lo, hi, options.get("half_fov") or camera_of(data).half_fov,
                                        camera_of(data))
        out["locs"] = init
    return out


def ray_at_mid_height(pixels, cams, looks, lo, hi, half_fov=None, camera=None):
    """The point of each detection's viewing ray at the room's mid height (clamped into the room);
    ``pixels`` (..., 2), ``cams``, ``looks`` (..., 3), ``half_fov`` and ``camera`` as in :func:`project`."""
    ray = pixel_to_ray(pixels, cams, looks, half_fov, camera)
    y_mid = (lo[1] + hi[1]) / 2
    dy = ray[..., 1]
    t = torch.where(dy < -1e-6, (y_mid - cams[..., 1]) / dy.clamp_max(-1e-6), torch.full_like(dy, 3.0))
    t = t.clamp(0.1, 20.0)
    return clamp_to_box(cams + t.unsqueeze(-1) * ray, lo, hi)


# --------------------------------------------------------------------------- the detector's parameters as JSON
def _names(C: int, names=None) -> list:
    if names is not None:
        names = list(names)
        if len(names) != C:
            raise DataError(f"{len(names)} category names for {C} categories")
        return names
    return list(CATEGORIES[:C]) if C <= len(CATEGORIES) else [f"category_{c}" for c in range(C)]


def params_to_json(values: dict, names=None) -> dict:
    """V, ``sigma_px`` and the marks as JSON: ``{"detection_rate": {name: r}, "hallucination_rate":
    {name: h}, "pixel_scale": sigma, "score_bins": edges, "mark_real": {name: [B probs]},
    "mark_hall": {name: [B probs]}}``; ``names`` (C str): the data's category names (default the first
    C legacy names, or ``category_<c>`` beyond five)."""
    C = values["rates"].shape[0]
    names = _names(C, names)
    return {"detection_rate": {n: float(values["rates"][c]) for c, n in enumerate(names)},
            "hallucination_rate": {n: float(values["hallucination"][c]) for c, n in enumerate(names)},
            "pixel_scale": float(values["pixel_scale"]),
            "score_bins": list(SCORE_EDGES),
            "mark_real": {n: [float(x) for x in values["mark_real"][c]] for c, n in enumerate(names)},
            "mark_hall": {n: [float(x) for x in values["mark_hall"][c]] for c, n in enumerate(names)}}


def params_from_json(obj: dict, num_categories=None, dtype=torch.float64, names=None) -> dict:
    """Inverse of :func:`params_to_json` (validated; :class:`DataError` on a bad field); ``names`` the
    category names (default as in :func:`params_to_json`, ``C`` default 5 or ``len(names)``)."""
    if not isinstance(obj, dict):
        raise DataError("metacognition must be a JSON object with detection_rate, hallucination_rate, "
                        "pixel_scale, mark_real, mark_hall")
    if num_categories is None:
        num_categories = len(CATEGORIES) if names is None else len(names)
    names = _names(int(num_categories), names)
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
