"""The speed work of issue 13 (part 3) keeps behaviour: the plain-Python broadcast_shapes is torch's, the
camera code never imports sympy (torch.broadcast_shapes did, ~0.5 s), batch_videos' masked copies give
the per-frame layout, and the projective search's memoised E-step is recomputed after any change."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

from metagen_ppl.util import broadcast_shapes


def test_broadcast_shapes_is_torchs():
    rng = random.Random(0)
    for _ in range(3000):
        shapes = [tuple(rng.choice([0, 1, 2, 3]) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(0, 4))]
        try:
            expected = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                broadcast_shapes(*shapes)
            continue
        got = broadcast_shapes(*shapes)
        assert got == expected and isinstance(got, torch.Size), shapes
    assert broadcast_shapes(3, (2, 1)) == torch.Size([2, 3])


def test_projecting_does_not_import_sympy():
    code = ("import sys, torch; from metagen_ppl.domain.camera import project, visible, pixel_to_ray; "
            "p, d = project(torch.zeros(2, 1, 3), torch.tensor([[0., 1., -5.]]), torch.zeros(1, 3)); visible(p, d); "
            "pixel_to_ray(p, torch.tensor([0., 1., -5.]), torch.zeros(3)); print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_batch_videos_layout(tmp_path):
    import json

    from metagen_ppl.domain.metagen_data import batch_videos, load_videos
    from metagen_ppl.domain.metrics import object_extents, projected_labels2d
    from metagen_ppl.models.projective.simulate import simulate_file

    path = tmp_path / "sim.json"
    path.write_text(json.dumps(simulate_file(4, num_frames=6, seed=1)))
    videos = load_videos(str(path))
    extents = object_extents(videos)
    for v in videos:
        v.labels2d = projected_labels2d(v, extents)
    b = batch_videos(videos)
    assert any(len(d) > 1 for v in videos for d in v.detections)
    for i, v in enumerate(videos):
        for t, d in enumerate(v.detections):
            m = len(d)
            assert int(b.num_detections[i, t]) == m
            assert torch.equal(b.centers[i, t, :m], d.centers.to(b.centers.dtype))
            assert torch.equal(b.categories[i, t, :m], d.categories)
            assert torch.equal(b.scores[i, t, :m], d.scores.to(b.scores.dtype))
            assert torch.equal(b.boxes[i, t, :m], d.boxes.to(b.boxes.dtype))
            assert bool(b.det_mask[i, t, :m].all()) and not bool(b.det_mask[i, t, m:].any())
            assert not bool(b.centers[i, t, m:].any())
            lab = v.labels2d[t]
            n = len(lab)
            assert torch.equal(b.l2d_boxes[i, t, :n], lab.boxes.to(b.l2d_boxes.dtype))
            assert torch.equal(b.l2d_categories[i, t, :n], lab.categories)
            assert torch.equal(b.l2d_centers[i, t, :n], lab.centers.to(b.l2d_centers.dtype))
            assert bool(b.l2d_mask[i, t, :n].all()) and not bool(b.l2d_mask[i, t, n:].any())


def test_search_estep_memo_follows_the_state():
    from metagen_ppl.models.projective.generative import data_from_videos
    from metagen_ppl.models.projective.structure import ProjectiveSearch
    from metagen_ppl.domain.metagen_data import parse_videos
    from metagen_ppl.models.projective.simulate import simulate_file

    videos = parse_videos(simulate_file(3, num_frames=5, seed=2))
    search = ProjectiveSearch(data_from_videos(videos), max_objects=3)
    search.active[:, 0] = True
    first = search.estep()
    assert search.estep() is first                          # unchanged state: the memo
    search.active[0, 1] = True                              # in place: recomputed
    second = search.estep()
    assert second is not first
    search.values = dict(search.values, locs=search.values["locs"] + 0.1)   # a new tensor: recomputed
    third = search.estep()
    assert third is not second
    fresh = ProjectiveSearch(data_from_videos(videos), max_objects=3)
    fresh.cats, fresh.active, fresh.values = search.cats.clone(), search.active.clone(), dict(search.values)
    for a, b in zip(third, fresh.estep()):
        assert torch.equal(a, b)
    third[2].mul_(2)                                        # a caller changed the result in place: recomputed
    again = search.estep()
    assert again is not third and not torch.equal(again[2], third[2])


def test_linear_assignment_is_scipys():
    """The enumerated small assignments equal scipy's on 20,000 random matrices of up to 5 x 8, a third with
    ties (costs capped at 1, rounded): ties and larger sizes go to scipy, so the rows and columns are the same."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from metagen_ppl.util import linear_assignment
    rng = np.random.default_rng(0)
    for _ in range(20000):
        c = rng.random((int(rng.integers(1, 6)), int(rng.integers(1, 9))))
        if rng.random() < 0.3:
            c = np.minimum(1.0, 2 * c)
        if rng.random() < 0.1:
            c = np.round(c, 1)
        expected, got = linear_sum_assignment(c), linear_assignment(c)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got)), c
    assert [x.tolist() for x in linear_assignment(np.zeros((0, 3)))] == [[], []]
    with pytest.raises(ValueError, match="2-D"):
        linear_assignment(np.zeros(3))


def test_cli_import_and_frame_metrics_do_not_import_scipy_optimize():
    """scipy.optimize costs ~0.4 s of imports: the CLI and the frame metrics of a few objects per category
    do without it (the box similarity of a frame with two objects of one category, enumerated)."""
    code = ("import sys; import metagen_ppl.apps.cli.main; from metagen_ppl.domain.metrics import box_similarity; "
            "s = box_similarity({0: [[10., 10.], [100., 100.]]}, {0: [[90., 90., 110., 110.], [0., 0., 20., 20.]]}); "
            "print(s, any(m.startswith('scipy.optimize') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1.0", "False"]


def _extents_one_by_one(videos, radius):
    """object_extents' matches the slow way: per object, frame and detection (the code before vectorising)."""
    from metagen_ppl.domain.camera import project, visible
    from metagen_ppl.domain.metrics import _plane_points
    out = {}
    for v in videos:
        pix, depth = project(v.gt_positions.unsqueeze(1), v.cams.unsqueeze(0), v.looks.unsqueeze(0), v.camera)
        vis = visible(pix, depth, v.camera)
        for k, c in enumerate(v.gt_categories.tolist()):
            out.setdefault(c, [])
            for t, det in enumerate(v.detections):
                same = [i for i, ci in enumerate(det.categories.tolist()) if ci == c]
                if not bool(vis[k, t]) or not same:
                    continue
                same = torch.tensor(same)
                near = same[(det.centers[same] - pix[k, t]).norm(dim=-1) <= radius]
                if len(near) == 0:
                    continue
                x1, y1, x2, y2 = det.boxes[near[torch.argmax(det.scores[near])]].tolist()
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                edges = torch.tensor([[x1, cy], [x2, cy], [cx, y1], [cx, y2]], dtype=v.cams.dtype)
                pts = _plane_points(edges, v.cams[t], v.looks[t], depth[k, t].expand(4), v.camera)
                out[c].append((float((pts[1] - pts[0]).norm()) / 2, float((pts[3] - pts[2]).norm()) / 2))
    return out


def test_object_extents_matches_one_by_one(tmp_path):
    """The batched matching of object_extents picks the same detections as the per-object loop (the first of
    equal scores included: one video's scores are all set equal) and gives the same extents to 1e-12 (the
    back-projection of all matches at once may differ from one at a time in the last bit)."""
    import json

    import numpy as np

    from metagen_ppl.domain.metagen_data import load_videos
    from metagen_ppl.domain.metrics import _video_extents, object_extents
    from metagen_ppl.models.projective.simulate import simulate_file

    path = tmp_path / "sim.json"
    path.write_text(json.dumps(simulate_file(6, num_frames=8, seed=3)))
    videos = load_videos(str(path))
    for d in videos[0].detections:
        d.scores.fill_(0.5)
    radius = 40.0
    ref = _extents_one_by_one(videos, radius)
    got = {}
    for v in videos:
        for c, e in _video_extents(v, radius):
            got.setdefault(c, []).append(e)
    assert sum(len(e) for e in ref.values()) >= 15          # 19 matches in these 6 videos
    for c, es in ref.items():
        assert np.allclose(got.get(c, []), es, rtol=0, atol=1e-12), c
    medians = object_extents(videos, radius)
    for c, es in ref.items():
        if es:
            assert medians[c] == pytest.approx(tuple(np.median(np.array(es), 0)), abs=1e-12)
