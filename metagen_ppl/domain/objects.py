"""Objects of inferred world states against the truth: matching, precision/recall, V errors.

Scenes and world states are lists ``[{"path", "objects": [{"category_name", "position": [x, y, z]}]}]``
(the layout of ``world_states.json`` and of :func:`truth_objects`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from metagen_ppl.util import linear_assignment

from metagen_ppl.errors import DataError
from metagen_ppl.domain.metagen_data import CATEGORIES, category_index
from metagen_ppl.domain.scenes import SceneSet

def truth_objects(scenes: SceneSet) -> list:
    """Ground truth in the ``scenes`` output layout (``[{"path", "objects": [...]}]``)."""
    if scenes.truth is None:
        raise DataError("these scenes have no ground truth ('labels')")
    return [{"path": p, "objects": [{"category_name": CATEGORIES[int(c)], "position": pos.tolist()}
                                    for c, pos in zip(t["categories"], t["positions"])]}
            for p, t in zip(scenes.paths, scenes.truth)]


def _category_key(name) -> str:
    """A category name for matching: the legacy name (aliases resolved), else the name in lower case."""
    try:
        return CATEGORIES[category_index(name)]
    except KeyError:
        return str(name).strip().lower()


def _objs(scene) -> tuple:
    objs = scene["objects"] if isinstance(scene, dict) else scene
    cats = [_category_key(o["category_name"]) for o in objs]
    pos = np.asarray([o["position"] for o in objs], dtype=float).reshape(-1, 3)
    return cats, pos


def match_objects(pred, true, radius: float = 1.0) -> list:
    """Hungarian matching of predicted to true objects of the same category within ``radius``.

    Parameters
    ----------
    pred, true : ``{"objects": [{"category_name", "position"}]}`` (or the list of objects)

    Returns
    -------
    list of ``(i_pred, j_true, distance)`` for the matched pairs.
    """

    pc, pp = _objs(pred)
    tc, tp = _objs(true)
    if not pc or not tc:
        return []
    dist = np.linalg.norm(pp[:, None, :] - tp[None, :, :], axis=-1)
    same = np.asarray(pc)[:, None] == np.asarray(tc)[None, :]
    ok = same & (dist <= radius)
    big = 1e6
    cost = np.where(ok, dist, big)
    rows, cols = linear_assignment(cost)
    return [(int(i), int(j), float(dist[i, j])) for i, j in zip(rows, cols) if ok[i, j]]


def object_metrics(pred_scenes: Sequence, true_scenes: Sequence, radius: float = 1.0) -> dict:
    """Object-level precision, recall, F1 and location error, pooled over scenes.

    A predicted object is a true positive when the Hungarian matching (same
    category, distance <= ``radius`` metres) pairs it with a true object.

    Returns
    -------
    dict: ``precision, recall, f1, location_error`` (mean distance of matched pairs),
    ``tp, fp, fn, n_pred, n_true``.
    """
    if len(pred_scenes) != len(true_scenes):
        raise DataError(f"{len(pred_scenes)} predicted scenes but {len(true_scenes)} true scenes")
    tp = n_pred = n_true = 0
    dists = []
    for p, t in zip(pred_scenes, true_scenes):
        pairs = match_objects(p, t, radius)
        tp += len(pairs)
        n_pred += len(_objs(p)[0])
        n_true += len(_objs(t)[0])
        dists += [d for _, _, d in pairs]
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "location_error": float(np.mean(dists)) if dists else float("nan"),
            "tp": tp, "fp": n_pred - tp, "fn": n_true - tp, "n_pred": n_pred, "n_true": n_true}


def raw_detection_objects(scenes: SceneSet, link: float = 0.75, min_frame_fraction: float = 0.0) -> list:
    """The raw-detections baseline: objects = clusters of same-category detections.

    Per scene and category, detections are clustered greedily (each joins the
    first cluster whose running centroid is within ``link`` metres, else starts
    one); every cluster seen in more than ``min_frame_fraction`` of the scene's
    frames is an object at its centroid (``0``: every cluster, the detector
    taken at its word).
    """
    out = []
    for s, path in enumerate(scenes.paths):
        m = scenes.det_mask[s]
        pos = scenes.positions[s][m].double().numpy()
        cat = scenes.categories[s][m].numpy()
        frame = torch.arange(m.shape[0]).unsqueeze(-1).expand_as(m)[m].numpy()
        n_frames = int(scenes.frame_mask[s].sum())
        objs = []
        for c in range(len(CATEGORIES)):
            clusters = []                                   # [sum, count, frames]
            for i in np.flatnonzero(cat == c):
                for cl in clusters:
                    if np.linalg.norm(cl[0] / cl[1] - pos[i]) <= link:
                        cl[0] = cl[0] + pos[i]
                        cl[1] += 1
                        cl[2].add(int(frame[i]))
                        break
                else:
                    clusters.append([pos[i].copy(), 1, {int(frame[i])}])
            for total, n, frames in clusters:
                if len(frames) > min_frame_fraction * n_frames:
                    objs.append({"category_name": CATEGORIES[c], "position": (total / n).tolist()})
        out.append({"path": path, "objects": objs})
    return out


def V_error(V: dict, V_true: dict) -> dict:
    """Mean and max absolute errors of ``rates`` and ``hallucination`` against the truth."""
    out = {}
    for key in ("rates", "hallucination"):
        e = (torch.as_tensor(V[key], dtype=torch.float64) - torch.as_tensor(V_true[key], dtype=torch.float64)).abs()
        out[f"{key}_mae"] = float(e.mean())
        out[f"{key}_max"] = float(e.max())
    return out
