"""The multi-scene format: reading, writing and validating scenes of 3D detections.

One format for multi-scene data, the one of the real MetaGen detector data
(:mod:`metagen_ppl.domain.metagen_data`, DESIGN.md section 4): a JSON **list of
scenes** (videos), each::

    {"path": "000",                                      # the scene's name (str or int)
     "views": [                                          # the frames, in order
        {"detections": {
            "labels":   [coco_id or category name, ...], # observed categories
            "position": [[x, y, z], ...],                # 3D detections (the simulator's field)
            "scores":   [s, ...]},                       # optional: confidences in [0, 1]
         "camera": ..., "lookat": ..., ...},             # other fields are ignored here
        ...],
     "labels": [{"category_name": "chair", "position": [x, y, z]}, ...],   # optional ground truth
     "detector_truth": {"detection_rate": {"chair": r, ...},               # optional: the true V
                        "hallucination_rate": {"chair": h, ...}, "scale": sigma},
     "box": [[x0, y0, z0], [x1, y1, z1]]}                # optional scene region

The detector model's simulator writes this format; the real
data has the same layout with 2D box centres (``center``) instead of
``position``: such files are refused here with a pointer to the 2D loader
(:func:`metagen_ppl.domain.metagen_data.load_videos`). Detection labels are COCO ids
(chair 62, potted plant 64, tv 72, umbrella 28, bowl 51; other ids are dropped
and counted, as in the real-data loader) or category names. Every field is
validated; a :class:`~metagen_ppl.errors.DataError` names the scene (0-based
index and ``path``) and the frame of the first problem: missing fields,
mismatched list lengths, NaN/inf, unknown category names, negative or zero rates.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from typing import Optional, Sequence

import torch

from metagen_ppl.domain.metagen_data import (CATEGORIES, category_index, check_list_input, COCO_TO_CATEGORY,
                                             finite_number)
from metagen_ppl.errors import DataError
from metagen_ppl.io import atomic_write_json, load_json

__all__ = ["SceneSet", "parse_scenes", "load_scenes", "write_scenes", "parse_V", "V_to_json",
           "DEFAULT_BOX"]

#: Default scene region when a file gives none (the rooms of the real data: 10 m x 10 m, y up).
DEFAULT_BOX = ((-5.0, 0.0, -5.0), (5.0, 2.0, 5.0))


def _where(s: int, path, t: Optional[int] = None) -> str:
    w = f"scene {s}" + (f" (path {path!r})" if path is not None else "")
    return w if t is None else f"{w}, frame {t}"


def _vec(x, n: int, where: str, field: str) -> list:
    if isinstance(x, dict):
        if not all(k in x for k in "xyz"[:n]):
            raise DataError(f"{where}: {field} must have fields {', '.join('xyz'[:n])}, got {x!r:.60}")
        return [finite_number(x[k], where, f"{field}.{k}") for k in "xyz"[:n]]
    if not isinstance(x, (list, tuple)) or len(x) != n:
        raise DataError(f"{where}: {field} must be a list of {n} numbers, got {x!r:.60}")
    return [finite_number(e, where, f"{field}[{i}]") for i, e in enumerate(x)]


def _category_name(name, where: str, field: str) -> int:
    try:
        return category_index(name)
    except KeyError:
        raise DataError(f"{where}: unknown category {name!r} in {field} "
                        f"(known: {', '.join(CATEGORIES)})") from None


def _label(x, where: str, field: str):
    """Category index of a detection label (COCO id or name); ``None`` for an other COCO id."""
    if isinstance(x, str):
        return _category_name(x, where, field)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x != int(x):
        raise DataError(f"{where}: {field} must be a COCO id (integer) or a category name, got {x!r:.60}")
    return COCO_TO_CATEGORY.get(int(x))


def parse_V(obj, where: str = "V", num_categories: int = len(CATEGORIES), dtype=torch.float64) -> dict:
    """A metacognition dict from JSON: ``{"detection_rate": {name: r}, "hallucination_rate": {name: h}}``.

    Also accepts lists of ``C`` numbers, and the tensor keys ``rates`` /
    ``hallucination``. Returns ``{"rates": (C,), "hallucination": (C,)}`` (plus
    ``"scale"`` when given). Every rate must be finite and positive.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: must be a JSON object with detection_rate and hallucination_rate")
    out = {}
    for key, alias in (("detection_rate", "rates"), ("hallucination_rate", "hallucination")):
        val = obj.get(key, obj.get(alias))
        if val is None:
            raise DataError(f"{where}: missing field {key!r}")
        if isinstance(val, dict):
            vec = [None] * num_categories
            for name, v in val.items():
                c = _category_name(name, where, key)
                vec[c] = finite_number(v, where, f"{key}[{name!r}]")
            missing = [CATEGORIES[c] for c, v in enumerate(vec) if v is None]
            if missing:
                raise DataError(f"{where}: {key} lacks categories {', '.join(missing)}")
        elif torch.is_tensor(val) or isinstance(val, (list, tuple)):
            vec = [finite_number(float(v), where, f"{key}[{i}]") for i, v in enumerate(list(val))]
            if len(vec) != num_categories:
                raise DataError(f"{where}: {key} has {len(vec)} values, expected {num_categories}")
        else:
            raise DataError(f"{where}: {key} must be a dict by category name or a list, got {val!r:.60}")
        for c, v in enumerate(vec):
            if v <= 0:
                raise DataError(f"{where}: {key} of category {CATEGORIES[c]!r} is {v}; rates must be > 0")
        out[alias] = torch.tensor(vec, dtype=dtype)
    if obj.get("scale") is not None:
        sc = finite_number(obj["scale"], where, "scale")
        if sc <= 0:
            raise DataError(f"{where}: scale is {sc}; it must be > 0")
        out["scale"] = torch.tensor(sc, dtype=dtype)
    return out


def V_to_json(V: dict) -> dict:
    """``{"detection_rate": {name: r}, "hallucination_rate": {name: h}[, "scale": sigma]}``."""
    r = torch.as_tensor(V["rates"]).tolist()
    h = torch.as_tensor(V["hallucination"]).tolist()
    out = {"detection_rate": {CATEGORIES[c]: float(v) for c, v in enumerate(r)},
           "hallucination_rate": {CATEGORIES[c]: float(v) for c, v in enumerate(h)}}
    if V.get("scale") is not None:
        out["scale"] = float(V["scale"])
    return out


@dataclasses.dataclass
class SceneSet:
    """Scenes padded to common sizes (``S`` scenes, ``T`` frames, ``D >= 1`` detections).

    Attributes
    ----------
    paths : list of S str
    positions : (S, T, D, 3); categories : (S, T, D) long; scores : (S, T, D)
    det_mask : (S, T, D) bool; num_detections : (S, T) long; frame_mask : (S, T) bool
    box : (2, 3) lower and upper corner of the scene region
    truth : list of S ``{"categories": (K,) long, "positions": (K, 3)}``, or None
    true_V : ``{"rates", "hallucination"[, "scale"]}`` from ``detector_truth``, or None
    stats : dict of counts (``n_raw``, ``n_other_category``, ``n_below_threshold``, ``n_kept``)
    """

    paths: list
    positions: torch.Tensor
    categories: torch.Tensor
    scores: torch.Tensor
    det_mask: torch.Tensor
    num_detections: torch.Tensor
    frame_mask: torch.Tensor
    box: torch.Tensor
    truth: Optional[list] = None
    true_V: Optional[dict] = None
    stats: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_frames(self) -> torch.Tensor:
        return self.frame_mask.sum(-1)

    def data(self) -> dict:
        """The data dict of the multi-scene models (the detector model M3): padded tensors."""
        return {"positions": self.positions, "categories": self.categories, "det_mask": self.det_mask,
                "num_detections": self.num_detections, "frame_mask": self.frame_mask, "box": self.box}

    def subset(self, index: Sequence[int]) -> "SceneSet":
        """The scenes at positions ``index`` (re-padded to their own maxima)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        if idx.numel() == 0:
            raise DataError("a scene subset needs at least one scene")
        T = int(self.frame_mask[idx].sum(-1).max())
        D = max(1, int(self.num_detections[idx].max()))
        return SceneSet(
            paths=[self.paths[i] for i in idx.tolist()], positions=self.positions[idx, :T, :D],
            categories=self.categories[idx, :T, :D], scores=self.scores[idx, :T, :D],
            det_mask=self.det_mask[idx, :T, :D], num_detections=self.num_detections[idx, :T],
            frame_mask=self.frame_mask[idx, :T], box=self.box,
            truth=None if self.truth is None else [self.truth[i] for i in idx.tolist()],
            true_V=self.true_V, stats=dict(self.stats))


def parse_scenes(obj, *, box=None, score_threshold: Optional[float] = None, top_n: Optional[int] = None,
                 dtype: torch.dtype = torch.float64) -> SceneSet:
    """Validate parsed multi-scene JSON and pad it into a :class:`SceneSet`.

    Parameters
    ----------
    obj : list
        The parsed JSON list of scenes (format in the module docstring).
    box : ((3,), (3,)), optional
        Scene region; default: the file's ``box`` (all scenes must agree), else
        :data:`DEFAULT_BOX`.
    score_threshold, top_n :
        Keep detections with ``score > score_threshold``, then the ``top_n``
        highest scores per frame (default: all).

    Raises
    ------
    DataError
        Naming the scene and frame of the first malformed field.
    """
    score_threshold = check_list_input(obj, score_threshold, top_n, kind="multi-scene data", items="scenes")
    stats = Counter()
    scenes = []
    file_box = None
    true_V = None
    any_truth = [isinstance(sc, dict) and "labels" in sc for sc in obj]
    for s, sc in enumerate(obj):
        if not isinstance(sc, dict):
            raise DataError(f"scene {s}: expected a JSON object, got {type(sc).__name__}")
        path = sc.get("path", s)
        if isinstance(path, bool) or not isinstance(path, (str, int)):
            raise DataError(f"{_where(s, None)}: field 'path' must be a string, got {path!r:.60}")
        path = str(path)
        if "views" not in sc:
            raise DataError(f"{_where(s, path)}: missing field 'views'")
        views = sc["views"]
        if not isinstance(views, list) or not views:
            raise DataError(f"{_where(s, path)}: 'views' must be a non-empty list of frames")
        frames = []
        for t, view in enumerate(views):
            w = _where(s, path, t)
            if not isinstance(view, dict):
                raise DataError(f"{w}: expected a JSON object, got {type(view).__name__}")
            if "detections" not in view:
                raise DataError(f"{w}: missing field 'detections'")
            det = view["detections"]
            if not isinstance(det, dict):
                raise DataError(f"{w}: 'detections' must be a JSON object")
            if "position" not in det:
                hint = (" (these are 2D detections: use the projective model and "
                        "metagen_ppl.domain.metagen_data.load_videos)" if "center" in det else "")
                raise DataError(f"{w}: detections lack field 'position' (3D locations){hint}")
            if "labels" not in det:
                raise DataError(f"{w}: detections lack field 'labels'")
            pos, lab = det["position"], det["labels"]
            if not isinstance(pos, list) or not isinstance(lab, list):
                raise DataError(f"{w}: detections.position and detections.labels must be lists")
            if len(pos) != len(lab):
                raise DataError(f"{w}: detections.position has {len(pos)} entries but detections.labels "
                                f"has {len(lab)}")
            sco = det.get("scores")
            if sco is not None and (not isinstance(sco, list) or len(sco) != len(lab)):
                n_sco = len(sco) if isinstance(sco, list) else type(sco).__name__
                raise DataError(f"{w}: detections.scores has {n_sco} entries but detections.labels "
                                f"has {len(lab)}")
            rows = []
            for i in range(len(lab)):
                c = _label(lab[i], w, f"detections.labels[{i}]")
                p = _vec(pos[i], 3, w, f"detections.position[{i}]")
                q = 1.0 if sco is None else finite_number(sco[i], w, f"detections.scores[{i}]")
                if not 0.0 <= q <= 1.0:
                    raise DataError(f"{w}: detections.scores[{i}] = {q} is outside [0, 1]")
                stats["n_raw"] += 1
                if c is None:
                    stats["n_other_category"] += 1
                    continue
                rows.append((q, c, p))
            rows.sort(key=lambda r: -r[0])
            if score_threshold is not None:
                kept = [r for r in rows if r[0] > score_threshold]
                stats["n_below_threshold"] += len(rows) - len(kept)
                rows = kept
            if top_n is not None:
                rows = rows[:top_n]
            stats["n_kept"] += len(rows)
            frames.append(rows)
        truth = None
        if any(any_truth):
            if "labels" not in sc:
                raise DataError(f"{_where(s, path)}: missing field 'labels' (ground truth), which other "
                                "scenes have (a file has it everywhere or nowhere)")
            labels = sc["labels"]
            if not isinstance(labels, list):
                raise DataError(f"{_where(s, path)}: 'labels' must be a list")
            cats, poss = [], []
            for k, item in enumerate(labels):
                w = f"{_where(s, path)}: labels[{k}]"
                if not isinstance(item, dict) or "category_name" not in item or "position" not in item:
                    raise DataError(f"{w} must be an object with 'category_name' and 'position'")
                cats.append(_category_name(item["category_name"], _where(s, path), f"labels[{k}].category_name"))
                poss.append(_vec(item["position"], 3, _where(s, path), f"labels[{k}].position"))
            truth = {"categories": torch.tensor(cats, dtype=torch.long),
                     "positions": torch.tensor(poss, dtype=dtype).reshape(-1, 3)}
        if sc.get("box") is not None:
            b = sc["box"]
            if not isinstance(b, list) or len(b) != 2:
                raise DataError(f"{_where(s, path)}: 'box' must be [[x0, y0, z0], [x1, y1, z1]]")
            bb = (_vec(b[0], 3, _where(s, path), "box[0]"), _vec(b[1], 3, _where(s, path), "box[1]"))
            if any(u <= l for l, u in zip(*bb)):
                raise DataError(f"{_where(s, path)}: 'box' upper corner {bb[1]} is not above the lower {bb[0]}")
            if file_box is not None and file_box != bb:
                raise DataError(f"{_where(s, path)}: 'box' {list(bb)} differs from an earlier scene's "
                                f"{list(file_box)}; all scenes share one region")
            file_box = bb
        if sc.get("detector_truth") is not None:
            v = parse_V(sc["detector_truth"], f"{_where(s, path)}: detector_truth", dtype=dtype)
            if true_V is None:
                true_V = v
        scenes.append((path, frames, truth))
    if box is None:
        box = file_box if file_box is not None else DEFAULT_BOX
    box_t = torch.tensor([list(box[0]), list(box[1])], dtype=dtype)
    if box_t.shape != (2, 3) or not bool((box_t[1] > box_t[0]).all()):
        raise DataError(f"box must be ((x0, y0, z0), (x1, y1, z1)) with upper > lower, got {box!r}")
    S = len(scenes)
    T = max(len(f) for _, f, _ in scenes)
    D = max(1, max((len(r) for _, f, _ in scenes for r in f), default=0))
    positions = torch.zeros(S, T, D, 3, dtype=dtype)
    categories = torch.zeros(S, T, D, dtype=torch.long)
    scores = torch.zeros(S, T, D, dtype=dtype)
    ndet = torch.zeros(S, T, dtype=torch.long)
    fmask = torch.zeros(S, T, dtype=torch.bool)
    for s, (_, frames, _) in enumerate(scenes):
        fmask[s, :len(frames)] = True
        for t, rows in enumerate(frames):
            m = len(rows)
            ndet[s, t] = m
            if m:
                scores[s, t, :m] = torch.tensor([r[0] for r in rows], dtype=dtype)
                categories[s, t, :m] = torch.tensor([r[1] for r in rows])
                positions[s, t, :m] = torch.tensor([r[2] for r in rows], dtype=dtype)
    det_mask = torch.arange(D).expand(S, T, D) < ndet.unsqueeze(-1)
    truth = [tr for _, _, tr in scenes] if any(any_truth) else None
    return SceneSet(paths=[p for p, _, _ in scenes], positions=positions, categories=categories,
                    scores=scores, det_mask=det_mask, num_detections=ndet, frame_mask=fmask, box=box_t,
                    truth=truth, true_V=true_V, stats={k: int(stats[k]) for k in
                                                       ("n_raw", "n_other_category", "n_below_threshold",
                                                        "n_kept")})


def load_scenes(source, **kwargs) -> SceneSet:
    """Read a multi-scene JSON file (or an already parsed list, or a :class:`SceneSet`)."""
    if isinstance(source, SceneSet):
        return source
    if isinstance(source, (str, os.PathLike)):
        obj = load_json(source)
        try:
            return parse_scenes(obj, **kwargs)
        except DataError as e:  # name the file as well as the scene and frame
            raise DataError(f"{os.fspath(source)}: {e}") from None
    return parse_scenes(source, **kwargs)


def write_scenes(path, scenes: list) -> None:
    """Write a multi-scene JSON list (e.g. a simulation of the detector model) atomically."""
    if not isinstance(scenes, list):
        raise DataError("write_scenes expects the JSON list of scenes")
    atomic_write_json(path, scenes, indent=None)
