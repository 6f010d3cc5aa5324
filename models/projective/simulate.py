"""Simulated videos of the projective model, in the MetaGen detection JSON format (any camera, any categories)."""

from __future__ import annotations

import math

import numpy as np
import torch

from metagen_ppl.domain.camera import DEFAULT_CAMERA, parse_camera, visible
from metagen_ppl.domain.metagen_data import CATEGORIES, COCO_TO_CATEGORY, detection_file
from metagen_ppl.errors import DataError
from metagen_ppl.models.projective.generative import project
from metagen_ppl.models.projective.noise import pixel_noise_of


_COCO_OF = {v: k for k, v in COCO_TO_CATEGORY.items()}


def _category_names(num_categories, category_names) -> tuple:
    if category_names is not None:
        names = tuple(str(n) for n in category_names)
        if num_categories is not None and int(num_categories) != len(names):
            raise DataError(f"num_categories {num_categories} but {len(names)} category names")
        if not names:
            raise DataError("category_names is empty")
        return names
    C = len(CATEGORIES) if num_categories is None else int(num_categories)
    if C < 1:
        raise DataError(f"num_categories must be at least 1, got {C}")
    return tuple(CATEGORIES[:C]) if C <= len(CATEGORIES) else tuple(f"category_{c}" for c in range(C))


def simulate(num_videos, num_frames=20, seed=0, *, rates=None, hallucination=None, pixel_scale=5.0,
             min_objects=1, max_objects=3, real_score=(5.0, 2.0), hall_score=(1.2, 6.0),
             num_categories=None, pixel_noise=None, camera=None, category_names=None, **_):
    """Videos of the MetaGen detection JSON format drawn from the model.

    Cameras circle the room at height 2 m (radius 5.5 m), one lap over the
    video, looking at random points near the room's centre; objects are
    uniform over ``x, z in [-4, 4]`` at ``y in [0.2, 0.5]``; each visible
    object yields ``Poisson(r_c)`` detections per frame at ``P_t(mu) + N(0,
    pixel_scale^2 I)`` with scores ``Beta(*real_score)``; each frame has
    ``Poisson(h_c)`` hallucinations of category ``c`` uniform over the image
    with scores ``Beta(*hall_score)``. Detections outside the image are dropped.

    Parameters
    ----------
    num_videos, num_frames, seed : int
    rates, hallucination : (C,) positive floats, optional
        ``r_c`` and ``h_c``; default drawn uniformly from ``[0.2, 1.5]`` and ``[0.01, 0.2]``.
    camera : optional
        The camera (:func:`metagen_ppl.domain.camera.parse_camera`); default the shared data's
        angle-linear 256 x 256 camera.
    num_categories : int, optional
        ``C`` (default 5, or ``len(category_names)``).
    category_names : sequence of str, optional
        The categories' names. Without them (and ``C <= 5``) the detections carry the legacy COCO
        ids of :data:`~metagen_ppl.domain.metagen_data.CATEGORIES` (a legacy file); with them, or
        ``C > 5`` (names ``category_<c>``), each detection's label is its category index: wrap the
        videos with :func:`simulate_file` (or
        :func:`~metagen_ppl.domain.metagen_data.detection_file` and the names).

    Returns
    -------
    list of video dicts (load with :func:`metagen_ppl.domain.metagen_data.load_videos`), with the
    truth ``labels`` and, per video, ``detector_truth`` ``{"detection_rate": {name: r},
    "hallucination_rate": {name: h}, "pixel_scale": sigma}``.
    """
    if num_videos < 1 or num_frames < 1:
        raise DataError("num_videos and num_frames must be at least 1")
    legacy_labels = category_names is None and (num_categories is None or int(num_categories) <= len(CATEGORIES))
    names = _category_names(num_categories, category_names)
    C = len(names)
    cam_model = DEFAULT_CAMERA if camera is None else parse_camera(camera, "camera")
    W, H = cam_model.width, cam_model.height
    noise = pixel_noise_of({"pixel_noise": pixel_noise})
    rng = np.random.default_rng(seed)
    r = np.asarray(rates, float) if rates is not None else rng.uniform(0.2, 1.5, size=C)
    h = np.asarray(hallucination, float) if hallucination is not None else rng.uniform(0.01, 0.2, size=C)
    if r.shape != (C,) or h.shape != (C,) or (r <= 0).any() or (h <= 0).any():
        raise DataError(f"rates and hallucination must be {C} positive numbers")
    truth = {"detection_rate": {names[c]: float(r[c]) for c in range(C)},
             "hallucination_rate": {names[c]: float(h[c]) for c in range(C)},
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
            pix, depth = project(torch.tensor(pos), torch.tensor(cam), torch.tensor(look), camera=cam_model)
            vis = visible(pix, depth, cam_model).numpy()
            pix = pix.numpy()
            rows = []
            for j in range(k):
                if not vis[j]:
                    continue
                for _n in range(int(rng.poisson(r[cats[j]]))):
                    rows.append((cats[j], pix[j] + noise.draw(rng, pixel_scale),
                                 rng.beta(*real_score)))
            for c in range(C):
                for _n in range(int(rng.poisson(h[c]))):
                    u = rng.uniform(0, W, 2) if W == H else rng.uniform(0, (W, H))
                    rows.append((c, u, rng.beta(*hall_score)))
            rows = [row for row in rows if (row[1] >= 0).all() and row[1][0] <= W and row[1][1] <= H]
            order = rng.permutation(len(rows))
            rows = [rows[i] for i in order]
            half = [rng.uniform(5, 20, 2) for _ in rows]
            views.append({"camera": {"x": float(cam[0]), "y": float(cam[1]), "z": float(cam[2])},
                          "lookat": {"x": float(look[0]), "y": float(look[1]), "z": float(look[2])},
                          "detections": {
                              "scores": [float(max(row[2], 0.05)) for row in rows],
                              "labels": [_COCO_OF[int(row[0])] if legacy_labels else int(row[0]) for row in rows],
                              "center": [[float(x) for x in row[1]] for row in rows],
                              "top_left": [[float(x) for x in row[1] - hw] for row, hw in zip(rows, half)],
                              "bottom_right": [[float(x) for x in row[1] + hw] for row, hw in zip(rows, half)]}})
        out.append({"path": f"sim{v:03d}", "views": views,
                    "labels": [{"category_name": names[int(c)], "position": pos[j].tolist()}
                               for j, c in enumerate(cats)],
                    "detector_truth": truth})
    return out


def simulate_file(num_videos, num_frames=20, seed=0, *, camera=None, category_names=None, num_categories=None,
                  **options) -> dict:
    """:func:`simulate` wrapped as a ``metagen-detections`` version 1 file (with its categories and camera).

    Returns
    -------
    dict ``{"schema", "version", "categories", "camera", "videos"}`` (load with
    :func:`metagen_ppl.domain.metagen_data.load_videos`).
    """
    videos = simulate(num_videos, num_frames, seed, camera=camera, category_names=category_names,
                      num_categories=num_categories, **options)
    legacy_labels = category_names is None and (num_categories is None or int(num_categories) <= len(CATEGORIES))
    names = _category_names(num_categories, category_names)
    if legacy_labels:      # COCO ids as labels
        vocab = [{"name": n, "labels": [_COCO_OF[c]]} for c, n in enumerate(names)]
    else:                  # bare names: each label is the category's index
        vocab = list(names)
    return detection_file(videos, vocab, DEFAULT_CAMERA if camera is None else camera)
