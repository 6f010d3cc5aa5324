"""The angle-linear camera of DESIGN.md section 2 (metagen_ppl.domain.camera)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from metagen_ppl.domain.camera import (FOV_DEG, HALF_FOV, IMAGE_SIZE, camera_frame, pixel_to_ray, project,
                                triangulate, visible)
from metagen_ppl.errors import DataError

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "metagen2021")
F64 = torch.float64


def random_cameras(n, seed=0):
    """Cameras like the data's: at height 2 in a room, looking down at points near the floor."""
    g = torch.Generator().manual_seed(seed)
    cam = torch.rand(n, 3, generator=g, dtype=F64) * 11.4 - 5.7
    cam[:, 1] = 2.0
    look = torch.rand(n, 3, generator=g, dtype=F64) * 10 - 5
    look[:, 1] = torch.rand(n, generator=g, dtype=F64) * 1.5
    return cam, look


def pinhole(points, cam, look):
    """A pinhole camera with the same axes and a focal length matched at the border.

    ``px = 128 + F * (s.right) / depth`` with ``F = 128 / tan(half)``, so that a
    point at angle ``half`` along an axis lands on the border (px = 256).
    """
    f, right, up = camera_frame(cam, look)
    s = points - cam
    depth = (s * f).sum(-1)
    focal = 128 / math.tan(HALF_FOV)
    px = 128 + focal * (s * right).sum(-1) / depth
    py = 128 - focal * (s * up).sum(-1) / depth
    return torch.stack([px, py], -1)


def test_constants():
    assert IMAGE_SIZE == 256 and FOV_DEG == 55
    assert HALF_FOV == pytest.approx(math.radians(27.5))


def test_camera_frame_is_orthonormal_and_right_handed_as_specified():
    cam, look = random_cameras(50)
    f, right, up = camera_frame(cam, look)
    basis = torch.stack([f, right, up], -2)                        # (50, 3, 3)
    eye = torch.eye(3, dtype=F64).expand(50, 3, 3)
    assert torch.allclose(basis @ basis.transpose(-1, -2), eye, atol=1e-12)
    assert (up[:, 1] > 0).all()                                    # image up points to the sky
    # DESIGN.md: right = unit([d_z, 0, -d_x]) (= up_world x f: the data's left-handed convention)
    d = look - cam
    expected = torch.stack([d[:, 2], torch.zeros(50, dtype=F64), -d[:, 0]], -1)
    assert torch.allclose(right, expected / expected.norm(dim=-1, keepdim=True))


def test_optical_axis_projects_to_image_centre():
    cam, look = random_cameras(20)
    for t in (0.1, 1.0, 3.7):
        pix, depth = project(cam + t * (look - cam), cam, look)
        assert torch.allclose(pix, torch.full_like(pix, 128.0), atol=1e-9)
        assert torch.allclose(depth, t * (look - cam).norm(dim=-1))
        assert visible(pix, depth).all()


def test_known_pixels_by_hand():
    # Camera at (0, 2, 0) looking along +x: right = unit([0, 0, -1]), up = (0, 1, 0).
    cam = torch.tensor([0.0, 2.0, 0.0], dtype=F64)
    look = torch.tensor([1.0, 2.0, 0.0], dtype=F64)
    # 45 degrees to the right (z = -5 at depth 5): px = 128 + 128 * 45 / 27.5
    # 27.5 degrees up: py = 128 - 128 = 0 (top border)
    pts = torch.tensor([[5.0, 2.0, -5.0], [5.0, 2.0 + 5 * math.tan(HALF_FOV), 0.0]], dtype=F64)
    pix, depth = project(pts, cam, look)
    assert pix[0].tolist() == pytest.approx([128 + 128 * 45 / 27.5, 128.0])
    assert pix[1].tolist() == pytest.approx([128.0, 0.0])
    assert depth.tolist() == pytest.approx([5.0, 5.0])
    assert visible(pix, depth).tolist() == [False, True]


def test_visible_borders_inclusive_and_depth_positive():
    pix = torch.tensor([[0.0, 0.0], [256.0, 256.0], [256.0 + 1e-9, 10.0], [10.0, -1e-9], [128.0, 128.0]],
                       dtype=F64)
    depth = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=F64)
    assert visible(pix, depth).tolist() == [True, True, False, False, False]
    # A point behind the camera is never visible (its angle exceeds 90 degrees).
    cam, look = random_cameras(10)
    pix, depth = project(cam - (look - cam), cam, look)
    assert (depth < 0).all() and not visible(pix, depth).any()


def test_inverse_then_forward_returns_the_pixel():
    cam, look = random_cameras(40, seed=1)
    g = torch.Generator().manual_seed(2)
    pix = torch.rand(40, 2, generator=g, dtype=F64) * 500 - 122    # inside and well outside the image
    ray = pixel_to_ray(pix, cam, look)
    assert torch.allclose(ray.norm(dim=-1), torch.ones(40, dtype=F64))
    for t in (0.5, 4.0):
        back, depth = project(cam + t * ray, cam, look)
        assert (back - pix).abs().max() < 1e-6
        assert (depth > 0).all()


def test_pixel_to_ray_refuses_pixels_beyond_90_degrees():
    cam, look = random_cameras(1)
    with pytest.raises(DataError, match="90 degrees"):
        pixel_to_ray(torch.tensor([[128.0 + 128 * 90 / 27.5, 128.0]], dtype=F64), cam, look)


def test_agrees_with_pinhole_at_centre_and_border():
    # Angle-linear: px = 128 + 128 * atan(x / depth) / half; pinhole with the
    # matched focal length F = 128 / tan(half): px = 128 + F * x / depth. Both
    # depend on x / depth alone, so they coincide exactly where x / depth is 0
    # (the centre) or +-tan(half) (the border); we test the centre and the
    # border along the axes (mid-edges) and the corners. In between they
    # differ: at half the half-angle, angle-linear gives 192, pinhole
    # 128 + 128 tan(half / 2) / tan(half) = 188.17 (max gap ~4 px).
    cam, look = random_cameras(15, seed=3)
    pix = torch.tensor([[128.0, 128.0], [256.0, 128.0], [0.0, 128.0], [128.0, 0.0], [128.0, 256.0],
                        [0.0, 0.0], [256.0, 256.0]], dtype=F64)
    ray = pixel_to_ray(pix.unsqueeze(1), cam, look)                # (7, 15, 3)
    pts = cam + 2.5 * ray
    assert torch.allclose(project(pts, cam, look)[0], pix.unsqueeze(1).expand(7, 15, 2), atol=1e-9)
    assert torch.allclose(pinhole(pts, cam, look), pix.unsqueeze(1).expand(7, 15, 2), atol=1e-9)
    mid = cam + pixel_to_ray(torch.tensor([192.0, 128.0], dtype=F64), cam, look)
    assert torch.allclose(pinhole(mid, cam, look)[:, 0],
                          torch.full((15,), 128 + 128 * math.tan(HALF_FOV / 2) / math.tan(HALF_FOV),
                                     dtype=F64))


def test_vectorised_over_objects_and_frames():
    cam, look = random_cameras(7, seed=4)                          # T = 7 frames
    objs = torch.randn(5, 3, dtype=F64)                            # K = 5 objects
    pix, depth = project(objs[:, None, :], cam, look)
    assert pix.shape == (5, 7, 2) and depth.shape == (5, 7)
    assert visible(pix, depth).shape == (5, 7)
    for k in range(5):
        for t in range(7):
            p, d = project(objs[k], cam[t], look[t])
            assert torch.allclose(pix[k, t], p) and torch.allclose(depth[k, t], d)
    # videos x objects x frames
    pix3, _ = project(objs[None, :, None, :].expand(2, 5, 1, 3), cam[None, None], look[None, None])
    assert pix3.shape == (2, 5, 7, 2)
    rays = pixel_to_ray(pix.clamp(0, 256), cam, look)
    assert rays.shape == (5, 7, 3)


def test_gradients_are_finite_and_correct():
    cam, look = random_cameras(2, seed=5)
    pts = look + 0.3 * torch.randn(2, 3, dtype=F64)
    inputs = tuple(x.clone().requires_grad_(True) for x in (pts, cam, look))
    assert torch.autograd.gradcheck(lambda p, c, l: project(p, c, l), inputs)
    pix = torch.tensor([[10.0, 200.0], [250.0, 3.0]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, c, l: pixel_to_ray(q, c, l), (pix,) + inputs[1:])
    # finite gradients through a whole objects x frames projection
    objs = torch.randn(4, 1, 3, dtype=F64, requires_grad=True)
    c5, l5 = random_cameras(20, seed=6)
    pix, depth = project(objs, c5, l5)
    (pix.sum() + depth.sum()).backward()
    assert torch.isfinite(objs.grad).all()


def test_triangulate_recovers_a_point_from_rays():
    x = torch.tensor([1.0, 0.3, -2.0], dtype=F64)
    cam, look = random_cameras(6, seed=7)
    look = x + 0.5 * (look - x) / (look - x).norm(dim=-1, keepdim=True)   # x in view
    pix, depth = project(x, cam, look)
    assert visible(pix, depth).all()
    rays = pixel_to_ray(pix, cam, look)
    point, cond = triangulate(cam, rays, return_condition=True)
    assert torch.allclose(point, x, atol=1e-9)
    assert 0 < cond <= 1
    # an outlier ray with weight zero is ignored; batched over two sets of rays
    bad = torch.cat([rays[:5], torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)])
    w = torch.tensor([1.0, 1, 1, 1, 1, 0], dtype=F64)
    both = triangulate(torch.stack([cam, cam]), torch.stack([rays, bad]),
                       torch.stack([torch.ones(6, dtype=F64), w]))
    assert both.shape == (2, 3) and torch.allclose(both, x.expand(2, 3), atol=1e-9)


def test_triangulate_parallel_rays_is_finite_and_flagged():
    origins = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    dirs = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64).expand(3, 3)
    point, cond = triangulate(origins, dirs, return_condition=True)
    assert torch.isfinite(point).all() and abs(float(cond)) < 1e-12
    # the minimiser nearest to the mean origin: (0, 1/3, 1/3)
    assert torch.allclose(point, torch.tensor([0.0, 1 / 3, 1 / 3], dtype=F64), atol=1e-9)


def test_bad_shapes_raise_data_error():
    with pytest.raises(DataError):
        project(torch.zeros(4, 2), torch.zeros(3), torch.ones(3))
    with pytest.raises(DataError):
        visible(torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(DataError):
        triangulate(torch.zeros(3), torch.ones(3))


@pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "data_labelled_faster_rcnn.json")),
                    reason="shared MetaGen data (../shared/data/metagen2021) not present")
def test_camera_matches_the_real_data():
    """Ground-truth objects project a few pixels from their confident detections."""
    from metagen_ppl.domain.metagen_data import load_videos

    videos = load_videos(os.path.join(DATA, "data_labelled_faster_rcnn.json"), score_threshold=0.5)
    errors = []
    for v in videos:
        pix, depth = project(v.gt_positions[:, None, :], v.cams, v.looks)       # (K, T, 2)
        for t, det in enumerate(v.detections):
            for c, centre in zip(det.categories.tolist(), det.centers):
                same = (v.gt_categories == c) & (depth[:, t] > 0)
                if same.any():
                    errors.append(float((pix[same, t] - centre).norm(dim=-1).min()))
    errors = np.array(errors)
    assert len(errors) > 500
    assert np.median(errors) < 8.0          # measured: 5.0 px (a mirrored "right" gives ~130 px)
