"""``metagen-ppl compare`` (and ``demo``, a thin default over it): reports, diagnostics, resume, faults."""

from __future__ import annotations

import json
import math

import pytest
import torch

from metagen_ppl.apps import compare as cmp
from metagen_ppl.apps.cli.main import main
from metagen_ppl.engine.registry import builtin_models
from metagen_ppl.engine.result import FitResult

# Budgets small enough for a test, large enough that every method produces draws / traces.
TINY = dict(em_inits=2, svi_steps=30, svi_normal_samples=20, mcmc_samples=8, mcmc_warmup=8, mcmc_chains=2,
            mcmc_max_tree_depth=3)
TINY_ARGS = ["--em-inits", "2", "--svi-steps", "30", "--mcmc-samples", "8", "--mcmc-warmup", "8",
             "--mcmc-chains", "2", "--mcmc-max-tree-depth", "3"]
# The smallest data set of each built-in model (positional size arguments of its simulate hook).
SMALL = {"baseline": (2, 60), "categorical": (2, 40), "detector": (2, 4), "projective": (1, 6)}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _finite_numbers(obj, path="results"):
    """Every number in a parsed JSON object is finite (NaN/inf are written as null by design)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), path


# --------------------------------------------------------------------------- every model
@pytest.mark.parametrize("model", builtin_models())
def test_compare_every_builtin_model(tmp_path, model):
    """The report exists for every model in models/: table rows for every method, netCDF per method."""
    import arviz as az

    out = tmp_path / model
    s = cmp.compare(model, None, out_dir=out, seed=0, simulation=SMALL[model], **TINY)
    names = [r["method"] for r in s["rows"]]
    expected = (["em-mstep", "em-enumerate", "em-sample"] if model == "categorical" else ["em"]) + [
        "svi-map", "svi-normal", "mcmc"]
    assert [n for n in names if n != "em structure search"] == expected
    for r in s["rows"]:
        assert r["status"] == "ok", (r["method"], r.get("error"))
        assert math.isfinite(r["log_likelihood"])
    for name in ("report.html", "report.md", "results.json", "data.json"):
        assert (out / name).stat().st_size > 0, name
    for m in expected:
        idata = az.from_netcdf(out / "methods" / f"{m}.nc")
        assert "posterior" in idata.groups()
    mc = az.from_netcdf(out / "methods" / "mcmc.nc")
    assert mc.posterior.sizes["chain"] == 2 and mc.posterior.sizes["draw"] == 8
    # the MCMC row carries R-hat and ESS after alignment
    row = next(r for r in s["rows"] if r["method"] == "mcmc")
    assert math.isfinite(row["r_hat"]) and row["ess_bulk"] > 0 and row["ess_tail"] > 0
    # truth is known for simulated data: accuracy columns are present
    assert any(r.get("accuracy") for r in s["rows"] if r["method"] == expected[0])
    results = json.loads((out / "results.json").read_text())
    _finite_numbers(results)
    assert results["methods"] == expected
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # self-contained: images embedded
    assert 'src="http' not in html and ".png\"" not in html
    assert s["files"].get("objectives") and s["files"].get("mcmc_trace")


# --------------------------------------------------------------------------- CLI
def test_compare_cli_baseline(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run(capsys, "compare", "--out", out, "--seed", 3, *TINY_ARGS)
    assert code == 0, err
    assert "| em | ok |" in stdout and "| mcmc | ok |" in stdout
    assert "report:" in stdout
    md = (out / "report.md").read_text()
    for section in ("## Results", "## Diagnostics", "location error", "R-hat", "ESS bulk", "ELBO",
                    "![Objective traces (EM and SVI)](objectives.png)", "![Scene](scene.png)",
                    "MCMC forest plot", "Posterior assignment probabilities", "MCMC rank plot"):
        assert section in md, section
    for png in ("objectives.png", "mcmc_trace.png", "mcmc_rank.png", "mcmc_forest.png", "assignments.png",
                "scene.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_compare_data_file_and_float32(tmp_path, capsys):
    data = tmp_path / "d.json"
    assert run(capsys, "simulate", "-K", 2, "-N", 50, "--seed", 1, "--out", data)[0] == 0
    out = tmp_path / "cmp32"
    code, stdout, err = run(capsys, "compare", "--data", data, "--out", out, "--methods", "em,svi-map",
                            "--dtype", "float32", "--svi-steps", 20)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["dtype"] == "float32" and res["methods"] == ["em", "svi-map"]
    em = json.loads((out / "methods" / "em.json").read_text())
    assert em["converged"]


def test_demo_is_compare(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--out", out_dir, "--seed", 1, "--num-objects", 2, "--num-obs", 60,
                         "--num-inits", 1, "--svi-steps", 30, "--mcmc-samples", 8, "--mcmc-warmup", 8,
                         "--mcmc-chains", 2, "--mcmc-max-tree-depth", 3)
    assert code == 0, err
    for name in ("report.md", "report.html", "results.json", "scene.png", "objectives.png", "mcmc_trace.png",
                 "data.json", "methods/em.json", "methods/svi-map.json", "methods/mcmc.json", "methods/mcmc.nc"):
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0, name
    report = (out_dir / "report.md").read_text()
    for method in ("em", "svi-map", "svi-normal", "mcmc"):
        assert f"| {method} | ok |" in report
    assert "| em | ok |" in out  # the table is echoed to stdout
    assert json.loads((out_dir / "data.json").read_text())["num_objects"] == 2


# --------------------------------------------------------------------------- faults
FAILING_MODEL = '''
import pyro, pyro.distributions as dist, torch
from torch.distributions import constraints

def model(data, num_objects):
    x = data["x"]
    locs = pyro.param("locs", x[:num_objects].clone())      # a pyro.param site: NUTS cannot sample it
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.ones(num_objects, dtype=x.dtype) / num_objects),
                        infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)
'''


def test_failing_method_is_reported_and_others_run(tmp_path, capsys):
    data = tmp_path / "d.json"
    assert run(capsys, "simulate", "-K", 2, "-N", 40, "--out", data)[0] == 0
    model = tmp_path / "param_model.py"
    model.write_text(FAILING_MODEL)
    out = tmp_path / "cmp"
    code, stdout, err = run(capsys, "compare", "--model", model, "--data", data, "--out", out,
                            "--methods", "em,svi-map,mcmc", "--svi-steps", 20, "--mcmc-samples", 5,
                            "--mcmc-warmup", 5)
    assert code == 0, err  # one method failing does not fail the run
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["em"]["status"] == "ok" and rows["svi-map"]["status"] == "ok"
    assert rows["mcmc"]["status"] == "failed" and "pyro.param" in rows["mcmc"]["error"]
    assert any(w.startswith("mcmc: failed with ModelError") for w in res["warnings"])
    assert "| mcmc | **failed**: ModelError" in (out / "report.md").read_text()
    status = json.loads((out / "methods" / "mcmc.status.json").read_text())
    assert "Traceback" in status["traceback"]


def test_non_finite_estimate_counts_as_failure(tmp_path, monkeypatch):
    real = cmp._run_method

    def nan_svi(spec, setup, method, budget, seed, progress):
        res = real(spec, setup, method, budget, seed, progress)
        if method == "svi-map":
            res.params["scale"] = torch.tensor(float("nan"), dtype=torch.float64)
        return res

    monkeypatch.setattr(cmp, "_run_method", nan_svi)
    s = cmp.compare("baseline", None, out_dir=tmp_path, simulation=(2, 40), methods=["em", "svi-map"],
                    svi_steps=10)
    rows = {r["method"]: r for r in s["rows"]}
    assert rows["em"]["status"] == "ok"
    assert rows["svi-map"]["status"] == "failed" and "non-finite" in rows["svi-map"]["error"]
    _finite_numbers(json.loads((tmp_path / "results.json").read_text()))


# --------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_without_redoing_finished_methods(tmp_path, monkeypatch):
    real = cmp._run_method
    calls = []

    def interrupt_at_svi(spec, setup, method, budget, seed, progress):
        calls.append(method)
        if method == "svi-map":
            raise KeyboardInterrupt  # Ctrl-C while SVI runs
        return real(spec, setup, method, budget, seed, progress)

    monkeypatch.setattr(cmp, "_run_method", interrupt_at_svi)
    kw = dict(out_dir=tmp_path, simulation=(2, 40), methods=["em", "svi-map"], svi_steps=15, seed=2)
    with pytest.raises(KeyboardInterrupt):
        cmp.compare("baseline", None, **kw)
    assert (tmp_path / "methods" / "em.status.json").is_file()  # EM's result survived the interruption
    assert not (tmp_path / "methods" / "svi-map.status.json").exists()
    em_first = json.loads((tmp_path / "methods" / "em.json").read_text())

    calls.clear()
    monkeypatch.setattr(cmp, "_run_method", lambda *a: calls.append(a[2]) or real(*a))
    s = cmp.compare("baseline", None, resume=True, **kw)
    assert calls == ["svi-map"]  # EM was not redone
    assert json.loads((tmp_path / "methods" / "em.json").read_text()) == em_first
    rows = {r["method"]: r for r in s["rows"]}
    assert rows["em"]["log_likelihood"] == pytest.approx(em_first["log_likelihood"], rel=0, abs=0)
    assert rows["svi-map"]["status"] == "ok"

    # changed settings of one method: only that method runs again
    calls.clear()
    cmp.compare("baseline", None, resume=True, **dict(kw, svi_steps=16))
    assert calls == ["svi-map"]


def test_resume_reruns_failed_and_half_written_methods(tmp_path, monkeypatch):
    kw = dict(out_dir=tmp_path, simulation=(2, 40), methods=["em"], seed=0)
    cmp.compare("baseline", None, **kw)
    status = tmp_path / "methods" / "em.status.json"
    # a kill after the result file but before the status file: the method counts as not finished
    status.unlink()
    calls = []
    real = cmp._run_method
    monkeypatch.setattr(cmp, "_run_method", lambda *a: calls.append(a[2]) or real(*a))
    cmp.compare("baseline", None, resume=True, **kw)
    assert calls == ["em"]
    st = json.loads(status.read_text())
    st["status"] = "failed"
    status.write_text(json.dumps(st))
    calls.clear()
    cmp.compare("baseline", None, resume=True, **kw)
    assert calls == ["em"]  # a failed method is tried again


def test_resume_refuses_other_simulated_data(tmp_path, capsys):
    assert run(capsys, "compare", "--out", tmp_path, "--methods", "em", "--seed", 0)[0] == 0
    code, out, err = run(capsys, "compare", "--out", tmp_path, "--methods", "em", "--seed", 1, "--resume")
    assert code == 2 and err.count("\n") == 1 and "different simulated data set" in err


# --------------------------------------------------------------------------- diagnostics
def _result(method, **kw):
    base = dict(model="baseline", method=method, params={}, log_likelihood=-1.0, log_joint=-2.0, trace=[-2.0],
                trace_label="", n_iter=1, converged=True, wall_time_s=0.0)
    base.update(kw)
    return FitResult(**base)


def test_diagnose_em_max_iter_and_disagreeing_restarts():
    b = cmp.Budget()
    w = cmp.diagnose("em", _result("em", converged=False, n_iter=200,
                                   info={"restart_log_joint": [-10.0, -10.0, -25.5]}), b)
    assert any("max_iter" in x and "--em-max-iter" in x for x in w)
    assert any("different optima" in x and "--em-inits" in x for x in w)
    assert cmp.diagnose("em", _result("em", info={"restart_log_joint": [-10.0, -10.0 + 1e-9]}), b) == []


def test_diagnose_svi_not_flattened():
    b = cmp.Budget()
    rising = [float(i) for i in range(100)]
    assert any("--svi-steps" in x for x in cmp.diagnose("svi-map", _result("svi-map", trace=rising), b))
    flat = [0.0] * 100
    assert cmp.diagnose("svi-map", _result("svi-map", trace=flat), b) == []


def test_diagnose_mcmc_rhat_ess_divergences_and_one_chain():
    b = cmp.Budget()
    g = torch.Generator().manual_seed(0)
    stuck = torch.stack([torch.randn(200, generator=g), 5 + torch.randn(200, generator=g)])  # chains disagree
    w = cmp.diagnose("mcmc", _result("mcmc", samples={"scale": stuck}, info={"num_chains": 2, "divergences": [3, 0]}),
                     b)
    assert any("R-hat" in x for x in w) and any("divergent" in x for x in w)
    good = torch.randn(4, 400, generator=g)
    assert cmp.diagnose("mcmc", _result("mcmc", samples={"scale": good}, info={"num_chains": 4}), b) == []
    short = torch.randn(2, 30, generator=g)
    assert any("effective sample size" in x for x in cmp.diagnose(
        "mcmc", _result("mcmc", samples={"scale": short}, info={"num_chains": 2}), b))
    one = cmp.diagnose("mcmc", _result("mcmc", samples={"scale": torch.randn(1, 400, generator=g)},
                                       info={"num_chains": 1}), b)
    assert any("one chain" in x for x in one)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, needle", [
    (["--methods", "em,gibbs"], "unknown method 'gibbs'"),
    (["--methods", ","], "--methods is empty"),
    (["--methods", "em-mstep"], "needs a model with per-object category sites"),
    (["--mcmc-samples", "0"], "mcmc-samples must be a positive integer"),
    (["--svi-lr", "-1"], "svi-lr must be a positive number"),
    (["--mcmc-target-accept", "1.5"], "mcmc-target-accept must be in (0, 1)"),
    (["--data", "does-not-exist.json"], "does-not-exist.json"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "detector", "--num-objects", "2"], "drop --num-objects"),
    (["--dtype", "float16"], "invalid choice"),
])
def test_compare_bad_input(tmp_path, capsys, argv, needle):
    code, out, err = run(capsys, "compare", "--out", tmp_path / "o", *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("metagen-ppl: error:") and needle in err, err
    assert "Traceback" not in err


def test_compare_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, out, err = run(capsys, "compare", "--out", f, "--methods", "em")
    assert code == 2 and "is not a directory" in err


def test_ctrl_c_prints_how_to_resume(tmp_path, capsys, monkeypatch):
    real = cmp._run_method

    def interrupt(spec, setup, method, budget, seed, progress):
        if method == "svi-map":
            raise KeyboardInterrupt
        return real(spec, setup, method, budget, seed, progress)

    monkeypatch.setattr(cmp, "_run_method", interrupt)
    code, out, err = run(capsys, "compare", "--out", tmp_path, "--methods", "em,svi-map", "-K", 2)
    assert code == 130
    last = err.strip().splitlines()[-1]
    assert "interrupted during svi-map" in last and "--resume" in last and "finished: em" in last
