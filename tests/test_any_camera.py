"""Issue 13, part 2: any detector, any camera.

A pinhole camera and a 12-category vocabulary end to end (simulate -> schema
file -> load -> fit -> recovered objects and rates), the pinhole projection
against a hand computation, the COCO converter, the error messages of
malformed input, and the legacy files loading as before.
"""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from metagen_ppl.apps.cli.main import main
from metagen_ppl.apps.evaluate import evaluate
from metagen_ppl.domain import camera as C
from metagen_ppl.domain.coco import convert_coco
from metagen_ppl.domain.metagen_data import (CATEGORIES, LEGACY_VOCABULARY, SCHEMA, batch_videos, detection_file,
                                             load_videos, parse_categories, parse_videos)
from metagen_ppl.domain.metrics import visible_objects, world_state_frame_scores
from metagen_ppl.domain.objects import object_metrics
from metagen_ppl.engine.checkpoint import hash_tensors
from metagen_ppl.errors import DataError
from metagen_ppl.models.projective import (data_from_videos, fit_videos, object_pixels, select_videos,
                                           simulate, simulate_file)
from metagen_ppl.models.projective.generative import pixel_to_ray, project
from metagen_ppl.models.projective.mstep import project_with_jacobian

F64 = torch.float64
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "metagen2021")
PINHOLE = C.PinholeCamera(fx=500.0, fy=400.0, cx=300.0, cy=250.0, width=640.0, height=480.0)
NAMES = ["apple", "bag", "ball", "book", "bottle", "box", "cup", "lamp", "mug", "phone", "shoe", "vase"]


# --------------------------------------------------------------------------- pinhole projection
def test_pinhole_projection_by_hand():
    # camera at (0, 2, 0) looking along +x: f = (1, 0, 0), right = unit([d_z, 0, -d_x]) = (0, 0, -1), up = (0, 1, 0)
    cam = torch.tensor([0.0, 2.0, 0.0], dtype=F64)
    look = torch.tensor([1.0, 2.0, 0.0], dtype=F64)
    # s = p - cam = (5, 0.5, -1): depth 5, s.right = 1, s.up = 0.5
    # px = cx + fx * 1 / 5 = 300 + 100 = 400; py = cy - fy * 0.5 / 5 = 250 - 40 = 210
    p = torch.tensor([5.0, 2.5, -1.0], dtype=F64)
    for pix, depth in (C.project(p, cam, look, PINHOLE), project(p, cam, look, camera=PINHOLE)):
        assert pix.tolist() == pytest.approx([400.0, 210.0], abs=1e-12)
        assert float(depth) == pytest.approx(5.0)
    # borders inclusive, image 640 x 480, depth > 0
    pix = torch.tensor([[0.0, 0.0], [640.0, 480.0], [640.0 + 1e-9, 10.0], [10.0, 480.0 + 1e-9], [1.0, 1.0]], dtype=F64)
    depth = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0], dtype=F64)
    assert C.visible(pix, depth, PINHOLE).tolist() == [True, True, False, False, False]
    # the ray through the projection passes through the point
    ray = C.pixel_to_ray(torch.tensor([400.0, 210.0], dtype=F64), cam, look, PINHOLE)
    assert torch.allclose(ray, (p - cam) / (p - cam).norm(), atol=1e-12)
    ray2 = pixel_to_ray(torch.tensor([400.0, 210.0], dtype=F64), cam, look, camera=PINHOLE)
    assert torch.allclose(ray2, ray, atol=1e-12)
    # the learned field of view is a focal scale: at the nominal value nothing changes; h -> fx tan(h0) / tan(h)
    h0 = PINHOLE.half_fov
    assert h0 == pytest.approx(math.atan(320 / 500))
    same, _ = project(p, cam, look, torch.tensor(h0, dtype=F64), PINHOLE)
    assert torch.equal(same, project(p, cam, look, camera=PINHOLE)[0])
    h = math.atan(320 / 400)                          # the field of view of fx = 400: scale 0.8
    scaled, _ = project(p, cam, look, h, PINHOLE)
    assert scaled.tolist() == pytest.approx([300 + 400 / 5, 250 - 320 * 0.5 / 5])


def test_pinhole_jacobian_matches_autograd():
    g = torch.Generator().manual_seed(0)
    cams = torch.tensor([[5.0, 2.0, 0.0], [0.0, 2.0, 5.0], [-4.0, 2.0, -3.0]], dtype=F64)
    looks = torch.zeros(3, 3, dtype=F64)
    f, right, up = C.camera_frame(cams, looks)
    mu = (torch.rand(3, 3, generator=g, dtype=F64) - 0.5)
    for half in (None, torch.tensor(0.6, dtype=F64)):
        pix, depth, J = project_with_jacobian(mu, cams, f, right, up, half, camera=PINHOLE)
        ref, _ = project(mu, cams, looks, half, PINHOLE)
        assert torch.allclose(pix, ref, atol=1e-9)
        auto = torch.autograd.functional.jacobian(
            lambda m: project_with_jacobian(m, cams, f, right, up, half, jacobian=False, camera=PINHOLE)[0], mu)
        auto = torch.stack([auto[i, :, i, :] for i in range(3)])          # (3, 2, 3): per point
        assert torch.allclose(J, auto, atol=1e-9)


def test_angle_linear_default_is_the_design_formula_bit_for_bit():
    """The default camera goes through the same operations as before (DESIGN.md section 2)."""
    g = torch.Generator().manual_seed(3)
    locs = torch.rand(4, 3, 3, generator=g, dtype=F64) * torch.tensor([10.0, 1.0, 10.0], dtype=F64) - \
        torch.tensor([5.0, 0.0, 5.0], dtype=F64)
    cams = torch.rand(4, 6, 3, generator=g, dtype=F64) * 11 - 5.5
    cams[..., 1] = 2.0
    looks = torch.rand(4, 6, 3, generator=g, dtype=F64) * 4 - 2
    data = {"cams": cams, "looks": looks, "frame_mask": torch.ones(4, 6, dtype=torch.bool)}
    f, right, up = C.camera_frame(cams[:, :, None], looks[:, :, None])
    s = locs[:, None] - cams[:, :, None]
    depth = (s * f).sum(-1)
    for half in (C.HALF_FOV, torch.tensor(0.5, dtype=F64)):
        k = 256 / 2 / half                                                # the formula as it was written
        ref = torch.stack([128 + k * torch.atan2((s * right).sum(-1), depth),
                           128 - k * torch.atan2((s * up).sum(-1), depth)], -1)
        pix, vis = object_pixels(data, locs, half)
        assert torch.equal(pix, ref)
        assert torch.equal(pix, object_pixels(dict(data, camera=C.DEFAULT_CAMERA), locs, half)[0])
    ref = torch.stack([128 + 128 * torch.atan2((s * right).sum(-1), depth) / C.HALF_FOV,
                       128 - 128 * torch.atan2((s * up).sum(-1), depth) / C.HALF_FOV], -1)
    assert torch.equal(C.project(locs[:, None], cams[:, :, None], looks[:, :, None])[0], ref)
    assert C.AngleLinearCamera().half_fov == C.HALF_FOV and C.DEFAULT_CAMERA.log_area == 2 * math.log(256)


def test_non_square_angle_linear_camera():
    cam = C.parse_camera("angle-linear:fov_deg=60,width=320,height=240")
    assert cam.fov_y_deg == 45.0                                   # same angle per pixel
    cams = torch.tensor([[5.0, 2.0, 0.0], [0.0, 2.0, 5.0]], dtype=F64)
    looks = torch.zeros(2, 3, dtype=F64)
    f, right, up = C.camera_frame(cams, looks)
    mu = torch.tensor([[0.3, 0.4, -0.2], [1.0, 0.1, 0.5]], dtype=F64)
    pix, depth = C.project(mu, cams, looks, cam)
    # px = 160 + 160 * angle_x / 30 deg, py = 120 - 120 * angle_y / 22.5 deg
    s = mu - cams
    ax = torch.atan2((s * right).sum(-1), depth)
    ay = torch.atan2((s * up).sum(-1), depth)
    assert torch.allclose(pix, torch.stack([160 + 160 * ax / math.radians(30), 120 - 120 * ay / math.radians(22.5)],
                                           -1), atol=1e-9)
    ray = C.pixel_to_ray(pix, cams, looks, cam)
    assert torch.allclose(ray, s / s.norm(dim=-1, keepdim=True), atol=1e-12)
    for half in (None, torch.tensor(0.6, dtype=F64)):              # a refined fov scales both axes
        p2, _, J = project_with_jacobian(mu, cams, f, right, up, half, camera=cam)
        auto = torch.autograd.functional.jacobian(
            lambda m: project_with_jacobian(m, cams, f, right, up, half, jacobian=False, camera=cam)[0], mu)
        assert torch.allclose(J, torch.stack([auto[i, :, i, :] for i in range(2)]), atol=1e-9)
    # a small simulated file through it: the objects are found where they are
    vids = load_videos(simulate_file(16, 12, seed=2, camera=cam, category_names=NAMES[:3], rates=[0.8, 1.1, 1.4],
                                     hallucination=[0.1, 0.1, 0.1]))
    fit = fit_videos(data_from_videos(vids))
    m = object_metrics(fit.scenes, [{"objects": [{"category_name": NAMES[int(c)], "position": p.tolist()}
                                                 for c, p in zip(v.gt_categories, v.gt_positions)]} for v in vids])
    # 30 objects; observed recall 1.0 at this seed (0.90-1.0 over seeds 2-4, as for the default camera on
    # the same sizes): 0.85. 5 px is ~0.9 degrees here, ~9 cm per detection at 5.5 m (observed mean error
    # 0.11 m, 0.09-0.14 for the default camera): 0.2 m
    assert m["recall"] >= 0.85 and m["precision"] >= 0.9 and m["location_error"] < 0.2, m
    assert abs(fit.info["field_of_view_deg"] - 60.0) < 2.0            # observed 59.6


# --------------------------------------------------------------------------- end to end: pinhole, 12 categories
def _location_matching(pred, true, radius=1.0):
    """Hungarian matching on location alone (category ignored): ``(distances, same category?)``."""
    dist, same = [], []
    for p, t in zip(pred, true):
        P = np.array([o["position"] for o in p["objects"]]).reshape(-1, 3)
        T = np.array([o["position"] for o in t["objects"]]).reshape(-1, 3)
        if len(P) == 0 or len(T) == 0:
            continue
        D = np.linalg.norm(P[:, None] - T[None], axis=-1)
        for i, j in zip(*linear_sum_assignment(D)):
            if D[i, j] <= radius:
                dist.append(D[i, j])
                same.append(p["objects"][i]["category_name"] == t["objects"][j]["category_name"])
    return np.array(dist), np.array(same)


@pytest.fixture(scope="module")
def pinhole_file(tmp_path_factory):
    """24 simulated videos of 12 frames through a 640 x 480 pinhole camera, 12 categories, in the schema."""
    cam = C.PinholeCamera(fx=500.0, fy=500.0, cx=320.0, cy=240.0, width=640.0, height=480.0)
    rates = np.linspace(0.6, 1.6, 12)
    hall = np.linspace(0.05, 0.2, 12)
    obj = simulate_file(24, 12, seed=0, camera=cam, category_names=NAMES, rates=rates, hallucination=hall)
    path = tmp_path_factory.mktemp("any_camera") / "pinhole.json"
    path.write_text(json.dumps(obj))
    return {"path": path, "obj": obj, "camera": cam, "rates": rates, "hall": hall}


def test_pinhole_file_is_the_schema_and_loads(pinhole_file):
    obj = json.loads(pinhole_file["path"].read_text())
    assert obj["schema"] == SCHEMA and obj["version"] == 1
    assert obj["camera"]["model"] == "pinhole" and [c["name"] for c in obj["categories"]] == NAMES
    vids = load_videos(pinhole_file["path"])
    assert len(vids) == 24 and all(v.camera == pinhole_file["camera"] for v in vids)
    assert all(list(v.category_names) == NAMES for v in vids)
    assert sum(v.stats["n_other_category"] for v in vids) == 0
    assert max(int(d.categories.max()) for v in vids for d in v.detections if len(d)) == 11
    data = data_from_videos(vids)
    assert data["camera"] == pinhole_file["camera"] and data["category_names"] == tuple(NAMES)
    sub = select_videos(data, [3, 5])
    assert sub["camera"] is data["camera"] and sub["category_names"] is data["category_names"]
    assert sub["box"] is data["box"] and sub["cams"].shape[0] == 2


def test_fit_recovers_objects_and_rates_through_a_pinhole_camera(pinhole_file):
    vids = load_videos(pinhole_file["path"])
    fit = fit_videos(data_from_videos(vids))
    truth = [{"objects": v["labels"]} for v in pinhole_file["obj"]["videos"]]
    m = object_metrics(fit.scenes, truth)                   # same category, within 1 m
    # 51 objects, each seen in several frames at ~5 px noise: the structure search finds every one
    # (observed: precision = recall = 1); 10 % slack for a split or a missed object
    assert m["recall"] >= 0.9 and m["precision"] >= 0.9, m
    # 5 px at depth ~5.5 m and fx = 500 is ~5 cm per detection, averaged over ~10 detections per
    # object (observed mean 0.05 m, max 0.23 m); 3x slack
    assert m["location_error"] < 0.15, m
    dist, same = _location_matching(fit.scenes, truth)
    assert len(dist) >= 0.9 * m["n_true"] and dist.max() < 0.6
    # categories come from the detections' labels (no confusion simulated): all right (observed 1.0)
    assert same.mean() >= 0.95
    r, h = fit.values["rates"].numpy(), fit.values["hallucination"].numpy()
    assert r.shape == (12,) and h.shape == (12,)
    # r_c rests on ~4 objects x ~8 visible frames ~ 30 exposures: Poisson s.e. ~ sqrt(1.1 / 30) ~ 0.2;
    # objects at the image border lose detections outside it (r biased low). Observed mean |error|
    # 0.10, max 0.26: bounds 0.25 and 3 s.e.
    assert np.abs(r - pinhole_file["rates"]).mean() < 0.25
    assert np.abs(r - pinhole_file["rates"]).max() < 0.6
    # h_c from 288 frames: s.e. sqrt(0.12 / 288) ~ 0.02 (observed mean |error| 0.016, max 0.043)
    assert np.abs(h - pinhole_file["hall"]).mean() < 0.05
    assert np.abs(h - pinhole_file["hall"]).max() < 0.1
    # the field of view (a focal-length scale for a pinhole camera) stays near the true 65.2 degrees
    # (observed 65.17): 1 degree is a 2.5 % focal-length error
    assert abs(fit.info["field_of_view_deg"] - pinhole_file["camera"].fov_deg) < 1.0
    # world states are named with the file's categories
    assert {o["category_name"] for s in fit.scenes for o in s["objects"]} <= set(NAMES)


def test_evaluate_writes_the_files_categories_and_camera(pinhole_file, tmp_path):
    small = dict(pinhole_file["obj"], videos=pinhole_file["obj"]["videos"][:6])
    path = tmp_path / "small.json"
    path.write_text(json.dumps(small))
    out = tmp_path / "out"
    metrics = evaluate(str(path), str(out), progress=False, plots=1, checkpoint=False)
    world = json.loads((out / "world_states.json").read_text())
    meta = json.loads((out / "metacognition.json").read_text())
    assert {o["category_name"] for w in world for o in w["objects"]} <= set(NAMES)
    assert meta["categories"] == NAMES and meta["camera"]["model"] == "pinhole"
    assert list(meta["learned"]["detection_rate"]) == NAMES and set(meta["V_table"]) == set(NAMES)
    assert len(meta["learned"]["focal_length_px"]) == 2
    assert metrics["splits"]["all"]["jaccard"]["ours"] > 0.8       # observed 1.0 on these 6 videos
    assert len(metrics["plots"]) == 1 and (out / metrics["plots"][0]).is_file()


def test_fixed_intrinsics_keep_the_camera(pinhole_file):
    vids = load_videos(pinhole_file["path"], camera=dict(pinhole_file["camera"].to_json(), learn_fov=False))
    data = select_videos(data_from_videos(vids), list(range(4)))
    fit = fit_videos(data)
    assert fit.values["half_fov"].item() == pytest.approx(pinhole_file["camera"].half_fov, abs=1e-15)


def test_metrics_use_the_videos_camera(pinhole_file):
    v = load_videos(pinhole_file["path"])[0]
    vis = visible_objects(v.gt_positions, v.cams, v.looks, v.camera)
    assert vis.shape == (12, len(v.gt_categories)) and vis.any()
    # the truth scores perfectly against itself, and differently under the legacy camera
    perfect = world_state_frame_scores(v, v.gt_categories, v.gt_positions)
    assert (perfect == 1.0).all()
    assert not torch.equal(vis, visible_objects(v.gt_positions, v.cams, v.looks))


# --------------------------------------------------------------------------- COCO converter
def _coco():
    dets = [{"image_id": 11, "category_id": 62, "bbox": [100, 50, 40, 20], "score": 0.9},
            {"image_id": 11, "category_id": 64, "bbox": [10, 10, 0, 6], "score": 0.3},
            {"image_id": 12, "category_id": 64, "bbox": [200.5, 100, 10, 10], "score": 0.75, "segmentation": []},
            {"image_id": 21, "category_id": 62, "bbox": [0, 0, 640, 480], "score": 1.0}]
    poses = [{"image_id": 12, "video": "kitchen", "frame": 1, "camera": [0, 2, 0], "lookat": [1, 1, 0]},
             {"image_id": 11, "video": "kitchen", "frame": 0, "camera": {"x": 0, "y": 2, "z": 0.5},
              "lookat": {"x": 1, "y": 1, "z": 0}},
             {"image_id": 13, "video": "kitchen", "frame": 2, "camera": [0, 2, 1], "lookat": [1, 1, 0]},
             {"image_id": 21, "video": "hall", "frame": 0, "camera": [3, 2, 3], "lookat": [0, 0, 0]}]
    annotations = {"images": [], "annotations": [],
                   "categories": [{"id": 62, "name": "chair", "supercategory": "furniture"},
                                  {"id": 64, "name": "potted plant"}, {"id": 72, "name": "tv"}]}
    return dets, poses, annotations


def test_coco_round_trip(tmp_path):
    dets, poses, ann = _coco()
    obj = convert_coco(dets, poses, categories=ann, camera="pinhole:fx=500,fy=500,cx=320,cy=240,width=640,height=480")
    assert obj["schema"] == SCHEMA and obj["version"] == 1 and obj["conversion"]["detections"] == 4
    vids = parse_videos(obj)
    assert [v.path for v in vids] == ["kitchen", "hall"] and [v.num_frames for v in vids] == [3, 1]
    assert list(vids[0].category_names) == ["chair", "potted plant", "tv"]
    assert vids[0].camera == C.PinholeCamera(fx=500, fy=500, cx=320, cy=240, width=640, height=480)
    k = vids[0]
    assert k.cams.tolist() == [[0, 2, 0.5], [0, 2, 0], [0, 2, 1]]            # frames sorted by index
    d0 = k.detections[0]                                                       # image 11, sorted by score
    assert d0.scores.tolist() == [0.9, 0.3] and d0.categories.tolist() == [0, 1]
    assert d0.centers.tolist() == [[120, 60], [10, 13]]
    assert d0.boxes.tolist() == [[100, 50, 140, 70], [10, 10, 10, 16]]
    assert k.detections[1].centers.tolist() == [[205.5, 105]] and len(k.detections[2]) == 0
    assert vids[1].detections[0].boxes.tolist() == [[0, 0, 640, 480]]
    # the command line writes the same file; the mapping form names the categories itself
    for name, value in (("det.json", dets), ("poses.json", {"poses": poses, "camera": obj["camera"]})):
        (tmp_path / name).write_text(json.dumps(value))
    out = tmp_path / "videos.json"
    assert main(["convert-coco", "--detections", str(tmp_path / "det.json"), "--poses", str(tmp_path / "poses.json"),
                 "--categories", "62=chair,64=plant,72=tv", "--out", str(out)]) == 0
    again = load_videos(out)
    assert list(again[0].category_names) == ["chair", "plant", "tv"]
    for a, b in zip(vids, again):
        assert torch.equal(a.cams, b.cams) and all(torch.equal(x.centers, y.centers) and
                                                   torch.equal(x.categories, y.categories)
                                                   for x, y in zip(a.detections, b.detections))
    # a mapping that leaves category ids out: an error, or dropped on request
    with pytest.raises(DataError, match=r"image 11 \(video 'kitchen', frame 0\), detection 1: unknown category id 64"):
        convert_coco(dets, poses, categories="62=chair", camera=obj["camera"])
    dropped = convert_coco(dets, poses, categories="62=chair", camera=obj["camera"], drop_unknown=True)
    assert dropped["conversion"]["dropped_unknown_category"] == {"64": 2}


BAD_COCO = {
    "unknown category id": (lambda d, p: d.append({"image_id": 13, "category_id": 99, "bbox": [0, 0, 1, 1],
                                                    "score": 0.5}),
                            r"image 13 \(video 'kitchen', frame 2\), detection 4: unknown category id 99"),
    "pose missing": (lambda d, p: d.append({"image_id": 77, "category_id": 62, "bbox": [0, 0, 1, 1], "score": 0.5}),
                     r"image 77 \(detection 4\): no camera pose for this image"),
    "negative bbox": (lambda d, p: d[2].update(bbox=[1, 2, -3, 4]),
                      r"image 12 \(video 'kitchen', frame 1\), detection 2: bbox .* negative size"),
    "short bbox": (lambda d, p: d[0].update(bbox=[1, 2, 3]),
                   r"image 11 \(video 'kitchen', frame 0\), detection 0: bbox must be \[x, y, w, h\]"),
    "nan bbox": (lambda d, p: d[0].update(bbox=[1, 2, float("nan"), 4]),
                 r"image 11 \(video 'kitchen', frame 0\), detection 0: bbox\[2\] is not finite"),
    "score > 1": (lambda d, p: d[3].update(score=1.5), r"image 21 \(video 'hall', frame 0\), detection 3: score 1.5"),
    "duplicate frame": (lambda d, p: p[2].update(frame=1), r"images 12 and 13 are both frame 1 of video 'kitchen'"),
    "pose without lookat": (lambda d, p: p[0].pop("lookat"), r"poses\[0\]: missing field 'lookat'"),
}


@pytest.mark.parametrize("case", BAD_COCO, ids=list(BAD_COCO))
def test_coco_errors_name_image_video_and_frame(case):
    dets, poses, ann = _coco()
    mutate, pattern = BAD_COCO[case]
    mutate(dets, poses)
    with pytest.raises(DataError, match=pattern):
        convert_coco(dets, poses, categories=ann, camera="angle-linear")


def test_coco_needs_categories_and_camera():
    dets, poses, ann = _coco()
    with pytest.raises(DataError, match="no camera: give --camera"):
        convert_coco(dets, poses, categories=ann)
    with pytest.raises(DataError, match="no categories"):
        convert_coco(dets, poses, camera="angle-linear")


# --------------------------------------------------------------------------- schema and camera errors
def _small_file():
    return simulate_file(2, 3, seed=1, camera=PINHOLE, category_names=NAMES[:3])


SCHEMA_ERRORS = {
    "wrong version": (lambda o: o.update(version=2), r"metagen-detections version 2 is not supported \(this loader "
                                                     r"reads version 1\)"),
    "missing version": (lambda o: o.pop("version"), r"missing field 'version'"),
    "unknown schema": (lambda o: o.update(schema="coco"), r"unknown schema 'coco'"),
    "unknown camera kind": (lambda o: o.update(camera={"model": "fisheye", "fov_deg": 180}),
                            r"camera: unknown camera model 'fisheye' \(known: angle-linear, pinhole\)"),
    "missing intrinsics": (lambda o: o["camera"].pop("fy") and o["camera"].pop("cx"),
                           r"camera: missing intrinsics fy, cx \(a pinhole camera needs fx, fy, cx, cy, width, height\)"),
    "bad intrinsic": (lambda o: o["camera"].update(fx=-1), r"camera: fx must be a finite number > 0"),
    "unknown camera field": (lambda o: o["camera"].update(k1=0.1), r"camera: unknown field\(s\) 'k1'"),
    "missing camera": (lambda o: o.pop("camera"), r"missing field 'camera'"),
    "missing categories": (lambda o: o.pop("categories"), r"missing field 'categories'"),
    "unknown truth category": (lambda o: o["videos"][1]["labels"][0].update(category_name="sofa"),
                               r"video 1 \(path 'sim001'\): unknown category 'sofa' in labels\[0\].category_name "
                               r"\(known: apple, bag, ball\)"),
    "bad label": (lambda o: o["videos"][0]["views"][2]["detections"]["labels"].__setitem__(0, [1]),
                  r"video 0 \(path 'sim000'\), frame 2: detections.labels\[0\] must be an integer or string label"),
}


@pytest.mark.parametrize("case", SCHEMA_ERRORS, ids=list(SCHEMA_ERRORS))
def test_schema_errors(case):
    obj = _small_file()
    assert obj["videos"][0]["views"][2]["detections"]["labels"]      # the frame the 'bad label' case edits
    mutate, pattern = SCHEMA_ERRORS[case]
    mutate(obj)
    with pytest.raises(DataError, match=pattern):
        parse_videos(obj)


def test_camera_and_categories_from_the_command_line_syntax(tmp_path):
    cam = C.parse_camera("pinhole:fx=500,fy=400,cx=300,cy=250,width=640,height=480,learn_fov=false")
    assert cam == C.PinholeCamera(500, 400, 300, 250, 640, 480, learn_fov=False)
    assert C.parse_camera("angle-linear") == C.DEFAULT_CAMERA
    assert C.parse_camera(json.dumps(PINHOLE.to_json())) == PINHOLE
    (tmp_path / "cam.json").write_text(json.dumps({"camera": PINHOLE.to_json()}))
    assert C.parse_camera(str(tmp_path / "cam.json")) == PINHOLE
    al = C.parse_camera("angle-linear:fov_deg=60,width=320,height=240")
    assert al.fov_y_deg == 45.0 and al.log_area == pytest.approx(math.log(320 * 240))
    for text, pattern in (("fisheye:fov=180", "unknown camera model 'fisheye'"),
                          ("pinhole:fx=500", "missing intrinsics fy, cx, cy, width, height"),
                          ("pinhole:fx=a", "fx must be a number"), ("pinhole:fx", "expected KEY=VALUE")):
        with pytest.raises(DataError, match=pattern):
            C.parse_camera(text)
    vocab = parse_categories("62=chair, 63=chair,64=plant")
    assert vocab.names == ("chair", "plant") and vocab.label_index(63) == 0 and vocab.label_index(1) is None
    assert parse_categories({"62": "chair"}).label_index(62) == 0
    assert parse_categories([{"id": 5, "name": "Tv"}]).index("tv") == 0
    with pytest.raises(DataError, match="maps to both"):
        parse_categories("62=chair,62=plant")
    with pytest.raises(DataError, match="LABEL=NAME"):
        parse_categories("chair")


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    obj = _small_file()
    obj["version"] = 3
    bad = tmp_path / "v3.json"
    bad.write_text(json.dumps(obj))
    code = main(["evaluate", "--data", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "version 3 is not supported" in err[0] and str(bad) in err[0]
    dets, poses, ann = _coco()
    dets.append({"image_id": 99, "category_id": 62, "bbox": [0, 0, 1, 1], "score": 0.5})
    for name, value in (("det.json", dets), ("poses.json", poses), ("ann.json", ann)):
        (tmp_path / name).write_text(json.dumps(value))
    code = main(["convert-coco", "--detections", str(tmp_path / "det.json"), "--poses", str(tmp_path / "poses.json"),
                 "--categories", str(tmp_path / "ann.json"), "--camera", "pinhole:fx=1", "--out",
                 str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing intrinsics fy, cx, cy, width, height" in err[0]
    code = main(["convert-coco", "--detections", str(tmp_path / "det.json"), "--poses", str(tmp_path / "poses.json"),
                 "--categories", str(tmp_path / "ann.json"), "--camera", "angle-linear", "--out",
                 str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "image 99 (detection 4): no camera pose" in err[0]
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- legacy files
def _legacy():
    return simulate(2, 4, seed=5)          # legacy layout: a list of videos, COCO ids


def test_legacy_list_has_the_old_defaults_and_equals_its_schema_form():
    legacy = _legacy()
    assert isinstance(legacy, list) and {lab for v in legacy for view in v["views"]
                                         for lab in view["detections"]["labels"]} <= {62, 64, 72, 28, 51}
    a = parse_videos(copy.deepcopy(legacy))
    assert all(v.camera == C.DEFAULT_CAMERA and list(v.category_names) == CATEGORIES for v in a)
    b = parse_videos(detection_file(copy.deepcopy(legacy), LEGACY_VOCABULARY, C.DEFAULT_CAMERA))
    for x, y in zip(a, b):
        assert torch.equal(x.cams, y.cams) and torch.equal(x.gt_categories, y.gt_categories)
        assert x.stats == y.stats and x.camera == y.camera and x.category_names == y.category_names
        for dx, dy in zip(x.detections, y.detections):
            assert all(torch.equal(getattr(dx, k), getattr(dy, k)) for k in ("centers", "categories", "scores",
                                                                               "boxes"))
    data = data_from_videos(a)
    assert data["camera"] is C.DEFAULT_CAMERA and data["category_names"] == tuple(CATEGORIES)
    assert batch_videos(a).camera == C.DEFAULT_CAMERA
    # the command-line overrides apply to legacy files too
    c = parse_videos(copy.deepcopy(legacy), categories="62=chair,64=plant,72=tv,28=umbrella,51=bowl",
                     camera="angle-linear:fov_deg=60")
    assert c[0].camera.fov_deg == 60.0 and list(c[0].category_names) == CATEGORIES


#: hash_tensors of the tensors and stats of the shared files as loaded before issue 13 (computed with the
#: loader of commit 12f02c6): the legacy files must load with identical values.
LEGACY_HASHES = {"data_labelled_retinanet.json": ("550c639dfe46f3bf", "cc9664b4848ac767"),
                 "data_labelled_faster_rcnn.json": ("468deb118d4a8212", "9d005aab12e26c06"),
                 "unlabelled_data.json": ("3472f4fa5ad8abba", "33fc3965b5c5a9c1")}


@pytest.mark.skipif(not all(os.path.exists(os.path.join(DATA, f)) for f in LEGACY_HASHES),
                    reason="shared MetaGen data (../shared/data/metagen2021) not present")
@pytest.mark.parametrize("name", LEGACY_HASHES)
def test_shared_files_load_with_identical_values(name):
    vids = load_videos(os.path.join(DATA, name))
    tensors = [[v.cams, v.looks, v.gt_categories, v.gt_positions]
               + [x for d in v.detections for x in (d.centers, d.categories, d.scores, d.boxes)] for v in vids]
    assert (hash_tensors(tensors)[:16], hash_tensors([v.stats for v in vids])[:16]) == LEGACY_HASHES[name]
    assert all(v.camera == C.DEFAULT_CAMERA and list(v.category_names) == CATEGORIES for v in vids)
