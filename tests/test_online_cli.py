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


@pytest.fixture(scope="module")
def videos_file(tmp_path_factory):
    from metagen_ppl.models import projective as P
    d = tmp_path_factory.mktemp("online_eval")
    path = d / "videos.json"
    path.write_text(json.dumps(P.simulate(52, 5, seed=11, rates=[1.2, 1.0, 0.8, 1.0, 0.9], hallucination=[0.05] * 5)))
    return path


def test_evaluate_online_writes_world_states_on_arrival_and_the_V_trajectory(videos_file, tmp_path, capsys):
    from metagen_ppl.apps.evaluate import evaluate
    from metagen_ppl.domain.metagen_data import load_videos
    from metagen_ppl.models import projective as P
    out = tmp_path / "online"
    m = evaluate(str(videos_file), str(out), online=True, progress=False, plots=0, lesioned=False,
                 ground_truth_V=False, jobs=1)
    world = json.loads((out / "world_states.json").read_text())
    meta = json.loads((out / "metacognition.json").read_text())
    traj = meta["online"]["V_trajectory"]
    assert len(world) == 52 and len(traj) == 52 and traj[-1]["detection_rate"] == meta["learned"]["detection_rate"]
    assert meta["learned_on"] == "all videos, online in file order"
    # the world states are the online fit's, video by video, as inferred on arrival
    res = P.fit_videos_online(P.data_from_videos(load_videos(str(videos_file))), max_objects=8)
    for w, objs, ex in zip(world, res.objects, res.existence):
        assert [o["position"] for o in w["objects"]] == [p for _, p in objs]
        assert [o["existence_probability"] for o in w["objects"]] == ex
    assert m["splits"]["B"]["jaccard"]["ours"] > m["splits"]["B"]["jaccard"]["detector"]
    # a finished run resumes to the same outputs at once
    again = evaluate(str(videos_file), str(out), online=True, progress=False, plots=0, lesioned=False,
                     ground_truth_V=False, jobs=1, resume=True)
    assert again["splits"] == m["splits"]


def test_batch_evaluate_writes_existence_probabilities(videos_file, tmp_path):
    from metagen_ppl.apps.evaluate import evaluate
    evaluate(str(videos_file), str(tmp_path / "b"), progress=False, plots=0, lesioned=False, ground_truth_V=False,
             jobs=1)
    world = json.loads((tmp_path / "b" / "world_states.json").read_text())
    probs = [o["existence_probability"] for w in world for o in w["objects"]]
    assert probs and all(0.5 < p <= 1.0 for p in probs)


def test_evaluate_online_needs_em_over_all_videos(videos_file, tmp_path, capsys):
    assert main(["evaluate", "--data", str(videos_file), "--out", str(tmp_path / "x"), "--online",
                 "--learn-on", "train"]) == 2
    assert "needs method 'em' and learn_on 'all'" in capsys.readouterr().err
