"""The report plots: each writes a non-empty PNG, copes with missing methods, caps big sites,
marks point estimates, and leaves no matplotlib figure open.

The results come from the real fitters on a tiny simulated baseline scene
(K = 3, N = 60), with very small budgets: the plots, not the fits, are under test.
"""

from __future__ import annotations

import os
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from metagen_ppl import fit_em
from metagen_ppl.apps import plots  # noqa: E402
from metagen_ppl.apps.plots import base as plot_base  # noqa: E402
from metagen_ppl.engine.mcmc import fit_mcmc  # noqa: E402
from metagen_ppl.engine.result import FitResult  # noqa: E402
from metagen_ppl.engine.svi import fit_svi  # noqa: E402
from metagen_ppl.models import baseline  # noqa: E402


@pytest.fixture(scope="module")
def fits():
    sim = baseline.simulate(3, 60, 0)
    data = {"x": torch.tensor(sim["observations"], dtype=torch.float64)}
    mcmc_kw = dict(num_samples=10, warmup_steps=10, max_tree_depth=3, max_assignment_draws=5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny budgets: divergences, unconverged R-hat
        out = dict(
            sim=sim,
            em=fit_em("baseline", data, 3, seed=0),
            svi_map=fit_svi("baseline", data, 3, guide="delta", num_steps=50, seed=0),
            svi_normal=fit_svi("baseline", data, 3, guide="normal", num_steps=30, seed=0,
                               num_posterior_samples=20),
            mcmc=fit_mcmc("baseline", data, 3, num_chains=2, **mcmc_kw),
            mcmc1=fit_mcmc("baseline", data, 3, num_chains=1, **mcmc_kw),
        )
    return out


@pytest.fixture(autouse=True)
def no_figure_leak():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a plot left a pyplot figure open"


@pytest.fixture
def saved(monkeypatch):
    """Records, for every PNG written, the figure's axes, legend labels and title."""
    records = {}
    original = plot_base.save

    def spy(fig, path, **kw):
        legends = [a.get_legend() for a in fig.axes] + list(fig.legends)
        records[os.path.basename(os.fspath(path))] = dict(
            axes=list(fig.axes),
            legend_labels=[t.get_text() for leg in legends if leg is not None for t in leg.get_texts()],
            title=fig._suptitle.get_text() if fig._suptitle is not None else "",
        )
        original(fig, path, **kw)

    monkeypatch.setattr(plot_base, "save", spy)
    return records


def assert_png(path):
    assert path is not None and os.path.isfile(path), path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000


# --------------------------------------------------------------------------- styles
def test_unknown_methods_get_distinct_styles():
    names = ["em", "em-mstep", "em-enumerate", "em-sample", "svi-map", "svi-normal", "mcmc", "foo", "bar", "baz"]
    st = plot_base.styles(names)
    pairs = [(st[n]["color"], st[n]["marker"]) for n in names]
    assert len(set(pairs)) == len(names)
    assert st["mcmc"] == plot_base.METHOD_STYLE["mcmc"]
    assert plot_base.styles(["foo"])["foo"] == st["foo"]  # the same name keeps its style


# --------------------------------------------------------------------------- objectives
def test_objectives_one_plot_for_all_methods(fits, saved, tmp_path):
    em, svi, svin, mcmc = fits["em"], fits["svi_map"], fits["svi_normal"], fits["mcmc"]
    other = FitResult(model="baseline", method="em-sample", params={}, log_likelihood=0.0, log_joint=0.0,
                      trace=[-400.0, None, -350.0, -340.0], trace_label="log joint", n_iter=3, converged=True,
                      wall_time_s=0.0)
    path = plots.plot_objectives(tmp_path / "obj.png", [em, None, svi, svin, mcmc, other], title="t")
    assert_png(path)
    rec = saved["obj.png"]
    assert len(rec["axes"]) == 2  # all values + zoom
    assert all(ax.get_xscale() == "log" for ax in rec["axes"])
    labels = " | ".join(rec["legend_labels"])
    for method in ("em:", "svi-map: ELBO", "svi-normal: ELBO", "mcmc:", "em-sample:"):
        assert method in labels
    assert f"final {em.trace[-1]:.6g}" in labels
    # SVI's trace is the ELBO (higher is better): drawn as is, not negated
    svi_line = next(l for l in rec["axes"][0].get_lines() if l.get_label().startswith("svi-map"))
    assert np.allclose(svi_line.get_ydata(), svi.trace)


def test_objectives_nothing_to_draw(fits, tmp_path):
    assert plots.plot_objectives(tmp_path / "a.png", []) is None
    assert plots.plot_objectives(tmp_path / "b.png", [None]) is None
    empty = FitResult(model="m", method="em", params={}, log_likelihood=0.0, log_joint=0.0, trace=[None],
                      trace_label="", n_iter=0, converged=False, wall_time_s=0.0)
    assert plots.plot_objectives(tmp_path / "c.png", [empty]) is None
    assert not any(tmp_path.iterdir())
    assert_png(plots.plot_objectives(tmp_path / "d.png", [fits["em"]]))  # one method alone


# --------------------------------------------------------------------------- MCMC diagnostics
def test_mcmc_diagnostics_caps_scalars_and_marks_estimates(fits, saved, tmp_path):
    em, svi = fits["em"], fits["svi_map"]
    out = plots.plot_mcmc_diagnostics(str(tmp_path / "mcmc"), fits["mcmc"], point_results=[em, None, svi],
                                      max_scalars=5)
    assert set(out) == {"trace", "rank", "forest"}
    for kind, path in out.items():
        assert_png(path)
        assert path == str(tmp_path / f"mcmc_{kind}.png")
    # scale (1) + weights (2) + locs (2) = 5 scalars
    assert len(saved["mcmc_rank.png"]["axes"]) == 5
    assert len(saved["mcmc_trace.png"]["axes"]) == 2 * 5
    assert "first 2 of 9" in saved["mcmc_trace.png"]["title"]
    assert "first 2 of 3" in saved["mcmc_forest.png"]["title"]
    forest = saved["mcmc_forest.png"]
    assert set(forest["legend_labels"]) == {"em", "svi-map"}
    main = forest["axes"][0]
    assert len(main.get_yticks()) == 5
    # the EM marker on the scale row sits at EM's estimate
    em_marks = next(c for c in main.collections if c.get_label() == "em")
    assert np.isclose(em_marks.get_offsets()[:, 0], float(em.params["scale"])).any()
    assert set(saved["mcmc_trace.png"]["legend_labels"]) == {"em", "svi-map"}


def test_mcmc_diagnostics_default_cap_and_one_chain(fits, saved, tmp_path):
    # (the 12-row trace plot is the slow one: the 2-chain test above draws it)
    out = plots.plot_mcmc_diagnostics(tmp_path / "m1", fits["mcmc1"], point_results=[fits["em"]],
                                      kinds=("rank", "forest"))
    assert out["trace"] is None and not os.path.exists(tmp_path / "m1_trace.png")
    assert_png(out["rank"])
    assert_png(out["forest"])
    # 1 + 3 + 9 = 13 scalars > 12: capped at 12
    assert len(saved["m1_rank.png"]["axes"]) == 12
    assert len(saved["m1_forest.png"]["axes"][0].get_yticks()) == 12
    assert "halves" in saved["m1_rank.png"]["title"]
    # a guide-draws result (one chain of AutoNormal draws) works too; var_names restricts the sites
    out = plots.plot_mcmc_diagnostics(tmp_path / "sn", fits["svi_normal"], var_names=["scale", "weights"])
    assert all(out.values())
    assert set(saved["sn_forest.png"]["legend_labels"]) == set()  # no point estimates given
    assert len(saved["sn_rank.png"]["axes"]) == 4


def test_mcmc_diagnostics_missing_inputs(fits, tmp_path):
    none = {"trace": None, "rank": None, "forest": None}
    assert plots.plot_mcmc_diagnostics(tmp_path / "a", None, [fits["em"]]) == none
    assert plots.plot_mcmc_diagnostics(tmp_path / "b", fits["em"]) == none  # no draws
    assert plots.plot_mcmc_diagnostics(tmp_path / "c", fits["mcmc"], var_names=["nope"]) == none
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError):
        plots.plot_mcmc_diagnostics(tmp_path / "d", fits["mcmc"], max_scalars=0)
    with pytest.raises(ValueError, match="unknown plot kinds"):
        plots.plot_mcmc_diagnostics(tmp_path / "d", fits["mcmc"], kinds=("traces",))


# --------------------------------------------------------------------------- assignments
def _rows_shown(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def test_assignments_same_sample_for_every_method(fits, saved, tmp_path):
    res = [fits["em"], None, fits["mcmc"], fits["svi_map"]]
    path = plots.plot_assignments(tmp_path / "z.png", res, num_obs=7, seed=3)
    assert_png(path)
    panels = [ax for ax in saved["z.png"]["axes"] if ax.images]
    assert [ax.get_title().split(" ")[0].rstrip(";") for ax in panels] == ["em", "mcmc", "svi-map"]
    rows = [_rows_shown(ax) for ax in panels]
    assert len(rows[0]) == 7 and rows[0] == rows[1] == rows[2]
    assert len(panels[0].texts) == 7 * 3  # small grid: annotated
    # the shown probabilities are EM's posteriors at those rows
    idx = [int(r) for r in rows[0]]
    assert np.allclose(panels[0].images[0].get_array(), fits["em"].posteriors["z"].numpy()[idx])
    assert "columns matched to em" in panels[1].get_title()
    # same seed, same rows; explicit rows
    plots.plot_assignments(tmp_path / "z2.png", [fits["mcmc"]], num_obs=7, seed=3)
    assert _rows_shown([a for a in saved["z2.png"]["axes"] if a.images][0]) == rows[0]
    plots.plot_assignments(tmp_path / "z3.png", [fits["em"]], observations_index=[5, 2, 999])
    assert _rows_shown([a for a in saved["z3.png"]["axes"] if a.images][0]) == ["5", "2"]


def test_assignments_missing_and_multiscene_mask(saved, tmp_path):
    assert plots.plot_assignments(tmp_path / "a.png", []) is None
    assert plots.plot_assignments(tmp_path / "b.png", [None]) is None

    def result(method, post):
        return FitResult(model="m", method=method, params={}, log_likelihood=0.0, log_joint=0.0, trace=[],
                         trace_label="", n_iter=0, converged=True, wall_time_s=0.0, posteriors=post)

    assert plots.plot_assignments(tmp_path / "c.png", [result("em", {"y": torch.ones(4, 2) / 2})]) is None
    g = torch.Generator().manual_seed(0)
    post = torch.distributions.Dirichlet(torch.ones(5)).sample((2, 3, 4))  # (S, T, D, K + 1)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, :, :2] = True
    mask[1, 0, :] = True  # 10 real observations
    other = result("odd", {"z": torch.rand(7, 5, generator=g)})  # another leading shape: skipped
    with pytest.warns(RuntimeWarning, match="leading shape"):
        path = plots.plot_assignments(tmp_path / "d.png", [result("em", {"z": post}), other], num_obs=20,
                                      mask=mask)
    assert_png(path)
    panels = [ax for ax in saved["d.png"]["axes"] if ax.images]
    assert len(panels) == 1
    shown = _rows_shown(panels[0])
    assert len(shown) == 10  # every real observation, no padding
    for label in shown:
        s, t, d = (int(v) for v in label.strip("()").split(","))
        assert mask[s, t, d]
    assert "10 of 10" in saved["d.png"]["title"]


# --------------------------------------------------------------------------- scenes
def test_scene_arrays(fits, saved, tmp_path):
    em, mcmc, sim = fits["em"], fits["mcmc"], fits["sim"]
    path = plots.plot_scene_arrays(
        tmp_path / "s.png", observations=sim["observations"], truth=sim["truth"]["locs"],
        estimates={"em": em.params["locs"], "mcmc": mcmc.params["locs"][None], "custom": np.zeros((2, 3))},
        draws={"mcmc draws": mcmc.samples["locs"]}, extra={"cameras": [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]},
        title="scene")
    assert_png(path)
    rec = saved["s.png"]
    assert len(rec["axes"]) == 3
    for label in ("observations", "truth", "em", "mcmc", "custom", "cameras", "mcmc draws"):
        assert label in rec["legend_labels"]
    # 2D points: only the (0, 1) projection applies
    assert_png(plots.plot_scene_arrays(tmp_path / "s2.png", observations=np.random.rand(10, 2),
                                       axis_names=("u", "v")))
    assert len(saved["s2.png"]["axes"]) == 1
    assert plots.plot_scene_arrays(tmp_path / "none.png") is None
    assert plots.plot_scene_arrays(tmp_path / "none.png", estimates={"em": np.zeros((0, 3))}) is None
    assert not os.path.exists(tmp_path / "none.png")


def test_plot_scene_wrapper_keeps_its_behaviour(fits, saved, tmp_path):
    sim = fits["sim"]
    path = plots.plot_scene(tmp_path / "scene.png", torch.tensor(sim["observations"]), sim["truth"]["locs"],
                            [fits["em"], fits["svi_map"], None, fits["mcmc"]], location_site="locs", title="x")
    assert_png(path)
    labels = saved["scene.png"]["legend_labels"]
    for label in ("observations", "em", "svi-map", "mcmc", "truth"):
        assert label in labels
    assert_png(plots.plot_traces(tmp_path / "traces.png", [fits["em"], fits["svi_map"]]))
    assert_png(plots.plot_mcmc_trace(tmp_path / "mt.png", fits["mcmc"]))
