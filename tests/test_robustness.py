"""Adversarial data: no NaN or inf reaches a result, in float32 and float64.

Duplicate points, all points identical, K = N, coordinates of order 1e-6 and
1e6 (a simulated scene multiplied by those factors) and far from the origin;
empty components (re-seeded or kept); the ``dtype`` option of every method.

"Finite" means: every number of ``result.to_dict(include_posteriors=True)``
is a finite float (``_jsonable`` writes NaN/inf as ``None``, so ``None`` where
a number belongs fails too) and ``to_inference_data()`` holds no NaN/inf.

Tolerances for float32 are stated where they are used; float32 has
``eps = 1.2e-7`` (unit roundoff 6e-8), float64 ``eps = 2.2e-16``.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings

import numpy as np
import pytest
import torch

from metagen_ppl import DataError, EnumeratedModel, MetagenError, fit_em
from metagen_ppl.engine.mcmc import fit_mcmc
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.models import baseline

DTYPES = ["float32", "float64"]
TORCH = {"float32": torch.float32, "float64": torch.float64}
# Relative slack of "the log joint never decreases": float64 as in test_em.py (rounding
# ~1e-16 * N * 10 << 1e-9 |L|); float32 sums N ~ 30 terms each with relative error of a
# few eps32 (~1e-6 after the centred expansion), so ~1e-5 |L| bounds their rounding.
MONO_SLACK = {"float32": 1e-5, "float64": 1e-9}


# --------------------------------------------------------------------------- helpers
def walk_numbers(obj, path="result"):
    """Yield ``(path, value)`` for every leaf of a JSON-like object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk_numbers(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from walk_numbers(v, f"{path}[{i}]")
    else:
        yield path, obj


def assert_finite_result(res):
    """Every number of the JSON form is finite; the InferenceData holds no NaN/inf."""
    bad = [(p, v) for p, v in walk_numbers(res.to_dict(include_posteriors=True))
           if v is None or (isinstance(v, float) and not math.isfinite(v))]
    assert not bad, f"non-finite or missing numbers in the result: {bad[:5]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz's FutureWarning about its 1.x refactor
        idata = res.to_inference_data()
    for group in idata.groups():
        for name, var in idata[group].data_vars.items():
            values = np.asarray(var.values)
            if np.issubdtype(values.dtype, np.number):
                assert np.isfinite(values).all(), f"{group}.{name} has NaN/inf"


def assert_non_decreasing(trace, rel):
    t = np.asarray(trace, dtype=float)
    drops = t[:-1] - t[1:]
    slack = rel * np.maximum(np.abs(t[1:]), 1.0)
    assert (drops <= slack).all(), f"log joint decreased by {drops.max():.3g} at step {drops.argmax()}"


def scene(n=30, seed=1):
    """A simulated 3-object scene (float64), the base of the adversarial data sets."""
    sim = baseline.simulate(3, n, seed, weights=[1 / 3] * 3)
    return torch.tensor(sim["observations"], dtype=torch.float64)


def adversarial(name):
    """``(x float64, K)`` of one adversarial data set."""
    x = scene()
    if name == "duplicates":
        return torch.cat([x[:10], x[:10], x[:10]]), 3
    if name == "identical":
        return x[:1].repeat(12, 1), 3
    if name == "k_equals_n":
        return x[:6].clone(), 6
    if name == "k_equals_n_duplicates":
        return torch.cat([x[:3], x[:3]]), 6
    if name == "tiny":
        return x * 1e-6, 3
    if name == "huge":
        return x * 1e6, 3
    raise KeyError(name)


CASES = ["duplicates", "identical", "k_equals_n", "k_equals_n_duplicates", "tiny", "huge"]


def quiet_fit(fn, *args, **kwargs):
    """Run a fit, ignoring RuntimeWarnings (max_iter, re-seeding, NUTS divergences)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- EM on adversarial data
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_em_on_adversarial_data_is_finite_and_sane(case, dtype):
    x, k = adversarial(case)
    res = quiet_fit(fit_em, "baseline", {"x": x}, k, dtype=dtype)
    assert_finite_result(res)
    assert res.converged
    assert all(v.dtype == TORCH[dtype] for v in res.params.values())
    assert res.posteriors["z"].dtype == TORCH[dtype]
    assert_non_decreasing(res.trace, MONO_SLACK[dtype])
    w = res.params["weights"].double()
    # weights are normalised in the working dtype: |sum - 1| is a few eps
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-5 if dtype == "float32" else 1e-12)
    assert float(res.params["scale"]) > 0
    rows = res.posteriors["z"].double().sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identical_points_give_the_prior_limited_scale(dtype):
    """All points equal: the scale cannot collapse. The inverse-gamma prior bounds the MAP
    noise below by sigma^2 >= 2 b / (D N + 2 a + 1) > 0 (the residuals are only the prior's
    shrinkage of each location), and the fit is the closed form's fixed point:
    mu_k = (N_k x + r m0) / (N_k + r), r = sigma^2 / s0^2, and
    sigma^2 = (sum_k N_k |x - mu_k|^2 + 2 b) / (D N + 2 a + 1)."""
    x, k = adversarial("identical")
    res = quiet_fit(fit_em, "baseline", {"x": x}, k, dtype=dtype)
    n, d = x.shape
    a, b, s0, m0 = 2.0, 1.0, 10.0, 0.0  # baseline.DEFAULTS
    var = float(res.params["scale"].double()) ** 2
    assert var >= 2 * b / (d * n + 2 * a + 1) * (1 - 1e-6)  # 1e-6: float32 rounding of sigma
    nk = res.posteriors["z"].double().sum(0)
    locs = res.params["locs"].double()
    r = var / s0 ** 2
    # EM stops within tol = 1e-6 |L| of the fixed point; there the update moves each quantity
    # by much less than 1e-6 relative (the shrinkage coupling is ~r / N_k ~ 1e-4). float32
    # adds ~1e-6 relative rounding: 1e-5. float64: 1e-8.
    rtol = 1e-5 if dtype == "float32" else 1e-8
    expect_locs = (nk[:, None] * x[0] + r * m0) / (nk[:, None] + r)
    torch.testing.assert_close(locs, expect_locs, rtol=rtol, atol=0)
    expect_var = (float((nk * ((x[0] - locs) ** 2).sum(-1)).sum()) + 2 * b) / (d * n + 2 * a + 1)
    assert var == pytest.approx(expect_var, rel=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_equals_n_gives_each_distinct_point_its_own_component(dtype):
    x, k = adversarial("k_equals_n")
    res = quiet_fit(fit_em, "baseline", {"x": x}, k, dtype=dtype)
    # the six points are >= 1.4 apart and the MAP noise is ~0.3 (prior-limited)
    assert sorted(res.map_assignments["z"].tolist()) == list(range(k))
    assert_finite_result(res)


# --------------------------------------------------------------------------- extreme scales
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", [1e-6, 1e6])
def test_extreme_scales_with_scaled_priors_are_exactly_rescaled_fits(factor, dtype):
    """Multiplying the data by f and the priors' length units by f (s0 -> f s0, b -> f^2 b)
    maps the MAP problem onto itself: the fit must be f times the unit fit, and the log joint
    must shift by the Jacobian -N D log f. Before the fixes, float32 and float64 alike found a
    wrong fit at f = 1e-6 (an absolute 1e-6 floor on the starting variance made every start
    1000 noise scales wide)."""
    x = scene(n=150)
    ref = fit_em("baseline", {"x": x}, 3, seed=0)
    opts = {"loc_prior_scale": 10.0 * factor, "scale_prior_rate": factor ** 2}
    res = fit_em("baseline", {"x": x * factor}, 3, seed=0, dtype=dtype, options=opts)
    assert_finite_result(res)
    n, d = x.shape
    # Every density of a length-valued variable scales by 1/f per coordinate: the data (N D),
    # the locations' prior (K D) and the noise scale's prior (1); the weights are unitless.
    shift = -(n * d + 3 * d + 1) * math.log(factor)
    # float32 carries 7 digits of |L| ~ 6e3: 1e-6 relative is ~10 float32 ulps of the total
    rel = 1e-6 if dtype == "float32" else 1e-10
    assert res.log_joint == pytest.approx(ref.log_joint + shift, rel=rel)
    # In noise units the float32 errors are eps32 * (spread / sigma)^2 ~ 1e-5 at most here
    # (measured 2e-6); float64 agrees to rounding (measured 5e-15).
    atol = 1e-4 if dtype == "float32" else 1e-9
    torch.testing.assert_close(res.params["locs"].double() / factor, ref.params["locs"], rtol=0, atol=atol)
    torch.testing.assert_close(res.params["scale"].double() / factor, ref.params["scale"], rtol=atol, atol=0)
    torch.testing.assert_close(res.params["weights"].double(), ref.params["weights"], rtol=0, atol=atol)


@pytest.mark.parametrize("factor", [1e-6, 1e6])
def test_extreme_scales_with_default_priors_agree_across_precisions(factor):
    """With the default (metre-unit) priors the fit is prior-dominated, but float32 must still
    reproduce float64: no overflow, no catastrophic cancellation."""
    x = scene(n=150) * factor
    f64 = fit_em("baseline", {"x": x}, 3, seed=0)
    f32 = fit_em("baseline", {"x": x}, 3, seed=0, dtype="float32")
    for res in (f32, f64):
        assert_finite_result(res)
    # |L| ~ 1e3: 1e-6 relative is ~10 float32 ulps
    assert f32.log_joint == pytest.approx(f64.log_joint, rel=1e-6)
    # scale: relative 1e-5 (a float32 sqrt of a sum of 450 squares, ~1e-6 expected)
    assert float(f32.params["scale"]) == pytest.approx(float(f64.params["scale"]), rel=1e-5)
    # locations relative to the data's extent (float32 resolves |x| ~ 20 f to ~1e-6 f)
    extent = float(x.abs().max())
    assert float((f32.params["locs"].double() - f64.params["locs"]).abs().max()) <= 1e-5 * extent


def test_float32_far_from_the_origin():
    """A unit-noise scene translated to 1e5 (float32 spacing there: 0.0078). Before the centred
    E-step and M-step, float32 EM returned a log joint of +2.4e7 on this data (the expansion
    |x|^2 - 2 x.m + |m|^2 lost every digit); now it matches float64 arithmetic on the same
    (rounded) data."""
    offset = 1e5
    x32 = (scene(n=150) + offset).float()
    opts = {"loc_prior_mean": offset}
    f32 = fit_em("baseline", {"x": x32}, 3, seed=0, options=opts)
    f64 = fit_em("baseline", {"x": x32.double()}, 3, seed=0, options=opts)
    assert_finite_result(f32)
    # The centred sums cancel terms of size (spread / sigma)^2 ~ 1e2 instead of (1e5)^2, so the
    # float32 log joint (~8e2) is good to ~1e-5 relative; locations (in units of sigma = 1) to
    # a few float32 spacings at 1e5 (0.0078), scale to ~1e-4.
    assert f32.log_joint == pytest.approx(f64.log_joint, rel=1e-5)
    assert float((f32.params["locs"].double() - f64.params["locs"]).abs().max()) < 0.03
    assert float(f32.params["scale"]) == pytest.approx(float(f64.params["scale"]), rel=1e-3)


@pytest.mark.parametrize("factor", [1e-6, 1e6])
def test_float32_estep_and_closed_form_mstep_at_extreme_scales(factor):
    """One E-step and one closed-form M-step in float32 against float64 on the same data and
    parameters (the fit's own, so the comparison is at a realistic point)."""
    x = scene(n=150) * factor
    opts = {"loc_prior_scale": 10.0 * factor, "scale_prior_rate": factor ** 2}
    values = fit_em("baseline", {"x": x}, 3, seed=0, options=opts).params
    out = {}
    for dt in (torch.float32, torch.float64):
        data = {"x": x.to(dt)}
        vals = {k: v.to(dt) for k, v in values.items()}
        est = EnumeratedModel(baseline.model, data, 3, opts).estep(vals)
        upd = baseline.closed_form_mstep(data, est.marginals, vals, 3, **opts)
        assert math.isfinite(est.log_joint) and math.isfinite(est.log_likelihood)
        assert torch.isfinite(est.marginals["z"]).all()
        assert all(torch.isfinite(v).all() for v in upd.values())
        out[dt] = (est, upd)
    (e32, u32), (e64, u64) = out[torch.float32], out[torch.float64]
    # |log p(x | theta)| ~ 6e3 at these scales (Jacobian N D |log f|): 1e-6 relative ~ 10 ulps
    assert e32.log_likelihood == pytest.approx(e64.log_likelihood, rel=1e-6)
    # responsibilities are probabilities: float32 rounding of O(10) log terms gives ~1e-6
    torch.testing.assert_close(e32.marginals["z"].double(), e64.marginals["z"], rtol=0, atol=1e-5)
    # M-step outputs in units of the scale factor: ~1e-6 of data of size ~20
    torch.testing.assert_close(u32["locs"].double() / factor, u64["locs"] / factor, rtol=0, atol=1e-4)
    torch.testing.assert_close(u32["scale"].double(), u64["scale"], rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- precision option
def test_float32_and_float64_agree_on_a_normal_scene(well_separated):
    data, truth = well_separated
    f64 = fit_em("baseline", data, 3, seed=0)
    f32 = fit_em("baseline", data, 3, seed=0, dtype="float32")
    assert f32.info["dtype"] == "float32" and f64.info["dtype"] == "float64"
    assert f32.observed["x"].dtype == torch.float32
    assert f32.pointwise_log_likelihood.dtype == torch.float32
    # Both runs stop within tol = 1e-6 |L| of the same optimum and float32 evaluates the log
    # joint (|L| ~ 800, a sum of 150 terms) to ~1e-6 relative: 1e-5 relative covers both.
    # Measured: 3.4e-4 absolute (4e-7 relative).
    assert f32.log_joint == pytest.approx(f64.log_joint, rel=1e-5)
    # Parameters: the optimum is well conditioned (N_k = 50 points per object, sigma ~ 1), so
    # an objective error of ~1e-3 moves a location by << 1e-3; measured <= 1e-5.
    torch.testing.assert_close(f32.params["locs"].double(), f64.params["locs"], rtol=0, atol=1e-3)
    torch.testing.assert_close(f32.params["weights"].double(), f64.params["weights"], rtol=0, atol=1e-4)
    torch.testing.assert_close(f32.params["scale"].double(), f64.params["scale"], rtol=1e-4, atol=0)
    # responsibilities of well-separated clusters are ~0/1; float32 rounding ~1e-6
    torch.testing.assert_close(f32.posteriors["z"].double(), f64.posteriors["z"], rtol=0, atol=1e-4)


def test_dtype_option_converts_data_options_and_init(well_separated):
    data, _ = well_separated
    w = torch.full((3,), 1 / 3, dtype=torch.float64)
    init = {"locs": data["x"][:3].clone()}  # float64 init for a float32 fit
    res = fit_em("baseline", data, 3, seed=0, dtype=torch.float32, options={"weights": w}, init=init)
    assert set(res.params) == {"locs", "scale"}
    assert all(v.dtype == torch.float32 for v in res.params.values())
    assert data["x"].dtype == torch.float64  # the caller's data is not modified
    # the reverse: float32 data fitted in float64
    res64 = fit_em("baseline", {"x": data["x"].float()}, 3, seed=0, dtype="float64")
    assert res64.params["locs"].dtype == torch.float64
    assert res64.observed["x"].dtype == torch.float64


@pytest.mark.parametrize("bad", ["float16", "double", torch.float16, torch.int64, 32])
def test_bad_dtype_raises(bad, well_separated):
    data, _ = well_separated
    with pytest.raises(MetagenError, match="dtype"):
        fit_em("baseline", data, 3, dtype=bad)
    with pytest.raises(MetagenError, match="dtype"):
        fit_svi("baseline", data, 3, dtype=bad, num_steps=1)


def test_initial_scale_follows_the_data_scale():
    """No absolute floor on the starting variance: the start of f x is f times the start of x."""
    x = scene(n=150)
    outs = [baseline.initialize({"x": x * f}, 3, torch.Generator().manual_seed(0)) for f in (1.0, 1e-6)]
    assert float(outs[1]["scale"]) == pytest.approx(1e-6 * float(outs[0]["scale"]), rel=1e-12)
    # all points identical: the mode of the sigma^2 prior, b / (a + 1)
    same = baseline.initialize({"x": x[:1].repeat(5, 1)}, 2, torch.Generator().manual_seed(0))
    assert float(same["scale"]) == pytest.approx(math.sqrt(1.0 / 3.0), rel=1e-12)


# --------------------------------------------------------------------------- SVI and MCMC
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_svi_on_adversarial_data_is_finite(case, dtype):
    x, k = adversarial(case)
    res = quiet_fit(fit_svi, "baseline", {"x": x}, k, dtype=dtype, num_steps=15, seed=0)
    assert_finite_result(res)
    assert all(v.dtype == TORCH[dtype] for v in res.params.values())
    assert res.info["dtype"] == dtype


def test_svi_autonormal_on_duplicates_float32_is_finite():
    x, k = adversarial("duplicates")
    res = quiet_fit(fit_svi, "baseline", {"x": x}, k, guide="normal", dtype="float32", num_steps=15,
                    num_posterior_samples=5, seed=0)
    assert_finite_result(res)
    assert all(v.dtype == torch.float32 for v in res.samples.values())


def test_tiny_mcmc_on_duplicates_float32_is_finite():
    # Unit scale: at 1e6 with the metre-unit priors the chains do not move in 10 warm-up steps
    # and R-hat of constant chains is NaN (written as null), which is not what this tests.
    x, k = adversarial("duplicates")
    res = quiet_fit(fit_mcmc, "baseline", {"x": x}, k, dtype="float32", num_samples=10,
                    warmup_steps=10, num_chains=2, max_tree_depth=4, seed=0)
    assert_finite_result(res)  # two chains, so max_rhat is a number too
    assert res.info["dtype"] == "float32"
    assert all(v.dtype == torch.float32 for v in res.samples.values())


# --------------------------------------------------------------------------- empty components
def far_init(x_scene_locs, dtype=torch.float64):
    locs = x_scene_locs.clone().to(dtype)
    locs[2] = 500.0  # ~500 noise scales from every point: no responsibility at all
    return {"locs": locs}


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_component_is_reinitialised(dtype, hungarian):
    sim = baseline.simulate(3, 150, 1, weights=[1 / 3] * 3)
    x = torch.tensor(sim["observations"], dtype=torch.float64)
    true_locs = torch.tensor(sim["truth"]["locs"], dtype=torch.float64)
    ref = fit_em("baseline", {"x": x}, 3, seed=0, dtype=dtype)
    with pytest.warns(RuntimeWarning, match="re-initialised empty component"):
        res = fit_em("baseline", {"x": x}, 3, seed=0, dtype=dtype, init=far_init(true_locs))
    assert res.info["reinitialised"] == [(1, 2)]  # after the first EM iteration, component 2
    assert res.info["reinit_rejected"] == []
    assert_finite_result(res)
    assert_non_decreasing(res.trace, MONO_SLACK[dtype])
    assert res.converged
    # Sane: the same optimum as a normal start (objective to tol = 1e-6 relative, plus float32
    # evaluation noise ~1e-6 relative) and every object found (errors as in test_em.py:
    # 5 sigma / sqrt(N_k) with N_k ~ 50 is 0.7).
    assert res.log_joint == pytest.approx(ref.log_joint, rel=1e-5)
    _, err = hungarian(res.params["locs"].double(), true_locs)
    assert (err < 0.7).all(), err
    # the event survives JSON
    assert res.to_dict()["info"]["reinitialised"] == [[1, 2]]


def test_empty_component_kept_with_empty_keep():
    sim = baseline.simulate(3, 150, 1, weights=[1 / 3] * 3)
    x = torch.tensor(sim["observations"], dtype=torch.float64)
    init = far_init(torch.tensor(sim["truth"]["locs"], dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "keep" warns about nothing here
        kept = fit_em("baseline", {"x": x}, 3, seed=0, init=init, empty="keep")
    assert kept.info["reinitialised"] == [] and kept.info["empty"] == "keep"
    assert float(kept.params["weights"][2]) < 1e-12  # the component holds nothing
    assert_finite_result(kept)  # a zero weight is still a finite number
    assert_non_decreasing(kept.trace, MONO_SLACK["float64"])
    reseeded = quiet_fit(fit_em, "baseline", {"x": x}, 3, seed=0, init=init)
    assert reseeded.log_joint > kept.log_joint + 100.0  # two objects merged cost ~270 nats here


def test_a_reseed_that_lowers_the_log_joint_is_refused(tmp_path):
    """The engine's guard, with a model whose hook proposes a bad move (the empty component
    onto a far point with half the weight): refused, recorded, and the trace stays monotone."""
    path = tmp_path / "bad_reseed.py"
    path.write_text(textwrap.dedent("""
        import torch
        from metagen_ppl.models.baseline import model, closed_form_mstep, initialize

        def reseed_empty(data, marginals, params, num_objects, *, threshold, skip=(), **_):
            nk = marginals["z"].sum(0)
            empty = [k for k in range(num_objects) if nk[k] <= threshold * len(nk) and k not in skip]
            if not empty:
                return {}, None
            k = empty[0]
            locs = params["locs"].clone()
            locs[k] = 1e3
            w = params["weights"].clone() * 0.5
            w[k] = 0.5
            return {"locs": locs, "weights": w}, k
    """))
    sim = baseline.simulate(3, 150, 1, weights=[1 / 3] * 3)
    x = torch.tensor(sim["observations"], dtype=torch.float64)
    init = far_init(torch.tensor(sim["truth"]["locs"], dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="kept component"):
        res = fit_em(str(path), {"x": x}, 3, seed=0, init=init)
    assert res.info["reinitialised"] == []
    assert res.info["reinit_rejected"] == [(1, 2)]  # offered once, then left alone
    assert_non_decreasing(res.trace, MONO_SLACK["float64"])
    keep = fit_em(str(path), {"x": x}, 3, seed=0, init=init, empty="keep")
    assert res.log_joint == keep.log_joint  # a refused move changes nothing
    with pytest.raises(MetagenError, match="empty"):
        fit_em("baseline", {"x": x}, 3, empty="drop")


def test_generic_mstep_moves_with_a_zero_weight():
    """Q at a point with pi_k = 0 has terms 0 * log 0 (zero posterior, zero prior
    probability); they count 0, so the optimiser M-step is not stuck on a NaN Q."""
    sim = baseline.simulate(3, 60, 1, weights=[1 / 3] * 3)
    x = torch.tensor(sim["observations"], dtype=torch.float64)
    init = {"locs": torch.tensor(sim["truth"]["locs"], dtype=torch.float64),
            "weights": torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)}
    res = quiet_fit(fit_em, "baseline", {"x": x}, 3, seed=0, init=init, mstep="optimizer",
                    optimizer_steps=10, empty="keep", max_iter=5)
    assert all(math.isfinite(q) for q in res.info["q_trace"])
    assert res.trace[-1] > res.trace[0] + 1.0  # it moved (it used to stop after one step)
    assert_finite_result(res)


def test_conversion_that_overflows_is_a_data_error():
    x = torch.full((5, 3), 1e39, dtype=torch.float64)  # beyond float32's 3.4e38
    with pytest.raises(DataError, match="float32"):
        fit_em("baseline", {"x": x}, 1, dtype="float32")


@pytest.mark.parametrize("method", ["em", "svi"])
def test_cli_fit_in_float32_end_to_end(tmp_path, method):
    """``metagen-ppl fit --dtype float32``: the CLI converts the data; the fit runs in float32
    and its result file holds only finite numbers."""
    from metagen_ppl.apps.cli.main import main

    data, out = tmp_path / "data.json", tmp_path / "fit.json"
    assert main(["simulate", "--num-objects", "2", "--num-obs", "40", "--seed", "3", "--out", str(data)]) == 0
    argv = ["fit", "--method", method, "--data", str(data), "--dtype", "float32", "--out", str(out),
            "--no-progress", "--num-steps", "20", "--num-inits", "1"]
    assert main(argv) == 0
    obj = json.loads(out.read_text())
    bad = [(p, v) for p, v in walk_numbers(obj) if v is None or (isinstance(v, float) and not math.isfinite(v))]
    assert not bad, bad[:5]
    assert obj["info"]["dtype"] == "float32"
