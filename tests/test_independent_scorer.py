"""``evaluate``'s scores re-computed by an independent scorer (``tests/independent_scorer.py``: numpy from
DESIGN.md on the raw JSON, no project code), on simulated videos and on the shared real data."""

from __future__ import annotations

import json

import pytest

from metagen_ppl.apps.evaluate import evaluate
from metagen_ppl.models import projective as P

from independent_scorer import project, rescore


def test_independent_projection_matches_the_camera_module():
    import numpy as np
    import torch
    from metagen_ppl.domain import camera
    rng = np.random.default_rng(0)
    for _ in range(20):
        cam = np.array([rng.uniform(-5, 5), 2.0, rng.uniform(-5, 5)])
        look = np.array([rng.uniform(-2, 2), rng.uniform(0, 1), rng.uniform(-2, 2)])
        p = np.array([rng.uniform(-5, 5), rng.uniform(0, 1), rng.uniform(-5, 5)])
        px, py, depth = project(p, cam, look)
        pix, d = camera.project(torch.tensor(p), torch.tensor(cam), torch.tensor(look))
        # float64 throughout: the two implementations agree to rounding
        assert (px, py, depth) == pytest.approx((float(pix[0]), float(pix[1]), float(d)), abs=1e-9)


def test_simulated_scores_equal_the_independent_rescoring(tmp_path):
    sim = P.simulate(52, 4, seed=3, rates=[1.2, 1.0, 0.8, 1.0, 0.9], hallucination=[0.05] * 5)
    data = tmp_path / "sim.json"
    data.write_text(json.dumps(sim))
    m = evaluate(str(data), str(tmp_path / "out"), progress=False, plots=0, lesioned=False, ground_truth_V=False)
    r = rescore(str(data), str(tmp_path / "out" / "world_states.json"))
    # the same arithmetic on the same world states: equal up to float summation order
    assert r["per_video"] == pytest.approx(m["per_video"]["jaccard_ours"], abs=1e-12)
    for split in ("A", "B", "all"):
        assert r[split] == pytest.approx(m["splits"][split]["jaccard"]["ours"], abs=1e-12)


# The shared real data is re-scored the same way in tests/test_evaluate.py::test_real_data_targets (one
# evaluate run per detector serves both checks).
