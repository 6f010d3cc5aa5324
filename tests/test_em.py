"""The EM loop: monotonicity, fixed points, recovery, determinism, restarts, bad input.

All data are float64 (the engine follows the data's dtype), so the only slack
in the monotonicity checks is float64 rounding of sums of ~1e2 terms.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from metagen_ppl import DataError, EnumeratedModel, MetagenError, ModelError, fit_em, load_model
from metagen_ppl.engine.mstep import optimizer_mstep
from metagen_ppl.engine.setup import initial_values
from metagen_ppl.models import baseline

# Relative slack for "never decreases": the log joint is a float64 sum of
# O(N) terms of size O(10), so its rounding error is ~1e-16 * N * 10 << 1e-9 * |L|.
REL_SLACK = 1e-9


def overlapping(n=60, sep=3.0, seed=0):
    """Three unit-variance clusters only ``sep`` sigma apart: soft responsibilities,
    so EM needs many iterations (a non-trivial trace), unlike well-separated scenes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [sep, 0.0, 0.0], [0.0, sep, 0.0]], dtype=torch.float64)
    z = torch.arange(n) % 3
    x = centres[z] + torch.randn(n, 3, generator=g, dtype=torch.float64)
    return {"x": x}


def assert_non_decreasing(trace):
    trace = np.asarray(trace, dtype=float)
    drops = trace[:-1] - trace[1:]
    slack = REL_SLACK * np.maximum(np.abs(trace[1:]), 1.0)
    assert (drops <= slack).all(), f"objective decreased by {drops.max():.3g} at step {drops.argmax()}"


# --------------------------------------------------------------------------- monotonicity
def test_closed_form_log_joint_never_decreases():
    data = overlapping()
    res = fit_em("baseline", data, 3, seed=0, tol=1e-10, max_iter=300)
    assert res.converged
    assert res.n_iter >= 5, "test data should need a real EM trajectory"
    assert len(res.trace) == res.n_iter + 1  # initial point first
    assert_non_decreasing(res.trace)
    assert res.trace[-1] > res.trace[0] + 1.0  # EM actually improved the start
    assert res.trace[-1] == res.log_joint
    assert res.info["q_trace"] == []  # the closed form covers every site


def test_optimizer_path_log_joint_never_decreases_and_q_bounds_it():
    data = overlapping(n=45, sep=3.5)
    res = fit_em("baseline", data, 3, seed=0, mstep="optimizer", optimizer_steps=10,
                 tol=1e-9, max_iter=100)
    assert res.converged
    assert res.n_iter >= 3
    # A generalised M-step (Q never decreases) still makes the log joint monotone.
    assert_non_decreasing(res.trace)
    q = np.asarray(res.info["q_trace"])
    assert len(q) == res.n_iter
    # L(theta_new) = Q(theta_new | theta_old) + H(posterior_old) + KL >= Q(theta_new | theta_old),
    # since a discrete posterior has non-negative entropy.
    assert (q <= np.asarray(res.trace[1:]) + 1e-9).all()


def test_optimizer_mstep_never_decreases_q():
    """Drive E- and generic M-steps by hand: Q(new | old) >= Q(old | old) every time, and
    L(new) - L(old) >= Q(new | old) - Q(old | old) (EM's fundamental inequality)."""
    data = overlapping(n=45, sep=3.5)
    spec = load_model("baseline")
    em = EnumeratedModel(spec.model, data, 3)
    values = initial_values(spec, em, torch.Generator().manual_seed(1), torch.float64)
    est = em.estep(values)
    for _ in range(6):
        q_old = float(em.q_value(values, est).detach())
        new = optimizer_mstep(em, values, est, list(em.latents), steps=10)
        q_new = float(em.q_value(new, est).detach())
        assert q_new >= q_old  # GEM: exact, old point kept otherwise
        est_new = em.estep(new)
        assert est_new.log_joint - est.log_joint >= (q_new - q_old) - REL_SLACK * abs(est.log_joint)
        values, est = new, est_new
    # Also with Adam (a few steps; the GEM guard keeps Q monotone whatever the step size).
    q_old = float(em.q_value(values, est).detach())
    new = optimizer_mstep(em, values, est, ["locs"], optimizer="adam", steps=5, lr=10.0)
    assert float(em.q_value(new, est).detach()) >= q_old


def test_optimizer_reaches_closed_form_fixed_point():
    data = overlapping(n=45, sep=3.5)
    kw = dict(seed=0, tol=1e-12, max_iter=300)
    closed = fit_em("baseline", data, 3, mstep="closed", **kw)
    generic = fit_em("baseline", data, 3, mstep="optimizer", optimizer_steps=10, **kw)
    assert closed.converged and generic.converged
    assert closed.n_iter >= 5  # a real trajectory, not a one-step fixed point
    # Stopping at |dL| <= 1e-12 |L| (|L| ~ 250) leaves each run within ~1e-9 of the
    # stationary value of L; with curvature >= ~1 per parameter that is a parameter
    # distance of order sqrt(2e-9) ~ 5e-5, so 1e-4 is safe yet far below any other optimum.
    for name in ("locs", "weights", "scale"):
        torch.testing.assert_close(generic.params[name], closed.params[name], rtol=0, atol=1e-4)
    assert generic.log_joint == pytest.approx(closed.log_joint, abs=1e-7)


def test_closed_form_mstep_is_the_argmax_of_q():
    """One closed-form step lands where the generic optimiser lands on the same Q (up to ECM:
    locs and weights jointly, then scale at the new locs, which is exact when the scale is fixed)."""
    data = overlapping()
    spec = load_model("baseline")
    opts = {"scale": 1.2}
    em = EnumeratedModel(spec.model, data, 3, opts)
    values = initial_values(spec, em, torch.Generator().manual_seed(3), torch.float64)
    est = em.estep(values)
    cf = baseline.closed_form_mstep(data, est.marginals, values, 3, **opts)
    opt = optimizer_mstep(em, values, est, list(em.latents), steps=100)
    # Q is concave in (locs, weights) here; LBFGS to grad 1e-12 reaches the argmax to ~1e-8.
    for name in ("locs", "weights"):
        torch.testing.assert_close(opt[name], cf[name], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("num_objects,seed,weights", [(3, 2, None), (4, 5, [0.25] * 4)])
def test_em_recovers_simulated_locations(sim_scene, hungarian, num_objects, seed, weights):
    data, truth = sim_scene(num_objects, 600, seed, scale=1.0, weights=weights)
    res = fit_em("baseline", data, num_objects, seed=0)
    assert res.converged
    perm, err = hungarian(res.params["locs"], truth["locs"])
    nk = truth["z"].bincount(minlength=num_objects).numpy()
    # The MAP location of object k averages N_k points of noise sigma = 1 in 3D, so its error
    # vector has sd sigma / sqrt(N_k) per axis and |err|^2 N_k / sigma^2 ~ chi^2_3, whose
    # 99.99% quantile is ~21 < 25: hence |err_k| < 5 sigma / sqrt(N_k) (0.27-0.51 here).
    bound = 5.0 * truth["scale"] / np.sqrt(nk)
    assert (err < bound).all(), (err, bound)
    # With N_k ~ 100-350, the average error is ~1.6 sigma / sqrt(N_k) ~ 0.1; 0.2 is generous.
    assert err.mean() < 0.2, err
    # Noise scale: sd of the estimate is sigma / sqrt(2 D N) ~ 0.017; 0.05 is 3 sd.
    assert abs(float(res.params["scale"]) - truth["scale"]) < 0.05
    # Weights against the realised fractions N_k / N (the clusters barely overlap, so the
    # responsibilities are nearly hard and the estimate is almost exactly N_k / N).
    w = res.params["weights"].numpy()[perm]
    np.testing.assert_allclose(w, nk / nk.sum(), atol=0.02)
    # MAP assignments agree with the truth up to relabelling (>= 99%: a few boundary points).
    acc = (perm[truth["z"].numpy()] == res.map_assignments["z"].numpy()).mean()
    assert acc >= 0.99


# --------------------------------------------------------------------------- result consistency
def test_result_comes_from_a_final_estep(well_separated):
    data, _ = well_separated
    res = fit_em("baseline", data, 3, seed=0)
    em = EnumeratedModel(baseline.model, data, 3)
    est = em.estep(res.params)
    assert res.log_joint == pytest.approx(est.log_joint, abs=1e-9)  # same float64 computation
    assert res.log_likelihood == pytest.approx(est.log_likelihood, abs=1e-9)
    assert res.info["log_prior"] == pytest.approx(est.log_prior, abs=1e-9)
    torch.testing.assert_close(res.posteriors["z"], est.marginals["z"], rtol=0, atol=1e-12)
    assert torch.equal(res.map_assignments["z"], est.marginals["z"].argmax(-1))
    pw = res.pointwise_log_likelihood
    assert pw.shape == (1, 1, data["x"].shape[0])
    assert float(pw.sum()) == pytest.approx(res.log_likelihood, abs=1e-8)  # sum of 150 float64 terms
    assert res.method == "em" and res.model == "baseline"
    assert res.wall_time_s > 0


def test_max_iter_reached_warns_and_reports_not_converged():
    data = overlapping()
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = fit_em("baseline", data, 3, seed=0, max_iter=1, tol=1e-14)
    assert not res.converged
    assert res.n_iter == 1 and len(res.trace) == 2


def test_single_object_k1_fits():
    """K = 1 is valid input (1 <= K <= N): one object, every point assigned to it."""
    data = overlapping()
    x = data["x"]
    res = fit_em("baseline", data, 1, seed=0)
    assert res.converged
    assert res.posteriors["z"].shape == (x.shape[0], 1)
    assert (res.map_assignments["z"] == 0).all()
    # MAP location = sample mean shrunk by the N(0, 10^2) prior: relative shrinkage
    # sigma^2 / (N s0^2) ~ 2e-3 of a mean of size ~1, so 1e-2 covers it.
    torch.testing.assert_close(res.params["locs"][0], x.mean(0), rtol=0, atol=1e-2)
    torch.testing.assert_close(res.params["weights"], torch.ones(1, dtype=torch.float64))
    # log p(x | theta) of a single Gaussian, by hand.
    s = float(res.params["scale"])
    r2 = ((x - res.params["locs"][0]) ** 2).sum()
    n, d = x.shape
    ll = float(-0.5 * n * d * np.log(2 * np.pi) - n * d * np.log(s) - 0.5 * r2 / s ** 2)
    assert res.log_likelihood == pytest.approx(ll, abs=1e-8)
    assert res.pointwise_log_likelihood.shape == (1, 1, n)


def test_single_observation_single_object():
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    res = fit_em("baseline", {"x": x}, 1, seed=0)
    assert res.posteriors["z"].shape == (1, 1)
    torch.testing.assert_close(res.params["locs"], x, rtol=0, atol=1e-2)  # prior shrinkage only


def test_numpy_integer_num_objects_is_accepted(well_separated):
    """K often comes from numpy (np.arange sweeps over K); np.int64 is an integer."""
    data, _ = well_separated
    res = fit_em("baseline", data, np.int64(3), seed=0)
    ref = fit_em("baseline", data, 3, seed=0)
    assert res.log_joint == ref.log_joint


def test_init_for_a_fixed_site_is_not_reported_as_a_parameter(well_separated):
    """With scale fixed by options, an init value for "scale" must not end up in the result
    (the model never used it). Raising a clear error is an acceptable alternative."""
    data, _ = well_separated
    init = {"locs": torch.zeros(3, 3, dtype=torch.float64), "scale": torch.tensor(5.0, dtype=torch.float64)}
    try:
        res = fit_em("baseline", data, 3, seed=0, options={"scale": 1.0}, init=init)
    except MetagenError as e:
        assert "scale" in str(e)
        return
    assert "scale" not in res.params


# --------------------------------------------------------------------------- determinism and restarts
def test_same_seed_gives_identical_results():
    data = overlapping()
    a = fit_em("baseline", data, 3, seed=7, num_inits=2)
    b = fit_em("baseline", data, 3, seed=7, num_inits=2)
    assert a.trace == b.trace
    assert a.n_iter == b.n_iter
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name])
    assert torch.equal(a.posteriors["z"], b.posteriors["z"])
    assert a.info["restart_log_joint"] == b.info["restart_log_joint"]


@pytest.mark.filterwarnings("ignore:EM stopped at max_iter")
def test_restarts_return_the_best():
    # Four objects on three overlapping clusters: restarts end at different local optima
    # (with the k-means++ start of this writing their scores differ by ~1 nat, so the rule is
    # exercised). max_iter=10 keeps the test fast; best-of-restarts does not need convergence.
    data = overlapping(n=45, sep=3.0)
    single = fit_em("baseline", data, 4, seed=1, num_inits=1, max_iter=10)
    multi = fit_em("baseline", data, 4, seed=1, num_inits=3, max_iter=10)
    scores = multi.info["restart_log_joint"]
    assert len(scores) == 3
    assert multi.log_joint == max(scores)
    assert multi.trace[-1] == max(scores)  # trace and params belong to the best restart
    # Restart 0 uses the same generator as the single run.
    assert scores[0] == single.log_joint
    assert multi.log_joint >= single.log_joint


def test_explicit_init_is_used():
    data = overlapping()
    init = {"locs": torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64),
            "weights": torch.full((3,), 1 / 3, dtype=torch.float64),
            "scale": torch.tensor(1.0, dtype=torch.float64)}
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = fit_em("baseline", data, 3, seed=0, init=init, max_iter=1, tol=0.0)
    est0 = EnumeratedModel(baseline.model, data, 3).estep(init)
    assert res.trace[0] == pytest.approx(est0.log_joint, abs=1e-9)


# --------------------------------------------------------------------------- fixed options
def test_fixed_scale_option_removes_the_site(well_separated):
    data, _ = well_separated
    res = fit_em("baseline", data, 3, seed=0, options={"scale": 1.0})
    assert set(res.params) == {"locs", "weights"}
    assert res.converged
    assert_non_decreasing(res.trace)
    w = torch.full((3,), 1 / 3, dtype=torch.float64)
    res2 = fit_em("baseline", data, 3, seed=0, options={"scale": 1.0, "weights": w})
    assert set(res2.params) == {"locs"}
    # The same fixed options work on the generic path.
    res3 = fit_em("baseline", data, 3, seed=0, mstep="optimizer", options={"scale": 1.0, "weights": w})
    assert set(res3.params) == {"locs"}
    torch.testing.assert_close(res3.params["locs"], res2.params["locs"], rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x,match", [
    (torch.zeros(10, dtype=torch.float64), "shape"),
    (torch.zeros(10, 3, 1, dtype=torch.float64), "shape"),
    (torch.zeros(0, 3, dtype=torch.float64), "N = 0"),
    (torch.zeros(10, 3, dtype=torch.long), "floating"),
])
def test_bad_shapes_raise_data_error(x, match):
    with pytest.raises(DataError, match=match):
        fit_em("baseline", {"x": x}, 1)


def test_nan_and_inf_raise_data_error():
    x = torch.randn(10, 3, dtype=torch.float64)
    x[4, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        fit_em("baseline", {"x": x}, 2)
    x[4, 1] = float("inf")
    with pytest.raises(DataError, match="inf"):
        fit_em("baseline", {"x": x}, 2)


@pytest.mark.parametrize("k,match", [
    (0, "at least 1"),
    (-2, "at least 1"),
    (11, "exceeds the number of observations"),
    (2.0, "integer"),
    (2.5, "integer"),
    ("3", "integer"),
    (True, "integer"),
    (None, "integer"),
])
def test_bad_num_objects_raise_data_error(k, match):
    x = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(DataError, match=match):
        fit_em("baseline", {"x": x}, k)


def test_bad_data_container_raises():
    with pytest.raises(DataError):
        fit_em("baseline", {}, 2)
    with pytest.raises(DataError):
        fit_em("baseline", [[0.0, 0.0, 0.0]], 1)


def test_bad_engine_options_raise():
    data = overlapping()
    with pytest.raises(MetagenError, match="mstep"):
        fit_em("baseline", data, 3, mstep="newton")
    with pytest.raises(MetagenError, match="num_inits"):
        fit_em("baseline", data, 3, num_inits=0)
    with pytest.raises(MetagenError, match="optimizer"):
        fit_em("baseline", data, 3, mstep="optimizer", optimizer="sgd", max_iter=1)


def test_closed_mstep_requested_for_model_without_one(tmp_path):
    path = tmp_path / "plain_variant.py"
    path.write_text(
        "import torch, pyro, pyro.distributions as dist\n"
        "def model(data, num_objects, **_):\n"
        "    x = data['x']\n"
        "    locs = pyro.sample('locs', dist.Normal(torch.zeros((), dtype=x.dtype), 10.0)"
        ".expand([num_objects, 3]).to_event(2))\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        z = pyro.sample('z', dist.Categorical(torch.ones(num_objects, dtype=x.dtype) / num_objects),"
        " infer={'enumerate': 'parallel'})\n"
        "        pyro.sample('x', dist.Normal(locs[z], 1.0).to_event(1), obs=x)\n")
    with pytest.raises(ModelError, match="closed-form"):
        fit_em(str(path), overlapping(), 3, mstep="closed")


def test_tol_none_runs_exactly_max_iter(well_separated):
    """``tol=None`` (benchmarks) never stops early and does not warn about max_iter."""
    data, _ = well_separated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit_em("baseline", data, 3, tol=None, max_iter=7)
    assert res.n_iter == 7 and len(res.trace) == 8 and not res.converged
