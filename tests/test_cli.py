"""The ``metagen-ppl`` command line, run in-process through ``main([...])``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from metagen_ppl.apps.cli.main import main

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems run fastest on one intra-op thread (and do not oversubscribe a 2-core CI box)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REQUIRED_KEYS = {"model", "method", "params", "log_likelihood", "trace", "n_iter", "converged", "wall_time_s"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("metagen-ppl: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "data.json"
    assert main(["simulate", "--model", "baseline", "--num-objects", "2", "--num-obs", "60",
                 "--seed", "3", "--out", str(path)]) == 0
    return path


# --------------------------------------------------------------------------- simulate / fit
def test_simulate_writes_exchange_format(data_file):
    obj = json.loads(data_file.read_text())
    assert len(obj["observations"]) == 60 and all(len(r) == 3 for r in obj["observations"])
    assert obj["num_objects"] == 2 and obj["model"] == "baseline"
    assert len(obj["truth"]["locs"]) == 2


def test_simulate_is_deterministic_and_takes_options(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for p in (a, b):
        code, out, err = run(capsys, "simulate", "-K", 2, "-N", 20, "--seed", 5, "--out", p,
                             "--option", "scale=0.25")
        assert code == 0, err
        assert "20 observations" in out
    assert a.read_text() == b.read_text()
    obj = json.loads(a.read_text())
    assert obj["truth"]["scale"] == 0.25 and obj["options"] == {"scale": 0.25}


@pytest.mark.parametrize("method, extra", [
    ("em", ["--num-inits", "2", "--max-iter", "50"]),
    ("em", ["--mstep", "optimizer", "--max-iter", "5", "--tol", "1e-4", "--dtype", "float32"]),
    ("svi", ["--num-steps", "40"]),
    ("svi-normal", ["--num-steps", "20"]),
    ("mcmc", ["--num-samples", "8", "--warmup", "8", "--num-chains", "2", "--max-tree-depth", "3"]),
])
def test_fit_round_trip(data_file, tmp_path, capsys, method, extra):
    out_path = tmp_path / f"fit_{method}.json"
    code, out, err = run(capsys, "fit", "--model", "baseline", "--method", method, "--data", data_file,
                         "--num-objects", 2, "--seed", 0, "--out", out_path, *extra)
    assert code == 0, err
    res = json.loads(out_path.read_text())
    assert REQUIRED_KEYS <= set(res)
    assert res["model"] == "baseline"
    assert res["method"] == {"svi": "svi-map"}.get(method, method)
    assert math.isfinite(res["log_likelihood"])
    assert len(res["params"]["locs"]) == 2 and len(res["params"]["locs"][0]) == 3
    assert isinstance(res["trace"], list) and res["trace"]
    assert res["n_iter"] >= 1 and isinstance(res["converged"], bool) and res["wall_time_s"] >= 0
    # the data file carries the truth, so the summary reports the location error
    assert "log_likelihood=" in out and "location_error=" in out
    assert res["info"]["location_error_vs_truth"] >= 0


def test_em_recovers_truth_via_cli(data_file, tmp_path, capsys):
    out_path = tmp_path / "fit.json"
    # --num-objects omitted: taken from the data file
    code, out, err = run(capsys, "fit", "--data", data_file, "--out", out_path)
    assert code == 0, err
    res = json.loads(out_path.read_text())
    assert res["method"] == "em" and res["converged"] is True
    assert res["info"]["location_error_vs_truth"] < 0.5


def test_fit_model_by_path(data_file, tmp_path, capsys):
    import metagen_ppl.models.baseline as baseline

    variant = tmp_path / "my_variant.py"
    variant.write_text(open(baseline.__file__).read())
    code, out, err = run(capsys, "fit", "--model", variant, "--data", data_file, "--max-iter", 20,
                         "--num-inits", 1, "-O", "scale=1.0")
    assert code == 0, err
    assert "em my_variant K=2" in out


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"], ["fit", "--help"], ["demo", "--help"]])
def test_help_in_process(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert "usage: metagen-ppl" in out


def test_help_subprocess_smoke():
    proc = subprocess.run([sys.executable, "-m", "metagen_ppl.apps.cli", "fit", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--method" in proc.stdout and "--num-objects" in proc.stdout


# --------------------------------------------------------------------------- bad input
def test_malformed_json_names_file(tmp_path, capsys):
    p = tmp_path / "broken.json"
    p.write_text('{"observations": [[1, 2, 3],')
    code, out, err = run(capsys, "fit", "--data", p, "--num-objects", 1)
    assert_one_line_error(code, err, "broken.json", "not valid JSON", "line 1")


def test_missing_file(tmp_path, capsys):
    code, out, err = run(capsys, "fit", "--data", tmp_path / "absent.json", "--num-objects", 1)
    assert_one_line_error(code, err, "absent.json", "does not exist")


def test_nan_names_row(tmp_path, capsys):
    p = tmp_path / "nan.json"
    p.write_text(json.dumps({"observations": [[0, 0, 0], [1, 1, 1], [float("nan"), 0, 0]]}))
    code, out, err = run(capsys, "fit", "--data", p, "--num-objects", 1)
    assert_one_line_error(code, err, "nan.json", "row 2")


def test_unknown_model(data_file, tmp_path, capsys):
    code, out, err = run(capsys, "fit", "--model", "no_such_model", "--data", data_file)
    assert_one_line_error(code, err, "unknown model 'no_such_model'", "baseline")
    code, out, err = run(capsys, "simulate", "--model", "no_such_model", "-K", 1, "-N", 5,
                         "--out", tmp_path / "x.json")
    assert_one_line_error(code, err, "unknown model")


def test_missing_model_file(data_file, capsys):
    code, out, err = run(capsys, "fit", "--model", "nowhere/variant.py", "--data", data_file)
    assert_one_line_error(code, err, "does not exist")


@pytest.mark.parametrize("k, needle", [(0, "at least 1"), (-2, "at least 1"), (61, "exceeds")])
def test_bad_num_objects_fit(data_file, capsys, k, needle):
    code, out, err = run(capsys, "fit", "--data", data_file, "--num-objects", k)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("k, n, needle", [(0, 10, "at least 1"), (5, 3, "exceeds"), (2, 0, "at least 1")])
def test_bad_sizes_simulate(tmp_path, capsys, k, n, needle):
    code, out, err = run(capsys, "simulate", "-K", k, "-N", n, "--out", tmp_path / "d.json")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "d.json").exists()


def test_num_objects_required_when_file_lacks_it(tmp_path, capsys):
    p = tmp_path / "plain.json"
    p.write_text(json.dumps({"observations": [[0, 0, 0], [1, 1, 1]]}))
    code, out, err = run(capsys, "fit", "--data", p)
    assert_one_line_error(code, err, "--num-objects")


def test_bad_option(data_file, capsys):
    code, out, err = run(capsys, "fit", "--data", data_file, "-O", "colour=red")
    assert_one_line_error(code, err, "no option 'colour'", "scale")
    code, out, err = run(capsys, "fit", "--data", data_file, "-O", "novalue")
    assert_one_line_error(code, err, "key=value")
    code, out, err = run(capsys, "fit", "--data", data_file, "-O", "seed=3")
    assert_one_line_error(code, err, "--seed")


def test_usage_errors_are_one_line(data_file, capsys):
    code, out, err = run(capsys, "fit", "--data", data_file, "--method", "gibbs")
    assert_one_line_error(code, err, "invalid choice", "--help")
    code, out, err = run(capsys, "fit", "--data", data_file, "--num-objects", "two")
    assert_one_line_error(code, err, "invalid int")
    code, out, err = run(capsys)
    assert_one_line_error(code, err, "required")
    code, out, err = run(capsys, "fit")
    assert_one_line_error(code, err, "--data")


def test_debug_shows_traceback(tmp_path, capsys):
    code, out, err = run(capsys, "--debug", "fit", "--data", tmp_path / "absent.json", "-K", 1)
    assert code == 2 and "Traceback" in err and err.strip().endswith("does not exist")
    code, out, err = run(capsys, "fit", "--debug", "--data", tmp_path / "absent.json", "-K", 1)
    assert code == 2 and "Traceback" in err


def test_unwritable_output_is_one_line(data_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = run(capsys, "fit", "--data", data_file, "--max-iter", 5, "--num-inits", 1,
                         "--out", blocker / "sub" / "r.json")
    assert_one_line_error(code, err)


# --------------------------------------------------------------------------- README example
def _readme_variant():
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    text = open(readme, encoding="utf-8").read()
    marker = "<!-- README example: my_variant.py"
    assert marker in text
    block = text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return block


def test_readme_model_variant_runs(data_file, tmp_path, capsys):
    variant = tmp_path / "my_variant.py"
    variant.write_text(_readme_variant())
    code, out, err = run(capsys, "fit", "--model", variant, "--method", "em", "--data", data_file,
                         "--option", "df=3", "--num-inits", 1, "--max-iter", 30, "--out", tmp_path / "f.json")
    assert code == 0, err
    res = json.loads((tmp_path / "f.json").read_text())
    assert res["model"] == "my_variant" and math.isfinite(res["log_likelihood"])
    assert res["info"]["location_error_vs_truth"] < 1.0
    # the variant has no simulate(): a one-line error
    code, out, err = run(capsys, "simulate", "--model", variant, "-K", 1, "-N", 5, "--out", tmp_path / "d.json")
    assert_one_line_error(code, err, "no simulate")


def test_delegated_commands_help_and_errors(capsys, tmp_path):
    """metacognition and compare-categories hand every option to their own parsers."""
    from metagen_ppl.apps.cli.main import main

    assert main(["metacognition", "--help"]) == 0
    assert "simulate" in capsys.readouterr().out
    assert main(["compare-categories", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out
    missing = tmp_path / "missing.json"
    assert main(["metacognition", "fit", "--data", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json" in err[0]


def test_fit_categorical_strategies_from_cli(tmp_path):
    """fit --model categorical --categories S runs each strategy and reports per-object categories."""
    import json

    from metagen_ppl.apps.cli.main import main

    data = tmp_path / "cat.json"
    assert main(["simulate", "--model", "categorical", "--num-objects", "2", "--num-obs", "120",
                 "--seed", "3", "--out", str(data)]) == 0
    truth = json.loads(data.read_text())["truth"]["cats"]
    for strategy in ("sample", "enumerate", "mstep"):
        out = tmp_path / f"{strategy}.json"
        assert main(["fit", "--model", "categorical", "--method", "em", "--categories", strategy,
                     "--data", str(data), "--out", str(out)]) == 0
        cats = json.loads(out.read_text())["params"]["cats"]
        assert sorted(cats) == sorted(truth)  # an easy scene: every strategy finds the categories
