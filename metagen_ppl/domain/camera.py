"""Cameras: the angle-linear camera of the MetaGen data (DESIGN.md section 2) and a pinhole camera.

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

Any camera (issue 13): a :class:`Camera` describes the image and the
projection of a file's videos (the camera *pose* -- position and look-at
point -- is per frame and lives in the data). Two models share the camera frame
``(f, right, up)`` above:

* :class:`AngleLinearCamera` ``(width, height, fov_deg, fov_y_deg)``:
  ``px = W/2 + (W/2) atan2(s.right, depth) / half_x``,
  ``py = H/2 - (H/2) atan2(s.up, depth) / half_y`` with ``half_x = radians(fov_deg / 2)``
  (``fov_y_deg`` defaults to ``fov_deg * H / W``: square pixels). Its default,
  :data:`DEFAULT_CAMERA`, is the camera of the shared data (256 x 256, 55 degrees).
* :class:`PinholeCamera` ``(fx, fy, cx, cy, width, height)``:
  ``px = cx + fx (s.right) / depth``, ``py = cy - fy (s.up) / depth``.

Both: visible iff ``depth > 0`` and ``0 <= px <= width``, ``0 <= py <= height``.
Each has a nominal horizontal field of view :attr:`Camera.half_fov` (half of it,
radians) that a model may refine (the projective model learns it, see
:mod:`metagen_ppl.models.projective.generative`): for the angle-linear camera a
half field of view ``h`` replaces ``half_x`` (and ``half_y`` scales with it); for
the pinhole camera ``h`` rescales both focal lengths by ``tan(half_fov) / tan(h)``
(``half_fov = atan(W / (2 fx))``; the principal point stays). JSON:
:meth:`Camera.to_json` / :func:`camera_from_json`; command line: :func:`parse_camera`.

All functions are differentiable torch code that broadcast over leading
dimensions: points ``(..., 3)`` against cameras and look-at points
``(..., 3)``, e.g. objects ``(K, 1, 3)`` against frames ``(1, T, 3)`` give
``(K, T)`` outputs. A camera at its own look-at point, or one looking straight
up or down (``d_x = d_z = 0``), has no image axes: the results are NaN there
(:mod:`metagen_ppl.domain.metagen_data` refuses such cameras when loading).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

import torch

from metagen_ppl.errors import DataError
from metagen_ppl.util import broadcast_shapes

__all__ = ["IMAGE_SIZE", "FOV_DEG", "HALF_FOV", "CAMERA_MODELS", "Camera", "AngleLinearCamera", "PinholeCamera",
           "DEFAULT_CAMERA", "camera_from_json", "parse_camera", "camera_frame", "project", "visible",
           "pixel_to_ray", "triangulate"]

#: Width and height of the images, in pixels.
IMAGE_SIZE = 256
#: Field of view, horizontal and vertical, in degrees.
FOV_DEG = 55.0
#: Half the field of view, in radians (``radians(27.5)``).
HALF_FOV = math.radians(FOV_DEG / 2)

_CENTRE = IMAGE_SIZE / 2

#: The camera models a file may declare (``"model"`` of its camera description).
CAMERA_MODELS = ("angle-linear", "pinhole")

#: A pinhole projection divides by at least this depth (metres), so that points at or behind the
#: camera (never visible) still get finite pixels and gradients.
PINHOLE_MIN_DEPTH = 1e-6


class Camera:
    """The image and projection shared by the videos of a file (the pose is per frame).

    Subclasses: :class:`AngleLinearCamera` (the shared data's) and :class:`PinholeCamera`.
    Every method broadcasts over leading dimensions; ``half_fov`` (optional, a float or a
    0-dim tensor, differentiable) replaces the nominal :attr:`half_fov` (see the module
    docstring); ``None`` uses the nominal camera exactly.
    """

    model = "camera"
    width: float
    height: float
    learn_fov: bool

    # ----------------------------------------------------------------- geometry
    @property
    def half_fov(self) -> float:
        """Nominal half of the horizontal field of view (radians)."""
        raise NotImplementedError

    @property
    def fov_deg(self) -> float:
        """Nominal horizontal field of view (degrees)."""
        return math.degrees(2 * self.half_fov)

    @property
    def log_area(self) -> float:
        """``log(width * height)``, the log of the image area in pixels^2."""
        if self.width == self.height:
            return 2 * math.log(self.width)
        return math.log(self.width) + math.log(self.height)

    @property
    def center(self) -> tuple:
        """``(width / 2, height / 2)``: the middle of the image."""
        return self.width / 2, self.height / 2

    def pixels(self, x, y, depth, half_fov=None):
        """Pixel coordinates ``(px, py)`` (each ``(...)``) of points at camera coordinates ``x = s.right``,
        ``y = s.up``, ``depth = s.f`` (each ``(...)``)."""
        raise NotImplementedError

    def jacobian(self, x, y, depth, f, right, up, half_fov=None):
        """``d px / d p`` and ``d py / d p`` (each ``(..., 3)``) of :meth:`pixels` with respect to the world
        point ``p``, given its camera coordinates ``(...)`` and the camera frame ``f, right, up`` ``(..., 3)``."""
        raise NotImplementedError

    def ray_coefficients(self, pixels, half_fov=None, clamp: Optional[float] = None):
        """``(a, b)`` (each ``(...)``) such that ``f + a right + b up`` is the viewing ray of ``pixels``
        ``(..., 2)``. ``clamp`` (angle-linear only) limits the viewing angles to ``[-clamp, clamp]`` radians."""
        raise NotImplementedError

    def inside(self, pixels) -> torch.Tensor:
        """``(...)`` bool: ``0 <= px <= width`` and ``0 <= py <= height`` (borders inclusive)."""
        if self.width == self.height:
            return ((pixels >= 0) & (pixels <= self.width)).all(dim=-1)
        return (pixels >= 0).all(dim=-1) & (pixels[..., 0] <= self.width) & (pixels[..., 1] <= self.height)

    def check_pixels(self, pixels) -> None:
        """:class:`DataError` for pixels that have no viewing ray (nothing to check by default)."""

    # ----------------------------------------------------------------- description
    def to_json(self) -> dict:
        """The camera description of the detection schema (``{"model": ..., ...}``)."""
        return {"model": self.model, **{k: v for k, v in dataclasses.asdict(self).items()}}

    def describe(self) -> str:
        """One line for logs, e.g. ``pinhole 640x480 fx=500 fy=500 cx=320 cy=240``."""
        fields = " ".join(f"{k}={v:g}" for k, v in self.to_json().items()
                          if k not in ("model", "width", "height", "learn_fov") and v is not None)
        return f"{self.model} {self.width:g}x{self.height:g} {fields}"


def _positive(value, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DataError(f"{where}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _finite(value, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)


def _fov(value, where: str, name: str) -> float:
    value = _positive(value, where, name)
    if not value < 180:
        raise DataError(f"{where}: {name} must be below 180 degrees, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class AngleLinearCamera(Camera):
    """The angle-linear camera: pixels linear in the viewing angle (DESIGN.md section 2).

    Attributes
    ----------
    width, height : float
        Image size in pixels (default 256 x 256).
    fov_deg : float
        Horizontal field of view in degrees (default 55).
    fov_y_deg : float, optional
        Vertical field of view; default ``fov_deg * height / width`` (the same angle per pixel).
    learn_fov : bool
        Whether a model may refine the field of view (default True).
    """

    width: float = float(IMAGE_SIZE)
    height: float = float(IMAGE_SIZE)
    fov_deg: float = FOV_DEG
    fov_y_deg: Optional[float] = None
    learn_fov: bool = True

    model = "angle-linear"

    def __post_init__(self):
        where = "angle-linear camera"
        object.__setattr__(self, "width", _positive(self.width, where, "width"))
        object.__setattr__(self, "height", _positive(self.height, where, "height"))
        object.__setattr__(self, "fov_deg", _fov(self.fov_deg, where, "fov_deg"))
        fy = self.fov_deg * self.height / self.width if self.fov_y_deg is None else self.fov_y_deg
        object.__setattr__(self, "fov_y_deg", _fov(fy, where, "fov_y_deg"))
        object.__setattr__(self, "learn_fov", bool(self.learn_fov))

    @property
    def half_fov(self) -> float:
        return math.radians(self.fov_deg / 2)

    @property
    def half_x(self) -> float:
        """Half the horizontal field of view (radians)."""
        return math.radians(self.fov_deg / 2)

    @property
    def half_y(self) -> float:
        """Half the vertical field of view (radians)."""
        return math.radians(self.fov_y_deg / 2)

    def halves(self, half_fov=None):
        """``(half_x, half_y)`` for a horizontal half field of view ``half_fov`` (nominal when ``None``)."""
        if half_fov is None:
            return self.half_x, self.half_y
        if self.fov_y_deg == self.fov_deg:
            return half_fov, half_fov
        return half_fov, half_fov * (self.half_y / self.half_x)

    def pixels(self, x, y, depth, half_fov=None):
        hx, hy = self.halves(half_fov)
        kx = self.width / 2 / hx
        ky = self.height / 2 / hy
        px = self.width / 2 + kx * torch.atan2(x, depth)
        py = self.height / 2 - ky * torch.atan2(y, depth)
        return px, py

    def jacobian(self, x, y, depth, f, right, up, half_fov=None):
        hx, hy = self.halves(half_fov)
        kx = self.width / 2 / hx
        ky = self.height / 2 / hy
        z = depth
        rx = (x * x + z * z).clamp_min(1e-12).unsqueeze(-1)
        ry = (y * y + z * z).clamp_min(1e-12).unsqueeze(-1)
        jx = kx * (z.unsqueeze(-1) * right - x.unsqueeze(-1) * f) / rx
        jy = -ky * (z.unsqueeze(-1) * up - y.unsqueeze(-1) * f) / ry
        return jx, jy

    def ray_coefficients(self, pixels, half_fov=None, clamp: Optional[float] = None):
        hx, hy = self.halves(half_fov)
        cx, cy = self.width / 2, self.height / 2
        a = (pixels[..., 0] - cx) / cx * hx
        b = (cy - pixels[..., 1]) / cy * hy
        if clamp is not None:
            a, b = a.clamp(-clamp, clamp), b.clamp(-clamp, clamp)
        return torch.tan(a), torch.tan(b)

    def max_offsets(self) -> tuple:
        """Pixels farther than these from the centre (along x, y) are at 90 degrees or more."""
        return (self.width / 2 * (math.pi / 2) / self.half_x, self.height / 2 * (math.pi / 2) / self.half_y)

    def check_pixels(self, pixels) -> None:
        mx, my = self.max_offsets()
        cx, cy = self.center
        if bool(((pixels[..., 0] - cx).abs() >= mx).any()) or bool(((pixels[..., 1] - cy).abs() >= my).any()):
            raise DataError(f"pixel_to_ray: pixels must lie within {mx:.1f} px (x) and {my:.1f} px (y) of the "
                            f"image centre (viewing angle below 90 degrees)")


@dataclasses.dataclass(frozen=True)
class PinholeCamera(Camera):
    """A standard pinhole camera: ``px = cx + fx (s.right) / depth``, ``py = cy - fy (s.up) / depth``.

    Attributes
    ----------
    fx, fy : float
        Focal lengths in pixels.
    cx, cy : float
        Principal point (pixels; image rows grow downwards).
    width, height : float
        Image size in pixels.
    learn_fov : bool
        Whether a model may refine the focal length (one scale for ``fx`` and ``fy``; default True).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: float
    height: float
    learn_fov: bool = True

    model = "pinhole"

    def __post_init__(self):
        where = "pinhole camera"
        for name in ("fx", "fy", "width", "height"):
            object.__setattr__(self, name, _positive(getattr(self, name), where, name))
        for name in ("cx", "cy"):
            object.__setattr__(self, name, _finite(getattr(self, name), where, name))
        object.__setattr__(self, "learn_fov", bool(self.learn_fov))

    @property
    def half_fov(self) -> float:
        """``atan(width / (2 fx))``: half the horizontal field of view of the focal length ``fx``."""
        return math.atan(self.width / (2 * self.fx))

    def focal(self, half_fov=None):
        """``(fx, fy)``, both scaled by ``tan(half_fov) / tan(h)`` when a half field of view ``h`` is given."""
        if half_fov is None:
            return self.fx, self.fy
        h = half_fov if torch.is_tensor(half_fov) else torch.tensor(float(half_fov), dtype=torch.float64)
        scale = torch.tan(torch.tensor(self.half_fov, dtype=h.dtype)) / torch.tan(h)
        return self.fx * scale, self.fy * scale

    def pixels(self, x, y, depth, half_fov=None):
        fx, fy = self.focal(half_fov)
        z = depth.clamp_min(PINHOLE_MIN_DEPTH)
        return self.cx + fx * x / z, self.cy - fy * y / z

    def jacobian(self, x, y, depth, f, right, up, half_fov=None):
        fx, fy = self.focal(half_fov)
        z = depth.clamp_min(PINHOLE_MIN_DEPTH).unsqueeze(-1)
        z2 = z * z
        jx = fx * (z * right - x.unsqueeze(-1) * f) / z2
        jy = -fy * (z * up - y.unsqueeze(-1) * f) / z2
        return jx, jy

    def ray_coefficients(self, pixels, half_fov=None, clamp: Optional[float] = None):
        fx, fy = self.focal(half_fov)
        return (pixels[..., 0] - self.cx) / fx, (self.cy - pixels[..., 1]) / fy


#: The camera of the shared data: angle-linear, 256 x 256 pixels, 55 degrees.
DEFAULT_CAMERA = AngleLinearCamera()

_CAMERA_FIELDS = {"angle-linear": (AngleLinearCamera, (), ("width", "height", "fov_deg", "fov_y_deg", "learn_fov")),
                  "pinhole": (PinholeCamera, ("fx", "fy", "cx", "cy", "width", "height"), ("learn_fov",))}


def camera_from_json(obj, where: str = "camera") -> Camera:
    """A :class:`Camera` from its description (the ``camera`` object of the detection schema).

    ``{"model": "angle-linear", "width": 256, "height": 256, "fov_deg": 55}`` (every field but
    ``model`` optional: the shared data's values; ``fov_y_deg`` optional) or
    ``{"model": "pinhole", "fx": .., "fy": .., "cx": .., "cy": .., "width": .., "height": ..}`` (all
    required); both take ``"learn_fov": true|false``.

    Raises
    ------
    DataError
        Naming ``where``: not an object, an unknown model, missing intrinsics, an unknown field, a bad value.
    """
    if isinstance(obj, Camera):
        return obj
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a camera must be a JSON object with a 'model' "
                        f"({' or '.join(CAMERA_MODELS)}), got {type(obj).__name__}")
    model = obj.get("model")
    if model is None:
        raise DataError(f"{where}: missing field 'model' (the camera model: {' or '.join(CAMERA_MODELS)})")
    if model not in _CAMERA_FIELDS:
        raise DataError(f"{where}: unknown camera model {model!r} (known: {', '.join(CAMERA_MODELS)})")
    cls, required, optional = _CAMERA_FIELDS[model]
    unknown = [k for k in obj if k != "model" and k not in required + optional]
    if unknown:
        raise DataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} of a {model} camera "
                        f"(fields: {', '.join(required + optional)})")
    missing = [k for k in required if k not in obj]
    if missing:
        raise DataError(f"{where}: missing intrinsics {', '.join(missing)} (a {model} camera needs "
                        f"{', '.join(required)})")
    kwargs = {k: obj[k] for k in required + optional if k in obj and obj[k] is not None}
    if "learn_fov" in kwargs and not isinstance(kwargs["learn_fov"], bool):
        raise DataError(f"{where}: learn_fov must be true or false, got {kwargs['learn_fov']!r}")
    try:
        return cls(**kwargs)
    except DataError as e:
        raise DataError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def _camera_value(key: str, text: str, where: str):
    if key == "learn_fov":
        low = text.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        raise DataError(f"{where}: learn_fov must be true or false, got {text!r}")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {key} must be a number, got {text!r}") from None


def parse_camera(spec, where: str = "--camera") -> Camera:
    """A camera from a command-line value (or anything :func:`camera_from_json` takes).

    Accepted: ``MODEL[:KEY=VALUE,...]`` (e.g. ``pinhole:fx=500,fy=500,cx=320,cy=240,width=640,height=480``
    or ``angle-linear:fov_deg=60,width=320,height=240``), JSON text (``{"model": ...}``), or the path of a
    JSON file holding a camera description or an object with a ``camera`` field (e.g. a detection file).
    """
    if isinstance(spec, (Camera, dict)):
        return camera_from_json(spec, where)
    if not isinstance(spec, (str, os.PathLike)):
        raise DataError(f"{where}: expected a camera description, got {type(spec).__name__}")
    text = os.fspath(spec).strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e})") from None
        return camera_from_json(obj, where)
    if os.path.isfile(text) or text.endswith(".json"):
        try:
            with open(text, encoding="utf-8") as fh:
                obj = json.load(fh)
        except OSError as e:
            raise DataError(f"{where}: cannot read {text!r}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: {text!r} is not valid JSON ({e})") from None
        if isinstance(obj, dict) and "model" not in obj and "camera" in obj:
            obj = obj["camera"]
        return camera_from_json(obj, f"{where} {text}")
    model, _, rest = text.partition(":")
    obj = {"model": model.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise DataError(f"{where}: expected KEY=VALUE, got {item!r} (e.g. "
                            "pinhole:fx=500,fy=500,cx=320,cy=240,width=640,height=480)")
        obj[key] = _camera_value(key, value, where)
    return camera_from_json(obj, where)


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
        broadcast_shapes(*(t.shape[:-1] for t in tensors.values()))
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


def project(points, cam, look, camera: Optional[Camera] = None):
    """Pixel coordinates and depth of 3D points seen from cameras.

    Parameters
    ----------
    points : (..., 3) tensor
        World points (metres, y up).
    cam, look : (..., 3) tensors
        Camera positions and look-at points; broadcast against ``points``
        (objects ``(K, 1, 3)`` and frames ``(T, 3)`` give ``(K, T)`` results).
    camera : Camera, optional
        The camera model; default :data:`DEFAULT_CAMERA` (the shared data's).

    Returns
    -------
    pixels : (..., 2) tensor
        ``(px, py)``: column and row in the image (256 x 256 by default),
        ``(128, 128)`` at the centre of the default camera, rows growing
        downwards. Points at or behind the camera (``depth <= 0``) get pixels
        too (far outside the image, or anywhere for a pinhole camera), but
        :func:`visible` rejects them.
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
    camera = DEFAULT_CAMERA if camera is None else camera
    if isinstance(camera, AngleLinearCamera):     # the reference formula of DESIGN.md (its order of operations)
        cx, cy = camera.center
        px = cx + cx * torch.atan2(x, depth) / camera.half_x
        py = cy - cy * torch.atan2(y, depth) / camera.half_y
    else:
        px, py = camera.pixels(x, y, depth)
    return torch.stack([px, py], dim=-1), depth


def visible(pixels, depth, camera: Optional[Camera] = None):
    """Whether projected points are in the image.

    Parameters
    ----------
    pixels : (..., 2) tensor
        Pixel coordinates from :func:`project`.
    depth : (...) tensor
        Depths from :func:`project`.
    camera : Camera, optional
        The camera model (its image size); default :data:`DEFAULT_CAMERA`.

    Returns
    -------
    (...) bool tensor
        ``depth > 0`` and ``0 <= px <= width`` and ``0 <= py <= height`` (256
        by default; borders inclusive, as in the original MetaGen code).
    """
    pixels, depth = _as_tensor(pixels, "pixels"), _as_tensor(depth, "depth")
    _check_last_dim(pixels, 2, "pixels")
    _check_broadcast(pixels=pixels, depth=depth.unsqueeze(-1))
    inside = (DEFAULT_CAMERA if camera is None else camera).inside(pixels)
    return inside & (depth > 0)


def pixel_to_ray(pixels, cam, look, camera: Optional[Camera] = None, frame=None):
    """Unit direction of the ray from the camera through a pixel.

    The inverse of :func:`project`: every point ``cam + t * ray`` (``t > 0``)
    projects to ``pixels``.

    Parameters
    ----------
    pixels : (..., 2) tensor
        Pixel coordinates ``(px, py)``; for the angle-linear camera any finite
        values with viewing angles below 90 degrees (default camera:
        ``|px - 128|, |py - 128| < 128 * 90 / 27.5``, about 419 px), not only
        those inside the image; for a pinhole camera any finite values.
    cam, look : (..., 3) tensors
        Camera positions and look-at points (broadcast against ``pixels``).
    camera : Camera, optional
        The camera model; default :data:`DEFAULT_CAMERA`.
    frame : tuple of three (..., 3) tensors, optional
        ``camera_frame(cam, look)`` when the caller has it already (the same numbers, computed once).

    Returns
    -------
    (..., 3) tensor
        Unit direction ``unit(f + a right + b up)``: angle-linear
        ``a = tan((px - 128) / 128 * half)``, ``b = tan((128 - py) / 128 * half)``
        (default camera); pinhole ``a = (px - cx) / fx``, ``b = (cy - py) / fy``.

    Raises
    ------
    DataError
        If a pixel lies at 90 degrees or more from the optical axis (angle-linear).
    """
    pixels = _as_tensor(pixels, "pixels")
    _check_last_dim(pixels, 2, "pixels")
    camera = DEFAULT_CAMERA if camera is None else camera
    camera.check_pixels(pixels)
    f, right, up = camera_frame(cam, look) if frame is None else frame
    _check_broadcast(pixels=pixels, cam=f)
    a, b = camera.ray_coefficients(pixels)
    ray = f + a.unsqueeze(-1) * right + b.unsqueeze(-1) * up
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
