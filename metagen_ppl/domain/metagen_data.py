"""Loader for MetaGen detection files (DESIGN.md section 4; issue 13: any detector, any camera).

A detection file holds, for every video, the camera pose of each frame and
the detections of one detector in it (and optionally the ground truth). Two
layouts are read:

* **Schema ``metagen-detections``, version 1** (any detector, any camera)::

    {"schema": "metagen-detections",                 # required, exactly this
     "version": 1,                                    # required; other versions are refused
     "categories": [                                  # the object categories, in index order
         {"name": "chair", "labels": [62]},           #   detector labels (ints or strings) of the category
         {"name": "plant", "label": 64, "aliases": ["potted plant"]},
         "tv", ...],                                  #   a bare name: its label is its 0-based index
     "camera": {"model": "pinhole", "fx": 500, "fy": 500, "cx": 320, "cy": 240,
                "width": 640, "height": 480},         # or {"model": "angle-linear", "width":, "height":,
                                                      #     "fov_deg":} (metagen_ppl.domain.camera)
     "videos": [ ... ]}                               # the per-video format below

  Labels in ``detections.labels`` are looked up in the categories' labels (a
  string label also by category name or alias); detections of other labels are
  dropped and counted in ``Video.stats``. Ground-truth ``category_name`` values
  must be category names (or aliases). ``categories`` and ``camera`` may be
  left out when they are given to :func:`load_videos` (the command line's
  ``--categories`` and ``--camera``), which also override the file's. Other
  top-level fields are ignored.

* **Legacy**: a bare JSON list of videos (the shared files). It has the five
  categories :data:`CATEGORIES` with their COCO ids :data:`COCO_TO_CATEGORY`
  (:data:`LEGACY_VOCABULARY`) and the 55-degree angle-linear 256 x 256 camera
  (:data:`~metagen_ppl.domain.camera.DEFAULT_CAMERA`), unless overridden.

The per-video format (both layouts; pixels of the file's camera image): a
JSON list of videos, each::

    {"path": "000",                                   # str (or int): the video's name
     "labels": [{"category_name": "umbrella",         # optional: ground-truth objects
                 "position": [x, y, z]}, ...],
     "views": [                                       # the frames, in order
        {"camera": {"x":, "y":, "z":},                # camera position (or [x, y, z])
         "lookat": {"x":, "y":, "z":},                # look-at point (or [x, y, z])
         "detections": {                              # one detector's output
             "scores": [s, ...],                      # confidence, at least 0.05 in the data
             "labels": [coco_id, ...],                # COCO category ids (int)
             "center": [[px, py], ...],               # box centres, pixels of a 256 x 256 image
             "top_left": [[x1, y1], ...],
             "bottom_right": [[x2, y2], ...]},
         "labels2D": [{"category_name":, "top_left": [x1, y1],   # optional (later data):
                       "bottom_right": [x2, y2], "center": [cx, cy]}, ...]},   # true 2D boxes
        ...]}

The three shared files: ``data_labelled_retinanet.json`` and
``data_labelled_faster_rcnn.json`` (100 videos x 20 frames, with detections,
no ``labels2D``) and ``unlabelled_data.json`` (the same videos, cameras and
ground truth, but views without ``detections``: "unlabelled" means "not run
through a detector"). A file must be consistent: ``detections`` (likewise
``labels2D`` and the video-level ``labels``) are present in every frame
(video) or in none; a file without any detections loads with empty
detections and ``Video.has_detections = False``.

In the legacy layout COCO ids map to the five categories :data:`CATEGORIES`
(chair 62, potted plant 64 -> "plant", tv 72, umbrella 28, bowl 51);
detections of any other id are dropped and counted in ``Video.stats``. Every
field is validated and a :class:`~metagen_ppl.errors.DataError` names the video
(0-based index in the file and its ``path``) and the frame (0-based) of the
first problem. Every :class:`Video` carries its file's ``camera`` and
``category_names``; :func:`detection_file` writes the schema.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from typing import Optional

import torch

from metagen_ppl.domain.camera import DEFAULT_CAMERA, Camera, camera_from_json, parse_camera
from metagen_ppl.errors import DataError
from metagen_ppl.io import load_json

__all__ = ["CATEGORIES", "COCO_TO_CATEGORY", "CATEGORY_ALIASES", "SPLIT_A_SIZE", "SCHEMA", "SCHEMA_VERSION",
           "Vocabulary", "LEGACY_VOCABULARY", "Detections", "Boxes2D", "Video", "VideoBatch", "load_videos",
           "parse_videos", "batch_videos", "category_index", "split_of", "parse_categories", "detection_file"]

#: The five object categories, in the order used for category indices.
CATEGORIES = ["chair", "plant", "tv", "umbrella", "bowl"]
#: COCO category id of the detectors -> index into :data:`CATEGORIES`.
COCO_TO_CATEGORY = {62: 0, 64: 1, 72: 2, 28: 3, 51: 4}
#: Other accepted spellings of ground-truth category names (COCO's names).
CATEGORY_ALIASES = {"potted plant": "plant"}
#: Videos ``0 .. SPLIT_A_SIZE - 1`` (1-50 counting from one) form split A, the rest split B.
SPLIT_A_SIZE = 50
#: The ``schema`` of a detection file in the versioned layout, and the version this code reads.
SCHEMA = "metagen-detections"
SCHEMA_VERSION = 1


def split_of(index: int) -> str:
    """Split of the video at 0-based position ``index`` in its file: ``"A"`` or ``"B"``."""
    return "A" if index < SPLIT_A_SIZE else "B"


def category_index(name) -> int:
    """Index in :data:`CATEGORIES` of a category name (aliases accepted); ``KeyError`` if unknown."""
    if isinstance(name, str):
        key = CATEGORY_ALIASES.get(name.strip().lower(), name.strip().lower())
        if key in CATEGORIES:
            return CATEGORIES.index(key)
    raise KeyError(name)


def _norm(name: str) -> str:
    return name.strip().lower()


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The object categories of a detection file and the detector labels that map to them.

    Attributes
    ----------
    names : tuple of C str
        Category names in index order (the model's categories ``0 .. C-1``).
    labels : tuple of (label, index) pairs
        Detector label (int, or str) -> category index; several labels may map to one category.
    aliases : tuple of (name, index) pairs
        Other accepted spellings of category names (matched case-insensitively, like the names).
    """

    names: tuple
    labels: tuple = ()
    aliases: tuple = ()
    _label_map: dict = dataclasses.field(init=False, repr=False, compare=False, default=None)
    _name_map: dict = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self):
        names = tuple(self.names)
        if not names:
            raise DataError("categories: the list is empty (at least one category is needed)")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "labels", tuple((lab, int(i)) for lab, i in self.labels))
        object.__setattr__(self, "aliases", tuple((a, int(i)) for a, i in self.aliases))
        name_map = {}
        for i, n in enumerate(names):
            if not isinstance(n, str) or not n.strip():
                raise DataError(f"categories[{i}]: a category name must be a non-empty string, got {n!r}")
            if _norm(n) in name_map:
                raise DataError(f"categories: the name {n!r} appears twice")
            name_map[_norm(n)] = i
        for a, i in self.aliases:
            name_map.setdefault(_norm(a), i)
        label_map = {}
        for lab, i in self.labels:
            if lab in label_map and label_map[lab] != i:
                raise DataError(f"categories: detector label {lab!r} maps to both {names[label_map[lab]]!r} "
                                f"and {names[i]!r}")
            label_map[lab] = i
        object.__setattr__(self, "_label_map", label_map)
        object.__setattr__(self, "_name_map", name_map)

    @property
    def num_categories(self) -> int:
        return len(self.names)

    def index(self, name) -> int:
        """Index of a category name (aliases accepted, case-insensitive); ``KeyError`` if unknown."""
        if isinstance(name, str) and _norm(name) in self._name_map:
            return self._name_map[_norm(name)]
        raise KeyError(name)

    def label_index(self, label) -> Optional[int]:
        """Category index of a detector label (``None``: not one of the categories). A string label is
        looked up among the labels, then among the names and aliases."""
        i = self._label_map.get(label)
        if i is None and isinstance(label, str):
            i = self._name_map.get(_norm(label))
        return i

    def to_json(self) -> list:
        """The ``categories`` of the detection schema: ``[{"name", "labels", ["aliases"]}, ...]``."""
        out = []
        for i, n in enumerate(self.names):
            item = {"name": n, "labels": [lab for lab, j in self.labels if j == i]}
            al = [a for a, j in self.aliases if j == i]
            if al:
                item["aliases"] = al
            out.append(item)
        return out


#: The legacy files' vocabulary: :data:`CATEGORIES`, :data:`COCO_TO_CATEGORY`, :data:`CATEGORY_ALIASES`.
LEGACY_VOCABULARY = Vocabulary(tuple(CATEGORIES), tuple(COCO_TO_CATEGORY.items()),
                               tuple((a, CATEGORIES.index(n)) for a, n in CATEGORY_ALIASES.items()))


def _label_value(x, where: str):
    """A detector label from JSON or the command line: an int (integral numbers and digit strings
    included) or a non-empty string."""
    if isinstance(x, bool):
        raise DataError(f"{where}: a detector label must be an integer or a string, got {x!r}")
    if isinstance(x, (int, float)) and math.isfinite(x) and x == int(x):
        return int(x)
    if isinstance(x, str) and x.strip():
        t = x.strip()
        return int(t) if t.lstrip("-").isdigit() else t
    raise DataError(f"{where}: a detector label must be an integer or a string, got {x!r}")


def _vocabulary_from_items(items, where: str) -> Vocabulary:
    """Categories from schema items (names or objects), merging repeated names."""
    if not isinstance(items, list):
        raise DataError(f"{where}: must be a list of category names or objects {{\"name\", \"labels\"}}, "
                        f"got {type(items).__name__}")
    names, labels, aliases = [], [], []
    for j, item in enumerate(items):
        w = f"{where}[{j}]"
        if isinstance(item, str):
            item = {"name": item, "labels": [len(names)] if item.strip().lower() not in map(_norm, names) else []}
        if not isinstance(item, dict):
            raise DataError(f"{w}: a category must be a name or an object with 'name', got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{w}: missing or empty field 'name'")
        name = name.strip()
        if _norm(name) in map(_norm, names):
            i = [_norm(n) for n in names].index(_norm(name))
        else:
            i = len(names)
            names.append(name)
        labs = []
        for key in ("label", "id"):
            if key in item:
                labs.append(item[key])
        if "labels" in item:
            if not isinstance(item["labels"], list):
                raise DataError(f"{w}: field 'labels' must be a list, got {type(item['labels']).__name__}")
            labs.extend(item["labels"])
        labels.extend((_label_value(lab, f"{w} label"), i) for lab in labs)
        al = item.get("aliases", [])
        if not isinstance(al, list) or not all(isinstance(a, str) for a in al):
            raise DataError(f"{w}: field 'aliases' must be a list of strings")
        aliases.extend((a, i) for a in al)
    if not names:
        raise DataError(f"{where}: the list is empty (at least one category is needed)")
    try:
        return Vocabulary(tuple(names), tuple(labels), tuple(aliases))
    except DataError as e:
        raise DataError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def parse_categories(spec, where: str = "--categories") -> Vocabulary:
    """A :class:`Vocabulary` from a command-line value or JSON.

    Accepted: ``LABEL=NAME,...`` (e.g. ``62=chair,64=plant``; several labels may name one category;
    categories are numbered in order of first appearance), a list of schema items (names or
    ``{"name", "labels"|"label"|"id", "aliases"}``, so a COCO ``categories`` list works), a mapping
    ``{label: name}``, an object with a ``categories`` field (a COCO annotation file, a detection file),
    JSON text of any of these, or the path of a JSON file holding one.
    """
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec).strip()
        if text.startswith(("[", "{")):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e})") from None
        elif os.path.isfile(text) or text.endswith(".json"):
            try:
                spec = load_json(text)
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
            where = f"{where} {text}"
        else:
            items = []
            for part in filter(None, (p.strip() for p in text.split(","))):
                label, eq, name = part.partition("=")
                if not eq or not label.strip() or not name.strip():
                    raise DataError(f"{where}: expected LABEL=NAME pairs separated by commas (e.g. "
                                    f"62=chair,64=plant), got {part!r}")
                items.append({"name": name.strip(), "labels": [_label_value(label, where)]})
            return _vocabulary_from_items(items, where)
    if isinstance(spec, dict):
        if "categories" in spec:
            return _vocabulary_from_items(spec["categories"], f"{where}: categories")
        items = [{"name": n, "labels": [_label_value(k, where)]} for k, n in spec.items()]
        return _vocabulary_from_items(items, where)
    return _vocabulary_from_items(spec, where)


# --------------------------------------------------------------------------- containers
@dataclasses.dataclass
class Detections:
    """The detections kept in one frame, sorted by decreasing score.

    Attributes
    ----------
    centers : (n, 2) float tensor
        Box centres ``(px, py)`` in pixels.
    categories : (n,) long tensor
        Index into :data:`CATEGORIES`.
    scores : (n,) float tensor
        Detector confidences.
    boxes : (n, 4) float tensor
        ``(x1, y1, x2, y2)``: top-left and bottom-right corners.
    """

    centers: torch.Tensor
    categories: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, dtype=torch.float64) -> "Detections":
        return cls(torch.zeros(0, 2, dtype=dtype), torch.zeros(0, dtype=torch.long),
                   torch.zeros(0, dtype=dtype), torch.zeros(0, 4, dtype=dtype))


@dataclasses.dataclass
class Boxes2D:
    """Ground-truth 2D boxes of one frame (``views[t].labels2D``).

    Attributes
    ----------
    categories : (m,) long tensor
    boxes : (m, 4) float tensor, ``(x1, y1, x2, y2)``
    centers : (m, 2) float tensor (the file's ``center``; the box midpoint when absent)
    """

    categories: torch.Tensor
    boxes: torch.Tensor
    centers: torch.Tensor

    def __len__(self) -> int:
        return int(self.categories.shape[0])


@dataclasses.dataclass
class Video:
    """One video of a MetaGen detection file.

    Attributes
    ----------
    index : int
        0-based position in the file (videos 0-49 are split A, 50-99 split B).
    path : str
        The video's ``path`` field.
    cams, looks : (T, 3) float tensors
        Camera position and look-at point per frame.
    detections : list of T :class:`Detections`
        Kept detections per frame (empty when the file has none).
    gt_categories : (K,) long tensor or None
        Ground-truth object categories (``None`` when the file has no ``labels``).
    gt_positions : (K, 3) float tensor or None
        Ground-truth object positions.
    labels2d : list of T :class:`Boxes2D`, or None
        Ground-truth 2D boxes per frame, when the file has ``labels2D``.
    has_detections : bool
        Whether the file had ``detections`` at all.
    stats : dict
        Detection counts over the video: ``n_raw`` (in the file),
        ``n_other_category`` (labels outside the file's categories, e.g. COCO
        ids outside the five, dropped), ``n_below_threshold``,
        ``n_beyond_top_n``, ``n_kept``, and ``other_coco_ids`` (``{label:
        count}`` of the dropped labels).
    camera : :class:`~metagen_ppl.domain.camera.Camera`
        The file's camera (the legacy files': :data:`~metagen_ppl.domain.camera.DEFAULT_CAMERA`).
    category_names : tuple of str
        The file's categories; ``gt_categories`` and detection categories index them.
    """

    index: int
    path: str
    cams: torch.Tensor
    looks: torch.Tensor
    detections: list
    gt_categories: Optional[torch.Tensor] = None
    gt_positions: Optional[torch.Tensor] = None
    labels2d: Optional[list] = None
    has_detections: bool = True
    stats: dict = dataclasses.field(default_factory=dict)
    camera: Camera = DEFAULT_CAMERA
    category_names: tuple = tuple(CATEGORIES)

    @property
    def num_frames(self) -> int:
        return int(self.cams.shape[0])

    @property
    def split(self) -> str:
        return split_of(self.index)

    @property
    def has_ground_truth(self) -> bool:
        return self.gt_categories is not None


@dataclasses.dataclass
class VideoBatch:
    """Videos padded to common sizes, for vectorised models.

    ``V`` videos, ``T`` frames (the longest video), ``D`` detections (the most
    in any frame), ``K`` ground-truth objects, ``M`` ground-truth 2D boxes.
    Padded entries are zeros (categories 0) and must be masked; padded frames
    repeat the video's first camera so that projections stay finite.

    Attributes
    ----------
    paths : list of V str
    indices : (V,) long tensor, positions in the file
    cams, looks : (V, T, 3)
    frame_mask : (V, T) bool
    centers : (V, T, D, 2); categories : (V, T, D) long; scores : (V, T, D); boxes : (V, T, D, 4)
    det_mask : (V, T, D) bool
    num_detections : (V, T) long
    gt_categories : (V, K) long, gt_positions : (V, K, 3), gt_mask : (V, K) bool; None without ground truth
    l2d_categories : (V, T, M) long, l2d_boxes : (V, T, M, 4), l2d_centers : (V, T, M, 2),
    l2d_mask : (V, T, M) bool; None without ``labels2D``
    camera : the videos' :class:`~metagen_ppl.domain.camera.Camera`; category_names : tuple of C str
    """

    paths: list
    indices: torch.Tensor
    cams: torch.Tensor
    looks: torch.Tensor
    frame_mask: torch.Tensor
    centers: torch.Tensor
    categories: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    det_mask: torch.Tensor
    num_detections: torch.Tensor
    gt_categories: Optional[torch.Tensor] = None
    gt_positions: Optional[torch.Tensor] = None
    gt_mask: Optional[torch.Tensor] = None
    l2d_categories: Optional[torch.Tensor] = None
    l2d_boxes: Optional[torch.Tensor] = None
    l2d_centers: Optional[torch.Tensor] = None
    l2d_mask: Optional[torch.Tensor] = None
    camera: Camera = DEFAULT_CAMERA
    category_names: tuple = tuple(CATEGORIES)


# --------------------------------------------------------------------------- validation helpers
def _where(v: int, path, t: Optional[int] = None) -> str:
    s = f"video {v}" + (f" (path {path!r})" if path is not None else "")
    return s if t is None else f"{s}, frame {t}"


def finite_number(x, where: str, field: str) -> float:
    """``x`` as a finite float, or a :class:`DataError` naming ``where`` and ``field`` (also used by
    :mod:`metagen_ppl.domain.scenes`)."""
    if type(x) is float or type(x) is int:          # fast path (bool is not int here)
        if math.isfinite(x):
            return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise DataError(f"{where}: {field} must be a number, got {x!r:.60}")
    x = float(x)
    if not math.isfinite(x):
        raise DataError(f"{where}: {field} is not finite ({x})")
    return x


def check_list_input(obj, score_threshold, top_n, *, kind: str, items: str) -> Optional[float]:
    """The checks shared by the loaders of lists of videos or scenes: the detection filters
    (``score_threshold`` a finite number, ``top_n`` an integer >= 0, or ``None``) and a non-empty JSON
    list. Returns ``score_threshold`` as a float (or ``None``)."""
    if score_threshold is not None:
        score_threshold = finite_number(score_threshold, "score_threshold", "value")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise DataError(f"top_n must be a non-negative integer or None, got {top_n!r}")
    if not isinstance(obj, list):
        hint = ""
        if isinstance(obj, dict) and "observations" in obj:
            hint = " (this is a single-scene data file: fit it with 'metagen-ppl fit')"
        raise DataError(f"{kind} must be a JSON list of {items}, got {type(obj).__name__}{hint}")
    if not obj:
        raise DataError(f"{kind} contains no {items} (empty list)")
    return score_threshold


def _vector(x, n: int, where: str, field: str) -> list:
    if not isinstance(x, (list, tuple)) or len(x) != n:
        raise DataError(f"{where}: {field} must be a list of {n} numbers, got {x!r}")
    return [finite_number(e, where, f"{field}[{i}]") for i, e in enumerate(x)]


def _point3(x, where: str, field: str) -> list:
    if isinstance(x, dict):
        missing = [k for k in "xyz" if k not in x]
        if missing:
            raise DataError(f"{where}: {field} lacks field(s) {', '.join(missing)}")
        return [finite_number(x[k], where, f"{field}.{k}") for k in "xyz"]
    return _vector(x, 3, where, field)


def _require(d, key: str, where: str, kind=None, kind_name: str = ""):
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(d).__name__}")
    if key not in d:
        raise DataError(f"{where}: missing field {key!r}")
    value = d[key]
    if kind is not None and not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} must be {kind_name}, got {type(value).__name__}")
    return value


def _category(name, where: str, field: str, vocab: Vocabulary = LEGACY_VOCABULARY) -> int:
    try:
        return category_index(name) if vocab is LEGACY_VOCABULARY else vocab.index(name)
    except KeyError:
        raise DataError(f"{where}: unknown category {name!r} in {field} "
                        f"(known: {', '.join(vocab.names)})") from None


def _box(tl, br, where: str, field: str) -> list:
    x1, y1 = _vector(tl, 2, where, f"{field} top_left")
    x2, y2 = _vector(br, 2, where, f"{field} bottom_right")
    if x2 < x1 or y2 < y1:
        raise DataError(f"{where}: {field} has bottom_right {[x2, y2]} above or left of top_left {[x1, y1]}")
    return [x1, y1, x2, y2]


_DET_FIELDS = ("scores", "labels", "center", "top_left", "bottom_right")


def _label(x, where: str, field: str, strings: bool):
    """A detection's label: an integer (COCO id), or (``strings``, schema files) also a string."""
    if strings and isinstance(x, str) and x.strip():
        return x.strip()
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x != int(x):
        kind = "an integer or string label" if strings else "an integer COCO id"
        raise DataError(f"{where}: {field} must be {kind}, got {x!r}")
    return int(x)


def _parse_detections(det, where: str, score_threshold, top_n, stats: Counter,
                      vocab: Vocabulary = LEGACY_VOCABULARY, strings: bool = False) -> list:
    """Validated, mapped, sorted and filtered rows ``(score, category, centre, box)`` of one frame."""
    if not isinstance(det, dict):
        raise DataError(f"{where}: detections must be a JSON object, got {type(det).__name__}")
    lists = {}
    for key in _DET_FIELDS:
        lists[key] = _require(det, key, f"{where}: detections", list, "a list")
    n = len(lists["scores"])
    for key in _DET_FIELDS[1:]:
        if len(lists[key]) != n:
            raise DataError(f"{where}: detections.{key} has {len(lists[key])} entries but "
                            f"detections.scores has {n}")
    rows = []
    for i in range(n):
        score = finite_number(lists["scores"][i], where, f"detections.scores[{i}]")
        if not 0.0 <= score <= 1.0:
            raise DataError(f"{where}: detections.scores[{i}] = {score} is outside [0, 1]")
        coco = _label(lists["labels"][i], where, f"detections.labels[{i}]", strings)
        centre = _vector(lists["center"][i], 2, where, f"detections.center[{i}]")
        box = _box(lists["top_left"][i], lists["bottom_right"][i], where, f"detections box {i}")
        cat = vocab.label_index(coco)
        if cat is None:
            stats["n_other_category"] += 1
            stats[("other", coco)] += 1
            continue
        rows.append((score, cat, centre, box))
    stats["n_raw"] += n
    rows.sort(key=lambda r: -r[0])          # stable: ties keep file order
    if score_threshold is not None:
        kept = [r for r in rows if r[0] > score_threshold]
        stats["n_below_threshold"] += len(rows) - len(kept)
        rows = kept
    if top_n is not None and len(rows) > top_n:
        stats["n_beyond_top_n"] += len(rows) - top_n
        rows = rows[:top_n]
    stats["n_kept"] += len(rows)
    return rows


def _frames_detections(frames_rows: list, dtype) -> list:
    """One :class:`Detections` per frame from per-frame rows (tensors built once per video)."""
    rows = [r for fr in frames_rows for r in fr]
    counts = [len(fr) for fr in frames_rows]
    centers = torch.tensor([r[2] for r in rows], dtype=dtype).reshape(-1, 2).split(counts)
    cats = torch.tensor([r[1] for r in rows], dtype=torch.long).reshape(-1).split(counts)
    scores = torch.tensor([r[0] for r in rows], dtype=dtype).reshape(-1).split(counts)
    boxes = torch.tensor([r[3] for r in rows], dtype=dtype).reshape(-1, 4).split(counts)
    return [Detections(c, k, s, b) for c, k, s, b in zip(centers, cats, scores, boxes)]


def _parse_labels2d(items, where: str, dtype, vocab: Vocabulary = LEGACY_VOCABULARY) -> Boxes2D:
    if not isinstance(items, list):
        raise DataError(f"{where}: labels2D must be a list, got {type(items).__name__}")
    cats, boxes, centres = [], [], []
    for j, item in enumerate(items):
        w = f"{where}: labels2D[{j}]"
        name = _require(item, "category_name", w)
        cats.append(_category(name, where, f"labels2D[{j}].category_name", vocab))
        box = _box(_require(item, "top_left", w), _require(item, "bottom_right", w), where, f"labels2D[{j}]")
        boxes.append(box)
        if "center" in item:
            centres.append(_vector(item["center"], 2, where, f"labels2D[{j}].center"))
        else:
            centres.append([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return Boxes2D(categories=torch.tensor(cats, dtype=torch.long),
                   boxes=torch.tensor(boxes, dtype=dtype).reshape(-1, 4),
                   centers=torch.tensor(centres, dtype=dtype).reshape(-1, 2))


def _check_consistent(videos: list, key: str, level: str) -> bool:
    """Whether ``key`` is present (everywhere) or absent (everywhere); error on a mix."""
    seen = None
    for v, video in enumerate(videos):
        path = video.get("path")
        places = [(video, None)] if level == "video" else [(view, t) for t, view in enumerate(video["views"])]
        for d, t in places:
            has = key in d
            if seen is None:
                seen = (has, v, t)
            elif has != seen[0]:
                first = _where(seen[1], videos[seen[1]].get("path"), seen[2])
                here = _where(v, path, t)
                have, lack = (here, first) if has else (first, here)
                raise DataError(f"{lack}: missing field {key!r}, which {have} has (a file must have "
                                f"{key!r} everywhere or nowhere)")
    return bool(seen and seen[0])


# --------------------------------------------------------------------------- public API
def _header(obj, categories, camera):
    """``(videos list, vocabulary, camera, schema?)`` of a parsed file (either layout), the
    command-line ``categories`` / ``camera`` overriding the file's."""
    vocab = None if categories is None else parse_categories(categories)
    cam = None if camera is None else parse_camera(camera)
    if not (isinstance(obj, dict) and "schema" in obj):
        if isinstance(obj, dict) and "videos" in obj:
            raise DataError(f"a detection file with 'videos' needs \"schema\": \"{SCHEMA}\" and \"version\": "
                            f"{SCHEMA_VERSION} (or is a bare JSON list of videos, the legacy format)")
        return obj, vocab or LEGACY_VOCABULARY, cam or DEFAULT_CAMERA, False
    if obj["schema"] != SCHEMA:
        raise DataError(f"unknown schema {obj['schema']!r} (this loader reads {SCHEMA!r} version "
                        f"{SCHEMA_VERSION}, or a bare JSON list of videos)")
    if "version" not in obj:
        raise DataError(f"{SCHEMA}: missing field 'version' (this loader reads version {SCHEMA_VERSION})")
    version = obj["version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise DataError(f"{SCHEMA} version {version!r} is not supported (this loader reads version "
                        f"{SCHEMA_VERSION})")
    if vocab is None:
        if "categories" not in obj:
            raise DataError(f"{SCHEMA}: missing field 'categories' (the object categories and their detector "
                            "labels; or give them with --categories)")
        vocab = _vocabulary_from_items(obj["categories"], "categories")
    if cam is None:
        if "camera" not in obj:
            raise DataError(f"{SCHEMA}: missing field 'camera' (e.g. {{\"model\": \"pinhole\", \"fx\": ..}}; "
                            "or give it with --camera)")
        cam = camera_from_json(obj["camera"], "camera")
    if "videos" not in obj:
        raise DataError(f"{SCHEMA}: missing field 'videos' (the list of videos)")
    return obj["videos"], vocab, cam, True


def detection_file(videos: list, categories, camera, **extra) -> dict:
    """A detection file in the versioned schema (module docstring).

    Parameters
    ----------
    videos : list of video dicts (the per-video format)
    categories : :class:`Vocabulary` or anything :func:`parse_categories` takes (e.g. a list of names,
        whose labels are then their indices)
    camera : :class:`~metagen_ppl.domain.camera.Camera` or anything
        :func:`~metagen_ppl.domain.camera.parse_camera` takes
    extra : further top-level fields (e.g. ``source``), written after the required ones

    Returns
    -------
    dict ``{"schema", "version", "categories", "camera", "videos", **extra}`` (JSON-able)
    """
    vocab = parse_categories(categories, "categories")
    cam = parse_camera(camera, "camera")
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "categories": vocab.to_json(), "camera": cam.to_json(),
            **extra, "videos": videos}


def parse_videos(obj, *, score_threshold: Optional[float] = None, top_n: Optional[int] = None,
                 dtype: torch.dtype = torch.float64, categories=None, camera=None) -> list:
    """Validate parsed MetaGen JSON and convert it to :class:`Video` objects.

    Parameters
    ----------
    obj : list or dict
        The parsed JSON: a non-empty list of videos (the legacy layout) or a
        ``metagen-detections`` version 1 object (both in the module docstring).
    categories : optional
        The categories and their detector labels (:func:`parse_categories`: e.g. ``"62=chair,64=plant"``);
        replaces the file's (legacy default :data:`LEGACY_VOCABULARY`).
    camera : optional
        The camera (:func:`~metagen_ppl.domain.camera.parse_camera`: e.g.
        ``"pinhole:fx=500,fy=500,cx=320,cy=240,width=640,height=480"``); replaces the file's (legacy
        default :data:`~metagen_ppl.domain.camera.DEFAULT_CAMERA`).
    score_threshold : float, optional
        Keep only detections with ``score > score_threshold`` (strict, as in
        the metrics); default: keep all.
    top_n : int, optional
        Keep at most the ``top_n`` highest-scoring detections per frame;
        default: all.
    dtype : torch.dtype
        Floating dtype of the tensors (default float64).

    Returns
    -------
    list of :class:`Video`, in file order.

    Raises
    ------
    DataError
        On any malformed field, naming the video (index and path) and frame.
    """
    obj, vocab, file_camera, strings = _header(obj, categories, camera)
    score_threshold = check_list_input(obj, score_threshold, top_n, kind="MetaGen data", items="videos")
    for v, video in enumerate(obj):
        if not isinstance(video, dict):
            raise DataError(f"video {v}: expected a JSON object, got {type(video).__name__}")
        path = video.get("path")
        views = _require(video, "views", _where(v, path), list, "a list")
        if not views:
            raise DataError(f"{_where(v, path)}: 'views' is empty")
        for t, view in enumerate(views):
            if not isinstance(view, dict):
                raise DataError(f"{_where(v, path, t)}: expected a JSON object, got {type(view).__name__}")
    has_det = _check_consistent(obj, "detections", "view")
    has_l2d = _check_consistent(obj, "labels2D", "view")
    has_gt = _check_consistent(obj, "labels", "video")

    videos = []
    for v, video in enumerate(obj):
        path = _require(video, "path", _where(v, None))
        if isinstance(path, bool) or not isinstance(path, (str, int)):
            raise DataError(f"{_where(v, None)}: field 'path' must be a string, got {path!r}")
        path = str(path)
        stats = Counter()
        cams, looks, dets, l2d = [], [], [], []
        for t, view in enumerate(video["views"]):
            where = _where(v, path, t)
            cam = _point3(_require(view, "camera", where), where, "camera")
            look = _point3(_require(view, "lookat", where), where, "lookat")
            d = [b - a for a, b in zip(cam, look)]
            norm = math.sqrt(sum(e * e for e in d))
            if norm <= 1e-9 * max(1.0, max(abs(e) for e in cam)):
                raise DataError(f"{where}: the camera {cam} is at its own look-at point")
            if math.hypot(d[0], d[2]) <= 1e-9 * norm:
                raise DataError(f"{where}: the camera looks straight up or down "
                                f"(look - camera = {d}); the image axes are undefined")
            cams.append(cam)
            looks.append(look)
            if has_det:
                dets.append(_parse_detections(view["detections"], where, score_threshold, top_n, stats, vocab,
                                              strings))
            else:
                dets.append([])
            if has_l2d:
                l2d.append(_parse_labels2d(view["labels2D"], where, dtype, vocab))
        gt_cats = gt_pos = None
        if has_gt:
            labels = video["labels"]
            if not isinstance(labels, list):
                raise DataError(f"{_where(v, path)}: field 'labels' must be a list, got {type(labels).__name__}")
            cats, pos = [], []
            for k, obj_k in enumerate(labels):
                w = f"{_where(v, path)}: labels[{k}]"
                cats.append(_category(_require(obj_k, "category_name", w), _where(v, path),
                                      f"labels[{k}].category_name", vocab))
                pos.append(_vector(_require(obj_k, "position", w), 3, _where(v, path), f"labels[{k}].position"))
            gt_cats = torch.tensor(cats, dtype=torch.long)
            gt_pos = torch.tensor(pos, dtype=dtype).reshape(-1, 3)
        other = {key[1]: n for key, n in stats.items() if isinstance(key, tuple)}
        stat = {k: int(stats[k]) for k in ("n_raw", "n_other_category", "n_below_threshold",
                                           "n_beyond_top_n", "n_kept")}
        stat["other_coco_ids"] = dict(sorted(other.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))
        videos.append(Video(index=v, path=path, cams=torch.tensor(cams, dtype=dtype),
                            looks=torch.tensor(looks, dtype=dtype),
                            detections=_frames_detections(dets, dtype),
                            gt_categories=gt_cats, gt_positions=gt_pos,
                            labels2d=l2d if has_l2d else None, has_detections=has_det, stats=stat,
                            camera=file_camera, category_names=vocab.names))
    return videos


def load_videos(source, *, score_threshold: Optional[float] = None, top_n: Optional[int] = None,
                dtype: torch.dtype = torch.float64, categories=None, camera=None) -> list:
    """Read a MetaGen detection JSON file (or already parsed JSON) into :class:`Video` objects.

    Parameters
    ----------
    source : str, os.PathLike, list or dict
        File name, or the parsed JSON itself (either layout of the module docstring).
    score_threshold, top_n, dtype, categories, camera
        As in :func:`parse_videos`.

    Returns
    -------
    list of :class:`Video`, in file order.
    """
    if isinstance(source, (str, os.PathLike)):
        obj = load_json(source)
        try:
            return parse_videos(obj, score_threshold=score_threshold, top_n=top_n, dtype=dtype,
                                categories=categories, camera=camera)
        except DataError as e:  # name the file as well as the video and frame
            raise DataError(f"{os.fspath(source)}: {e}") from None
    return parse_videos(source, score_threshold=score_threshold, top_n=top_n, dtype=dtype, categories=categories,
                        camera=camera)


def batch_videos(videos: list) -> VideoBatch:
    """Pad videos to common frame, detection, object and box counts.

    Parameters
    ----------
    videos : list of :class:`Video` (non-empty; all with or all without
        ground truth / ``labels2D``; the dtype of the first video is used)

    Returns
    -------
    :class:`VideoBatch` with shapes ``(V, T, D, ...)`` and masks.
    """
    if not videos:
        raise DataError("batch_videos needs at least one video")
    for v in videos[1:]:
        if v.camera != videos[0].camera or tuple(v.category_names) != tuple(videos[0].category_names):
            raise DataError(f"batch_videos: video {v.index} (path {v.path!r}) has another camera or other "
                            f"categories than video {videos[0].index}; batch videos of one file")
    dtype = videos[0].cams.dtype
    V = len(videos)
    T = max(v.num_frames for v in videos)
    D = max((len(d) for v in videos for d in v.detections), default=0)
    cams = torch.zeros(V, T, 3, dtype=dtype)
    looks = torch.zeros(V, T, 3, dtype=dtype)
    frame_mask = torch.zeros(V, T, dtype=torch.bool)
    centers = torch.zeros(V, T, D, 2, dtype=dtype)
    cats = torch.zeros(V, T, D, dtype=torch.long)
    scores = torch.zeros(V, T, D, dtype=dtype)
    boxes = torch.zeros(V, T, D, 4, dtype=dtype)
    ndet = torch.zeros(V, T, dtype=torch.long)
    for i, v in enumerate(videos):
        n = v.num_frames
        cams[i, :n], looks[i, :n] = v.cams, v.looks
        cams[i, n:], looks[i, n:] = v.cams[0], v.looks[0]
        frame_mask[i, :n] = True
        dets = v.detections
        if dets:                  # one masked copy per video (row-major: frame by frame, in detection order)
            counts = torch.tensor([len(d) for d in dets], dtype=torch.long)
            ndet[i, :len(dets)] = counts
            if D:
                m = torch.arange(D) < counts.unsqueeze(-1)                     # (T_i, D)
                centers[i, :len(dets)][m] = torch.cat([d.centers.reshape(-1, 2) for d in dets]).to(dtype)
                cats[i, :len(dets)][m] = torch.cat([d.categories.reshape(-1) for d in dets])
                scores[i, :len(dets)][m] = torch.cat([d.scores.reshape(-1) for d in dets]).to(dtype)
                boxes[i, :len(dets)][m] = torch.cat([d.boxes.reshape(-1, 4) for d in dets]).to(dtype)
    det_mask = torch.arange(D).expand(V, T, D) < ndet.unsqueeze(-1)
    batch = VideoBatch(paths=[v.path for v in videos], indices=torch.tensor([v.index for v in videos]),
                       cams=cams, looks=looks, frame_mask=frame_mask, centers=centers, categories=cats,
                       scores=scores, boxes=boxes, det_mask=det_mask, num_detections=ndet,
                       camera=videos[0].camera, category_names=tuple(videos[0].category_names))
    with_gt = [v.has_ground_truth for v in videos]
    if all(with_gt):
        K = max(len(v.gt_categories) for v in videos)
        batch.gt_categories = torch.zeros(V, K, dtype=torch.long)
        batch.gt_positions = torch.zeros(V, K, 3, dtype=dtype)
        batch.gt_mask = torch.zeros(V, K, dtype=torch.bool)
        for i, v in enumerate(videos):
            k = len(v.gt_categories)
            batch.gt_categories[i, :k], batch.gt_positions[i, :k] = v.gt_categories, v.gt_positions
            batch.gt_mask[i, :k] = True
    elif any(with_gt):
        raise DataError("batch_videos: some videos have ground truth and some do not")
    with_l2d = [v.labels2d is not None for v in videos]
    if all(with_l2d):
        M = max((len(b) for v in videos for b in v.labels2d), default=0)
        batch.l2d_categories = torch.zeros(V, T, M, dtype=torch.long)
        batch.l2d_boxes = torch.zeros(V, T, M, 4, dtype=dtype)
        batch.l2d_centers = torch.zeros(V, T, M, 2, dtype=dtype)
        batch.l2d_mask = torch.zeros(V, T, M, dtype=torch.bool)
        for i, v in enumerate(videos):
            if not v.labels2d or not M:
                continue
            n = len(v.labels2d)              # one masked copy per video, as for the detections
            m = torch.arange(M) < torch.tensor([len(b) for b in v.labels2d], dtype=torch.long).unsqueeze(-1)
            batch.l2d_categories[i, :n][m] = torch.cat([b.categories.reshape(-1) for b in v.labels2d])
            batch.l2d_boxes[i, :n][m] = torch.cat([b.boxes.reshape(-1, 4) for b in v.labels2d]).to(dtype)
            batch.l2d_centers[i, :n][m] = torch.cat([b.centers.reshape(-1, 2) for b in v.labels2d]).to(dtype)
            batch.l2d_mask[i, :n] = m
    elif any(with_l2d):
        raise DataError("batch_videos: some videos have labels2D and some do not")
    return batch
