"""An independent re-implementation of the real-data frame category Jaccard (DESIGN.md section 5).

Written from the design notes alone, in plain numpy on the raw JSON: it shares no code with
``metagen_ppl`` (no loader, no camera module, no metrics module), so a test that re-scores
``evaluate``'s ``world_states.json`` with it and finds ``metrics.json``'s numbers checks the
scores end to end.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np

HALF = math.radians(27.5)          # the 55-degree angle-linear camera of the data
NAMES = {"potted plant": "plant"}


def _xyz(d):
    return np.array([d["x"], d["y"], d["z"]], dtype=float)


def project(p, cam, look):
    """Pixel ``(px, py)`` and depth of point ``p`` (DESIGN.md section 2, written out again)."""
    d = look - cam
    s = p - cam
    f = d / np.linalg.norm(d)
    right = np.array([d[2], 0.0, -d[0]])
    right /= np.linalg.norm(right)
    up = np.array([-d[0] * d[1], d[0] ** 2 + d[2] ** 2, -d[1] * d[2]])
    up /= np.linalg.norm(up)
    depth = float(s @ f)
    px = 128 + 128 * math.atan2(float(s @ right), depth) / HALF
    py = 128 - 128 * math.atan2(float(s @ up), depth) / HALF
    return px, py, depth


def is_visible(px, py, depth):
    return depth > 0 and 0 <= px <= 256 and 0 <= py <= 256


def jaccard(a, b):
    ca, cb = Counter(a), Counter(b)
    union = sum((ca | cb).values())
    return 1.0 if union == 0 else sum((ca & cb).values()) / union


def video_jaccard(video: dict, objects: list) -> float:
    """Mean over the video's frames of the multiset Jaccard of visible true vs visible inferred categories."""
    truth = [(NAMES.get(o["category_name"], o["category_name"]), np.asarray(o["position"], dtype=float))
             for o in video["labels"]]
    pred = [(o["category_name"], np.asarray(o["position"], dtype=float)) for o in objects]
    scores = []
    for view in video["views"]:
        cam, look = _xyz(view["camera"]), _xyz(view["lookat"])
        t = [c for c, p in truth if is_visible(*project(p, cam, look))]
        q = [c for c, p in pred if is_visible(*project(p, cam, look))]
        scores.append(jaccard(t, q))
    return float(np.mean(scores))


def rescore(data_path: str, world_states_path: str) -> dict:
    """``{"per_video": [...], "A": mean of videos 1-50, "B": mean of 51-100, "all": mean}``."""
    with open(data_path) as f:
        videos = json.load(f)
    if isinstance(videos, dict):              # the versioned schema wraps the videos
        videos = videos["videos"]
    with open(world_states_path) as f:
        world = json.load(f)
    assert [w["path"] for w in world] == [v["path"] for v in videos]
    per = [video_jaccard(v, w["objects"]) for v, w in zip(videos, world)]
    out = {"per_video": per, "all": float(np.mean(per))}
    if len(per) > 50:
        out["A"], out["B"] = float(np.mean(per[:50])), float(np.mean(per[50:]))
    return out
