"""``metagen-ppl metacognition fit --online``: the command, its output, its errors, and its resume."""

from __future__ import annotations

import json

import pytest

from metagen_ppl.apps.cli.main import main


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("online_cli")
    path = d / "scenes.json"
    assert main(["metacognition", "simulate", "--num-scenes", "24", "--num-frames", "12", "--seed", "4",
                 "--out", str(path)]) == 0
    return path


def test_online_fit_writes_the_trajectory_and_matches_batch(scenes, tmp_path, capsys):
    out = tmp_path / "online.json"
    assert main(["metacognition", "fit", "--data", str(scenes), "--online", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "online (stepwise EM" in text and "objects vs truth" in text
    res = json.loads(out.read_text())
    assert res["online"] is True and len(res["scenes"]) == 24 and len(res["V_trajectory"]) == 24
    assert res["V_trajectory"][-1] == res["V"]
    assert res["step_sizes"][:2] == [1.0, 0.5]
    probs = [o["existence_probability"] for s in res["scenes"] for o in s["objects"]]
    assert probs and all(0.5 < p <= 1.0 for p in probs)
    batch = tmp_path / "batch.json"
    assert main(["metacognition", "fit", "--data", str(scenes), "--out", str(batch), "--no-progress"]) == 0
    b = json.loads(batch.read_text())
    bV = b.get("V") or b["params"]
    # 24 scenes seen once each: the online rates within 0.15 of the batch ones (the batch fit is within
    # ~0.1 of the truth on such data)
    for c, r in res["V"]["detection_rate"].items():
        assert r == pytest.approx(bV["detection_rate"][c], abs=0.15), (c, r)


def test_online_needs_learn_mode_and_a_valid_schedule(scenes, capsys):
    assert main(["metacognition", "fit", "--data", str(scenes), "--online", "--mode", "lesioned"]) == 2
    assert "--online learns V with EM" in capsys.readouterr().err
    assert main(["metacognition", "fit", "--data", str(scenes), "--online", "--step-kappa", "0.4"]) == 2
    assert "kappa must be a number in (0.5, 1]" in capsys.readouterr().err


def test_online_resume_reuses_the_scenes_done(scenes, tmp_path):
    out = tmp_path / "o.json"
    args = ["metacognition", "fit", "--data", str(scenes), "--online", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    first = json.loads(out.read_text())
    assert main(args + ["--resume"]) == 0                       # a finished checkpoint: nothing recomputed
    again = json.loads(out.read_text())
    assert again["V"] == first["V"] and again["scenes"] == first["scenes"]
