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
            fig=fig,
            axes=list(fig.axes),
            legend_labels=[t.get_text() for leg in legends if leg is not None for t in leg.get_texts()],
            title=fig._suptitle.get_text() if fig._suptitle is not None else "",
        )
        original(fig, path, **kw)

    monkeypatch.setattr(plot_base, "save", spy)
    return records


def small_texts(fig, minimum=8.0):
    """The non-empty texts of ``fig`` set below ``minimum`` points (the PNGs are saved at full size)."""
    from matplotlib.text import Text

    return [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and t.get_fontsize() < minimum]


def overlapping_texts(fig, tol=1.0):
    """Pairs of overlapping boxes among the suptitle, axes titles, axis labels and legends, and of
    the suptitle or an axes title with another axes (window extents after a draw)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    named = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        named.append(("suptitle", fig._suptitle, None))
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        for t in (ax.title, ax._left_title, ax._right_title):
            if t.get_text():
                named.append((f"axes {k} title {t.get_text()[:30]!r}", t, ax))
        for lab in (ax.xaxis.label, ax.yaxis.label):
            if lab.get_text() and lab.get_visible():
                named.append((f"axes {k} label {lab.get_text()[:30]!r}", lab, ax))
        if ax.get_legend() is not None:
            named.append((f"axes {k} legend", ax.get_legend(), ax))
    named += [(f"figure legend {k}", leg, None) for k, leg in enumerate(fig.legends)]
    boxes = [(name, art.get_window_extent(renderer), owner) for name, art, owner in named]

    def hit(a, b):
        return (min(a.x1, b.x1) - max(a.x0, b.x0) > tol) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tol)

    bad = [(n1, n2) for i, (n1, b1, _) in enumerate(boxes) for (n2, b2, _) in boxes[i + 1:] if hit(b1, b2)]
    for name, box, owner in boxes:
        if "title" not in name:
            continue
        for k, ax in enumerate(fig.axes):
            if ax is not owner and ax.get_visible() and ax.axison and hit(box, ax.get_window_extent(renderer)):
                bad.append((name, f"axes {k}"))
    return bad


def assert_legible(rec, overlap=True):
    assert small_texts(rec["fig"]) == []
    if overlap:
        assert overlapping_texts(rec["fig"]) == []


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
    # all values on a log x axis; the zoom on the end of the run, linear (changed: it was log too)
    assert rec["axes"][0].get_xscale() == "log" and rec["axes"][1].get_xscale() == "linear"
    labels = " | ".join(rec["legend_labels"])
    for method in ("em:", "svi-map: ELBO", "svi-normal: ELBO", "mcmc:", "em-sample:"):
        assert method in labels
    assert f"final {em.trace[-1]:.6g}" in labels
    # SVI's trace is the ELBO (higher is better): drawn as is, not negated
    svi_line = next(l for l in rec["axes"][0].get_lines() if l.get_label().startswith("svi-map"))
    assert np.allclose(svi_line.get_ydata(), svi.trace)
    assert_legible(rec)


def test_objectives_nothing_to_draw(fits, tmp_path):
    assert plots.plot_objectives(tmp_path / "a.png", []) is None
    assert plots.plot_objectives(tmp_path / "b.png", [None]) is None
    empty = FitResult(model="m", method="em", params={}, log_likelihood=0.0, log_joint=0.0, trace=[None],
                      trace_label="", n_iter=0, converged=False, wall_time_s=0.0)
    assert plots.plot_objectives(tmp_path / "c.png", [empty]) is None
    assert not any(tmp_path.iterdir())
    assert_png(plots.plot_objectives(tmp_path / "d.png", [fits["em"]]))  # one method alone


def _result(method, *, trace=(), label="log joint", params=None, samples=None, posteriors=None, model="baseline"):
    return FitResult(model=model, method=method, params=params or {}, log_likelihood=0.0, log_joint=0.0,
                     trace=list(trace), trace_label=label, n_iter=len(trace), converged=True, wall_time_s=0.0,
                     samples=samples, posteriors=posteriors or {})


def test_objectives_em_on_top_and_zoom_narrows_x(saved, tmp_path):
    # SVI-MAP follows EM's curve and reaches the same value: EM stays visible (on top, dashed, with markers)
    curve = -1000.0 + 900.0 * (1.0 - np.exp(-np.arange(40) / 5.0))
    svi = _result("svi-map", trace=np.concatenate([curve, np.full(160, curve[-1])]), label="ELBO")
    em = _result("em", trace=curve)
    plots.plot_objectives(tmp_path / "o.png", [svi, em])
    rec = saved["o.png"]
    ax_all, ax_zoom = rec["axes"]
    em_line = next(ln for ln in ax_all.get_lines() if ln.get_label().startswith("em:"))
    svi_line = next(ln for ln in ax_all.get_lines() if ln.get_label().startswith("svi-map:"))
    assert em_line.get_zorder() > svi_line.get_zorder()
    assert em_line.get_marker() not in (None, "None", "", " ")
    assert em_line.get_linestyle() != svi_line.get_linestyle()
    # the zoom panel zooms x (the last half of the run: values 101..200) as well as y
    lo, hi = ax_zoom.get_xlim()
    assert 95 < lo < 105 and 199 < hi < 206
    full_lo, full_hi = ax_all.get_xlim()
    assert full_lo < 2 and full_hi > 150  # the full panel shows every value
    assert np.ptp(ax_zoom.get_ylim()) < 0.2 * np.ptp(ax_all.get_ylim())
    # EM ended before the window: its final value is drawn across it (on top of SVI's)
    across = [ln for ln in ax_zoom.get_lines() if np.allclose(ln.get_ydata(), curve[-1])
              and ln.get_zorder() > svi_line.get_zorder()]
    assert across and "em after 40 values" in ax_zoom.get_title()
    assert_legible(rec)


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
    # the EM marker on the scale row sits at EM's estimate, standardised by the scale's posterior mean and sd
    # (changed: the x axis was the parameters' own scale)
    draws = fits["mcmc"].samples["scale"].double().numpy().reshape(-1)
    z = (float(em.params["scale"]) - draws.mean()) / draws.std(ddof=1)
    em_marks = next(c for c in main.collections if c.get_label() == "em")
    assert np.isclose(em_marks.get_offsets()[:, 0], z).any()
    assert_legible(forest)
    assert set(saved["mcmc_trace.png"]["legend_labels"]) == {"em", "svi-map"}
    assert small_texts(saved["mcmc_trace.png"]["fig"]) == [] and small_texts(saved["mcmc_rank.png"]["fig"]) == []


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


def _forest_rows(ax):
    """``{scalar label: y}`` of a forest plot's rows (labels ``"site[i]  (mean ± sd)"``)."""
    return {t.get_text().split("  ")[0]: y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}


def test_forest_standardised_intervals_and_rhat(saved, tmp_path):
    import arviz as az

    g = torch.Generator().manual_seed(0)
    samples = {"a": 1000.0 + 0.001 * torch.randn(2, 50, generator=g, dtype=torch.float64),  # scales 1e-3 .. 30
               "b": 30.0 * torch.randn(2, 50, 2, generator=g, dtype=torch.float64),
               "c": -5.0 + torch.randn(2, 50, generator=g, dtype=torch.float64)}
    samples["c"][1] += 1.5  # the chains disagree on c: R-hat well above 1.01
    mcmc = _result("mcmc", samples=samples, model="not-a-model")
    em = _result("em", params={"a": torch.tensor(1000.0005, dtype=torch.float64), "b": torch.tensor([0.0, 10.0]),
                               "c": torch.tensor(40.0)})
    out = plots.plot_mcmc_diagnostics(tmp_path / "f", mcmc, [em], kinds=("forest",))
    assert_png(out["forest"])
    rec = saved["f_forest.png"]
    ax, ax_ess, ax_rhat = rec["axes"]
    rows = _forest_rows(ax)
    assert list(rows) == ["a", "b[0]", "b[1]", "c"]
    # every interval (one per chain) spans a visible part of the x axis, whatever the parameter's scale
    width = np.ptp(ax.get_xlim())
    hdi = [ln for ln in ax.get_lines() if ln.get_gid() == "hdi"]
    assert len(hdi) == 4 * 2
    assert all(np.ptp(ln.get_xdata()) > 0.2 * width for ln in hdi)
    # EM's estimates on the same standardised scale; c (35 sd away) at the axis edge, its value written
    marks = next(c for c in ax.collections if c.get_label() == "em")
    pooled = samples["a"].numpy().reshape(-1)
    z_a = (1000.0005 - pooled.mean()) / pooled.std(ddof=1)
    y_of = {y: x for x, y in marks.get_offsets()}
    assert np.isclose(y_of[rows["a"]], z_a)
    assert np.isclose(y_of[rows["c"]], ax.get_xlim()[1])
    assert any(t.get_text().startswith("em: +") for t in ax.texts)
    # the R-hat panel holds arviz's R-hat of each scalar, with the 1.01 reference
    rhat = next(c for c in ax_rhat.collections if c.get_gid() == "rhat")
    shown = {y: x for x, y in rhat.get_offsets()}
    for label, draws in (("a", samples["a"]), ("b[1]", samples["b"][..., 1]), ("c", samples["c"])):
        assert np.isclose(shown[rows[label]], float(az.rhat(draws.numpy())))
    assert shown[rows["c"]] > 1.01
    assert any(np.allclose(ln.get_xdata(), 1.01) for ln in ax_rhat.get_lines())
    ess = next(c for c in ax_ess.collections if c.get_gid() == "ess_bulk")
    assert np.isclose({y: x for x, y in ess.get_offsets()}[rows["a"]], float(az.ess(samples["a"].numpy())))
    assert_legible(rec)


def test_forest_one_chain_says_so(fits, saved, tmp_path):
    # one chain of 10 draws: R-hat of its two halves, said in the panel title
    plots.plot_mcmc_diagnostics(tmp_path / "one", fits["mcmc1"], kinds=("forest",), max_scalars=3)
    ax_rhat = saved["one_forest.png"]["axes"][2]
    assert "1 chain" in ax_rhat.get_title()
    rhat = next(c for c in ax_rhat.collections if c.get_gid() == "rhat")
    draws = fits["mcmc1"].samples["scale"].double().numpy().reshape(1, -1)[:, :10].reshape(2, 5)
    assert np.isclose(rhat.get_offsets()[:, 0], float(__import__("arviz").rhat(draws))).any()
    # too few draws for halves: a sentence instead of an empty panel
    short = _result("mcmc", samples={"s": torch.randn(1, 6, dtype=torch.float64)}, model="not-a-model")
    plots.plot_mcmc_diagnostics(tmp_path / "short", short, kinds=("forest",))
    ax_rhat = saved["short_forest.png"]["axes"][2]
    assert not [c for c in ax_rhat.collections if c.get_gid() == "rhat"]
    assert any("R-hat not computed" in t.get_text() and "1 chain" in t.get_text() for t in ax_rhat.texts)


# --------------------------------------------------------------------------- assignments
def _rows_shown(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def test_assignments_same_sample_for_every_method(fits, saved, tmp_path):
    res = [fits["em"], None, fits["mcmc"], fits["svi_map"]]
    path = plots.plot_assignments(tmp_path / "z.png", res, num_obs=7, seed=3)
    assert_png(path)
    panels = [ax for ax in saved["z.png"]["axes"] if ax.images]
    assert [ax.get_title().split()[0].rstrip(";") for ax in panels] == ["em", "mcmc", "svi-map"]
    rows = [_rows_shown(ax) for ax in panels]
    assert len(rows[0]) == 7 and rows[0] == rows[1] == rows[2]
    assert len(panels[0].texts) == 7 * 3  # small grid: annotated
    # the shown probabilities are EM's posteriors at those rows
    idx = [int(r) for r in rows[0]]
    assert np.allclose(panels[0].images[0].get_array(), fits["em"].posteriors["z"].numpy()[idx])
    assert "columns matched to em" in panels[1].get_title()
    # the rows are ranked by EM's and MCMC's entropies: the same rows in any order of the results, with or without
    # SVI (changed: they were a random sample); select="random" keeps the seeded random sample
    plots.plot_assignments(tmp_path / "z2.png", [fits["mcmc"], fits["em"]], num_obs=7, seed=3)
    assert _rows_shown([a for a in saved["z2.png"]["axes"] if a.images][0]) == rows[0]
    plots.plot_assignments(tmp_path / "r1.png", [fits["mcmc"]], num_obs=7, seed=3, select="random")
    plots.plot_assignments(tmp_path / "r2.png", [fits["em"]], num_obs=7, seed=3, select="random")
    random_rows = np.sort(np.random.default_rng(3).choice(60, size=7, replace=False)).tolist()
    for name in ("r1.png", "r2.png"):
        assert [int(r) for r in _rows_shown([a for a in saved[name]["axes"] if a.images][0])] == random_rows
        assert "random rows (seed 3)" in saved[name]["title"]
    assert_legible(saved["z.png"])
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


def test_assignments_show_the_most_uncertain_rows(saved, tmp_path):
    n, k = 30, 3
    certain = torch.zeros(n, k, dtype=torch.float64)
    certain[:, 0] = 1.0
    em_post = certain.clone()
    em_post[7] = torch.tensor([1 / 3, 1 / 3, 1 / 3])  # the most uncertain (log 3)
    em_post[3] = torch.tensor([0.5, 0.5, 0.0])  # log 2, tied with 21 and 12 below
    em_post[21] = torch.tensor([0.0, 0.5, 0.5])
    em_post[25] = torch.tensor([0.9, 0.1, 0.0])
    mcmc_post = certain.clone()
    mcmc_post[12] = torch.tensor([0.5, 0.0, 0.5])  # uncertain under MCMC only
    mcmc_post[25] = torch.tensor([0.8, 0.2, 0.0])  # MCMC more uncertain than EM here
    svi_post = torch.full((n, k), 1 / 3, dtype=torch.float64)  # SVI does not rank the rows
    res = [_result("svi-map", posteriors={"z": svi_post}), _result("em", posteriors={"z": em_post}),
           _result("mcmc", posteriors={"z": mcmc_post})]
    plots.plot_assignments(tmp_path / "u.png", res, num_obs=5)
    rec = saved["u.png"]
    panels = [ax for ax in rec["axes"] if ax.images]
    # highest entropy under EM or MCMC first, ties by index: 7 (log 3), 3, 12, 21 (log 2), 25 (MCMC's 0.8/0.2)
    for ax in panels:
        assert _rows_shown(ax) == ["7", "3", "12", "21", "25"]
    assert np.allclose(panels[1].images[0].get_array(), em_post.numpy()[[7, 3, 12, 21, 25]])
    assert "most uncertain" in rec["title"] and "em or mcmc" in rec["title"] and "5 of 30" in rec["title"]
    # the entropies that chose the rows are written on the right
    right = next(ax for ax in rec["axes"] if not ax.images and ax.get_ylabel().startswith("entropy"))
    assert [t.get_text() for t in right.get_yticklabels()][:2] == [f"{np.log(3):.2f}", f"{np.log(2):.2f}"]
    # the mask still excludes rows; given rows are kept in their order
    mask = torch.ones(n, dtype=torch.bool)
    mask[7] = False
    plots.plot_assignments(tmp_path / "m.png", res[1:], num_obs=2, mask=mask)
    assert _rows_shown([a for a in saved["m.png"]["axes"] if a.images][0]) == ["3", "12"]
    plots.plot_assignments(tmp_path / "g.png", res[1:], observations_index=[25, 0])
    assert _rows_shown([a for a in saved["g.png"]["axes"] if a.images][0]) == ["25", "0"]
    assert "given rows" in saved["g.png"]["title"]
    with pytest.raises(ValueError, match="select"):
        plots.plot_assignments(tmp_path / "x.png", res, select="worst")
    assert_legible(rec)


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
    assert_legible(rec)
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



def test_video_legible_at_report_size(monkeypatch, tmp_path):
    from matplotlib.figure import Figure

    from metagen_ppl.domain.metagen_data import parse_videos
    from metagen_ppl.models import projective

    figs, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **kw: (figs.append(self), savefig(self, *a, **kw))[1])
    sim = projective.simulate(1, 12, seed=11, rates=[1.2, 1.0, 0.8, 1.0, 0.9], hallucination=[0.05] * 5)
    video = parse_videos(sim)[0]
    objects = [(int(c), p) for c, p in zip(video.gt_categories.tolist(), video.gt_positions.tolist())]
    path = plots.plot_video(tmp_path / "video.png", video, objects, title="video 000 (em): a long title " * 3)
    assert_png(path)
    fig = figs[-1]
    assert small_texts(fig, 10.0) == []  # frame labels, legend and title at 10 pt or more
    assert fig._suptitle.get_fontsize() >= 12
    assert overlapping_texts(fig) == []  # the title, the frame labels and the legend apart
    frames = [ax for ax in fig.axes if ax.axison]
    assert len(frames) == 12 and all(ax.get_title() == f"frame {t}" for t, ax in enumerate(frames))
    from PIL import Image

    with Image.open(path) as im:  # saved at 100 dpi (was 72): 1 pt = 1.4 px
        assert im.size[0] >= 0.95 * 100 * fig.get_figwidth()
