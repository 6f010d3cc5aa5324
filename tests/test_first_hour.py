"""What a new user meets in the first hour (issue 12): thread counts, exit codes, file modes,
output checks before the work, degenerate-fit warnings, likelihood labels, help texts, progress
in a log, and ``compare`` into an old folder. Every test here fails without its fix."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from metagen_ppl import io as mio
from metagen_ppl.apps import category_study
from metagen_ppl.apps import compare as cmp
from metagen_ppl.apps.cli import fit as fit_cli
from metagen_ppl.apps.cli import main as main_module
from metagen_ppl.apps.cli.main import main
from metagen_ppl.engine.em import fit_em
from metagen_ppl.util import LogProgress, auto_threads, make_progress, seeded
from tests.conftest import simulated


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def help_text(capsys, argv) -> str:
    """``main(argv + ["--help"])``'s stdout (exit code 0)."""
    try:
        code = main(argv + ["--help"])
    except SystemExit as e:
        code = e.code
    assert code == 0
    return capsys.readouterr().out


def one_line_error(code, err, expected_code=2):
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("metagen-ppl: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("first_hour") / "data.json"
    assert main(["simulate", "--num-objects", "2", "--num-obs", "40", "--seed", "1", "--out", str(path)]) == 0
    return path


# --------------------------------------------------------------------------- 1. threads
COMMANDS = (["simulate"], ["fit"], ["demo"], ["compare"], ["metacognition", "simulate"], ["metacognition", "fit"],
            ["evaluate"], ["compare-categories"])


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_takes_threads(argv, capsys):
    assert "--threads" in help_text(capsys, argv)


@pytest.mark.parametrize("flag,expected", [(None, auto_threads("small")), ("1", 1), ("2", 2), ("auto", auto_threads("small"))])
def test_threads_are_set_while_the_command_runs_and_restored(flag, expected, data_file, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(fit_cli, "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    argv = ["fit", "--data", data_file] + ([] if flag is None else ["--threads", flag])
    assert run(capsys, *argv)[0] == 0
    assert seen == [expected]
    assert torch.get_num_threads() == before


def test_fit_auto_threads_follow_the_data_size(tmp_path, monkeypatch, capsys):
    seen = []

    def record(*a, **k):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt  # stop here: only the thread count matters

    monkeypatch.setattr(fit_cli, "fit_em", record)
    for n in (600, 10_000):                 # 600 * 3 * 4 = 7.2e3 (small); 10000 * 3 * 4 = 1.2e5 (batched)
        path = tmp_path / f"d{n}.json"
        path.write_text(json.dumps({"observations": torch.randn(n, 3).tolist(), "num_objects": 4}))
        run(capsys, "fit", "--data", path)
    assert seen == [auto_threads("small"), auto_threads("batched")]


def test_evaluate_auto_threads_is_one_per_process(monkeypatch, capsys, tmp_path):
    """evaluate runs its fits in up to two processes of one torch thread each (--jobs auto): --threads auto
    gives this process one thread (measured in comparisons/bench_evaluate.py)."""
    from metagen_ppl.apps.cli import evaluate as eval_cli

    seen = []
    monkeypatch.setattr(eval_cli, "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    assert run(capsys, "evaluate", "--data", tmp_path / "x.json", "--out", tmp_path / "o")[0] == 0
    assert seen == [auto_threads("small")] == [1]


def test_bad_threads_is_a_usage_error(data_file, capsys):
    code, out, err = run(capsys, "fit", "--data", data_file, "--threads", "-3")
    assert code == 2 and "--threads must be 'auto'" in err


# --------------------------------------------------------------------------- 3. exit codes
@pytest.mark.parametrize("seed", ["-1", "99999999999999", "x"])
def test_out_of_range_seed_is_a_usage_error(seed, data_file, capsys):
    code, out, err = run(capsys, "fit", "--data", data_file, "--seed", seed)
    assert code == 2 and "--seed must be an integer in 0..4294967295" in err and "internal error" not in err


def test_largest_seed_works_and_derived_seeds_wrap():
    data, _ = simulated(2, 30, 0)
    res = fit_em("baseline", data, 2, seed=2 ** 32 - 1, num_inits=2, max_iter=5)
    assert res.n_iter >= 1
    with seeded(2 ** 40 + 5):           # derived seeds (seed * 7919 + chain) may pass 2**32
        a = torch.rand(1)
    with seeded(5):
        b = torch.rand(1)
    assert torch.equal(a, b)


def test_huge_values_are_refused_with_rescale(tmp_path, capsys):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"observations": [[1e300, 0.0, 0.0], [2e300, 1.0, 0.0], [0.0, 0.0, 3e300]],
                                "num_objects": 2}))
    for argv in (["fit", "--data", path], ["compare", "--data", path, "--out", tmp_path / "c", "--methods", "em"]):
        line = one_line_error(*run(capsys, *argv)[::2])
        assert "overflow" in line and "rescale" in line


def test_demo_with_k_above_n_is_a_usage_error(tmp_path, capsys):
    line = one_line_error(*run(capsys, "demo", "--num-obs", 2, "--out", tmp_path / "d")[::2])
    assert "4" in line and "2" in line


ALL_FAIL = '''
import pyro.distributions as dist
def model(data, num_objects):
    raise RuntimeError("boom: this model always fails")
'''


def test_compare_exits_1_when_every_method_failed(data_file, tmp_path, capsys):
    model = tmp_path / "allfail.py"
    model.write_text(ALL_FAIL)
    code, out, err = run(capsys, "compare", "--model", model, "--data", data_file, "--out", tmp_path / "c",
                         "--methods", "em,svi-map", "--svi-steps", 5)
    line = one_line_error(code, err.splitlines()[-1] if err else "", expected_code=1)
    assert "every method failed" in line and "boom" in line
    assert (tmp_path / "c" / "report.md").is_file()      # the report of the failures is still written


def test_compare_categories_ctrl_c_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    def interrupted(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(category_study, "run_task", interrupted)
    code, out, err = run(capsys, "compare-categories", "--quick", "--jobs", 1, "--out", tmp_path / "cc")
    lines = err.strip().splitlines()
    assert code == 130 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("metagen-ppl: interrupted after 0 finished runs") and "--resume" in lines[0]


# --------------------------------------------------------------------------- 4. file modes
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(umask, mode, data_file, tmp_path, capsys):
    old = os.umask(umask)
    try:
        mio.atomic_write_text(tmp_path / "a.txt", "x")
        assert run(capsys, "fit", "--data", data_file, "--num-inits", 1, "--max-iter", 3,
                   "--out", tmp_path / "fit.json")[0] == 0
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "a.txt").st_mode & 0o777) == mode
    assert (os.stat(tmp_path / "fit.json").st_mode & 0o777) == mode


# --------------------------------------------------------------------------- 5. --out checked first
@pytest.mark.parametrize("argv", [["fit", "--data", "{data}", "--out", "/proc/metagen-test/r.json"],
                                  ["compare", "--data", "{data}", "--out", "/proc/metagen-test", "--methods", "em"],
                                  ["demo", "--out", "/proc/metagen-test"]])
def test_unwritable_out_fails_before_any_fit(argv, data_file, monkeypatch, capsys):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc (a directory nobody can create files in)")

    def no_fit(*a, **k):
        raise AssertionError("the fit ran before --out was checked")

    monkeypatch.setattr(fit_cli, "fit_em", no_fit)
    monkeypatch.setattr(cmp, "fit_em", no_fit)
    line = one_line_error(*run(capsys, *[a.format(data=data_file) for a in argv])[::2])
    assert "cannot" in line and "/proc" in line and "--out" in line


def test_out_into_a_missing_directory_says_it_created_it(data_file, tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "r.json"
    code, out, err = run(capsys, "fit", "--data", data_file, "--num-inits", 1, "--max-iter", 3, "--out", target)
    assert code == 0 and target.is_file()
    assert f"metagen-ppl: created directory {tmp_path / 'new'}" in err
    code, out, err = run(capsys, "fit", "--data", data_file, "--num-inits", 1, "--max-iter", 3, "--out", target)
    assert "created directory" not in err                 # nothing new to say the second time


# --------------------------------------------------------------------------- 6. degenerate fits
def test_duplicate_points_warn_that_k_is_too_large():
    data = {"x": torch.tensor([[1.0, 2.0, 3.0]] * 50, dtype=torch.float64)}
    with pytest.warns(RuntimeWarning, match=r"only 1 distinct observation.*K = 4.*K <= 1"):
        fit_em("baseline", data, 4, num_inits=1, max_iter=5)


def test_tiny_scale_data_warns_that_components_coincide():
    data, _ = simulated(4, 200, 0)
    data = {"x": data["x"] * 1e-300}
    with pytest.warns(RuntimeWarning, match=r"components \d and \d coincide.*rescale"):
        fit_em("baseline", data, 4, num_inits=1, max_iter=20)


def test_a_healthy_fit_gives_no_degeneracy_warning():
    data, _ = simulated(3, 300, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit_em("baseline", data, 3, num_inits=2, max_iter=50)


# --------------------------------------------------------------------------- 7. likelihood labels
@pytest.fixture(scope="module")
def category_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cat") / "cat.json"
    assert main(["simulate", "--model", "categorical", "--num-objects", "2", "--num-obs", "40", "--seed", "0",
                 "--out", str(path)]) == 0
    return path


def test_fit_summary_names_the_likelihood(category_file, capsys):
    lines = {}
    for strategy in ("mstep", "enumerate"):
        code, out, err = run(capsys, "fit", "--model", "categorical", "--categories", strategy,
                             "--data", category_file, "--num-inits", 1, "--max-iter", 20)
        assert code == 0, err
        lines[strategy] = out
    labels = {k: v.split("[", 1)[1].split("]", 1)[0] for k, v in lines.items()}
    assert labels["mstep"].endswith("|theta,c)")               # categories fixed at their argmax
    assert "c" not in labels["enumerate"].split("|")[1]        # categories summed out
    assert labels["mstep"] != labels["enumerate"]


def test_category_report_scores_every_row_the_same_way_and_defines_columns(category_file, tmp_path):
    s = cmp.compare("categorical", str(category_file), out_dir=tmp_path, seed=0,
                    methods=["em", "svi-map"], em_inits=1, svi_steps=20, category_samples=2)
    rows = [r for r in s["rows"] if r["status"] == "ok"]
    assert {r["method"] for r in rows} >= {"em-mstep", "em-enumerate", "em-sample", "svi-map"}
    labels = {r["log_likelihood_of"] for r in rows}
    assert len(labels) == 1 and "summed out" in labels.pop()
    # em-mstep's own objective (categories fixed) is not what the table shows
    mstep = s["results"]["em-mstep"]
    row = next(r for r in rows if r["method"] == "em-mstep")
    assert row["log_likelihood"] == pytest.approx(mstep.info["score"]["log_lik_marginal"], abs=1e-9)
    assert row["log_likelihood"] != pytest.approx(mstep.log_likelihood, abs=1e-6)
    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    for text in (md, html):
        assert "Column definitions" in text and "log lik. at estimate" in text and "R-hat, ESS bulk, ESS tail" in text


# --------------------------------------------------------------------------- 8. README example
def test_readme_fits_of_one_variant_use_the_same_options():
    from tests.test_readme_commands import readme_commands

    by_model = {}
    for argv in readme_commands():
        if argv[0] in ("fit", "compare") and "--model" in argv:
            model = argv[argv.index("--model") + 1]
            opts = sorted(argv[i + 1] for i, a in enumerate(argv) if a in ("--option", "-O"))
            by_model.setdefault(model, set()).add(tuple(opts))
    assert "my_variant.py" in by_model
    assert len(by_model["my_variant.py"]) == 1, by_model["my_variant.py"]


# --------------------------------------------------------------------------- 11. help texts, warnings
def test_help_texts(capsys):
    for argv in (["metacognition", "simulate"], ["metacognition", "fit"]):
        out = help_text(capsys, argv)
        assert "\n\n" in out.split("options:")[0].split("usage:")[1]          # a description paragraph
    assert "(default: None)" not in help_text(capsys, ["evaluate"])
    out = " ".join(help_text(capsys, ["fit"]).split())
    assert "the data file is read in it" in out


def test_metacognition_options_all_have_help():
    parser = main_module.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    meta = sub.choices["metacognition"]
    inner = next(a for a in meta._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in inner.choices.items():
        assert p.description, name
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)


def test_library_future_warnings_are_not_shown(data_file, monkeypatch, capsys):
    def warns(args):
        warnings.warn("a library will change one day", FutureWarning)
        warnings.warn("old API", DeprecationWarning)
        warnings.warn("this one matters", RuntimeWarning)
        return 0

    monkeypatch.setattr(fit_cli, "run", warns)
    code, out, err = run(capsys, "fit", "--data", data_file)
    assert code == 0 and "will change" not in err and "old API" not in err and "this one matters" in err


# --------------------------------------------------------------------------- 11. compare into an old folder
def test_compare_removes_stale_outputs_and_says_so(data_file, tmp_path, capsys):
    out = tmp_path / "c"
    (out / "methods").mkdir(parents=True)
    for stale in ("mcmc_trace.png", "mcmc_forest.png", "methods/mcmc.json", "methods/mcmc.nc"):
        (out / stale).write_text("old")
    code, stdout, err = run(capsys, "compare", "--data", data_file, "--out", out, "--methods", "em", "--em-inits", 1)
    assert code == 0, err
    assert not (out / "mcmc_trace.png").exists() and not (out / "methods" / "mcmc.json").exists()
    assert "removed 4 file(s) of an earlier run" in err
    assert (out / "methods" / "em.json").is_file()


def test_compare_resume_says_why_a_method_runs_again(data_file, tmp_path, capsys):
    out = tmp_path / "c"
    base = ["compare", "--data", data_file, "--out", out, "--methods", "em,svi-map", "--em-inits", 1,
            "--svi-steps", 10]
    assert run(capsys, *base)[0] == 0
    code, stdout, err = run(capsys, *base, "--svi-steps", 12, "--resume")
    assert code == 0
    assert "em: finished in an earlier run, reused (--resume)" in err
    assert "svi-map: runs again (--resume): its settings changed: settings.svi_steps 10 -> 12" in err


def test_compare_resume_on_other_data_is_refused(data_file, tmp_path, capsys):
    out = tmp_path / "c"
    assert run(capsys, "compare", "--data", data_file, "--out", out, "--methods", "em", "--em-inits", 1)[0] == 0
    other = tmp_path / "other.json"
    assert run(capsys, "simulate", "-K", 2, "-N", 40, "--seed", 9, "--out", other)[0] == 0
    code, stdout, err = run(capsys, "compare", "--data", other, "--out", out, "--methods", "em", "--resume")
    line = one_line_error(code, err.splitlines()[-1])      # after compare's progress line naming the data
    assert "another data set" in line and "drop --resume" in line


# --------------------------------------------------------------------------- 1. progress in a log
def test_progress_to_a_log_prints_a_line_now_and_then(capsys, monkeypatch):
    monkeypatch.setattr("metagen_ppl.util.stderr_is_terminal", lambda: False)
    bar = make_progress(10, "mcmc", True, interval=0.0)
    assert isinstance(bar, LogProgress)
    bar.set_postfix(step=0.1)
    bar.update(5)
    err = capsys.readouterr().err
    assert "mcmc: 5/10 it (50%)" in err and "step=0.1" in err
    quiet = make_progress(10, "mcmc", True)              # default interval: nothing in the first 15 s
    quiet.update(10)
    assert capsys.readouterr().err == ""
    assert make_progress(10, "mcmc", False) is None


def test_category_sampling_progress_goes_through_make_progress(monkeypatch, capsys):
    from metagen_ppl.models.categorical import generative, strategies

    monkeypatch.setattr("metagen_ppl.util.stderr_is_terminal", lambda: False)
    made = []
    real = LogProgress.__init__

    def spy(self, total, desc, **kw):
        made.append(desc)
        real(self, total, desc, **kw)

    monkeypatch.setattr(LogProgress, "__init__", spy)
    sim = generative.simulate(2, 30, 0)
    data = {"x": torch.tensor(sim["observations"], dtype=torch.float64),
            "o": torch.tensor(sim["categories"], dtype=torch.long)}
    strategies.fit_categorical(data, 2, strategy="sample", num_category_samples=2, num_inits=1, max_iter=5, progress=True)
    assert made == ["sample categories"]
