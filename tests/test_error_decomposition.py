"""comparisons/error_decomposition.py on a hand-made video: every class of error found, and each oracle fix
removes exactly its class."""

from __future__ import annotations

import pytest
import torch

from metagen_ppl.domain.camera import project
from metagen_ppl.domain.metagen_data import Detections, Video

from conftest import comparison_script


def _module():
    return comparison_script("error_decomposition")


def _video():
    T = 4
    cams = torch.tensor([[5.0, 2.0, 0.0], [4.0, 2.0, 3.0], [0.0, 2.0, 5.0], [-3.0, 2.0, 4.0]], dtype=torch.float64)
    looks = torch.zeros(T, 3, dtype=torch.float64)
    # chair (found), plant (found with the wrong category), tv (missed, detected once), bowl (missed, never seen)
    pos = torch.tensor([[0.5, 0.4, 0.3], [-1.0, 0.5, -0.5], [1.5, 0.3, -1.0], [-2.0, 0.2, 2.0]], dtype=torch.float64)
    cats = torch.tensor([0, 1, 2, 4])
    dets = []
    for t in range(T):
        pix, _ = project(pos[2], cams[t], looks[t])
        if t == 0:    # one tv detection on the tv's projection
            dets.append(Detections(pix.reshape(1, 2), torch.tensor([2]), torch.tensor([0.3], dtype=torch.float64),
                                   torch.cat([pix - 5, pix + 5]).reshape(1, 4)))
        else:
            dets.append(Detections.empty())
    return Video(50, "v", cams, looks, dets, cats, pos)


def test_classes_and_oracle_fixes():
    mod = _module()
    v = _video()
    objs = [(0, [0.55, 0.4, 0.3]),              # the chair, 5 cm off
            (3, [-1.0, 0.5, -0.45]),            # the plant, called an umbrella
            (0, [0.5, 0.4, 0.75]),              # a second chair next to the first: a duplicate
            (1, [3.0, 0.5, 3.0])]               # a plant where there is nothing: a hallucination
    cls = mod.classify(v, objs, gate=1.5)
    assert sorted(cls["pairs"]) == [(0, 0), (1, 1)]
    assert sorted(cls["missed"]) == [2, 3]
    assert cls["duplicate"] == [2] and cls["hallucination"] == [3]
    assert mod.frames_seen(v, 2, v.gt_positions[2], 20.0) == 1
    assert mod.frames_seen(v, 4, v.gt_positions[3], 20.0) == 0
    # each fix changes only its class
    assert len(mod.fixed_objects(v, objs, cls, "missed")) == 6
    seen = mod.fixed_objects(v, objs, cls, "missed, seen")
    assert len(seen) == 5 and seen[-1][0] == 2            # only the tv, which the detector saw once
    assert [o[0] for o in mod.fixed_objects(v, objs, cls, "wrong category")] == [0, 1, 0, 1]
    assert len(mod.fixed_objects(v, objs, cls, "duplicate")) == 3
    assert len(mod.fixed_objects(v, objs, cls, "hallucination")) == 3
    assert mod.fixed_objects(v, objs, cls, "location")[0][1] == pytest.approx([0.5, 0.4, 0.3])
    # fixing everything at once gives the truth, whose Jaccard is 1 in every frame
    truth = [(int(c), p) for c, p in zip(v.gt_categories.tolist(), v.gt_positions.tolist())]
    assert mod._score(v, truth) == 1.0
    assert mod._score(v, objs) < 1.0
    dec = mod.decompose([v], [{"path": "v", "objects": [{"category_name": ["chair", "plant", "tv", "umbrella",
                                                                             "bowl"][c], "position": p}
                                                        for c, p in objs]}], gate=1.5, radius=20.0)
    b = dec["B"]
    assert (b["correct"], b["wrong category"], b["missed"], b["duplicate"], b["hallucination"]) == (1, 1, 2, 1, 1)
    assert all(b["gain"][f] >= 0 for f in mod.FIXES)
    assert b["gain"]["missed"] >= b["gain"]["missed, seen"] > 0
