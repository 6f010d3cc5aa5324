"""Real-data metrics of DESIGN.md section 5, and the detector-alone baselines.

Both metrics are computed per frame, averaged over the frames of a video, then
over videos; videos 1-50 of a file (0-based positions 0-49) form split A,
51-100 split B (:func:`split_means`).

*Frame category Jaccard* (:func:`frame_category_jaccard`): the multiset of
categories of the true objects whose centre projects into the image
(:func:`visible_objects`) against the multiset of the method's categories in
that frame; ``|intersection| / |union|`` of multisets, 1 if both are empty.

*Box similarity* (:func:`box_similarity`, needs ``labels2D``): per category,
predicted points are paired with true boxes by the Hungarian algorithm on
``min(1, (dist(point, box centre) / 362)^2)``; a pair is a hit if the point lies
in its box (borders included); the frame score is
``sum_c hits_c / sum_c (|P_c| + |G_c| - hits_c)``, 1 if there is nothing.

*Box similarity without 2D boxes* (:func:`projected_labels2d`): a file without
``labels2D`` (the shared 2021 data) gets pseudo ground-truth boxes. Each true
object visible in a frame gets a box centred on the projection of its labelled
3D position (the same projection as the frame Jaccard's visibility) whose size
is the projection of the category's physical half-extents (metres, along the
camera's right and up axes) at the object's depth. The half-extents come from
the file's own detections that match a true object (same category, box centre
within 20 px of its projection): each such box, back-projected to the object's
depth, gives a width and a height; the category's median is its extent
(:func:`object_extents`). The centres are exact, so the score measures the
location accuracy of a method's objects in the image; the sizes only set how
far a point may stray and still hit.

*Detector alone*: a frame's detections sorted by score, those with
``score > threshold``, at most ``top_n`` (5) of them; their categories (and box
centres, as points). :func:`fit_threshold` picks the threshold maximising the
split-level mean on a set of videos, over all observed scores.

A method that infers a 3D world state (objects with categories and
positions) is scored by projecting its objects into each frame exactly like
the ground truth (:func:`world_state_frame_scores`).

Every projection and visibility test uses the video's own camera
(``Video.camera``: the shared data's 256 x 256 angle-linear camera for the
legacy files); the box-similarity distance scale is that camera's image
diagonal in whole pixels (:func:`box_distance_scale`, 362 for 256 x 256).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from metagen_ppl.util import linear_assignment

from metagen_ppl.domain.camera import DEFAULT_CAMERA, Camera, camera_frame, pixel_to_ray, project, visible
from metagen_ppl.errors import DataError
from metagen_ppl.domain.metagen_data import SPLIT_A_SIZE, Boxes2D, Video, split_of

__all__ = ["BOX_DISTANCE_SCALE", "METRICS", "box_distance_scale", "frame_category_jaccard", "visible_objects",
           "true_categories_per_frame", "box_similarity", "detector_predictions",
           "detector_frame_scores", "world_state_frame_scores", "video_score", "split_means",
           "fit_threshold", "detector_baselines", "object_extents", "projected_labels2d", "calibration"]

#: Distance scale of the box-similarity matching cost: the image diagonal, ``256 * sqrt(2)`` ~ 362 px.
BOX_DISTANCE_SCALE = 362.0
#: Names of the two real-data metrics.
METRICS = ("jaccard", "box")


def box_distance_scale(camera: Optional[Camera] = None) -> float:
    """The box-similarity distance scale of a camera: its image diagonal rounded to whole pixels
    (:data:`BOX_DISTANCE_SCALE`, 362, for the shared data's 256 x 256 images)."""
    camera = DEFAULT_CAMERA if camera is None else camera
    if camera.width == camera.height == 256:
        return BOX_DISTANCE_SCALE
    return float(round(math.hypot(camera.width, camera.height)))


def _np(x):
    if torch.is_tensor(x):
        return x.numpy() if x.device.type == "cpu" and not x.requires_grad else x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- frame category Jaccard
def frame_category_jaccard(true_categories, predicted_categories) -> float:
    """Jaccard index of two multisets of categories.

    Parameters
    ----------
    true_categories, predicted_categories : iterables of hashable labels
        (category indices or names; repeated entries count with multiplicity).

    Returns
    -------
    float
        ``sum_c min(a_c, b_c) / sum_c max(a_c, b_c)`` with ``a_c, b_c`` the
        counts of ``c``; 1.0 if both multisets are empty.
    """
    a, b = _multiset(true_categories), _multiset(predicted_categories)
    union = sum((a | b).values())
    if union == 0:
        return 1.0
    return sum((a & b).values()) / union


def _multiset(x) -> Counter:
    items = _iter(x)
    if type(items) is list and all(type(c) is int for c in items):     # the common case, fast
        return Counter(items)
    return Counter(int(c) if torch.is_tensor(c) or isinstance(c, np.integer) else c for c in items)


def _iter(x):
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return _np(x).reshape(-1).tolist()
    return x


def visible_objects(positions, cams, looks, camera: Optional[Camera] = None) -> torch.Tensor:
    """Which objects' centres project into the image, per frame.

    Parameters
    ----------
    positions : (K, 3) tensor
        Object centres.
    cams, looks : (T, 3) tensors
        Camera positions and look-at points per frame.
    camera : Camera, optional
        The camera model (default the shared data's).

    Returns
    -------
    (T, K) bool tensor
        ``visible(project(position_k, cam_t, look_t))``.
    """
    positions = torch.as_tensor(positions)
    cams, looks = torch.as_tensor(cams), torch.as_tensor(looks)
    if positions.dim() != 2 or positions.shape[-1] != 3:
        raise DataError(f"positions must have shape (K, 3), got {tuple(positions.shape)}")
    if positions.shape[0] == 0:
        return torch.zeros(cams.shape[0], 0, dtype=torch.bool)
    pix, depth = project(positions.unsqueeze(0), cams.unsqueeze(1), looks.unsqueeze(1), camera)
    return visible(pix, depth, camera)


def _require_ground_truth(video: Video) -> None:
    if not video.has_ground_truth:
        raise DataError(f"video {video.index} (path {video.path!r}) has no ground truth ('labels')")


def true_categories_per_frame(video: Video) -> list:
    """Categories (indices) of the true objects visible in each frame: a list of T lists."""
    _require_ground_truth(video)
    vis = visible_objects(video.gt_positions, video.cams, video.looks, video.camera)
    cats = video.gt_categories.tolist()
    return [[cats[k] for k in np.flatnonzero(_np(row))] for row in vis]


# --------------------------------------------------------------------------- box similarity
def _points(x) -> np.ndarray:
    a = np.asarray(_np(x), dtype=float)
    return a.reshape(-1, 2) if a.size else np.zeros((0, 2))


def _boxes(x) -> np.ndarray:
    a = np.asarray(_np(x), dtype=float)
    return a.reshape(-1, 4) if a.size else np.zeros((0, 4))


def _category_counts(points: np.ndarray, boxes: np.ndarray, scale: float = BOX_DISTANCE_SCALE):
    """``(hits, |P| + |G| - hits)`` of one category's Hungarian matching."""
    n_p, n_g = len(points), len(boxes)
    if n_p == 0 or n_g == 0:
        return 0, n_p + n_g
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)
    cost = np.minimum(1.0, (dist / scale) ** 2)
    rows, cols = linear_assignment(cost)
    p, b = points[rows], boxes[cols]
    inside = (p[:, 0] >= b[:, 0]) & (p[:, 0] <= b[:, 2]) & (p[:, 1] >= b[:, 1]) & (p[:, 1] <= b[:, 3])
    hits = int(inside.sum())
    return hits, n_p + n_g - hits


def box_similarity(pred_points_by_category: dict, true_boxes_by_category: dict,
                   scale: float = BOX_DISTANCE_SCALE) -> float:
    """Box similarity of one frame (DESIGN.md section 5).

    Parameters
    ----------
    pred_points_by_category : dict
        category -> ``(n_c, 2)`` predicted points ``(px, py)`` (arrays, tensors or lists).
    true_boxes_by_category : dict
        category -> ``(m_c, 4)`` true boxes ``(x1, y1, x2, y2)`` (top-left,
        bottom-right); the box centre is the midpoint of the corners.
    scale : float
        Distance scale of the matching cost (default 362, the shared data's; see
        :func:`box_distance_scale`).

    Returns
    -------
    float
        ``sum_c hits_c / sum_c (n_c + m_c - hits_c)``; 1.0 if there are no
        points and no boxes. Per category, points and boxes are paired by the
        Hungarian algorithm on ``min(1, (|point - centre| / scale)^2)`` and a pair
        is a hit when the point lies in the box, borders included.
    """
    hits = union = 0
    for c in set(pred_points_by_category) | set(true_boxes_by_category):
        h, u = _category_counts(_points(pred_points_by_category.get(c, ())),
                                _boxes(true_boxes_by_category.get(c, ())), scale)
        hits += h
        union += u
    return 1.0 if union == 0 else hits / union


#: Pixel radius within which a detection of the right category matches a true object's projection
#: (:func:`object_extents`).
EXTENT_MATCH_RADIUS = 20.0
#: Half-extents (metres) used for a category no detection matches (and no other category gives a median).
DEFAULT_HALF_EXTENT = (0.25, 0.25)


def _plane_points(pixels, cam, look, depth, camera=None, frame=None):
    """The points at ``depth`` (along the optical axis) on the rays through ``pixels``, ``(..., 3)``.

    ``frame``: ``camera_frame(cam, look)`` when already computed (the same numbers)."""
    frame = camera_frame(cam, look) if frame is None else frame
    ray = pixel_to_ray(pixels, cam, look, camera, frame=frame)
    f = frame[0]
    t = depth.unsqueeze(-1) / (ray * f).sum(-1, keepdim=True).clamp_min(1e-9)
    return cam + t * ray


def _video_extents(v: Video, radius: float) -> list:
    """``[(category, (half_width, half_height)), ...]`` of one video's matches (:func:`object_extents`), in
    object-then-frame order: all (object, frame, detection) distances at once, the best-scoring near
    detection per (object, frame) (the first of equal scores), the matches' box edges back-projected
    together (one by one, skipping an edge without a viewing ray, if the batch has such an edge)."""
    dtype = v.cams.dtype
    pos = v.gt_positions.to(dtype)
    cam = v.camera
    pix, depth = project(pos.unsqueeze(1), v.cams.unsqueeze(0), v.looks.unsqueeze(0), cam)      # (K,T,2), (K,T)
    vis = visible(pix, depth, cam)
    dets = v.detections
    T, Dm = len(dets), max((len(d) for d in dets), default=0)
    if Dm == 0:
        return []
    centers = torch.zeros(T, Dm, 2, dtype=dtype)
    boxes = torch.zeros(T, Dm, 4, dtype=dtype)
    cats = torch.full((T, Dm), -1, dtype=torch.long)
    scores = torch.full((T, Dm), -math.inf, dtype=dtype)
    for t, d in enumerate(dets):
        n = len(d)
        if n:
            centers[t, :n], boxes[t, :n] = d.centers, d.boxes
            cats[t, :n], scores[t, :n] = d.categories, d.scores.to(dtype)
    gt_c = v.gt_categories.to(torch.long)
    near = ((cats.unsqueeze(0) == gt_c[:, None, None]) & vis.unsqueeze(-1)
            & ((centers.unsqueeze(0) - pix.unsqueeze(2)).norm(dim=-1) <= radius))                  # (K,T,Dm)
    kk, tt = near.any(-1).nonzero(as_tuple=True)                                                    # k, then t
    if len(kk) == 0:
        return []
    best = torch.where(near, scores.unsqueeze(0), torch.full((), -math.inf, dtype=dtype)).argmax(-1)[kk, tt]
    x1, y1, x2, y2 = boxes[tt, best].unbind(-1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    edges = torch.stack([torch.stack([x1, cy], -1), torch.stack([x2, cy], -1),
                         torch.stack([cx, y1], -1), torch.stack([cx, y2], -1)], 1)                 # (P,4,2)
    f, right, up = camera_frame(v.cams[tt], v.looks[tt])                                           # (P,3)
    cams, looks, d = v.cams[tt].unsqueeze(1), v.looks[tt].unsqueeze(1), depth[kk, tt].unsqueeze(1).expand(-1, 4)
    try:
        pts = _plane_points(edges, cams, looks, d, cam, (f.unsqueeze(1), right.unsqueeze(1), up.unsqueeze(1)))
        ok = [True] * len(kk)
    except DataError:                    # some edge at 90 degrees or more from the axis: row by row
        pts, ok = torch.zeros(len(kk), 4, 3, dtype=dtype), []
        for i in range(len(kk)):
            try:
                pts[i] = _plane_points(edges[i], cams[i], looks[i], d[i], cam, (f[i], right[i], up[i]))
                ok.append(True)
            except DataError:
                ok.append(False)
    w = ((pts[:, 1] - pts[:, 0]).norm(dim=-1) / 2).tolist()
    h = ((pts[:, 3] - pts[:, 2]).norm(dim=-1) / 2).tolist()
    cs = gt_c[kk].tolist()
    return [(cs[i], (w[i], h[i])) for i in range(len(kk)) if ok[i]]


def object_extents(videos: Sequence[Video], radius: float = EXTENT_MATCH_RADIUS) -> dict:
    """Physical half-extents ``(half-width, half-height)`` in metres per category, from matched detections.

    For every frame and visible true object, the highest-scoring detection of its category whose
    box centre lies within ``radius`` px of the object's projection is taken; its box edges,
    back-projected to the object's depth, give the object's width and height there. A
    category's extent is the median over its matches; a category without any match gets the
    median over all matches (or :data:`DEFAULT_HALF_EXTENT` when nothing matches at all).

    Returns
    -------
    dict: category index -> ``(half_width, half_height)`` (floats), for the categories of the
    videos' ground truth.
    """
    per_cat = {}
    for v in videos:
        _require_ground_truth(v)
        if v.gt_positions.shape[0] == 0:
            continue
        for c in v.gt_categories.tolist():
            per_cat.setdefault(c, [])
        for c, extent in _video_extents(v, radius):
            per_cat[c].append(extent)
    every = [e for es in per_cat.values() for e in es]
    fallback = tuple(np.median(np.array(every), 0).tolist()) if every else DEFAULT_HALF_EXTENT
    return {c: (tuple(np.median(np.array(es), 0).tolist()) if es else fallback) for c, es in per_cat.items()}


def projected_labels2d(video: Video, extents: dict) -> list:
    """Pseudo ground-truth 2D boxes of one video (a list of T :class:`Boxes2D`), see the module docstring.

    Parameters
    ----------
    video : :class:`~metagen_ppl.domain.metagen_data.Video` with ground truth
    extents : dict from :func:`object_extents` (category -> ``(half_width, half_height)`` metres)
    """
    _require_ground_truth(video)
    dtype = video.cams.dtype
    K, T = video.gt_positions.shape[0], video.num_frames
    if K == 0:
        empty = Boxes2D(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, dtype=dtype), torch.zeros(0, 2, dtype=dtype))
        return [empty for _ in range(T)]
    cats = video.gt_categories
    pos = video.gt_positions.to(dtype)
    fallback = DEFAULT_HALF_EXTENT
    if extents:
        fallback = tuple(np.median(np.array(list(extents.values())), 0).tolist())
    half = torch.tensor([extents.get(int(c), fallback) for c in cats.tolist()], dtype=dtype)      # (K,2)
    cam = video.camera
    _, right, up = camera_frame(video.cams, video.looks)                                         # (T,3)
    centre, depth = project(pos.unsqueeze(1), video.cams.unsqueeze(0), video.looks.unsqueeze(0), cam)  # (K,T,2)
    vis = visible(centre, depth, cam)
    offs = torch.stack([half[:, None, 0:1] * right[None], -half[:, None, 0:1] * right[None],
                        half[:, None, 1:2] * up[None], -half[:, None, 1:2] * up[None]], 2)      # (K,T,4,3)
    edge, _ = project(pos[:, None, None, :] + offs, video.cams[None, :, None], video.looks[None, :, None], cam)
    hw = (edge[:, :, 0, 0] - edge[:, :, 1, 0]).abs() / 2                                        # (K,T)
    hh = (edge[:, :, 3, 1] - edge[:, :, 2, 1]).abs() / 2
    every = torch.stack([centre[..., 0] - hw, centre[..., 1] - hh, centre[..., 0] + hw, centre[..., 1] + hh], -1)
    every_t, centre_t = every.transpose(0, 1), centre.transpose(0, 1)                         # (T,K,4), (T,K,2)
    out = []
    for t, ks in enumerate(vis.T.tolist()):            # each frame's visible objects (elementwise: the same numbers)
        if all(ks):
            out.append(Boxes2D(cats.clone(), every_t[t].clone(), centre_t[t].clone()))
        else:
            idx = torch.tensor([k for k, seen in enumerate(ks) if seen], dtype=torch.long)
            out.append(Boxes2D(cats[idx], every_t[t, idx], centre_t[t, idx]))
    return out


def _group(categories, values) -> dict:
    if type(categories) is list and len(categories) == 0:
        return {}
    cats = _np(categories).reshape(-1)
    vals = np.asarray(_np(values), dtype=float)
    return {int(c): vals[cats == c] for c in np.unique(cats)}


# --------------------------------------------------------------------------- per-frame scoring
def _frame_truth(video: Video, metric: str) -> list:
    """Per frame, what a prediction is scored against."""
    if metric == "jaccard":
        return true_categories_per_frame(video)
    if metric == "box":
        if video.labels2d is None:
            raise DataError(f"video {video.index} (path {video.path!r}) has no 'labels2D': "
                            f"the box similarity needs ground-truth 2D boxes")
        return [_group(b.categories, b.boxes) for b in video.labels2d]
    raise DataError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")


def _score(metric: str, truth, categories, points, scale: float = BOX_DISTANCE_SCALE) -> float:
    if metric == "jaccard":
        return frame_category_jaccard(truth, categories)
    return box_similarity(_group(categories, points), truth, scale)


def detector_predictions(detections, threshold: float = 0.0, top_n: Optional[int] = 5):
    """The detector-alone prediction of one frame.

    Parameters
    ----------
    detections : :class:`~metagen_ppl.domain.metagen_data.Detections`
    threshold : float
        Keep detections with ``score > threshold`` (0: all, scores are >= 0.05).
    top_n : int or None
        Then keep the ``top_n`` highest scores (None: all).

    Returns
    -------
    categories : (n,) long tensor
    points : (n, 2) tensor, box centres
    """
    order = torch.argsort(-detections.scores, stable=True)
    order = order[detections.scores[order] > threshold]
    if top_n is not None:
        order = order[:top_n]
    return detections.categories[order], detections.centers[order]


def _frame_arrays(detections):
    """A frame's detections as numpy arrays sorted by decreasing score (stable)."""
    scores = _np(detections.scores).astype(float).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    cats = _np(detections.categories).reshape(-1)
    return scores[order], cats[order], _np(detections.centers).reshape(-1, 2)[order]


def detector_frame_scores(video: Video, threshold: float = 0.0, top_n: Optional[int] = 5,
                          metric: str = "jaccard") -> np.ndarray:
    """Per-frame score (T,) of the detector alone on one video (see :func:`detector_predictions`)."""
    truth = _frame_truth(video, metric)
    scale = box_distance_scale(video.camera)
    out = np.empty(video.num_frames)
    for t, det in enumerate(video.detections):
        scores, cats, pts = _frame_arrays(det)
        keep = scores > threshold
        cats, pts = cats[keep][:top_n], pts[keep][:top_n]
        out[t] = _score(metric, truth[t], cats.tolist(), pts, scale)
    return out


def world_state_frame_scores(video: Video, categories, positions, metric: str = "jaccard") -> np.ndarray:
    """Per-frame score (T,) of an inferred 3D world state.

    In each frame the method predicts the objects whose centre projects into
    the image (the same rule as for the ground truth): their categories for
    the Jaccard, their projected centres as points for the box similarity.

    Parameters
    ----------
    video : :class:`~metagen_ppl.domain.metagen_data.Video`
    categories : (K,) ints, indices into the video's ``category_names``
    positions : (K, 3) positions
    metric : "jaccard" or "box"
    """
    truth = _frame_truth(video, metric)
    positions = torch.as_tensor(positions, dtype=video.cams.dtype).reshape(-1, 3)
    cats = np.asarray(_np(categories), dtype=int).reshape(-1)
    if len(cats) != positions.shape[0]:
        raise DataError(f"world state has {len(cats)} categories but {positions.shape[0]} positions")
    if positions.shape[0]:
        pix, depth = project(positions.unsqueeze(0), video.cams.unsqueeze(1), video.looks.unsqueeze(1), video.camera)
        vis = _np(visible(pix, depth, video.camera))
        pix = _np(pix)
    else:
        vis = np.zeros((video.num_frames, 0), dtype=bool)
        pix = np.zeros((video.num_frames, 0, 2))
    scale = box_distance_scale(video.camera)
    out = np.empty(video.num_frames)
    for t in range(video.num_frames):
        keep = vis[t]
        out[t] = _score(metric, truth[t], cats[keep].tolist(), pix[t][keep], scale)
    return out


# --------------------------------------------------------------------------- aggregation
def video_score(frame_scores) -> float:
    """Mean of a video's frame scores."""
    a = np.asarray(frame_scores, dtype=float)
    if a.size == 0:
        raise DataError("a video needs at least one frame to be scored")
    return float(a.mean())


def split_means(video_scores, indices: Optional[Sequence[int]] = None) -> dict:
    """Mean of video scores per split.

    Parameters
    ----------
    video_scores : (V,) floats
    indices : (V,) ints, optional
        0-based positions of the videos in their file (``Video.index``);
        default ``0 .. V-1``. Positions below 50 are split A, the rest split B.

    Returns
    -------
    dict
        ``{"A": mean, "B": mean, "all": mean}`` (NaN for an empty split) and
        the numbers of videos ``{"n_A", "n_B", "n_all"}``.
    """
    s = np.asarray(video_scores, dtype=float).reshape(-1)
    idx = np.arange(len(s)) if indices is None else np.asarray(indices).reshape(-1)
    if len(idx) != len(s):
        raise DataError(f"{len(s)} video scores but {len(idx)} indices")
    a = idx < SPLIT_A_SIZE
    out = {}
    for name, sel in (("A", a), ("B", ~a), ("all", np.ones_like(a))):
        out[name] = float(s[sel].mean()) if sel.any() else float("nan")
        out["n_" + name] = int(sel.sum())
    return out


# --------------------------------------------------------------------------- threshold fitting
def _prefix_scores(video: Video, top_n: Optional[int], metric: str):
    """Per frame: ascending scores and the frame score of each kept prefix (0..min(n, top_n))."""
    truth = _frame_truth(video, metric)
    scale = box_distance_scale(video.camera)
    frames = []
    for t, det in enumerate(video.detections):
        scores, cats, pts = _frame_arrays(det)
        cats = cats.tolist()
        m = len(scores) if top_n is None else min(len(scores), top_n)
        values = np.array([_score(metric, truth[t], cats[:k], pts[:k], scale) for k in range(m + 1)])
        frames.append((scores[::-1].copy(), values))
    return frames


def _grid_means(frames, grid: np.ndarray) -> np.ndarray:
    """A video's mean frame score at each threshold of ``grid`` (from :func:`_prefix_scores`)."""
    acc = np.zeros(len(grid))
    for asc, values in frames:
        kept = len(asc) - np.searchsorted(asc, grid, side="right")      # number with score > t
        acc += values[np.minimum(kept, len(values) - 1)]
    return acc / len(frames)


def _best(grid: np.ndarray, per_video: list):
    total = np.mean([_grid_means(frames, grid) for frames in per_video], axis=0)
    best = int(np.flatnonzero(total >= total.max() - 1e-12)[0])        # ties: lowest threshold
    return float(grid[best]), float(total[best])


def _grid(per_video: list, candidates) -> np.ndarray:
    if candidates is None:
        observed = [asc for frames in per_video for asc, _ in frames]
        return np.unique(np.concatenate(observed + [np.zeros(1)]))
    grid = np.unique(np.asarray(candidates, dtype=float).reshape(-1))
    if grid.size == 0:
        raise DataError("fit_threshold: empty candidate grid")
    return grid


def fit_threshold(videos: Sequence[Video], top_n: Optional[int] = 5, metric: str = "jaccard",
                  candidates=None):
    """Detector score threshold maximising the mean score on ``videos``.

    The objective is the mean over videos of the mean over frames of the
    detector-alone score (:func:`detector_frame_scores`, ``score > threshold``,
    top ``top_n``). It only changes at observed scores, so the grid
    ``{0} U {observed scores}`` is exhaustive (a threshold equal to an observed
    score drops that detection); ties go to the lowest threshold.

    Parameters
    ----------
    videos : list of :class:`~metagen_ppl.domain.metagen_data.Video` (e.g. split A)
    top_n : int or None
    metric : "jaccard" or "box"
    candidates : sequence of floats, optional
        Use this grid instead (e.g. ``np.arange(0, 1.01, 0.01)``, the
        original MetaGen code's grid).

    Returns
    -------
    threshold : float
    score : float, the mean score at ``threshold`` on ``videos``
    """
    if not videos:
        raise DataError("fit_threshold needs at least one video")
    per_video = [_prefix_scores(v, top_n, metric) for v in videos]
    return _best(_grid(per_video, candidates), per_video)


def detector_baselines(videos: Sequence[Video], top_n: int = 5, metric: str = "jaccard",
                       fit_on: Optional[Callable[[Video], bool]] = None, candidates=None) -> dict:
    """The two detector-alone baselines of issue 5, per split.

    Parameters
    ----------
    videos : all videos of a file (``Video.index`` decides the splits)
    top_n : int
    metric : "jaccard" or "box"
    fit_on : predicate selecting the videos the threshold is fitted on;
        default: split A (videos 1-50).
    candidates : threshold grid, as in :func:`fit_threshold`

    Returns
    -------
    dict
        ``{"detector": split_means at threshold 0, "detector_fitted": split_means
        at the fitted threshold, "threshold": float, "fit_score": float}``.
    """
    fit_on = fit_on or (lambda v: split_of(v.index) == "A")
    per_video = [_prefix_scores(v, top_n, metric) for v in videos]
    train = [frames for v, frames in zip(videos, per_video) if fit_on(v)]
    if not train:
        raise DataError("detector_baselines: no video to fit the threshold on")
    threshold, fit_score = _best(_grid(train, candidates), train)
    at = np.stack([_grid_means(frames, np.array([0.0, threshold])) for frames in per_video])   # (V, 2)
    idx = [v.index for v in videos]
    return {"detector": split_means(at[:, 0], idx), "detector_fitted": split_means(at[:, 1], idx),
            "threshold": threshold, "fit_score": fit_score}


# --------------------------------------------------------------------------- calibration
def calibration(probabilities, outcomes, bins: int = 10) -> dict:
    """Calibration of probabilities against binary outcomes (e.g. objects' existence probabilities
    against whether each matches a true object).

    Parameters
    ----------
    probabilities : (n,) floats in [0, 1]
    outcomes : (n,) bools
    bins : int
        Equal-width bins over [0, 1] (the last one closed).

    Returns
    -------
    dict
        ``ece``: the expected calibration error ``sum_b (n_b / n) |mean outcome_b - mean probability_b|``;
        ``brier``: ``mean (p - y)^2``; ``bins``: per non-empty bin ``{"lo", "hi", "n", "mean_probability",
        "frequency"}`` (the reliability diagram); ``n``.
    """
    p = np.asarray(probabilities, dtype=float).reshape(-1)
    y = np.asarray(outcomes, dtype=float).reshape(-1)
    if p.shape != y.shape:
        raise DataError(f"calibration: {p.size} probabilities but {y.size} outcomes")
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise DataError("calibration: probabilities must be finite and in [0, 1]")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise DataError(f"calibration: bins must be a positive integer, got {bins!r}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        if not sel.any():
            continue
        mp, fr = float(p[sel].mean()), float(y[sel].mean())
        ece += sel.sum() / p.size * abs(fr - mp)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                     "mean_probability": mp, "frequency": fr})
    return {"ece": float(ece), "brier": float(((p - y) ** 2).mean()) if p.size else float("nan"), "bins": rows,
            "n": int(p.size)}
