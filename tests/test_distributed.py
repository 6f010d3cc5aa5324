"""Scale-out (``--scheduler``): the executor, the map-reduce EM driver, the projective model's map-reduce fit,
and ``evaluate`` / ``compare`` on a real Dask ``LocalCluster`` of worker processes, with a worker killed
mid-run (Dask re-runs its tasks; the results equal the in-process run and every unit is kept).

The tests that need Dask are skipped, with the reason, when it is not installed (the ``[distributed]``
extra); the in-process tests run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

from metagen_ppl.apps.cli.main import main
from metagen_ppl.apps.compare import compare
from metagen_ppl.apps.evaluate import evaluate
from metagen_ppl.domain.metagen_data import parse_videos
from metagen_ppl.engine.checkpoint import FitInterrupted
from metagen_ppl.engine.distributed import (DistributedError, InProcessExecutor, capture,
                                            make_executor, parse_scheduler)
from metagen_ppl.engine.mapreduce import run_mapreduce, sum_statistics
from metagen_ppl.errors import MetagenError
from metagen_ppl.models import projective as P

HAS_DASK = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAS_DASK, reason="Dask distributed is not installed: the cluster tests need the "
                                                     "[distributed] extra (pip install -e \".[distributed]\")")


# --------------------------------------------------------------------------- a toy model of the map-reduce EM
# Zero-inflated Poisson counts: x = 0 with probability pi, else Poisson(lam). EM with the structural zeros
# latent: r = P(structural | x = 0) = pi / (pi + (1 - pi) e^-lam); pi = sum r / n, lam = sum (1-r) x / sum (1-r).
def zip_step(chunk, params, state, settings):
    """One chunk's E-step (module level, sent to the workers by value: see ``_by_value``)."""
    x = chunk["x"]
    if settings.get("kill_marker") and chunk["id"] == 1 and state is not None and state["visits"] == 1 \
            and not os.path.exists(settings["kill_marker"]):
        open(settings["kill_marker"], "w").close()
        os._exit(1)                                 # the worker dies mid-round (first attempt only)
    pi, lam = float(params["pi"]), float(params["lam"])
    zero = (x == 0).to(torch.float64)
    r = zero * pi / (pi + (1 - pi) * np.exp(-lam))
    stats = {"r": r.sum(), "n": torch.tensor(float(len(x)), dtype=torch.float64),
             "x1": ((1 - r) * x).sum(), "w1": (1 - r).sum()}
    visits = 0 if state is None else state["visits"]
    return {"stats": stats, "state": {"visits": visits + 1}, "info": {"units": len(x)}}


def zip_mstep(S, params):
    return {"pi": S["r"] / S["n"], "lam": S["x1"] / S["w1"]}


def _zip_chunks(n_chunks=5, size=40, seed=0):
    g = np.random.default_rng(seed)
    out = []
    for c in range(n_chunks):
        x = g.poisson(2.5, size=size) * (g.random(size) > 0.3)
        out.append({"id": c, "x": torch.tensor(x, dtype=torch.float64)})
    return out


def _zip_batch(chunks, rounds):
    """The same EM on all units at once (the reference)."""
    x = torch.cat([c["x"] for c in chunks])
    p = {"pi": torch.tensor(0.5, dtype=torch.float64), "lam": torch.tensor(1.0, dtype=torch.float64)}
    for _ in range(rounds):
        p = zip_mstep(zip_step({"id": -1, "x": x}, p, None, {})["stats"], p)
    return p


P0 = {"pi": torch.tensor(0.5, dtype=torch.float64), "lam": torch.tensor(1.0, dtype=torch.float64)}


# --------------------------------------------------------------------------- no Dask needed
def test_parse_scheduler():
    assert parse_scheduler(None) == ("inprocess", None)
    assert parse_scheduler("inprocess") == ("inprocess", None)
    assert parse_scheduler("processes") == ("processes", None)
    assert parse_scheduler("processes:3") == ("processes", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("processes:0", "processes:x", "threads", "http//x", "ftp://x:1"):
        with pytest.raises(DistributedError):
            parse_scheduler(bad)


def test_inprocess_executor_keeps_order_and_reports_each_result():
    ex = InProcessExecutor(measure=True)
    data = ex.scatter([[1, 2], [3]])
    seen = []
    out = ex.map(sum_plus, data, [10, 20], on_result=lambda i, r: seen.append((i, r)))
    assert out == [13, 23] and seen == [(0, 13), (1, 23)]
    assert ex.traffic["tasks"] == 2 and ex.traffic["bytes_to_tasks"] > 0 and ex.traffic["bytes_scattered"] > 0


def sum_plus(xs, k):
    return sum(xs) + k


def test_capture_returns_errors_and_warnings_instead_of_raising():
    def bad():
        import warnings
        warnings.warn("careful")
        raise ValueError("no good")
    out = capture(bad)
    assert not out.ok and isinstance(out.error, ValueError) and "no good" in out.traceback
    with pytest.warns(UserWarning, match="careful"), pytest.raises(ValueError, match="no good"):
        out.unwrap()
    assert capture(sum_plus, [1], 1).unwrap() == 2


def test_mapreduce_equals_the_batch_em_and_resumes(tmp_path):
    chunks = _zip_chunks()
    out = run_mapreduce(chunks, zip_step, zip_mstep, P0, extra_args=({},), tol=1e-10, max_rounds=200)
    assert out.converged and out.rounds > 5
    ref = _zip_batch(chunks, out.rounds)
    # the sum over chunks of the statistics is the statistics of all units (float64 rounding)
    for k in ref:
        assert float(out.params[k]) == pytest.approx(float(ref[k]), rel=1e-12, abs=1e-14)
    assert [s["visits"] for s in out.states] == [out.rounds] * len(chunks)
    assert out.history[-1]["units"] == 200
    # interrupted after round 3 (Ctrl-C), resumed: the uninterrupted result, exactly
    ck = tmp_path / "mr.json"

    def stop(rnd, entry):
        if rnd == 3:
            raise KeyboardInterrupt
    with pytest.raises(FitInterrupted):
        run_mapreduce(chunks, zip_step, zip_mstep, P0, extra_args=({},), tol=1e-10, max_rounds=200, checkpoint=ck,
                      on_round=stop)
    again = run_mapreduce(chunks, zip_step, zip_mstep, P0, extra_args=({},), tol=1e-10, max_rounds=200,
                          checkpoint=ck, resume=True)
    assert again.resumed_from == 3 and again.rounds == out.rounds
    assert all(torch.equal(again.params[k], out.params[k]) for k in out.params)
    with pytest.raises(MetagenError, match="different keys"):
        sum_statistics([{"a": torch.ones(1)}, {"b": torch.ones(1)}])


def test_missing_dask_is_a_clear_usage_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)          # `import distributed` raises ImportError
    with pytest.raises(DistributedError, match=r'pip install -e "\.\[distributed\]"'):
        make_executor("processes:2")
    assert isinstance(make_executor(None), InProcessExecutor)      # the default needs no Dask
    code = main(["compare", "--model", "baseline", "--out", str(tmp_path / "c"), "--scheduler", "processes"])
    err = capsys.readouterr().err
    assert code == 2 and "[distributed]" in err and err.count("\n") == 1


def _sim_file(tmp_path, n=6, frames=8, seed=2):
    path = tmp_path / "videos.json"
    path.write_text(json.dumps(P.simulate(n, frames, seed=seed, rates=[1.2, 1.0, 0.9, 1.0, 0.9],
                                          hallucination=[0.05] * 5)))
    return str(path)


def test_projective_mapreduce_in_process(tmp_path):
    """The map-reduce fit learns V like the batched fit on simulated videos; interrupted and resumed it ends
    with the uninterrupted result; ``fixed`` mode is one round with V as given."""
    r_true = np.array([1.2, 0.8, 0.6, 1.0, 0.9])
    videos = parse_videos(P.simulate(20, 10, seed=7, rates=r_true, hallucination=[0.05, 0.15, 0.1, 0.2, 0.08],
                                     pixel_scale=4.0))
    data = P.data_from_videos(videos)
    fit = P.fit_videos_mapreduce(data, chunk_size=6, tol=1e-4)
    assert fit.converged and fit.info["mapreduce"]["num_chunks"] == 4
    batch = P.fit_videos(data, mode="learn")
    assert np.abs(fit.values["rates"].numpy() - batch.values["rates"].numpy()).max() < 0.1
    assert abs(sum(map(len, fit.objects())) - sum(map(len, batch.objects()))) <= 2
    assert all(0.5 < p <= 1.0 for ex in fit.existence() for p in ex)
    ck = tmp_path / "ck.json"

    def stop(rnd, entry):
        if rnd == 2:
            raise KeyboardInterrupt
    with pytest.raises(FitInterrupted):
        P.fit_videos_mapreduce(data, chunk_size=6, tol=1e-4, checkpoint=ck, progress=stop)
    resumed = P.fit_videos_mapreduce(data, chunk_size=6, tol=1e-4, checkpoint=ck, resume=True)
    assert resumed.info["resumed_from_round"] == 2
    for k in fit.params:
        assert torch.equal(resumed.params[k], fit.params[k]), k
    fixed = P.fit_videos_mapreduce(data, mode="fixed", params=fit.values, chunk_size=6)
    assert fixed.n_rounds == 1
    for k in ("rates", "hallucination", "pixel_scale", "mark_real", "mark_hall", "half_fov"):
        assert torch.equal(fixed.values[k], fit.values[k]), k


# --------------------------------------------------------------------------- a real local cluster
def _by_value():
    """Send this module's functions to the workers by value (the workers cannot import the tests)."""
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    """One local cluster of 2 worker processes for the module, started by ``--scheduler processes:2``'s code."""
    if not HAS_DASK:
        pytest.skip("Dask distributed is not installed")
    _by_value()
    with make_executor("processes:2", measure=True) as ex:
        yield ex


@pytest.fixture
def executor(cluster):
    cluster.client.wait_for_workers(2, timeout=60)
    cluster.traffic = dict.fromkeys(cluster.traffic, 0)
    yield cluster
    cluster.client.wait_for_workers(2, timeout=60)     # a killed worker is back (its nanny restarts it)


class Killer(threading.Thread):
    """Kills (SIGKILL) the first worker process seen running a task whose key starts with ``prefix``."""

    def __init__(self, client, prefix, after=0):
        super().__init__(daemon=True)
        self.client, self.prefix, self.after = client, prefix, after
        self.pids = client.run(os.getpid)
        self.killed, self.stop = None, False

    def run(self):
        seen = 0
        while not self.stop and self.killed is None:
            for addr, keys in self.client.processing().items():
                if any(str(k).startswith(self.prefix) for k in keys) and addr in self.pids:
                    seen += 1
                    if seen > self.after:
                        os.kill(self.pids[addr], signal.SIGKILL)
                        self.killed = addr
                        return
            time.sleep(0.005)


@needs_dask
def test_local_cluster_map_reduce_survives_a_worker_that_dies(executor, tmp_path):
    """A task kills its own worker on its first attempt: Dask re-runs it elsewhere, the data scattered to the
    dead worker is placed again, and the result equals the in-process one."""
    chunks = _zip_chunks()
    ref = run_mapreduce(chunks, zip_step, zip_mstep, P0, extra_args=({},), tol=1e-6, max_rounds=200)
    marker = tmp_path / "killed"
    out = run_mapreduce(chunks, zip_step, zip_mstep, P0, executor=executor,
                        extra_args=({"kill_marker": str(marker)},), tol=1e-6, max_rounds=200)
    assert marker.exists()                             # the worker did die
    assert out.rounds == ref.rounds and all(torch.equal(out.params[k], ref.params[k]) for k in ref.params)
    assert [s["visits"] for s in out.states] == [s["visits"] for s in ref.states]


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if "time" not in k and "seconds" not in k and not k.endswith("_s")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


@needs_dask
def test_evaluate_on_a_cluster_with_a_killed_worker_equals_in_process(executor, tmp_path):
    path = _sim_file(tmp_path)
    kw = dict(method="mcmc", mcmc_videos=2, mcmc_samples=10, mcmc_warmup=10, plots=0, progress=False,
              chunk_size=2)
    ref = evaluate(path, str(tmp_path / "inproc"), scheduler="inprocess", **kw)
    killer = Killer(executor.client, "projective-chunk")
    killer.start()
    got = evaluate(path, str(tmp_path / "cluster"), scheduler=executor, **kw)
    killer.stop = True
    assert killer.killed is not None                   # a worker died while it ran a chunk
    # the tasks got their chunk's structure and V, not its detections (scattered once, again after the kill)
    traffic = dict(executor.traffic)
    assert traffic["bytes_to_tasks"] / traffic["tasks"] < 2000 < traffic["bytes_scattered"] / 20
    assert _strip_times(got["splits"]) == _strip_times(ref["splits"])
    for f in ("world_states.json", "metacognition.json"):
        a = json.loads((tmp_path / "inproc" / f).read_text())
        b = json.loads((tmp_path / "cluster" / f).read_text())
        assert _strip_times(a) == _strip_times(b), f
    units = sorted(os.listdir(tmp_path / "cluster" / "checkpoints"))
    assert {"mapreduce_em_learn_all.json", "mapreduce_lesioned.json", "mapreduce_ground_truth.json",
            "evaluate.json"} <= set(units) and sum(u.startswith("mcmc_video_") for u in units) == 2
    # nothing is lost: resumed without the completion marker, every unit is reused (none recomputed)
    os.remove(tmp_path / "cluster" / "checkpoints" / "evaluate.json")
    before = {u: os.path.getmtime(tmp_path / "cluster" / "checkpoints" / u) for u in units if u != "evaluate.json"}
    logs = []
    again = evaluate(path, str(tmp_path / "cluster"), scheduler=executor, resume=True, log=logs.append, **kw)
    assert _strip_times(again["splits"]) == _strip_times(ref["splits"])
    assert all(os.path.getmtime(tmp_path / "cluster" / "checkpoints" / u) == t for u, t in before.items())


@needs_dask
def test_compare_on_a_cluster_with_a_killed_worker_equals_in_process(executor, tmp_path):
    kw = dict(model="baseline", methods=["em", "svi-map"], simulation=(3, 100), svi_steps=100, em_inits=2, seed=1)
    ref = compare(out_dir=str(tmp_path / "inproc"), **kw)
    killer = Killer(executor.client, "compare-method")
    killer.start()
    got = compare(out_dir=str(tmp_path / "cluster"), scheduler=executor, **kw)
    killer.stop = True
    assert killer.killed is not None
    for m in kw["methods"]:
        assert got["status"][m]["status"] == "ok"
        a, b = ref["results"][m], got["results"][m]
        assert a.log_likelihood == b.log_likelihood
        for k, v in a.params.items():
            assert torch.equal(v, b.params[k]), (m, k)
    # every method's files were written as it finished: a resumed run reuses them all
    logs = []
    compare(out_dir=str(tmp_path / "cluster"), scheduler=executor, resume=True, log=logs.append, **kw)
    assert sum("reused (--resume)" in line for line in logs) == 2


@needs_dask
def test_unreachable_scheduler_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(DistributedError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        make_executor("tcp://127.0.0.1:1", timeout=1)
    code = main(["compare", "--model", "baseline", "--out", str(tmp_path / "c"), "--scheduler", "nonsense"])
    assert code == 2 and "unknown --scheduler 'nonsense'" in capsys.readouterr().err
