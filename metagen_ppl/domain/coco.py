"""COCO-format detection results plus camera poses -> a ``metagen-detections`` file (issue 13).

Inputs
------
*Detections*: the standard COCO results list (what ``pycocotools``' ``loadRes``
reads and most detectors write)::

    [{"image_id": 17, "category_id": 62, "bbox": [x, y, w, h], "score": 0.91}, ...]

``bbox`` is the top-left corner and size in pixels (``w, h >= 0``); other
fields (``segmentation``, ...) are ignored.

*Poses*: one record per image, naming its video, its frame index in the video
and the camera pose (position and look-at point, metres, y up)::

    [{"image_id": 17, "video": "kitchen", "frame": 3,
      "camera": [x, y, z], "lookat": [x, y, z]}, ...]

(``camera`` / ``lookat`` may also be ``{"x", "y", "z"}`` objects). The list may
be wrapped as ``{"poses": [...], "camera": {...}}`` to carry the camera
description too, or given as an object keyed by image id
(``{"17": {"video": ..., "frame": ..., "camera": ..., "lookat": ...}}``).

*Categories*: names for the category ids, as :func:`~metagen_ppl.domain.metagen_data.parse_categories`
reads them: a COCO annotation file (its ``categories`` list of ``{"id", "name"}``), a COCO categories
list, or a mapping such as ``62=chair,64=plant``. *Camera*: a
:class:`~metagen_ppl.domain.camera.Camera` or a description
(:func:`~metagen_ppl.domain.camera.parse_camera`), else the poses file's ``camera``.

Output
------
A ``metagen-detections`` version 1 object
(:mod:`metagen_ppl.domain.metagen_data`): one video per distinct ``video``
in order of first appearance in the poses, its frames sorted by ``frame``;
every posed image is a frame (with no detections if the detector found none),
whose view also records its ``image_id`` and ``frame``. Detection labels are
the COCO category ids; centres are the box midpoints.

Errors
------
A :class:`~metagen_ppl.errors.DataError` names the image id and, where known,
the video and frame: an unknown category id (not among the categories; with
``drop_unknown`` such detections are dropped instead), an image without a pose,
a malformed bbox or score, a malformed or duplicate pose, no categories, no camera.
"""

from __future__ import annotations

import math
import os
from collections import Counter

from metagen_ppl.domain.camera import Camera, parse_camera
from metagen_ppl.domain.metagen_data import Vocabulary, detection_file, finite_number, parse_categories
from metagen_ppl.errors import DataError
from metagen_ppl.io import load_json

__all__ = ["convert_coco"]


def _load(source, what: str):
    if isinstance(source, (str, os.PathLike)):
        try:
            return load_json(source), f"{what} {os.fspath(source)}"
        except DataError as e:
            raise DataError(f"{what}: {e}") from None
    return source, what


def _key(image_id) -> str:
    """Image ids match as text: JSON object keys are strings, COCO ids integers."""
    if isinstance(image_id, float) and image_id == int(image_id):
        image_id = int(image_id)
    return str(image_id)


def _image_id(x, where: str):
    if isinstance(x, bool) or not (isinstance(x, (int, str)) or (isinstance(x, float) and x == int(x))):
        raise DataError(f"{where}: image_id must be an integer or a string, got {x!r}")
    return int(x) if isinstance(x, float) else x


def _point(x, where: str, field: str) -> list:
    if isinstance(x, dict):
        missing = [k for k in "xyz" if k not in x]
        if missing:
            raise DataError(f"{where}: {field} lacks field(s) {', '.join(missing)}")
        x = [x[k] for k in "xyz"]
    if not isinstance(x, (list, tuple)) or len(x) != 3:
        raise DataError(f"{where}: {field} must be [x, y, z] (or {{x, y, z}}), got {x!r}")
    return [finite_number(e, where, f"{field}[{i}]") for i, e in enumerate(x)]


def _poses(obj, where: str) -> tuple:
    """``({image key: pose}, camera description or None)`` from the poses JSON."""
    camera = None
    if isinstance(obj, dict) and "poses" in obj:
        camera = obj.get("camera")
        obj = obj["poses"]
    if isinstance(obj, dict):
        records = []
        for k, rec in obj.items():
            if not isinstance(rec, dict):
                raise DataError(f"{where}: image {k}: a pose must be an object, got {type(rec).__name__}")
            records.append(dict(rec, image_id=rec.get("image_id", k)))
    elif isinstance(obj, list):
        records = obj
    else:
        raise DataError(f"{where}: expected a list of poses {{image_id, video, frame, camera, lookat}} (or an "
                        f"object with 'poses'), got {type(obj).__name__}")
    if not records:
        raise DataError(f"{where}: no poses")
    poses, seen = {}, {}
    for i, rec in enumerate(records):
        w = f"{where}[{i}]"
        if not isinstance(rec, dict):
            raise DataError(f"{w}: a pose must be an object, got {type(rec).__name__}")
        for field in ("image_id", "video", "frame", "camera", "lookat"):
            if field not in rec:
                raise DataError(f"{w}: missing field {field!r} (a pose has image_id, video, frame, camera, lookat)")
        image_id = _image_id(rec["image_id"], w)
        w = f"image {image_id}"
        video = rec["video"]
        if isinstance(video, bool) or not isinstance(video, (str, int)):
            raise DataError(f"{w}: video must be a name (string), got {video!r}")
        video = str(video)
        frame = rec["frame"]
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise DataError(f"{w} (video {video!r}): frame must be an integer >= 0, got {frame!r}")
        w = f"image {image_id} (video {video!r}, frame {frame})"
        cam = _point(rec["camera"], w, "camera")
        look = _point(rec["lookat"], w, "lookat")
        d = [b - a for a, b in zip(cam, look)]
        if math.hypot(d[0], d[2]) <= 1e-9 * max(1e-300, math.sqrt(sum(e * e for e in d))):
            raise DataError(f"{w}: the camera looks straight up or down or at itself (look - camera = {d})")
        key = _key(image_id)
        if key in poses:
            raise DataError(f"{w}: a second pose for image {image_id}")
        if (video, frame) in seen:
            raise DataError(f"{w}: images {seen[(video, frame)]} and {image_id} are both frame {frame} of "
                            f"video {video!r}")
        seen[(video, frame)] = image_id
        poses[key] = {"image_id": image_id, "video": video, "frame": frame, "camera": cam, "lookat": look}
    return poses, camera


def _bbox(b, where: str) -> tuple:
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        raise DataError(f"{where}: bbox must be [x, y, w, h] (4 numbers), got {b!r}")
    x, y, w, h = (finite_number(e, where, f"bbox[{i}]") for i, e in enumerate(b))
    if w < 0 or h < 0:
        raise DataError(f"{where}: bbox [x, y, w, h] has a negative size (w = {w}, h = {h})")
    return x, y, w, h


def convert_coco(detections, poses, *, categories=None, camera=None, drop_unknown: bool = False) -> dict:
    """COCO detection results and per-image camera poses as a ``metagen-detections`` file.

    Parameters
    ----------
    detections : list or path
        COCO results ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
    poses : list, dict or path
        Per image: ``video``, ``frame``, ``camera``, ``lookat`` (module docstring).
    categories : required
        The categories (:func:`~metagen_ppl.domain.metagen_data.parse_categories`): a COCO annotation
        file or categories list, or a mapping ``"62=chair,64=plant"``.
    camera : optional
        The camera (:class:`~metagen_ppl.domain.camera.Camera` or a description); default the poses
        file's ``camera``.
    drop_unknown : bool
        Drop detections whose category id is not among the categories (default: an error).

    Returns
    -------
    dict
        The schema object (``schema``, ``version``, ``categories``, ``camera``, ``videos``) plus
        ``conversion``: counts (images, videos, detections kept, dropped per unknown id).

    Raises
    ------
    DataError
        Naming the image id, video and frame of the first problem (module docstring).
    """
    dets, dwhere = _load(detections, "detections")
    pose_obj, pwhere = _load(poses, "poses")
    pose_map, pose_camera = _poses(pose_obj, pwhere)
    if categories is None:
        raise DataError("no categories: give the COCO annotation file (its 'categories') or a mapping such as "
                        "62=chair,64=plant (--categories)")
    vocab: Vocabulary = parse_categories(categories)
    if camera is None and pose_camera is None:
        raise DataError("no camera: give --camera (e.g. pinhole:fx=500,fy=500,cx=320,cy=240,width=640,height=480) "
                        f"or a 'camera' in the poses file ({pwhere})")
    cam: Camera = parse_camera(camera if camera is not None else pose_camera,
                               "--camera" if camera is not None else f"{pwhere}: camera")
    if isinstance(dets, dict) and "annotations" in dets:
        raise DataError(f"{dwhere}: this is a COCO annotation file; the detections are the results list "
                        "[{image_id, category_id, bbox, score}, ...]")
    if not isinstance(dets, list):
        raise DataError(f"{dwhere}: expected the COCO results list [{{image_id, category_id, bbox, score}}, ...], "
                        f"got {type(dets).__name__}")
    known = ", ".join(f"{lab} {vocab.names[i]}" for lab, i in vocab.labels[:12])
    known += ", ..." if len(vocab.labels) > 12 else ""
    per_image, dropped = {}, Counter()
    for n, det in enumerate(dets):
        w = f"{dwhere}[{n}]"
        if not isinstance(det, dict):
            raise DataError(f"{w}: a detection must be an object, got {type(det).__name__}")
        for field in ("image_id", "category_id", "bbox", "score"):
            if field not in det:
                raise DataError(f"{w}: missing field {field!r}")
        image_id = _image_id(det["image_id"], w)
        pose = pose_map.get(_key(image_id))
        if pose is None:
            raise DataError(f"image {image_id} (detection {n}): no camera pose for this image in {pwhere}")
        where = f"image {image_id} (video {pose['video']!r}, frame {pose['frame']}), detection {n}"
        cid = det["category_id"]
        if isinstance(cid, bool) or not isinstance(cid, (int, str)) and not (isinstance(cid, float)
                                                                                and cid == int(cid)):
            raise DataError(f"{where}: category_id must be an integer, got {cid!r}")
        cid = int(cid) if isinstance(cid, float) else cid
        if vocab.label_index(cid) is None:
            if drop_unknown:
                dropped[cid] += 1
                continue
            raise DataError(f"{where}: unknown category id {cid!r} (known: {known}); add it to the categories "
                            "or drop such detections (drop_unknown / --drop-unknown)")
        x, y, bw, bh = _bbox(det["bbox"], where)
        score = finite_number(det["score"], where, "score")
        if not 0.0 <= score <= 1.0:
            raise DataError(f"{where}: score {score} is outside [0, 1]")
        per_image.setdefault(_key(image_id), []).append((score, cid, x, y, bw, bh))
    videos, order = {}, []
    for key, pose in pose_map.items():
        if pose["video"] not in videos:
            videos[pose["video"]] = []
            order.append(pose["video"])
        videos[pose["video"]].append(pose)
    out_videos, n_kept = [], 0
    for name in order:
        views = []
        for pose in sorted(videos[name], key=lambda p: p["frame"]):
            rows = per_image.get(_key(pose["image_id"]), [])
            n_kept += len(rows)
            views.append({"image_id": pose["image_id"], "frame": pose["frame"], "camera": pose["camera"],
                          "lookat": pose["lookat"],
                          "detections": {"scores": [r[0] for r in rows], "labels": [r[1] for r in rows],
                                         "center": [[r[2] + r[4] / 2, r[3] + r[5] / 2] for r in rows],
                                         "top_left": [[r[2], r[3]] for r in rows],
                                         "bottom_right": [[r[2] + r[4], r[3] + r[5]] for r in rows]}})
        out_videos.append({"path": name, "views": views})
    info = {"images": len(pose_map), "videos": len(out_videos), "detections": n_kept,
            "dropped_unknown_category": {str(k): v for k, v in sorted(dropped.items(), key=lambda kv: str(kv[0]))}}
    return detection_file(out_videos, vocab, cam, conversion=info)
