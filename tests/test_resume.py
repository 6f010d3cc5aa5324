"""Runs that lose nothing (issue 6 part 3): checkpoints, resume, atomic writes, Ctrl-C.

On small simulated data (always runs): a fit interrupted after round N and resumed ends with
exactly the result of an uninterrupted run (fit_metacognition, fit_videos, evaluate and both
command lines); a kill between writing and replacing a file leaves the old file valid; a
checkpoint of other data or settings is refused with a message naming what differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from metagen_ppl.models import detector as D
from metagen_ppl.models import projective as P
from metagen_ppl.apps.cli import main as cli
import metagen_ppl.models.detector.fit as MC
from metagen_ppl.models.detector.structure import DetectorSearch
from metagen_ppl.engine.checkpoint import Checkpoint, CheckpointError, FitInterrupted, decode, encode
from metagen_ppl.errors import MetagenError
from metagen_ppl.apps.evaluate import evaluate
from metagen_ppl.domain.metagen_data import parse_videos
from metagen_ppl.domain.scenes import parse_scenes, write_scenes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def scenes_raw():
    return D.simulate(10, 8, 3)


@pytest.fixture(scope="module")
def scenes(scenes_raw):
    return parse_scenes(scenes_raw)


@pytest.fixture(scope="module")
def reference(scenes):
    """Uninterrupted fits (no checkpoint), per E-step kind."""
    return {est: MC.fit_metacognition(scenes, estep=est) for est in ("direct", "engine")}


@pytest.fixture(scope="module")
def videos_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    sim = P.simulate(8, 5, seed=11, rates=[1.2, 1.0, 0.8, 1.0, 0.9], hallucination=[0.05] * 5)
    path = d / "videos.json"
    path.write_text(json.dumps(sim))
    small = d / "small.json"
    small.write_text(json.dumps(sim[:4]))
    return {"all": str(path), "small": str(small)}


def _interrupt_metacognition_at(monkeypatch, round_):
    """Ctrl-C at the start of round ``round_`` (rounds 1 .. round_ - 1 are finished)."""
    orig = DetectorSearch.propose

    def propose(self, kind):
        if kind == "birth" and self.round == round_:
            raise KeyboardInterrupt
        return orig(self, kind)

    monkeypatch.setattr(DetectorSearch, "propose", propose)


def _same_result(a, b):
    assert set(a.params) == set(b.params)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
        assert torch.allclose(a.params[k].double(), b.params[k].double(), rtol=0, atol=1e-9)
    assert torch.equal(a.responsibilities, b.responsibilities)
    assert a.scenes == b.scenes and a.trace == b.trace and a.history == b.history
    assert (a.log_likelihood, a.log_joint, a.score) == (b.log_likelihood, b.log_joint, b.score)
    assert (a.n_iter, a.n_rounds, a.converged) == (b.n_iter, b.n_rounds, b.converged)
    assert a.info.get("births") == b.info.get("births") and a.info.get("deaths") == b.info.get("deaths")


def _strip(d: dict, keys=("wall_time_s", "info")) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# --------------------------------------------------------------------------- fit_metacognition
@pytest.mark.parametrize("estep", ["direct", "engine"])
def test_metacognition_interrupt_and_resume_equals_uninterrupted(scenes, reference, tmp_path, monkeypatch, estep):
    ref = reference[estep]
    assert ref.n_rounds >= 3
    ck = tmp_path / "fit.ckpt.json"
    _interrupt_metacognition_at(monkeypatch, 3)
    with pytest.raises(FitInterrupted) as e:
        MC.fit_metacognition(scenes, estep=estep, checkpoint=ck)
    assert isinstance(e.value, KeyboardInterrupt)
    assert e.value.round == 2 and e.value.checkpoint == str(ck)
    assert "--resume" in str(e.value) and "round 2" in str(e.value)
    stored = json.loads(ck.read_text())
    assert stored["round"] == 2 and not stored["done"] and stored["kind"] == "metacognition"
    monkeypatch.undo()
    res = MC.fit_metacognition(scenes, estep=estep, checkpoint=ck, resume=True)
    _same_result(ref, res)
    assert res.info["resumed_from_round"] == 2
    assert json.loads(ck.read_text())["done"]


def test_metacognition_svi_inner_resume(tmp_path, monkeypatch):
    """The SVI inner phase is seeded per round: resumed = uninterrupted here too."""
    sc = parse_scenes(D.simulate(4, 5, 8))
    kw = dict(inner="svi", svi_steps=10, estep="direct", max_rounds=3)
    ref = MC.fit_metacognition(sc, **kw)
    _interrupt_metacognition_at(monkeypatch, 2)
    with pytest.raises(FitInterrupted):
        MC.fit_metacognition(sc, checkpoint=tmp_path / "c.json", **kw)
    monkeypatch.undo()
    res = MC.fit_metacognition(sc, checkpoint=tmp_path / "c.json", resume=True, **kw)
    _same_result(ref, res)
    assert res.info["svi_elbo"] == ref.info["svi_elbo"]


def test_metacognition_finished_checkpoint_and_max_rounds(scenes, reference, tmp_path, monkeypatch):
    ref = reference["direct"]
    ck = tmp_path / "c.json"
    short = MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, max_rounds=1)
    assert short.n_rounds == 1 and not short.converged
    # max_rounds is no part of the fingerprint: raising it continues the search
    res = MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, resume=True, max_rounds=20)
    _same_result(ref, res)
    # a finished checkpoint returns its result without any further structure move
    monkeypatch.setattr(DetectorSearch, "propose", lambda self, kind: pytest.fail("recomputed a finished fit"))
    again = MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, resume=True)
    _same_result(ref, again)
    # resume without a checkpoint file yet: starts afresh (and writes one)
    monkeypatch.undo()
    fresh = MC.fit_metacognition(scenes, estep="direct", checkpoint=tmp_path / "new.json", resume=True)
    _same_result(ref, fresh)
    assert (tmp_path / "new.json").exists()


def test_metacognition_checkpoint_beyond_max_rounds_refused(scenes, tmp_path, monkeypatch):
    ck = tmp_path / "c.json"
    _interrupt_metacognition_at(monkeypatch, 3)
    with pytest.raises(FitInterrupted):
        MC.fit_metacognition(scenes, estep="direct", checkpoint=ck)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="beyond max_rounds = 1"):
        MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, resume=True, max_rounds=1)


def test_mismatched_checkpoint_refused(scenes, tmp_path):
    ck = tmp_path / "c.json"
    MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, max_rounds=1)
    with pytest.raises(CheckpointError) as e:
        MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, resume=True, tol=1e-5)
    msg = str(e.value)
    assert "other settings" in msg and "tol = 1e-07 in the checkpoint but 1e-05 now" in msg
    assert "delete" in msg and "--resume" in msg and "other data" not in msg
    with pytest.raises(CheckpointError) as e:
        MC.fit_metacognition(scenes.subset(range(5)), estep="direct", checkpoint=ck, resume=True)
    assert "other data" in str(e.value) and "other settings" not in str(e.value)
    with pytest.raises(CheckpointError, match="mode"):
        MC.fit_metacognition(scenes, mode="lesioned", estep="direct", checkpoint=ck, resume=True)
    # another kind of checkpoint, a damaged file, resume without a file name
    Checkpoint(tmp_path / "p.json", "projective", "x", {}).save(0, {})
    with pytest.raises(CheckpointError, match="belongs to a 'projective' run"):
        MC.fit_metacognition(scenes, estep="direct", checkpoint=tmp_path / "p.json", resume=True)
    (tmp_path / "bad.json").write_text('{"format": "metagen-ppl checkp')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MC.fit_metacognition(scenes, estep="direct", checkpoint=tmp_path / "bad.json", resume=True)
    with pytest.raises(MetagenError, match="needs checkpoint"):
        MC.fit_metacognition(scenes, estep="direct", resume=True)
    # without resume an old checkpoint is simply overwritten
    MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, tol=1e-5, max_rounds=1)
    assert json.loads(ck.read_text())["fingerprint"]["settings"]["tol"] == 1e-5


# --------------------------------------------------------------------------- atomic writes
def test_failed_replace_keeps_the_old_checkpoint(scenes, reference, tmp_path, monkeypatch):
    """Ctrl-C between writing the temporary file and os.replace: the old checkpoint stays, no temp file."""
    ck = tmp_path / "c.json"
    _interrupt_metacognition_at(monkeypatch, 2)
    with pytest.raises(FitInterrupted):
        MC.fit_metacognition(scenes, estep="direct", checkpoint=ck)
    monkeypatch.undo()
    before = ck.read_bytes()

    def replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(FitInterrupted) as e:
        MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, resume=True)
    monkeypatch.undo()
    assert e.value.round == 1
    assert ck.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["c.json"]
    res = MC.fit_metacognition(scenes, estep="direct", checkpoint=ck, resume=True)
    _same_result(reference["direct"], res)


def test_result_file_is_replaced_atomically(scenes, reference, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    reference["direct"].to_json(out)
    before = out.read_text()

    def replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        MC.fit_metacognition(scenes, estep="direct", max_rounds=1, out=out)
    monkeypatch.undo()
    assert out.read_text() == before and json.loads(before)["n_rounds"] == reference["direct"].n_rounds
    assert sorted(os.listdir(tmp_path)) == ["res.json"]


def test_killed_between_write_and_replace(scenes_raw, reference, tmp_path):
    """A real kill (os._exit in a subprocess) at the third os.replace: the files on disk are the old,
    complete ones, and the fit resumes from them to the uninterrupted result."""
    data = tmp_path / "scenes.json"
    write_scenes(data, scenes_raw)
    script = textwrap.dedent(f"""
        import os, sys
        import torch
        torch.set_num_threads(1)
        real, calls = os.replace, [0]
        def replace(src, dst):
            calls[0] += 1
            if calls[0] == 3:
                os._exit(137)          # killed after writing the temporary file, before the rename
            real(src, dst)
        os.replace = replace
        from metagen_ppl.models.detector.fit import fit_metacognition
        fit_metacognition({str(data)!r}, estep="direct", checkpoint={str(tmp_path / 'c.json')!r})
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 137, p.stderr
    stored = json.loads((tmp_path / "c.json").read_text())       # complete, valid JSON
    assert stored["round"] == 1
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(".") and ".tmp" in f]
    assert len(leftovers) == 1                                     # the orphaned temporary file, never read
    res = MC.fit_metacognition(str(data), estep="direct", checkpoint=tmp_path / "c.json", resume=True)
    _same_result(reference["direct"], res)


def test_encode_round_trip_is_exact():
    x = {"a": torch.tensor([1.0 / 3, float("nan"), -float("inf")], dtype=torch.float64),
         "b": torch.tensor([[True, False]]), "c": (1, [2.5, float("inf")], {"d": torch.arange(3)}),
         "f": torch.tensor([0.1], dtype=torch.float32)}
    y = decode(json.loads(json.dumps(encode(x), allow_nan=False)))
    assert torch.equal(y["a"][:1], x["a"][:1]) and torch.isnan(y["a"][1]) and y["a"][2] == -float("inf")
    assert torch.equal(y["b"], x["b"]) and y["f"].dtype == torch.float32 and torch.equal(y["f"], x["f"])
    assert y["c"][0] == 1 and y["c"][1] == [2.5, float("inf")] and torch.equal(y["c"][2]["d"], torch.arange(3))


# --------------------------------------------------------------------------- fit_videos
def test_fit_videos_interrupt_and_resume(tmp_path):
    data = P.data_from_videos(parse_videos(P.simulate(12, 8, seed=5)))
    ref = P.fit_videos(data, max_objects=4)
    assert ref.n_rounds >= 2

    def stop(n, info):
        if info["round"] == 1:
            raise KeyboardInterrupt

    ck = tmp_path / "p.json"
    with pytest.raises(FitInterrupted) as e:
        P.fit_videos(data, max_objects=4, checkpoint=ck, progress=stop)
    assert e.value.round == 1
    res = P.fit_videos(data, max_objects=4, checkpoint=ck, resume=True)
    for k in ref.values:
        assert torch.equal(ref.values[k], res.values[k]), k
    for k in ("cats", "active", "birth_locs"):
        assert torch.equal(getattr(ref, k), getattr(res, k)), k
    assert ref.trace == res.trace and ref.history == res.history
    assert (ref.n_iter, ref.n_rounds, ref.births, ref.deaths, ref.converged) == \
        (res.n_iter, res.n_rounds, res.births, res.deaths, res.converged)
    assert torch.equal(ref.info["video_score"], res.info["video_score"])
    with pytest.raises(CheckpointError, match="max_objects = 4 in the checkpoint but 5 now"):
        P.fit_videos(data, max_objects=5, checkpoint=ck, resume=True)
    with pytest.raises(CheckpointError, match="other data"):
        P.fit_videos(P.select_videos(data, [0, 1, 2]), max_objects=4, checkpoint=ck, resume=True)


# --------------------------------------------------------------------------- command lines
def test_metacognition_cli_sigint_and_resume(scenes_raw, reference, tmp_path, capsys):
    """A real SIGINT in a subprocess: exit 130 with one line saying how to resume; --resume then
    writes the result of an uninterrupted run."""
    data = tmp_path / "scenes.json"
    write_scenes(data, scenes_raw)
    args = ["metacognition", "fit", "--data", str(data)]
    out = tmp_path / "res.json"
    script = textwrap.dedent(f"""
        import os, signal, sys
        # a process started in the background by a non-interactive shell inherits SIGINT ignored:
        # restore Python's Ctrl-C handler so the signal below raises KeyboardInterrupt everywhere
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import torch
        torch.set_num_threads(1)
        from metagen_ppl.apps.cli import main as cli
        import metagen_ppl.models.detector.fit as MC
        from metagen_ppl.models.detector.structure import DetectorSearch
        orig = DetectorSearch.propose
        def propose(self, kind):
            if kind == "birth" and self.round == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return orig(self, kind)
        DetectorSearch.propose = propose
        sys.exit(cli.main({args + ["--out", str(out)]!r}))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0] and "round 2" in lines[0]
    ck = tmp_path / "res.json.checkpoint.json"
    assert json.loads(ck.read_text())["round"] == 2
    assert json.loads(out.read_text())["n_rounds"] == 2            # the last finished round's result
    capsys.readouterr()
    assert cli.main(args + ["--out", str(out), "--resume"]) == 0
    ref, res = json.loads(json.dumps(reference["engine"].to_dict())), json.loads(out.read_text())
    assert res["info"]["resumed_from_round"] == 2
    assert _strip(ref) == _strip(res)
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "plain.json"), "--no-checkpoint"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["plain.json", "res.json", "res.json.checkpoint.json", "scenes.json"]
    # another setting on resume: refused with the setting's name, exit 2
    capsys.readouterr()
    assert cli.main(args + ["--out", str(out), "--resume", "--max-objects", "6"]) == 2
    err = capsys.readouterr().err
    assert "max_objects = 8 in the checkpoint but 6 now" in err and "delete" in err
    assert cli.main(args + ["--resume", "--no-checkpoint"]) == 2
    assert "--resume needs" in capsys.readouterr().err


def _json(path):
    with open(path) as fh:
        return json.load(fh)


def test_evaluate_cli_interrupt_and_resume(videos_file, tmp_path, monkeypatch, capsys):
    base = ["evaluate", "--data", videos_file["all"], "--plots", "1", "--no-progress"]
    assert cli.main(base + ["--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "run"
    orig = P.ProjectiveSearch.em_phase

    def em_phase(self, *a, **k):
        if self.mode == "lesioned" and self.round == 2:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(P.ProjectiveSearch, "em_phase", em_phase)
    capsys.readouterr()
    assert cli.main(base + ["--out", str(out)]) == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if "interrupted" in ln]
    assert len(err) == 1 and "--resume" in err[0] and "em_learn_all" in err[0], err
    assert "lesioned at the end of round 1" in err[0], err
    assert sorted(os.listdir(out / "checkpoints")) == ["em_learn_all.json", "lesioned.json"]
    assert (out / "world_states.json").exists() and not (out / "metrics.json").exists()
    monkeypatch.undo()
    # resume: the finished EM fit is reused (no birth in learn mode), the lesioned fit continues
    orig_birth = P.ProjectiveSearch.propose_births
    calls = []

    def propose_births(self):
        calls.append(self.mode)
        return orig_birth(self)

    monkeypatch.setattr(P.ProjectiveSearch, "propose_births", propose_births)
    assert cli.main(base + ["--out", str(out), "--resume"]) == 0
    assert "learn" not in calls and "lesioned" in calls
    for name in ("world_states.json", "metacognition.json"):
        assert _json(out / name) == _json(tmp_path / "ref" / name), name
    drop = ("timings", "wall_time_s", "fit_and_score_s")
    assert _strip(_json(out / "metrics.json"), drop) == _strip(_json(tmp_path / "ref" / "metrics.json"), drop)
    assert (out / "checkpoints" / "evaluate.json").exists()
    # complete: a second --resume returns at once, fitting nothing
    monkeypatch.setattr(P, "fit_videos", lambda *a, **k: pytest.fail("refitted a finished run"))
    capsys.readouterr()
    assert cli.main(base + ["--out", str(out), "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    monkeypatch.undo()
    # other settings: the EM unit refuses, naming the setting and the directory to delete
    assert cli.main(base + ["--out", str(out), "--resume", "--max-objects", "5"]) == 2
    err = capsys.readouterr().err
    assert "max_objects = 8 in the checkpoint but 5 now" in err and str(out / "checkpoints") in err


def test_evaluate_svi_and_mcmc_units_reused(videos_file, tmp_path, monkeypatch):
    videos_file = videos_file["small"]
    kw = dict(progress=False, plots=0, lesioned=False, ground_truth_V=False)
    # MCMC: interrupted in the second video; the first video's draws are kept
    ref = evaluate(videos_file, str(tmp_path / "ref"), method="mcmc", mcmc_videos=2, mcmc_samples=4,
                   mcmc_warmup=2, checkpoint=False, **kw)
    orig = P.nuts_locations
    calls = []

    def nuts(*a, **k):
        calls.append(k["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(P, "nuts_locations", nuts)
    out = tmp_path / "mcmc"
    with pytest.raises(FitInterrupted) as e:
        evaluate(videos_file, str(out), method="mcmc", mcmc_videos=2, mcmc_samples=4, mcmc_warmup=2, **kw)
    assert "mcmc_video_0" in str(e.value)
    calls.clear()

    def counted(*a, **k):
        calls.append(k["seed"])
        return orig(*a, **k)

    monkeypatch.setattr(P, "nuts_locations", counted)
    res = evaluate(videos_file, str(out), method="mcmc", mcmc_videos=2, mcmc_samples=4, mcmc_warmup=2,
                   resume=True, **kw)
    assert len(calls) == 1
    assert res["splits"] == ref["splits"] and res["per_video"] == ref["per_video"]
    assert _json(out / "world_states.json") == _json(tmp_path / "ref" / "world_states.json")
    # SVI: a finished unit is not run again (evaluate.json removed: the units decide)
    out = tmp_path / "svi"
    first = evaluate(videos_file, str(out), method="svi", svi_steps=5, **kw)
    os.remove(out / "checkpoints" / "evaluate.json")
    import metagen_ppl.apps.video_fits

    monkeypatch.setattr(metagen_ppl.apps.video_fits, "fit_svi", lambda *a, **k: pytest.fail("SVI rerun"))
    again = evaluate(videos_file, str(out), method="svi", svi_steps=5, resume=True, **kw)
    assert again["splits"] == first["splits"]
    with pytest.raises(MetagenError, match="needs checkpoint"):
        evaluate(videos_file, str(out), resume=True, checkpoint=False, **kw)


def test_help_documents_the_flags(capsys):
    assert cli.main(["evaluate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--resume" in text and "--no-checkpoint" in text
    assert cli.main(["metacognition", "fit", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--resume" in text and "--checkpoint" in text and "--no-checkpoint" in text
