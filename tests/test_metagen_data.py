"""Loader of the MetaGen detection JSON (metagen_ppl.domain.metagen_data)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from metagen_ppl.errors import DataError
from metagen_ppl.domain.metagen_data import (CATEGORIES, COCO_TO_CATEGORY, batch_videos, category_index,
                                      load_videos, parse_videos, split_of)

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "metagen2021")
FILES = ("data_labelled_retinanet.json", "data_labelled_faster_rcnn.json", "unlabelled_data.json")
have_data = pytest.mark.skipif(not all(os.path.exists(os.path.join(DATA, f)) for f in FILES),
                               reason="shared MetaGen data (../shared/data/metagen2021) not present")


def view(dets=(), cam=(0.0, 2.0, 0.0), look=(1.0, 1.0, 0.5), labels2d=None):
    """A frame; ``dets`` are (score, coco_id, (cx, cy)) with a 10 x 10 box around the centre."""
    v = {"camera": dict(zip("xyz", cam)), "lookat": dict(zip("xyz", look)),
         "detections": {"scores": [d[0] for d in dets], "labels": [d[1] for d in dets],
                        "center": [list(d[2]) for d in dets],
                        "top_left": [[d[2][0] - 5, d[2][1] - 5] for d in dets],
                        "bottom_right": [[d[2][0] + 5, d[2][1] + 5] for d in dets]}}
    if labels2d is not None:
        v["labels2D"] = labels2d
    return v


def video(path="a", views=None, labels=None):
    return {"path": path, "views": views if views is not None else [view()],
            "labels": labels if labels is not None else [{"category_name": "chair", "position": [1.0, 0.3, 2.0]}]}


def two_videos():
    frames = [view([(0.3, 62, (10, 20)), (0.9, 64, (30, 40)), (0.6, 1, (50, 60)), (0.2, 51, (5, 5))]),
              view(),
              view([(0.7, 28, (100, 100))])]
    return [video("a", [view([(0.5, 72, (1, 2))])]),
            video("b", frames, [{"category_name": "plant", "position": [0, 0.2, 1]},
                                {"category_name": "bowl", "position": [2, 0.3, -1]}])]


def test_categories_and_coco_map():
    assert CATEGORIES == ["chair", "plant", "tv", "umbrella", "bowl"]
    assert COCO_TO_CATEGORY == {62: 0, 64: 1, 72: 2, 28: 3, 51: 4}
    assert category_index("plant") == 1 and category_index("potted plant") == 1
    assert split_of(0) == "A" and split_of(49) == "A" and split_of(50) == "B"


def test_parse_sorts_maps_and_drops_other_categories():
    vids = parse_videos(two_videos())
    assert [v.path for v in vids] == ["a", "b"] and [v.index for v in vids] == [0, 1]
    b = vids[1]
    assert b.num_frames == 3 and b.cams.shape == (3, 3) and b.looks.shape == (3, 3)
    assert b.cams.dtype == torch.float64
    d0 = b.detections[0]
    # COCO 1 (person) is dropped; the rest sorted by decreasing score
    assert d0.scores.tolist() == [0.9, 0.3, 0.2]
    assert d0.categories.tolist() == [1, 0, 4]                     # plant, chair, bowl
    assert d0.centers.tolist() == [[30, 40], [10, 20], [5, 5]]
    assert d0.boxes[0].tolist() == [25, 35, 35, 45]
    assert len(b.detections[1]) == 0 and b.detections[1].centers.shape == (0, 2)
    assert b.stats == {"n_raw": 5, "n_other_category": 1, "n_below_threshold": 0, "n_beyond_top_n": 0,
                       "n_kept": 4, "other_coco_ids": {1: 1}}
    assert b.gt_categories.tolist() == [1, 4]
    assert b.gt_positions.tolist() == [[0, 0.2, 1], [2, 0.3, -1]]
    assert b.labels2d is None and b.has_detections and b.has_ground_truth


def test_score_threshold_is_strict_and_top_n_keeps_the_best():
    vids = parse_videos(two_videos(), score_threshold=0.3, top_n=1)
    d0 = vids[1].detections[0]
    assert d0.scores.tolist() == [0.9]                 # 0.3 is not > 0.3; top 1 of [0.9]
    assert vids[1].stats["n_below_threshold"] == 2 and vids[1].stats["n_beyond_top_n"] == 0
    vids = parse_videos(two_videos(), top_n=2)
    assert vids[1].detections[0].scores.tolist() == [0.9, 0.3]
    assert vids[1].stats["n_beyond_top_n"] == 1 and vids[1].stats["n_kept"] == 3


def test_labels2d_variant():
    l2d = [{"category_name": "tv", "top_left": [10, 20], "bottom_right": [30, 60], "center": [20, 40]},
           {"category_name": "potted plant", "top_left": [0, 0], "bottom_right": [4, 2]}]
    data = [video("a", [view([(0.5, 72, (20, 40))], labels2d=l2d), view(labels2d=[])])]
    v = parse_videos(data)[0]
    assert len(v.labels2d) == 2
    assert v.labels2d[0].categories.tolist() == [2, 1]
    assert v.labels2d[0].boxes.tolist() == [[10, 20, 30, 60], [0, 0, 4, 2]]
    assert v.labels2d[0].centers.tolist() == [[20, 40], [2, 1]]   # midpoint when "center" is absent
    assert len(v.labels2d[1]) == 0 and v.labels2d[1].boxes.shape == (0, 4)


def test_file_without_detections_and_without_labels():
    data = two_videos()
    for vid in data:
        del vid["labels"]
        for w in vid["views"]:
            del w["detections"]
    vids = parse_videos(data)
    assert not vids[0].has_detections and vids[0].gt_categories is None
    assert all(len(d) == 0 for v in vids for d in v.detections)


def test_camera_as_list_and_float32():
    data = [video("a", [{"camera": [0, 2, 0], "lookat": [1, 1, 0.5], "detections": view()["detections"]}])]
    v = parse_videos(data, dtype=torch.float32)[0]
    assert v.cams.dtype == torch.float32 and v.cams.tolist() == [[0, 2, 0]]


def _bad(mutate):
    data = copy.deepcopy(two_videos())
    mutate(data)
    return data


def _det(d, t=0):
    """Detections of frame ``t`` of video 1 ('b')."""
    return d[1]["views"][t]["detections"]


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d[1]["views"][2].pop("camera"), r"video 1 \(path 'b'\), frame 2: missing field 'camera'"),
    (lambda d: d[1].pop("views"), r"video 1 \(path 'b'\): missing field 'views'"),
    (lambda d: d[1].pop("path"), r"video 1: missing field 'path'"),
    (lambda d: d[1]["views"].clear(), r"video 1 \(path 'b'\): 'views' is empty"),
    (lambda d: _det(d).pop("scores"), r"frame 0: detections: missing field 'scores'"),
    (lambda d: _det(d)["labels"].pop(), r"frame 0: detections.labels has 3 entries but detections.scores has 4"),
    (lambda d: _det(d)["center"].append([1, 2]), r"detections.center has 5 entries"),
    (lambda d: _det(d)["scores"].__setitem__(1, float("nan")), r"frame 0: .*not finite"),
    (lambda d: _det(d, 2)["center"].__setitem__(0, [float("inf"), 1]), r"frame 2: .*not finite"),
    (lambda d: d[0]["views"][0]["camera"].__setitem__("y", float("nan")),
     r"video 0 \(path 'a'\), frame 0: camera.y"),
    (lambda d: _det(d)["scores"].__setitem__(0, 1.5), r"outside \[0, 1\]"),
    (lambda d: _det(d)["scores"].__setitem__(0, "0.5"), r"must be a number"),
    (lambda d: _det(d)["labels"].__setitem__(0, 62.5), r"integer COCO id"),
    (lambda d: _det(d)["center"].__setitem__(0, [1, 2, 3]), r"list of 2 numbers"),
    (lambda d: _det(d)["top_left"].__setitem__(0, [99, 99]), r"above or left of"),
    (lambda d: d[1]["labels"][1].__setitem__("category_name", "sofa"),
     r"video 1 \(path 'b'\): unknown category 'sofa' in labels\[1\]"),
    (lambda d: d[1]["labels"][0].pop("position"), r"labels\[0\]: missing field 'position'"),
    (lambda d: d[1]["labels"][0].__setitem__("position", [0, 1]), r"labels\[0\].position must be a list of 3"),
    (lambda d: d[1]["views"][1].__setitem__("lookat", dict(d[1]["views"][1]["camera"])),
     r"video 1 \(path 'b'\), frame 1: the camera .* is at its own look-at point"),
    (lambda d: d[1]["views"][1].__setitem__("lookat", {"x": 0, "y": 0, "z": 0}), r"frame 1: .*straight up or down"),
    (lambda d: d[1]["views"][1].pop("detections"),
     r"video 1 \(path 'b'\), frame 1: missing field 'detections', which video 0"),
    (lambda d: d[0].pop("labels"), r"video 0 \(path 'a'\): missing field 'labels'"),
    (lambda d: d[1]["views"][1].__setitem__("labels2D", []), r"missing field 'labels2D'"),
    (lambda d: d.__setitem__(1, []), r"video 1: expected a JSON object"),
])
def test_malformed_input_names_video_and_frame(mutate, pattern):
    with pytest.raises(DataError, match=pattern):
        parse_videos(_bad(mutate))


def test_malformed_labels2d():
    def with_l2d(items):
        return [video("a", [view(labels2d=items)])]

    with pytest.raises(DataError, match=r"frame 0: unknown category 'sofa' in labels2D\[0\]"):
        parse_videos(with_l2d([{"category_name": "sofa", "top_left": [0, 0], "bottom_right": [1, 1]}]))
    with pytest.raises(DataError, match=r"frame 0: labels2D\[0\]: missing field 'bottom_right'"):
        parse_videos(with_l2d([{"category_name": "tv", "top_left": [0, 0]}]))
    with pytest.raises(DataError, match=r"labels2D must be a list"):
        parse_videos(with_l2d({"category_name": "tv"}))


def test_top_level_errors_and_options(tmp_path):
    with pytest.raises(DataError, match="no videos"):
        parse_videos([])
    with pytest.raises(DataError, match="JSON list"):
        parse_videos({"views": []})
    with pytest.raises(DataError, match="top_n"):
        parse_videos(two_videos(), top_n=-1)
    with pytest.raises(DataError, match="cannot read"):
        load_videos(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_videos(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(two_videos()))
    assert [v.path for v in load_videos(good)] == ["a", "b"]
    assert [v.path for v in load_videos(str(good), top_n=0)] == ["a", "b"]


def test_batch_pads_and_masks():
    data = two_videos()
    vids = parse_videos(data)
    b = batch_videos(vids)
    assert b.paths == ["a", "b"] and b.indices.tolist() == [0, 1]
    assert b.cams.shape == (2, 3, 3) and b.frame_mask.tolist() == [[True, False, False], [True] * 3]
    assert torch.equal(b.cams[0, 1], vids[0].cams[0])              # padded frames repeat a valid camera
    assert b.centers.shape == (2, 3, 3, 2) and b.boxes.shape == (2, 3, 3, 4)
    assert b.num_detections.tolist() == [[1, 0, 0], [3, 0, 1]]
    assert b.det_mask[1, 0].tolist() == [True, True, True] and b.det_mask[1, 2].tolist() == [True, False, False]
    assert b.scores[1, 0].tolist() == [0.9, 0.3, 0.2] and b.categories[1, 2, 0].item() == 3
    assert b.gt_positions.shape == (2, 2, 3) and b.gt_mask.tolist() == [[True, False], [True, True]]
    assert b.l2d_boxes is None
    with pytest.raises(DataError):
        batch_videos([])


@have_data
def test_real_files():
    retina = load_videos(os.path.join(DATA, FILES[0]))
    frcnn = load_videos(os.path.join(DATA, FILES[1]))
    unlab = load_videos(os.path.join(DATA, FILES[2]))
    for vids in (retina, frcnn, unlab):
        assert len(vids) == 100 and all(v.num_frames == 20 for v in vids)
        assert [v.path for v in vids] == [f"{i:03d}" for i in range(100)]
        assert sum(len(v.gt_categories) for v in vids) == 192
        assert vids[0].gt_categories.tolist() == [CATEGORIES.index("umbrella")]
    assert sum(v.stats["n_kept"] for v in retina) == 2407
    assert sum(v.stats["n_kept"] for v in frcnn) == 1534
    assert sum(v.stats["n_other_category"] for v in retina + frcnn) == 0
    assert not unlab[0].has_detections and retina[0].has_detections
    # the three files describe the same videos, cameras and objects
    assert all(torch.equal(a.cams, c.cams) and torch.equal(a.looks, c.looks)
               and torch.equal(a.gt_positions, c.gt_positions) for a, c in zip(retina, unlab))
    b = batch_videos(retina)
    assert b.centers.shape == (100, 20, 10, 2) and int(b.det_mask.sum()) == 2407
    assert float(b.scores[b.det_mask].min()) >= 0.05
