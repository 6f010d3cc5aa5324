"""The angle-linear camera of the MetaGen data (DESIGN.md section 2).

The rendered videos of ``../shared/data/metagen2021/`` were made with a camera
whose pixel coordinates are *linear in the viewing angle*, not in its tangent
as for a pinhole camera. With ``d = look - cam``, ``s = p - cam`` and the
orthonormal camera frame

``f = d / |d|``, ``right = unit([d_z, 0, -d_x])``, ``up = unit([-d_x d_y, d_x^2 + d_z^2, -d_y d_z])``

(y is up, metres; the scene is left-handed like the TDW renderer, which is why
``right`` is ``up_world x f`` and not ``f x up_world``), a point ``p`` has

``depth = s . f``,
``px = 128 + 128 * atan2(s . right, depth) / half``,
``py = 128 - 128 * atan2(s . up, depth) / half``, ``half = radians(27.5)``,

and is visible iff ``depth > 0`` and ``0 <= px, py <= 256`` (image rows grow
downwards). Ground-truth objects of the shared data projected this way land a
median 5 px from the centres of their confident detections.

All functions are differentiable torch code that broadcast over leading
dimensions: points ``(..., 3)`` against cameras and look-at points
``(..., 3)``, e.g. objects ``(K, 1, 3)`` against frames ``(1, T, 3)`` give
``(K, T)`` outputs. A camera at its own look-at point, or one looking straight
up or down (``d_x = d_z = 0``), has no image axes: the results are NaN there
(:mod:`metagen_ppl.domain.metagen_data` refuses such cameras when loading).
"""

from __future__ import annotations

import math

import torch

from metagen_ppl.errors import DataError

__all__ = ["IMAGE_SIZE", "FOV_DEG", "HALF_FOV", "camera_frame", "project", "visible", "pixel_to_ray",
           "triangulate"]

#: Width and height of the images, in pixels.
IMAGE_SIZE = 256
#: Field of view, horizontal and vertical, in degrees.
FOV_DEG = 55.0
#: Half the field of view, in radians (``radians(27.5)``).
HALF_FOV = math.radians(FOV_DEG / 2)

_CENTRE = IMAGE_SIZE / 2


def _as_tensor(x, name: str = "input") -> torch.Tensor:
    if torch.is_tensor(x):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    try:
        return torch.as_tensor(x, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{name} must be a tensor or nested lists of numbers of equal lengths, got "
                        f"{type(x).__name__} ({e})") from None


def _check_broadcast(**tensors) -> None:
    """:class:`DataError` naming the arguments whose batch shapes (all but the last dim) do not broadcast."""
    try:
        torch.broadcast_shapes(*(t.shape[:-1] for t in tensors.values()))
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in tensors.items())
        raise DataError(f"shapes do not broadcast: {shapes} (leading dimensions must match or be 1)") from None


def _check_last_dim(x: torch.Tensor, size: int, name: str) -> None:
    if x.dim() == 0 or x.shape[-1] != size:
        raise DataError(f"{name} must have shape (..., {size}), got {tuple(x.shape)}")


def camera_frame(cam, look):
    """The orthonormal camera frame ``(f, right, up)`` of DESIGN.md section 2.

    Parameters
    ----------
    cam, look : (..., 3) tensors
        Camera positions and look-at points (broadcast together).

    Returns
    -------
    f, right, up : (..., 3) tensors
        Unit viewing direction, image right and image up directions.
    """
    cam, look = _as_tensor(cam, "cam"), _as_tensor(look, "look")
    _check_last_dim(cam, 3, "cam")
    _check_last_dim(look, 3, "look")
    _check_broadcast(cam=cam, look=look)
    d = look - cam
    dx, dy, dz = d.unbind(-1)
    f = d / d.norm(dim=-1, keepdim=True)
    right = torch.stack([dz, torch.zeros_like(dx), -dx], dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.stack([-dx * dy, dx * dx + dz * dz, -dy * dz], dim=-1)
    up = up / up.norm(dim=-1, keepdim=True)
    return f, right, up


def project(points, cam, look):
    """Pixel coordinates and depth of 3D points seen from cameras.

    Parameters
    ----------
    points : (..., 3) tensor
        World points (metres, y up).
    cam, look : (..., 3) tensors
        Camera positions and look-at points; broadcast against ``points``
        (objects ``(K, 1, 3)`` and frames ``(T, 3)`` give ``(K, T)`` results).

    Returns
    -------
    pixels : (..., 2) tensor
        ``(px, py)``: column and row in a 256 x 256 image, ``(128, 128)`` at the
        centre, rows growing downwards. Points at or behind the camera
        (``depth <= 0``) get pixels too (angles beyond 90 degrees map far
        outside the image), but :func:`visible` rejects them.
    depth : (...) tensor
        Distance along the viewing direction, ``(p - cam) . f``.
    """
    points = _as_tensor(points, "points")
    _check_last_dim(points, 3, "points")
    f, right, up = camera_frame(cam, look)
    _check_broadcast(points=points, cam=f)
    s = points - _as_tensor(cam)
    depth = (s * f).sum(-1)
    x = (s * right).sum(-1)
    y = (s * up).sum(-1)
    px = _CENTRE + _CENTRE * torch.atan2(x, depth) / HALF_FOV
    py = _CENTRE - _CENTRE * torch.atan2(y, depth) / HALF_FOV
    return torch.stack([px, py], dim=-1), depth


def visible(pixels, depth):
    """Whether projected points are in the image.

    Parameters
    ----------
    pixels : (..., 2) tensor
        Pixel coordinates from :func:`project`.
    depth : (...) tensor
        Depths from :func:`project`.

    Returns
    -------
    (...) bool tensor
        ``depth > 0`` and ``0 <= px <= 256`` and ``0 <= py <= 256`` (borders
        inclusive, as in the original MetaGen code).
    """
    pixels, depth = _as_tensor(pixels, "pixels"), _as_tensor(depth, "depth")
    _check_last_dim(pixels, 2, "pixels")
    _check_broadcast(pixels=pixels, depth=depth.unsqueeze(-1))
    inside = ((pixels >= 0) & (pixels <= IMAGE_SIZE)).all(dim=-1)
    return inside & (depth > 0)


#: Pixels farther than this from the centre (along either axis) correspond to
#: angles of 90 degrees or more and have no ray in front of the camera.
_MAX_OFFSET = _CENTRE * (math.pi / 2) / HALF_FOV


def pixel_to_ray(pixels, cam, look):
    """Unit direction of the ray from the camera through a pixel.

    The inverse of :func:`project`: every point ``cam + t * ray`` (``t > 0``)
    projects to ``pixels``.

    Parameters
    ----------
    pixels : (..., 2) tensor
        Pixel coordinates ``(px, py)``; any finite values with
        ``|px - 128|, |py - 128| < 128 * 90 / 27.5`` (about 419 px), i.e.
        viewing angles below 90 degrees, not only those inside the image.
    cam, look : (..., 3) tensors
        Camera positions and look-at points (broadcast against ``pixels``).

    Returns
    -------
    (..., 3) tensor
        Unit direction ``unit(f + tan(a) right + tan(b) up)`` with
        ``a = (px - 128) / 128 * half`` and ``b = (128 - py) / 128 * half``.

    Raises
    ------
    DataError
        If a pixel lies at 90 degrees or more from the optical axis.
    """
    pixels = _as_tensor(pixels, "pixels")
    _check_last_dim(pixels, 2, "pixels")
    offset = (pixels - _CENTRE).abs()
    if bool((offset >= _MAX_OFFSET).any()):
        raise DataError(f"pixel_to_ray: pixels must lie within {_MAX_OFFSET:.1f} px of the image "
                        f"centre along each axis (viewing angle below 90 degrees)")
    f, right, up = camera_frame(cam, look)
    _check_broadcast(pixels=pixels, cam=f)
    a = (pixels[..., 0] - _CENTRE) / _CENTRE * HALF_FOV
    b = (_CENTRE - pixels[..., 1]) / _CENTRE * HALF_FOV
    ray = f + torch.tan(a).unsqueeze(-1) * right + torch.tan(b).unsqueeze(-1) * up
    return ray / ray.norm(dim=-1, keepdim=True)


def triangulate(rays_origins, rays_dirs, weights=None, *, return_condition: bool = False):
    """Least-squares point closest to a set of lines (rays).

    Minimises ``sum_i w_i |(I - u_i u_i^T)(x - o_i)|^2`` (squared distances of
    ``x`` to the lines ``o_i + t u_i``, ``u_i = unit(dirs_i)``); the solution
    solves ``(sum_i w_i P_i) x = sum_i w_i P_i o_i`` with ``P_i = I - u_i u_i^T``.
    Rays are treated as full lines: the sign of a direction does not matter
    and the point may lie behind a camera (check with :func:`project`).

    When the lines are (nearly) parallel, the system is singular along their
    common direction; the pseudo-inverse then returns the minimiser nearest to
    the weighted mean of the origins. ``return_condition`` exposes the
    smallest eigenvalue of ``sum_i w_i P_i / sum_i w_i`` (0 for parallel
    lines, 1 at most): reject proposals where it is tiny.

    Parameters
    ----------
    rays_origins : (..., N, 3) tensor
        Line origins (e.g. camera positions).
    rays_dirs : (..., N, 3) tensor
        Line directions (need not be unit length; e.g. :func:`pixel_to_ray`).
    weights : (..., N) tensor, optional
        Non-negative weights (e.g. a mask of valid detections); default ones.
    return_condition : bool
        Also return the conditioning measure described above.

    Returns
    -------
    point : (..., 3) tensor
    condition : (...) tensor, only if ``return_condition``
    """
    o, u = _as_tensor(rays_origins, "rays_origins"), _as_tensor(rays_dirs, "rays_dirs")
    _check_last_dim(o, 3, "rays_origins")
    _check_last_dim(u, 3, "rays_dirs")
    _check_broadcast(rays_origins=o, rays_dirs=u)
    o, u = torch.broadcast_tensors(o, u)
    if o.dim() < 2:
        raise DataError(f"triangulate needs rays of shape (..., N, 3), got {tuple(o.shape)}")
    u = u / u.norm(dim=-1, keepdim=True)
    if weights is None:
        w = torch.ones(o.shape[:-1], dtype=o.dtype, device=o.device)
    else:
        w = _as_tensor(weights, "weights").to(o.dtype)
        try:
            w = w.expand(o.shape[:-1])
        except RuntimeError:
            raise DataError(f"weights of shape {tuple(w.shape)} do not match the rays' "
                            f"{tuple(o.shape[:-1])}") from None
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise DataError("triangulate: weights must be finite and non-negative")
    eye = torch.eye(3, dtype=o.dtype, device=o.device)
    proj = eye - u.unsqueeze(-1) * u.unsqueeze(-2)                    # (..., N, 3, 3)
    wsum = w.sum(-1).clamp_min(torch.finfo(o.dtype).tiny)
    a = (w[..., None, None] * proj).sum(-3) / wsum[..., None, None]   # (..., 3, 3)
    b = (w[..., None] * (proj @ o.unsqueeze(-1)).squeeze(-1)).sum(-2) / wsum[..., None]
    centre = (w.unsqueeze(-1) * o).sum(-2) / wsum[..., None]
    resid = b - (a @ centre.unsqueeze(-1)).squeeze(-1)
    point = centre + (torch.linalg.pinv(a, hermitian=True) @ resid.unsqueeze(-1)).squeeze(-1)
    if return_condition:
        return point, torch.linalg.eigvalsh(a)[..., 0]
    return point
