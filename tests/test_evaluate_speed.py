"""evaluate's second process (issue 13): the lesioned model and the ground-truth V fitted in a second
process while ours is fitted give the same outputs as one process, resume reuses the units of a
parallel run, and a failure, a death or Ctrl-C of either process ends the run cleanly (no hang).

On small simulated files (always run) and an excerpt of the shared MetaGen data (skipped, with the
reason, when ../shared is absent). No timing assertions: ``comparisons/bench_evaluate.py`` measures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from metagen_ppl.apps import video_fits
from metagen_ppl.apps.cli import main as cli
from metagen_ppl.apps.evaluate import evaluate
from metagen_ppl.apps.video_fits import SecondProcessError, resolve_jobs, start_method
from metagen_ppl.models import projective as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIRS = ["/work/shared/data/metagen2021", os.path.join(ROOT, "..", "shared", "data", "metagen2021")]
REAL = next((d for d in DATA_DIRS if os.path.isfile(os.path.join(d, "data_labelled_retinanet.json"))), None)
OUTPUTS = ("world_states.json", "metacognition.json", "metrics.json")
#: what may differ between a run in one process and one in two (or a resumed run): the clock and how it ran
RUN_KEYS = ("timings", "wall_time_s", "fit_and_score_s")

#: a variant of the projective model whose fit fails (or dies) in one mode, given by the environment
FAILING_MODEL = '''
import os
import signal

from metagen_ppl.models import projective as _P
from metagen_ppl.models.projective import *  # noqa: F401,F403


def fit_videos(data, *, mode="learn", **kw):
    if mode == os.environ.get("FAIL_MODE"):
        if os.environ.get("FAIL_HOW") == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError(f"boom in the {mode} fit")
    return _P.fit_videos(data, mode=mode, **kw)
'''


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    sim = P.simulate(8, 5, seed=11, rates=[1.2, 1.0, 0.8, 1.0, 0.9], hallucination=[0.05] * 5)
    path = d / "videos.json"
    path.write_text(json.dumps(sim))
    small = d / "small.json"
    small.write_text(json.dumps(sim[:3]))
    model = d / "failing_variant.py"
    model.write_text(FAILING_MODEL)
    return {"data": str(path), "small": str(small), "model": str(model)}


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """The outputs of a run in one process."""
    out = tmp_path_factory.mktemp("ref") / "one"
    assert cli.main(["evaluate", "--data", videos["data"], "--out", str(out), "--plots", "1", "--no-progress",
                     "--jobs", "1"]) == 0
    return out


def _json(path):
    with open(path) as fh:
        return json.load(fh)


def _same_outputs(a, b):
    for name in OUTPUTS:
        x, y = _json(os.path.join(a, name)), _json(os.path.join(b, name))
        if name == "metrics.json":
            x, y = ({k: v for k, v in m.items() if k not in RUN_KEYS} for m in (x, y))
        assert x == y, name
    plots = sorted(os.listdir(os.path.join(a, "plots"))) if os.path.isdir(os.path.join(a, "plots")) else []
    assert plots == (sorted(os.listdir(os.path.join(b, "plots"))) if plots else plots)
    for name in plots:       # the same picture, byte for byte, whichever process drew it
        with open(os.path.join(a, "plots", name), "rb") as fa, open(os.path.join(b, "plots", name), "rb") as fb:
            assert fa.read() == fb.read(), name


def _cli(args, timeout=180, env=None, new_session=False):
    """The command line in a fresh process (a real second process, real signals)."""
    code = f"import sys; from metagen_ppl.apps.cli.main import main; sys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), start_new_session=new_session)


# --------------------------------------------------------------------------- same results
def test_two_processes_give_the_outputs_of_one(videos, reference, tmp_path, capsys):
    out = tmp_path / "two"
    assert cli.main(["evaluate", "--data", videos["data"], "--out", str(out), "--plots", "1", "--no-progress",
                     "--jobs", "2"]) == 0
    _same_outputs(reference, out)
    timings = _json(out / "metrics.json")["timings"]
    assert timings["jobs"] == 2 and timings["threads"] == 1
    assert timings["second_process"] == ("fork" if sys.platform.startswith("linux") else "spawn")
    assert {"lesioned_fit_s", "ground_truth_V_s", "worker_wait_s", "load_s", "write_s"} <= set(timings)
    assert _json(reference / "metrics.json")["timings"]["jobs"] == 1
    assert sorted(os.listdir(out / "checkpoints")) == sorted(os.listdir(reference / "checkpoints"))
    assert sorted(os.listdir(out / "plots")) == sorted(os.listdir(reference / "plots"))


@pytest.mark.parametrize("second_is_idle", [True, False])
def test_plots_drawn_by_either_process_are_the_same(videos, reference, tmp_path, monkeypatch, second_is_idle):
    """The second process draws the plots when its fits are done by the time ours is, else this one does."""
    if second_is_idle:      # wait for its fits, as if ours had taken longer
        monkeypatch.setattr(video_fits.SecondProcess, "idle",
                            lambda self: all(self.result(j.name) is not None for j in self.jobs))
    else:
        monkeypatch.setattr(video_fits.SecondProcess, "idle", lambda self: False)
    out = tmp_path / "two"
    m = evaluate(videos["data"], str(out), progress=False, plots=2, jobs=2)
    assert m["timings"]["plots_in"] == ("second process" if second_is_idle else "main process")
    one = tmp_path / "one"
    evaluate(videos["data"], str(one), progress=False, plots=2, jobs=1)
    _same_outputs(one, out)
    assert len(os.listdir(out / "plots")) == 2


def test_spawned_second_process_gives_the_same_outputs(videos, tmp_path, monkeypatch):
    """A spawned worker (a fresh interpreter: other platforms, or more than one thread, where a fork after
    OpenMP use could hang) gives the same outputs, plots included."""
    assert start_method(2) == "spawn" and start_method(1) == ("fork" if sys.platform.startswith("linux") else "spawn")
    monkeypatch.setattr(video_fits, "START_METHOD", "spawn")
    assert start_method(1) == "spawn"
    one, two = tmp_path / "one", tmp_path / "two"
    for out, jobs in ((one, 1), (two, 2)):
        m = evaluate(videos["small"], str(out), progress=False, plots=1, jobs=jobs, max_objects=3)
    assert m["timings"]["second_process"] == "spawn"
    _same_outputs(one, two)


@pytest.mark.skipif(REAL is None, reason="the MetaGen detection data (../shared/data/metagen2021/, MIT licence, "
                                        "from the public MetaGen repository) is not present")
def test_real_excerpt_two_processes_equal_one(tmp_path):
    videos = _json(os.path.join(REAL, "data_labelled_retinanet.json"))[:4]
    path = tmp_path / "excerpt.json"
    path.write_text(json.dumps(videos))
    for jobs in (1, 2):
        m = evaluate(str(path), str(tmp_path / f"jobs{jobs}"), progress=False, plots=0, max_objects=4, jobs=jobs)
        assert m["timings"]["jobs"] == jobs
    _same_outputs(tmp_path / "jobs1", tmp_path / "jobs2")


# --------------------------------------------------------------------------- resume
def test_resume_after_a_parallel_run_reuses_every_unit(videos, reference, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["evaluate", "--data", videos["data"], "--out", str(out), "--plots", "1", "--no-progress", "--jobs", "2"]
    assert cli.main(base) == 0
    ck = out / "checkpoints"
    os.remove(ck / "evaluate.json")                 # the units decide what is reused
    os.remove(out / "metrics.json")
    units = {name: (ck / name).stat().st_mtime_ns for name in os.listdir(ck)}
    assert set(units) == {"em_learn_all.json", "lesioned.json", "ground_truth.json"}
    capsys.readouterr()
    assert cli.main(base + ["--resume"]) == 0
    assert "reusing the finished units" in capsys.readouterr().err
    assert {name: (ck / name).stat().st_mtime_ns for name in units} == units   # loaded, not refitted
    _same_outputs(reference, out)
    assert (ck / "evaluate.json").exists()


def test_ctrl_c_stops_both_processes_and_resume_completes(videos, reference, tmp_path, capsys):
    """A terminal's Ctrl-C reaches every process of the group: the main process prints one line and exits
    with 130, the second one ignores it and is stopped; --resume then ends with the uninterrupted outputs."""
    out = tmp_path / "run"
    args = ["evaluate", "--data", videos["data"], "--out", str(out), "--plots", "1", "--no-progress",
            "--jobs", "2"]
    script = textwrap.dedent(f"""
        import os, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from metagen_ppl.apps.cli.main import main
        from metagen_ppl.models import projective as P
        orig = P.ProjectiveSearch.em_phase
        def em_phase(self, *a, **k):
            if self.mode == "learn" and self.round == 2:
                os.killpg(os.getpgid(0), signal.SIGINT)     # Ctrl-C in a terminal: the whole group
            return orig(self, *a, **k)
        P.ProjectiveSearch.em_phase = em_phase
        sys.exit(main({args!r}))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                       start_new_session=True)
    assert p.returncode == 130, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], lines
    assert "em_learn_all at the end of round 1" in lines[0], lines
    assert "Traceback" not in p.stderr and not (out / "metrics.json").exists()
    assert not [f for f in os.listdir(out / "checkpoints") if f.startswith(".")]    # no temporary files left
    assert cli.main(args + ["--resume"]) == 0
    _same_outputs(reference, out)


# --------------------------------------------------------------------------- failures
def test_exception_in_the_second_process_is_raised_here(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL_MODE", "lesioned")
    with pytest.raises(ValueError, match="boom in the lesioned fit") as e:
        evaluate(videos["data"], str(tmp_path / "o"), progress=False, plots=0, model=videos["model"], jobs=2)
    assert "in the second process (lesioned)" in str(e.value.__cause__)
    assert "fit_videos" in str(e.value.__cause__)                   # the worker's traceback


def test_exception_in_the_second_process_exits_1_with_one_line(videos, tmp_path, monkeypatch, capsys):
    args = ["evaluate", "--data", videos["data"], "--out", str(tmp_path / "o"), "--plots", "0", "--no-progress",
            "--model", videos["model"], "--jobs", "2"]
    p = _cli(args, env={"FAIL_MODE": "truth"})                # a fresh process: exits, does not hang
    assert p.returncode == 1, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("metagen-ppl")]
    assert errors == ["metagen-ppl: internal error: ValueError: boom in the truth fit (run with --debug for the "
                      "traceback)"], p.stderr
    assert "Traceback" not in p.stderr
    monkeypatch.setenv("FAIL_MODE", "truth")
    assert cli.main(args + ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "in the second process (ground_truth)" in err and "Traceback" in err


def test_a_dead_second_process_is_an_error_not_a_hang(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL_MODE", "lesioned")
    monkeypatch.setenv("FAIL_HOW", "die")
    with pytest.raises(SecondProcessError, match="ended by signal 9 .SIGKILL. without its result") as e:
        evaluate(videos["data"], str(tmp_path / "o"), progress=False, plots=0, model=videos["model"], jobs=2)
    assert "--resume" in str(e.value) and "--jobs 1" in str(e.value)


def test_an_error_in_our_fit_stops_the_second_process(videos, tmp_path, monkeypatch):
    """The main process fails while the second one fits: it is stopped at once, not waited for."""
    monkeypatch.setenv("FAIL_MODE", "learn")
    started = []
    orig = video_fits.SecondProcess.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        started.append(self)

    monkeypatch.setattr(video_fits.SecondProcess, "__init__", init)
    with pytest.raises(ValueError, match="boom in the learn fit"):
        evaluate(videos["data"], str(tmp_path / "o"), progress=False, plots=0, model=videos["model"], jobs=2)
    assert len(started) == 1 and not started[0].process.is_alive() and started[0].process.exitcode is not None


# --------------------------------------------------------------------------- --jobs
def test_jobs_choice(capsys, tmp_path):
    frames = video_fits.SECOND_PROCESS_FROM
    two = 2 if (os.cpu_count() or 1) >= 2 else 1
    assert resolve_jobs("auto", frames, 2, "projective") == two
    assert resolve_jobs("auto", frames - 1, 2, "projective") == 1       # small files: one process
    assert resolve_jobs("auto", frames, 0, "projective") == 1           # nothing to run beside ours
    assert resolve_jobs(2, 10, 1, "projective") == 2 and resolve_jobs(8, 10, 1, "projective") == 2
    assert resolve_jobs(1, 10 ** 6, 2, "projective") == 1
    assert resolve_jobs(2, 10, 1, P) == 1                                # a model object stays in this process
    code = cli.main(["evaluate", "--data", "x.json", "--out", str(tmp_path / "o"), "--jobs", "0"])
    assert code == 2 and "--jobs must be 'auto' or a positive integer" in capsys.readouterr().err
    assert cli.main(["evaluate", "--help"]) == 0
    assert "--jobs" in capsys.readouterr().out
