"""M-steps of the projective model: closed forms for V, the pixel noise and the marks; Gauss-Newton
for the object locations (which have no closed form through the camera)."""

from __future__ import annotations


import torch

from metagen_ppl.domain.camera import DEFAULT_CAMERA, camera_frame
from metagen_ppl.models.projective.generative import (IMPOSSIBLE, V_SITES, box_bounds, camera_of, clamp_to_box,
                                                      half_fov_of, hyperparameter, num_bins, num_categories_of,
                                                      object_pixels, squared_residuals, structure_of)
from metagen_ppl.models.projective.noise import GAUSSIAN, pixel_noise_of


def sufficient_statistics(data, marginals, params, num_objects, *, cats=None, active=None, locs=None,
                          num_categories=None, pixels=None, **options) -> dict:
    """Expected sufficient statistics of V, ``sigma_px`` and the marks, summed over the videos of ``data``.

    With ``g`` the posterior of ``z`` (``(V, T, D, K + 1)``), ``vis`` the visibility at the current
    locations and ``w`` the pixel noise's weights at the current ``sigma_px`` (1 for the Gaussian):

    * ``rate_counts`` (C,): ``sum_{objects of c} sum g``; ``rate_exposure`` (C,): ``sum_{objects of c} #visible frames``;
    * ``hall_counts`` (C,): ``sum_{detections of c} g_0``; ``frames`` (): the number of frames;
    * ``scale_ss`` (): ``sum_k g_k w |u - P(mu_k)|^2``; ``scale_g`` (): ``sum_k g_k``;
    * ``mark_real`` (C, B): ``sum_{detections of c in bin b} (1 - g_0)``; ``mark_hall`` (C, B): ``sum g_0``.

    They are additive over videos; :func:`mstep_from_statistics` turns them into the MAP M-step
    (:func:`closed_form_mstep` is the composition of the two). ``pixels`` (optional): ``(pix, vis, sq)``
    as the E-step at the same locations and field of view computed them
    (:func:`~metagen_ppl.models.projective.estep.joint_log_terms`' ``extras`` and visibility), not
    computed again.
    """
    u = data["centers"]
    dtype = u.dtype
    V, T, D = u.shape[:3]
    K = int(num_objects)
    C, B = (num_categories_of(data) if num_categories is None else int(num_categories)), num_bins()
    cats, active = structure_of(data, K, cats, active)
    mask = data["det_mask"]
    g = marginals["z"].reshape(V, T, D, K + 1).to(dtype) * mask.unsqueeze(-1).to(dtype)
    if pixels is None:
        L = params["locs"].to(dtype) if locs is None else torch.as_tensor(locs, dtype=dtype)
        half = params.get("half_fov", options.get("half_fov"))
        pix, vis = object_pixels(data, L, half)
        sq = None
    else:
        pix, vis, sq = pixels
    gk = g[..., 1:]
    nk = gk.sum((1, 2))                                                         # (V,K)
    expo = (vis & active[:, None, :]).to(dtype).sum(1)                          # (V,K)
    out = {"rate_counts": torch.zeros(C, dtype=dtype).index_add_(0, cats.reshape(-1), (nk * active).reshape(-1)),
           "rate_exposure": torch.zeros(C, dtype=dtype).index_add_(0, cats.reshape(-1), expo.reshape(-1)),
           "hall_counts": torch.zeros(C, dtype=dtype).index_add_(0, data["categories"].reshape(-1),
                                                                  g[..., 0].reshape(-1)),
           "frames": data["frame_mask"].sum().to(dtype)}
    if sq is None:
        sq = squared_residuals(u.unsqueeze(-2), pix.unsqueeze(2))               # (V,T,D,K)
    out["scale_ss"], out["scale_g"] = pixel_noise_of(options).scale_statistics(gk, sq, params["pixel_scale"])
    flat = (data["categories"] * B + data["score_bins"]).reshape(-1)
    for name, w in (("mark_real", gk.sum(-1)), ("mark_hall", g[..., 0])):
        out[name] = torch.zeros(C * B, dtype=dtype).index_add_(0, flat, w.reshape(-1)).reshape(C, B)
    return out


def mstep_from_statistics(stats: dict, count=1.0, *, sites=None, **options) -> dict:
    """The MAP M-step of V, ``sigma_px`` and the marks from statistics ``count * stats``.

    ``stats`` as :func:`sufficient_statistics` returns them (summed over videos; or their running
    average over ``count`` videos, as in online EM). With the priors of :data:`~metagen_ppl.models.projective.generative.DEFAULTS`:

    * ``r_c = (n r_counts_c + a_r - 1) / (n r_exposure_c + b_r)``;
    * ``h_c = (n hall_counts_c + a_h - 1) / (n frames + b_h)``;
    * ``sigma_px^2 = (n scale_ss + 2 b_s) / (2 n scale_g + 2 a_s + 1)``;
    * ``q_c(b) propto n counts_c(b) + alpha - 1`` for both marks;

    with ``n = count``. ``sites``: the names to compute (default all of
    :data:`~metagen_ppl.models.projective.generative.V_SITES`).
    """
    sites = V_SITES if sites is None else tuple(sites)
    n = float(count)
    out = {}
    if "rates" in sites:
        a, b = hyperparameter(options, "rate_prior_shape"), hyperparameter(options, "rate_prior_rate")
        out["rates"] = ((n * stats["rate_counts"] + a - 1) / (n * stats["rate_exposure"] + b)).clamp_min(1e-9)
    if "hallucination" in sites:
        a, b = hyperparameter(options, "hall_prior_shape"), hyperparameter(options, "hall_prior_rate")
        out["hallucination"] = ((n * stats["hall_counts"] + a - 1) / (n * stats["frames"] + b)).clamp_min(1e-9)
    if "pixel_scale" in sites:
        a, b = hyperparameter(options, "scale_prior_shape"), hyperparameter(options, "scale_prior_rate")
        out["pixel_scale"] = ((n * stats["scale_ss"] + 2 * b) / (2 * (n * stats["scale_g"]) + 2 * a + 1)).sqrt()
    alpha = hyperparameter(options, "mark_concentration")
    for name in ("mark_real", "mark_hall"):
        if name in sites:
            cnt = (n * stats[name] + alpha - 1).clamp_min(1e-12)
            out[name] = cnt / cnt.sum(-1, keepdim=True)
    return out


def closed_form_mstep(data, marginals, params, num_objects, *, cats=None, active=None, locs=None, rates=None,
                      hallucination=None, pixel_scale=None, mark_real=None, mark_hall=None,
                      num_categories=None, pixels=None, **options):
    """MAP M-step in closed form for V, ``sigma_px`` and the marks, pooled over all videos.

    With ``g`` the posterior of ``z`` (``(V, T, D, K + 1)``) and ``vis`` the
    visibility at the current locations:

    * ``r_c = (sum_{objects of c} g + a_r - 1) / (sum_{objects of c} #visible frames + b_r)``;
    * ``h_c = (sum_{detections of c} g_0 + a_h - 1) / (#frames + b_h)``;
    * ``sigma_px^2 = (sum_k g_k |u - P(mu_k)|^2 + 2 b_s) / (2 sum_k g_k + 2 a_s + 1)``;
    * ``q^real_c(b) propto sum_{detections of c in bin b} (1 - g_0) + alpha - 1``,
      ``q^hall_c(b) propto sum g_0 + alpha - 1``.

    It is :func:`mstep_from_statistics` of :func:`sufficient_statistics` for the sites not given
    (``pixels``: as there).
    The locations are not updated here (no closed form through the projection). ``C`` defaults to the
    data's number of categories.
    """
    given = {"rates": rates, "hallucination": hallucination, "pixel_scale": pixel_scale, "mark_real": mark_real,
             "mark_hall": mark_hall}
    stats = sufficient_statistics(data, marginals, params, num_objects, cats=cats, active=active, locs=locs,
                                  num_categories=num_categories, pixels=pixels, **options)
    return mstep_from_statistics(stats, 1.0, sites=[k for k in V_SITES if given[k] is None], **options)


# --------------------------------------------------------------------------- locations
def camera_axes(data):
    f, right, up = camera_frame(data["cams"], data["looks"])                    # (V,T,3)
    return f, right, up


def project_with_jacobian(mu, cams, f, right, up, half_fov=None, jacobian=True, R=None, camera=None):
    """Pixels ``(..., 2)``, depth ``(...)`` and the Jacobian ``d pixel / d mu`` ``(..., 2, 3)``.

    ``mu`` broadcasts against the camera tensors (all ``(..., 3)``); ``R`` (optional,
    ``(..., 3, 3)``) stacks the rows ``right, up, f``; ``camera`` the camera model (default the shared
    data's angle-linear camera) and ``half_fov`` its refined half field of view (default nominal).
    """
    x, y, z = camera_coordinates(mu, cams, f, right, up, R)
    camera = DEFAULT_CAMERA if camera is None else camera
    px, py = camera.pixels(x, y, z, half_fov)
    if not jacobian:
        return torch.stack([px, py], -1), z, None
    jx, jy = camera.jacobian(x, y, z, f, right, up, half_fov)
    return torch.stack([px, py], -1), z, torch.stack([jx, jy], -2)


def camera_coordinates(mu, cams, f, right, up, R=None):
    """``(x, y, z)`` (each ``(...)``): ``mu - cams`` along ``right, up, f`` (the rows of ``R`` when given)."""
    s = mu - cams
    if R is None:
        return (s * right).sum(-1), (s * up).sum(-1), (s * f).sum(-1)
    return (R @ s.unsqueeze(-1)).squeeze(-1).unbind(-1)


def inside_image(pix, depth, camera=None):
    """``(...)`` bool: pixels ``(..., 2)`` inside the ``camera``'s image (default 256 x 256) and ``depth > 0``."""
    return (DEFAULT_CAMERA if camera is None else camera).inside(pix) & (depth > 0)


def views_of(cams, f, right, up, half_fov=None, camera=None):
    """A bundle of cameras ``(N, A, 3)`` (positions and camera frames) with their camera model and half
    field of view (default the camera's nominal one)."""
    camera = DEFAULT_CAMERA if camera is None else camera
    half = camera.half_fov if half_fov is None else half_fov
    return {"cams": cams, "f": f, "right": right, "up": up, "half": half, "camera": camera,
            "R": torch.stack([right, up, f], -2)}


def index_views(views, idx):
    """The views ``idx`` of a bundle (:func:`views_of`)."""
    return {k: (x if k in ("half", "camera") else x[idx]) for k, x in views.items()}


def project_views(mu, views, jacobian=False):
    """Pixels ``(N, A, 2)``, depth ``(N, A)`` and (if asked) the Jacobian ``(N, A, 2, 3)`` of ``mu``
    (N, 3) in ``views``."""
    return project_with_jacobian(mu[:, None, :], views["cams"], views["f"], views["right"], views["up"],
                                  views["half"], jacobian, views.get("R"), views.get("camera"))


def location_objective(mu, u, g, views, rate, sigma, expo_views=None, expo_mask=None, noise=GAUSSIAN):
    """The part of Q that depends on object locations, per object.

    Batched over objects ``(N, ...)``: ``mu`` (N, 3); ``u`` (N, A, D, 2) the
    detections and ``g`` (N, A, D) their responsibilities for the object, seen
    from ``views`` (cameras ``(N, A, 3)``: the frames of the object's video, or
    one camera per detection with ``D = 1``); ``rate`` (N,) the object's ``r_c``;
    ``expo_views`` / ``expo_mask`` (N, T) the frames whose visibility counts in
    the Poisson exposure (default: ``views`` and ``g``'s frames all real). When ``views`` has the key
    ``"frames"`` (N, A) (the frame of ``expo_views`` each view is, as in the structure search's
    compact batches), ``mu`` is projected in the T frames only and the views take their frame's
    projection (the same numbers, fewer projections).

    Returns ``(N,)``: ``sum g log p(u - P(mu)) - r_c #visible frames + IMPOSSIBLE * sum_{invisible} g``
    (``log p``: the pixel ``noise`` without its constant terms; Gaussian: ``-|u - P(mu)|^2 / (2 sigma^2)``).
    """
    return _location_objective(mu, u, g, views, rate, sigma, expo_views, expo_mask, noise,
                               _frames_of(views, expo_views))[0]


def _project_coordinates(mu, views):
    """:func:`project_views` without the Jacobian, also returning the camera coordinates ``(x, y)``:
    ``(pix, depth, x, y)`` (the Jacobian at ``mu`` follows from them, :func:`_views_jacobian`)."""
    x, y, z = camera_coordinates(mu[:, None, :], views["cams"], views["f"], views["right"], views["up"],
                                 views.get("R"))
    camera = views.get("camera")
    px, py = (DEFAULT_CAMERA if camera is None else camera).pixels(x, y, z, views["half"])
    return torch.stack([px, py], -1), z, x, y


def _views_jacobian(x, y, z, views):
    """The Jacobian ``(N, A, 2, 3)`` of :func:`project_views` from the camera coordinates of the points."""
    camera = views.get("camera")
    jx, jy = (DEFAULT_CAMERA if camera is None else camera).jacobian(x, y, z, views["f"], views["right"],
                                                                     views["up"], views["half"])
    return torch.stack([jx, jy], -2)


def _same_half(a, b) -> bool:
    if a is b:
        return True
    if torch.is_tensor(a) != torch.is_tensor(b):
        return False
    if not torch.is_tensor(a):
        return type(a) is type(b) and a == b
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


def _frames_of(views, expo_views):
    """``(idx, frames)`` where ``views`` (N, A) are frames ``frames`` (N, A) of ``expo_views`` (N, T) (their key
    ``"frames"``: the same cameras, camera model and half field of view), or ``None``: the projection
    in ``views`` is then the projection in ``expo_views`` at those frames (the same arithmetic on the
    same values), computed once for the T frames instead of the A views."""
    frames = views.get("frames")
    if frames is None or expo_views is None or views.get("camera") != expo_views.get("camera") \
            or not _same_half(views["half"], expo_views["half"]):
        return None
    return torch.arange(frames.shape[0])[:, None], frames


def _location_objective(mu, u, g, views, rate, sigma, expo_views, expo_mask, noise, link=None):
    """:func:`location_objective` and the projection of ``mu`` it made (``(pix, depth, x, y)``): in
    ``views``, or in ``expo_views`` when they are linked (``link``, :func:`_frames_of`)."""
    if link is None:
        proj = _project_coordinates(mu, views)
        pix, depth = proj[0], proj[1]
        vis = inside_image(pix, depth, views.get("camera"))
    else:
        proj = _project_coordinates(mu, expo_views)
        evis = inside_image(proj[0], proj[1], expo_views.get("camera"))         # (N,T)
        pix, vis = proj[0][link], evis[link]                                      # (N,A,2), (N,A)
    fit = noise.expected_log_density(g, squared_residuals(u, pix.unsqueeze(2)), sigma, dim=(-1, -2))
    zero = torch.zeros((), dtype=mu.dtype)
    bad = torch.where(vis, zero, g.sum(-1)).sum(-1) * (-IMPOSSIBLE)
    if link is not None:
        pass                                                                     # evis above
    elif expo_views is not None:
        epix, edepth, _ = project_views(mu, expo_views)
        evis = inside_image(epix, edepth, expo_views.get("camera"))
    else:
        evis = vis
    if expo_mask is not None:
        evis = evis & expo_mask
    return fit - rate * evis.to(mu.dtype).sum(-1) - bad, proj


def gauss_newton_locations(mu, u, g, views, rate, sigma, lo, hi, *, expo_views=None, expo_mask=None, iters=8,
                           damping=1e-3, noise=GAUSSIAN):
    """Maximise :func:`location_objective` for each object by projected Levenberg-Marquardt.

    A batched Gauss-Newton on the pixel residuals (the smooth part of Q),
    with per-object damping; a step is kept only where it raises the full
    per-object objective (visibility changes included), so Q never decreases.
    Locations stay inside the room box ``[lo, hi]``. A non-Gaussian pixel ``noise`` makes
    it iteratively reweighted: the responsibilities times the noise's weights at the
    current residuals.
    """
    N = mu.shape[0]
    lam = torch.full((N,), float(damping), dtype=mu.dtype)
    link = _frames_of(views, expo_views)
    pviews = views if link is None else expo_views                               # where proj is
    cur, proj = _location_objective(mu, u, g, views, rate, sigma, expo_views, expo_mask, noise, link)
    eye = torch.eye(3, dtype=mu.dtype)
    gw = g
    gt = g.sum(-1)                                                                # (N,A)
    w2 = gt.repeat_interleave(2, dim=1).unsqueeze(-1)                            # (N,2A,1)
    for it in range(iters):
        # the projection of mu: the objective's (at the start, or of the accepted / kept points)
        pix, depth, x, y = proj                                                  # (N,A,2), (N,A)
        J = _views_jacobian(x, y, depth, pviews)                                 # (N,A,2,3)
        ppix = pix
        if link is not None:                                                     # frames -> views
            pix, J = pix[link], J[link]
        res = u - pix.unsqueeze(2)                                               # (N,A,D,2)
        if noise.reweights:                                                      # IRLS weights at mu
            gw = g * noise.weights((res * res).sum(-1), sigma)
            w2 = gw.sum(-1).repeat_interleave(2, dim=1).unsqueeze(-1)
        ge = (gw.unsqueeze(-1) * res).sum(2)                                     # (N,A,2)
        Jf = J.reshape(N, -1, 3)                                                 # (N,2A,3)
        grad = (ge.reshape(N, -1, 1) * Jf).sum(1)                                # (N,3)
        H = (Jf * w2).transpose(1, 2) @ Jf                                       # (N,3,3)
        scale = torch.diagonal(H, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-9)
        A = H + (lam * scale)[:, None, None] * eye + 1e-9 * eye
        step = torch.linalg.solve(A, grad.unsqueeze(-1)).squeeze(-1)
        new = clamp_to_box(mu + step, lo, hi)
        val, nproj = _location_objective(new, u, g, views, rate, sigma, expo_views, expo_mask, noise, link)
        ok = val > cur
        mu = torch.where(ok.unsqueeze(-1), new, mu)
        cur = torch.where(ok, val, cur)
        if it + 1 < iters:
            okA = ok.unsqueeze(-1)
            proj = (torch.where(okA.unsqueeze(-1), nproj[0], ppix),) + tuple(
                torch.where(okA, a, b) for a, b in zip(nproj[1:], proj[1:]))
        lam = torch.where(ok, lam * 0.3, lam * 10.0).clamp(1e-9, 1e9)
    return mu, cur


def object_batch(data, resp, cats, active, values, noise=GAUSSIAN):
    """Flatten the active objects: index ``(v, k)`` pairs and their per-object inputs."""
    vk = active.nonzero()                                                        # (N,2)
    v, k = vk[:, 0], vk[:, 1]
    f, right, up = camera_axes(data)
    return v, k, dict(u=data["centers"][v], g=resp[v, :, :, k + 1],
                      views=views_of(data["cams"][v], f[v], right[v], up[v], half_fov_of(values, camera_of(data)),
                                     camera_of(data)),
                      expo_mask=data["frame_mask"][v],
                      rate=values["rates"][cats[v, k]], sigma=values["pixel_scale"].reshape(()), noise=noise)


def location_mstep(data, values, resp, cats, active, iters=8, noise=GAUSSIAN) -> torch.Tensor:
    """Batched Gauss-Newton M-step for every active object's location (a generalised M-step:
    Q never decreases). Returns the new ``locs`` (V, K, 3)."""
    locs = values["locs"].clone()
    if not bool(active.any()):
        return locs
    lo, hi, _ = box_bounds(data)
    v, k, kw = object_batch(data, resp, cats, active, values, noise)
    mu, _ = gauss_newton_locations(locs[v, k], lo=lo, hi=hi, iters=iters, **kw)
    locs[v, k] = mu
    return locs
