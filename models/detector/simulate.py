"""Simulated scenes of M3 in the multi-scene JSON format, and the model's JSON reader."""

from __future__ import annotations

import math

import numpy as np
import torch

from metagen_ppl.domain.metagen_data import CATEGORIES, COCO_TO_CATEGORY
from metagen_ppl.domain.scenes import parse_scenes
from metagen_ppl.errors import DataError
from metagen_ppl.models.detector.generative import DEFAULT_BOX, check_V


_COCO_OF = {v: k for k, v in COCO_TO_CATEGORY.items()}


def coco_id(category: int) -> int:
    """COCO id of category index ``category`` (0..4)."""
    return _COCO_OF[int(category)]


def simulate(num_scenes, num_frames, seed, *, rates=None, hallucination=None, scale=0.3,
             min_objects=1, max_objects=3, box=DEFAULT_BOX, rate_range=(0.3, 0.95),
             hall_range=(0.05, 0.8), emission="poisson", num_categories=len(CATEGORIES), **_):
    """Draw scenes, frames, detections and truth, in the multi-scene JSON format.

    Parameters
    ----------
    num_scenes, num_frames : int
    seed : int
    rates, hallucination : (C,) sequences, optional
        The detector's ``V``; default: drawn uniformly from ``rate_range`` and
        ``hall_range`` per category (with ``seed``).
    scale : float
        Location noise ``sigma`` of real detections (metres).
    min_objects, max_objects : int
        Objects per scene, uniform in this range; categories uniform, locations
        uniform in ``box`` (y drawn in the lower fifth of the box, as objects on a floor).
    emission : {"poisson", "bernoulli"}
        ``"poisson"``: each object yields ``Poisson(r_c)`` detections per frame
        (the model itself); ``"bernoulli"``: at most one, with probability
        ``min(r_c, 1)`` (MetaGen's detector; the model is then slightly misspecified).

    Returns
    -------
    list of scene dicts (see :mod:`metagen_ppl.domain.scenes`): ``{"path", "views":
    [{"detections": {"labels", "scores", "position"}}], "labels": [{"category_name",
    "position"}], "detector_truth": {"detection_rate": {...}, "hallucination_rate": {...},
    "scale": sigma}, "box": [[lower], [upper]]}``.
    """
    if emission not in ("poisson", "bernoulli"):
        raise DataError(f"emission must be 'poisson' or 'bernoulli', got {emission!r}")
    for name, val in (("num_scenes", num_scenes), ("num_frames", num_frames), ("min_objects", min_objects),
                      ("max_objects", max_objects), ("num_categories", num_categories)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise DataError(f"{name} must be an integer, got {val!r}")
    if num_scenes < 1 or num_frames < 1:
        raise DataError("num_scenes and num_frames must be at least 1")
    if not 0 <= min_objects <= max_objects:
        raise DataError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not 1 <= num_categories <= len(CATEGORIES):
        raise DataError(f"num_categories must be in 1..{len(CATEGORIES)} (the named categories), "
                        f"got {num_categories}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise DataError(f"scale (the location noise sigma) must be a finite number > 0, got {scale!r}")
    try:
        b = np.asarray(box, dtype=float)
    except (TypeError, ValueError):
        b = np.zeros(0)
    if b.shape != (2, 3) or not np.isfinite(b).all() or not (b[1] > b[0]).all():
        raise DataError(f"box must be ((x0, y0, z0), (x1, y1, z1)) with upper > lower, got {box!r}")
    C = int(num_categories)
    rng = np.random.default_rng(seed)
    r = np.asarray(rates, float) if rates is not None else rng.uniform(*rate_range, size=C)
    h = np.asarray(hallucination, float) if hallucination is not None else rng.uniform(*hall_range, size=C)
    check_V({"rates": r, "hallucination": h}, C)
    lo, hi = np.asarray(box[0], float), np.asarray(box[1], float)
    truth_V = {"detection_rate": {CATEGORIES[c]: float(r[c]) for c in range(C)},
               "hallucination_rate": {CATEGORIES[c]: float(h[c]) for c in range(C)},
               "scale": float(scale)}
    out = []
    for s in range(num_scenes):
        k = int(rng.integers(min_objects, max_objects + 1))
        cats = rng.integers(0, C, size=k)
        locs = lo + rng.uniform(size=(k, 3)) * (hi - lo)
        locs[:, 1] = lo[1] + rng.uniform(size=k) * (hi[1] - lo[1]) * 0.2
        views = []
        for _t in range(num_frames):
            labels, pos, scores = [], [], []
            for j in range(k):
                if emission == "poisson":
                    m = int(rng.poisson(r[cats[j]]))
                else:
                    m = int(rng.uniform() < min(r[cats[j]], 1.0))
                for _ in range(m):
                    labels.append(coco_id(cats[j]))
                    pos.append((locs[j] + scale * rng.standard_normal(3)).tolist())
                    scores.append(float(rng.beta(5, 2)))
            for c in range(C):
                for _ in range(int(rng.poisson(h[c]))):
                    labels.append(coco_id(c))
                    pos.append((lo + rng.uniform(size=3) * (hi - lo)).tolist())
                    scores.append(float(rng.beta(2, 5)))
            order = rng.permutation(len(labels))
            views.append({"detections": {"labels": [labels[i] for i in order],
                                         "scores": [scores[i] for i in order],
                                         "position": [pos[i] for i in order]}})
        out.append({"path": f"{s:03d}", "views": views,
                    "labels": [{"category_name": CATEGORIES[int(c)], "position": locs[j].tolist()}
                               for j, c in enumerate(cats)],
                    "detector_truth": {k: (dict(v) if isinstance(v, dict) else v) for k, v in truth_V.items()},
                    "box": [lo.tolist(), hi.tolist()]})
    return out


def data_from_json(obj, dtype=torch.float64) -> dict:
    """The model's data dict from a parsed multi-scene JSON list (see :mod:`metagen_ppl.domain.scenes`)."""
    return parse_scenes(obj, dtype=dtype).data()
