"""SVI and MCMC baselines on the same model function, label alignment, arviz conversion.

Problems are small (N = 150-200, K = 3, float64) so the whole file runs in
seconds of sampler time; the MCMC fit is shared by every MCMC test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from metagen_ppl import DataError, EnumeratedModel, MetagenError, fit_em
from metagen_ppl.engine.align import align_samples, location_error, match, permutation_to
from metagen_ppl.engine.mcmc import fit_mcmc
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.models import baseline

SVI_STEPS = 200


@pytest.fixture(scope="module")
def em_fit(well_separated):
    data, _ = well_separated
    return fit_em("baseline", data, 3, seed=0)


@pytest.fixture(scope="module")
def svi_map_fit(well_separated):
    data, _ = well_separated
    return fit_svi("baseline", data, 3, guide="delta", num_steps=SVI_STEPS, lr=0.05, seed=0)


@pytest.fixture(scope="module")
def svi_normal_fit(well_separated):
    data, _ = well_separated
    return fit_svi("baseline", data, 3, guide="normal", num_steps=SVI_STEPS, lr=0.05, seed=0,
                   num_posterior_samples=50)


@pytest.fixture(scope="module")
def mcmc_problem(sim_scene):
    # N = 200 detections of K = 3 objects, noise 1; the noise scale is fixed (an option)
    # to keep NUTS cheap: it samples locations (9 dims) and weights (2 free dims).
    data, truth = sim_scene(3, 200, seed=2, scale=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz's R-hat shape notes on short chains
        fit = fit_mcmc("baseline", data, 3, num_samples=60, warmup_steps=60, num_chains=2, seed=0,
                       options={"scale": 1.0})
    return data, truth, fit


# --------------------------------------------------------------------------- SVI
def test_svi_map_agrees_with_em(em_fit, svi_map_fit, hungarian):
    e, s = em_fit, svi_map_fit
    assert s.method == "svi-map"
    assert len(s.trace) == SVI_STEPS and s.n_iter == SVI_STEPS
    # Both start from the same k-means++ point and AutoDelta + TraceEnum_ELBO is the exact
    # (noise-free) log joint, so SVI-MAP is deterministic Adam ascent on EM's objective.
    # Adam moves each coordinate by at most ~lr per step and lr decays to 0.005, so SVI
    # sits within ~0.005 of EM's mode.
    perm, err = hungarian(s.params["locs"], e.params["locs"])
    assert (perm == np.arange(3)).all()  # same start, same labels
    assert err.max() < 5e-3
    torch.testing.assert_close(s.params["weights"], e.params["weights"], rtol=0, atol=5e-3)
    torch.testing.assert_close(s.params["scale"], e.params["scale"], rtol=0, atol=5e-3)
    # Curvature of the log joint in a location is N_k / sigma^2 ~ 50; 11 coordinates off by
    # <= 5e-3 cost at most ~0.5 * 50 * 11 * 2.5e-5 ~ 7e-3 nats.
    assert s.log_joint <= e.log_joint + 1e-6  # EM found the mode; SVI cannot beat it
    assert s.log_joint == pytest.approx(e.log_joint, abs=1e-2)
    # The final ELBO of a delta guide is the log joint at its point (to float rounding).
    assert s.trace[-1] == pytest.approx(s.log_joint, abs=1e-3)
    assert s.converged


def test_svi_log_likelihood_is_computed_like_em(svi_map_fit, well_separated):
    data, _ = well_separated
    est = EnumeratedModel(baseline.model, data, 3).estep(svi_map_fit.params)
    assert svi_map_fit.log_likelihood == pytest.approx(est.log_likelihood, abs=1e-9)  # same float64 code
    torch.testing.assert_close(svi_map_fit.posteriors["z"], est.marginals["z"], rtol=0, atol=1e-12)


def test_svi_autonormal_runs(svi_normal_fit, em_fit, well_separated):
    s, e = svi_normal_fit, em_fit
    data, truth = well_separated
    assert s.method == "svi-normal"
    assert len(s.trace) == SVI_STEPS
    assert all(np.isfinite(s.trace))
    assert set(s.samples) == {"locs", "weights", "scale"}
    assert s.samples["locs"].shape == (1, 50, 3, 3)
    # The guide's median is fitted by single-draw (noisy) ELBO gradients; it lands within a
    # fraction of the posterior sd sigma / sqrt(N_k) ~ 0.14 of the mode: allow 0.1.
    torch.testing.assert_close(s.params["locs"], e.params["locs"], rtol=0, atol=0.1)
    # Mean-field spread of a location ~ sigma / sqrt(N_k) (exact for a conjugate Gaussian
    # mean); estimated from 50 draws (+-10%) with a still-moving guide: accept a factor of 2.
    nk = truth["z"].bincount(minlength=3).double()
    expected = (truth["scale"] / nk.sqrt()).unsqueeze(-1)
    perm = permutation_to(s.params["locs"], truth["locs"])
    ratio = s.samples["locs"][0].std(0)[perm] / expected
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio
    assert (s.samples["scale"] > 0).all()
    torch.testing.assert_close(s.samples["weights"].sum(-1), torch.ones(1, 50, dtype=torch.float64))


def test_svi_bad_input():
    x = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(MetagenError, match="guide"):
        fit_svi("baseline", {"x": x}, 2, guide="flow", num_steps=1)
    with pytest.raises(DataError):
        fit_svi("baseline", {"x": x}, 11, num_steps=1)
    x[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        fit_svi("baseline", {"x": x}, 2, num_steps=1)


# --------------------------------------------------------------------------- MCMC
def test_mcmc_posterior_mean_near_truth(mcmc_problem, hungarian):
    data, truth, fit = mcmc_problem
    assert fit.method == "mcmc"
    assert fit.samples["locs"].shape == (2, 60, 3, 3)
    assert set(fit.samples) == {"locs", "weights"}
    assert fit.n_iter == 120
    perm, err = hungarian(fit.params["locs"], truth["locs"])
    nk = truth["z"].bincount(minlength=3).numpy()
    # The posterior mean of mu_k is the MAP up to O(1/N) and errs like an average of N_k
    # noise-1 points: |err_k|^2 N_k ~ chi^2_3 (99.99% quantile ~21), so |err_k| < 5/sqrt(N_k);
    # 120 correlated draws add a Monte Carlo error well below that.
    assert (err < 5.0 / np.sqrt(nk)).all(), (err, 5.0 / np.sqrt(nk))
    # Weights: sd of the posterior mean around the truth ~ sqrt(w(1-w)/N) <= 0.035; 0.12 ~ 3.5 sd.
    w = fit.params["weights"].numpy()[perm]
    np.testing.assert_allclose(w, truth["weights"].numpy(), atol=0.12)


def test_mcmc_posterior_spread_and_alignment(mcmc_problem):
    data, truth, fit = mcmc_problem
    locs = fit.samples["locs"]
    # After alignment every draw's objects sit next to the posterior mean's objects: the
    # posterior sd is ~0.1-0.2 and the objects are >= 7.8 apart, so a label switch would show
    # up as a jump of several units.
    dist = (locs - fit.params["locs"]).norm(dim=-1)
    assert float(dist.max()) < 1.5
    # Both chains describe the same (aligned) posterior.
    m0, m1 = locs[0].mean(0), locs[1].mean(0)
    assert float((m0 - m1).norm(dim=-1).max()) < 0.3
    # Posterior sd of a location ~ sigma / sqrt(N_k) (conjugate Gaussian mean); 120 correlated
    # draws estimate it to ~+-20%: accept a factor of 2.
    nk = torch.bincount(truth["z"], minlength=3).double()
    perm = permutation_to(fit.params["locs"], truth["locs"])
    sd = locs.reshape(-1, 3, 3).std(0)
    expected = (1.0 / nk.sqrt()).unsqueeze(-1)
    ratio = sd[perm] / expected
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio
    assert 0 <= fit.info["label_switched_draws"] <= fit.n_iter
    # The posterior mean cannot have a higher log joint than EM's mode (same fixed options).
    em = fit_em("baseline", data, 3, seed=0, options={"scale": 1.0})
    assert fit.log_joint <= em.log_joint + 1e-6
    # Per-draw log joints are finite and the mean is close to the mode's (~11 dims / 2 below it).
    lj = np.asarray(fit.trace)
    assert lj.shape == (120,) and np.isfinite(lj).all()
    assert em.log_joint - 20 < lj.mean() < em.log_joint


def test_mcmc_bad_input():
    x = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(MetagenError):
        fit_mcmc("baseline", {"x": x}, 2, num_samples=0)
    with pytest.raises(DataError):
        fit_mcmc("baseline", {"x": x}, 0)


# --------------------------------------------------------------------------- label alignment
def test_align_samples_undoes_label_switching():
    g = torch.Generator().manual_seed(0)
    k, chains, draws = 4, 2, 30
    centres = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]],
                           dtype=torch.float64)
    base_w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    orig_locs = centres + 0.2 * torch.randn(chains, draws, k, 3, generator=g, dtype=torch.float64)
    orig_w = base_w + 0.01 * torch.randn(chains, draws, k, generator=g, dtype=torch.float64)
    orig_scale = 1.0 + 0.01 * torch.randn(chains, draws, generator=g, dtype=torch.float64)
    # Scramble labels draw by draw (the same permutation for every object-indexed site).
    perms = torch.stack([torch.stack([torch.randperm(k, generator=g) for _ in range(draws)])
                         for _ in range(chains)])
    idx = perms.unsqueeze(-1).expand(chains, draws, k, 3)
    switched = {"locs": orig_locs.gather(2, idx), "weights": orig_w.gather(2, perms),
                "scale": orig_scale.clone()}
    aligned, n_switched = align_samples(switched, baseline.COMPONENT_SITES, "locs")
    assert aligned["locs"].shape == switched["locs"].shape
    # One common labelling q for all draws: aligned[c, d] == orig[c, d][q] exactly.
    q = permutation_to(aligned["locs"][0, 0], orig_locs[0, 0])
    q_inv = torch.argsort(q)
    assert torch.equal(aligned["locs"], orig_locs[:, :, q_inv])
    assert torch.equal(aligned["weights"], orig_w[:, :, q_inv])  # weights follow their objects
    assert torch.equal(aligned["scale"], orig_scale)  # non-component sites untouched
    assert 0 < n_switched <= chains * draws
    # The inputs are not modified in place.
    assert torch.equal(switched["locs"], orig_locs.gather(2, idx))


def test_location_error_and_match_are_permutation_invariant():
    truth = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], dtype=torch.float64)
    shift = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.3]], dtype=torch.float64)
    est = (truth + shift)[[2, 0, 1]]
    assert location_error(est, truth) == pytest.approx(0.2, abs=1e-12)  # mean of 0.1, 0.2, 0.3
    perm = permutation_to(est, truth)
    torch.testing.assert_close(est[perm], truth + shift)
    rows, cols = match(est[:2], truth)  # fewer estimates than objects
    assert len(rows) == 2
    assert location_error(torch.zeros(0, 3), truth) != location_error(torch.zeros(0, 3), truth)  # NaN


# --------------------------------------------------------------------------- arviz
def _check_idata(idata, chains, draws, n):
    assert "posterior" in idata.groups()
    assert "log_likelihood" in idata.groups()
    ll = idata.log_likelihood["x"]
    assert ll.shape == (chains, draws, n)
    assert ll.dims[:2] == ("chain", "draw")
    assert np.isfinite(ll.values).all()
    assert idata.posterior["locs"].shape == (chains, draws, 3, 3)
    assert "observed_data" in idata.groups()


def test_em_and_svi_convert_to_inference_data(em_fit, svi_map_fit, svi_normal_fit, well_separated):
    data, _ = well_separated
    n = data["x"].shape[0]
    for fit in (em_fit, svi_map_fit):
        idata = fit.to_inference_data()
        _check_idata(idata, 1, 1, n)
        # The single draw's pointwise log likelihood sums to the reported value.
        assert float(idata.log_likelihood["x"].sum()) == pytest.approx(fit.log_likelihood, abs=1e-8)
    idata = svi_normal_fit.to_inference_data()
    _check_idata(idata, 1, 50, n)


def test_mcmc_converts_to_inference_data(mcmc_problem):
    import arviz as az

    data, _, fit = mcmc_problem
    idata = fit.to_inference_data()
    _check_idata(idata, 2, 60, data["x"].shape[0])
    assert idata.sample_stats["lp"].shape == (2, 60)
    # The log-likelihood group is usable by arviz's own tools.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    # elpd_loo <= sum over points of log mean_draws p(x_n | draw), up to Pareto smoothing noise.
    ll = idata.log_likelihood["x"].values.reshape(-1, data["x"].shape[0])
    lppd = float((np.logaddexp.reduce(ll, axis=0) - np.log(ll.shape[0])).sum())
    assert loo.elpd_loo <= lppd + 1e-6


@pytest.mark.parametrize("init_chains, expected", [("first", [True, False, False]), ("all", [True, True, True])])
def test_mcmc_init_chains(monkeypatch, well_separated, init_chains, expected):
    """``init`` starts the first chain only (dispersed starts) or every chain (one mode)."""
    import metagen_ppl.engine.mcmc as mcmc_mod

    data, truth = well_separated
    got = []
    real = mcmc_mod.initial_values

    def spy(spec, em, gen, dtype, init=None):
        got.append(init is not None)
        return real(spec, em, gen, dtype, init)

    monkeypatch.setattr(mcmc_mod, "initial_values", spy)
    init = {"locs": torch.as_tensor(truth["locs"], dtype=torch.float64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_mcmc("baseline", data, 3, num_samples=4, warmup_steps=2, num_chains=3, max_tree_depth=2, init=init,
                 init_chains=init_chains)
    assert got == expected
    with pytest.raises(MetagenError, match="unknown init_chains"):
        fit_mcmc("baseline", data, 3, init_chains="some")
