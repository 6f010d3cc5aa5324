"""Peer checks: the engine against independent implementations of the same quantities.

* the E-step's log joint and marginals against Pyro's own ``TraceEnum_ELBO`` (its loss with
  the parameters conditioned in and an empty guide is ``-log p(x, theta)``; its
  ``compute_marginals`` the posterior of every enumerated site);
* the baseline's log likelihood against ``pyro.distributions.MixtureOfDiagNormalsSharedCovariance``;
* Pyro's GMM tutorial, run as a user model file, against a direct high-precision maximisation
  (scipy) of its exact marginal log joint;
* scikit-learn's mixture tests that apply to MAP-EM: a monotone trace, warm start, best of
  ``n_init``, and the fixed point of ``K = 1``.

Everything is float64; every tolerance says where it comes from.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from scipy.optimize import brentq, minimize
from scipy.special import gammaln, logsumexp

from metagen_ppl import EnumeratedModel, fit_em, load_model
from metagen_ppl.engine.setup import initial_values

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_em import assert_non_decreasing, overlapping  # noqa: E402

F64 = torch.float64


def _random_values(spec, em, seed):
    """A random parameter point (the model's start for ``seed``, locations jittered off it)."""
    values = initial_values(spec, em, torch.Generator().manual_seed(seed), F64)
    g = torch.Generator().manual_seed(100 + seed)
    values["locs"] = values["locs"] + torch.randn(values["locs"].shape, generator=g, dtype=F64)
    if "weights" in values:
        w = torch.rand(values["weights"].shape, generator=g, dtype=F64) + 0.1
        values["weights"] = w / w.sum()
    return values


def _problems():
    g = torch.Generator().manual_seed(0)
    x = overlapping(n=40, sep=2.5)["x"]
    o = torch.randint(0, 3, (40,), generator=g)
    return [("baseline", {"x": x}, 3), ("categorical", {"x": x, "o": o, "num_categories": 3}, 2)]


# --------------------------------------------------------------------------- Pyro's TraceEnum_ELBO
@pytest.mark.parametrize("name,data,K", _problems(), ids=["baseline", "categorical"])
@pytest.mark.parametrize("seed", [0, 1])
def test_estep_equals_pyro_trace_enum_elbo(name, data, K, seed):
    """The baseline takes the engine's one-plate softmax path, the categorical model (three
    enumerated sites, two outside the plate) the generic contraction path."""
    spec = load_model(name)
    em = EnumeratedModel(spec.model, data, K, spec.default_options)
    values = _random_values(spec, em, seed)
    est = em.estep(values)
    conditioned = poutine.condition(spec.model, data=values)

    def guide(*args, **kwargs):  # every continuous site is conditioned: nothing left to guide
        pass

    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.loss(conditioned, guide, data, K, **em.options)
    # both are float64 sums of O(100) terms of size O(10): rounding ~1e-13; 1e-8 is the brief's bound
    assert -loss == pytest.approx(est.log_joint, abs=1e-8)
    marginals = elbo.compute_marginals(conditioned, guide, data, K, **em.options)
    assert set(marginals) == set(est.marginals)
    for site, d in marginals.items():
        support = d.enumerate_support(expand=False)  # (C, 1, ...) values
        probs = d.log_prob(support).exp()
        probs = probs.reshape(probs.shape[0], -1).T.reshape(est.marginals[site].shape)
        torch.testing.assert_close(probs, est.marginals[site], rtol=0, atol=1e-8)


# --------------------------------------------------------------------------- Pyro's mixture distribution
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baseline_log_likelihood_equals_pyro_mixture_distribution(seed):
    """The baseline is a mixture of isotropic normals with one shared scale: with coord_scale =
    scale * 1_D it is MixtureOfDiagNormalsSharedCovariance(locs, coord_scale, log weights)."""
    x = overlapping(n=50, sep=2.0, seed=seed)["x"]
    spec = load_model("baseline")
    em = EnumeratedModel(spec.model, {"x": x}, 3, spec.default_options)
    values = _random_values(spec, em, seed)
    est = em.estep(values)
    mix = dist.MixtureOfDiagNormalsSharedCovariance(
        values["locs"], values["scale"] * torch.ones(3, dtype=F64), torch.log(values["weights"]))
    ref = float(mix.log_prob(x).sum())
    # float64 sums of 50 terms of size ~10 computed two ways: 1e-8
    assert est.log_likelihood == pytest.approx(ref, abs=1e-8)
    pointwise = em.pointwise_log_likelihood(values, "x")
    torch.testing.assert_close(pointwise, mix.log_prob(x), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- Pyro's GMM tutorial
GMM_TUTORIAL = '''
"""Pyro's "Gaussian Mixture Model" tutorial model, as written there (float32 constants and all),
with its data passed as data["obs"] and K as num_objects."""
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import config_enumerate


@config_enumerate
def model(data, num_objects):
    data = data["obs"]
    K = num_objects
    # Global variables.
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))

    with pyro.plate("data", len(data)):
        # Local variables.
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)
'''

OBS = np.array([0.0, 1.0, 10.0, 11.0, 12.0])


def _tutorial_log_joint(w1, log_scale, m0, m1):
    """The exact marginal log joint of the tutorial (assignments summed out), in numpy."""
    w = np.array([1.0 - w1, w1])
    s = math.exp(log_scale)
    mu = np.array([m0, m1])
    comp = -0.5 * ((OBS[:, None] - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi) + np.log(w)
    log_lik = logsumexp(comp, axis=1).sum()
    log_p_w = gammaln(1.0) - 2 * gammaln(0.5) - 0.5 * np.log(w).sum()           # Dirichlet(0.5, 0.5)
    log_p_s = -log_scale - math.log(2.0) - 0.5 * math.log(2 * math.pi) - 0.5 * (log_scale / 2.0) ** 2
    log_p_mu = (-0.5 * (mu / 10.0) ** 2 - math.log(10.0) - 0.5 * math.log(2 * math.pi)).sum()
    return log_lik + log_p_w + log_p_s + log_p_mu


@pytest.fixture
def default_float64():
    """The tutorial's constants (``0.5 * torch.ones(K)``, ``LogNormal(0.0, 2.0)``) follow torch's default
    dtype; in float32 they round log(2), log(10) to ~3e-8 nats of the log joint (the engine warns)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_gmm_tutorial_reaches_the_exact_local_map(tmp_path, default_float64):
    path = tmp_path / "gmm_tutorial.py"
    path.write_text(GMM_TUTORIAL)
    obs = torch.tensor(OBS, dtype=F64)
    start = {"locs": [0.5, 11.0], "weights": [0.5, 0.5], "scale": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no precision warning, no stall
        res = fit_em(str(path), {"obs": obs}, 2, init=start, tol=1e-13, max_iter=1000)
    assert res.converged and not res.info["stalled"]
    w, s, locs = res.params["weights"], res.params["scale"], res.params["locs"]
    # the MAP of the density in the constrained coordinates (what EM maximises: log p(x, theta),
    # no Jacobian; the free coordinates only parametrise it), by scipy's BFGS to a gradient of 1e-12
    def neg(t):
        return -_tutorial_log_joint(1.0 / (1.0 + math.exp(-t[0])), t[1], t[2], t[3])

    ref = minimize(neg, [0.0, 0.0, 0.5, 11.0], method="BFGS", options={"gtol": 1e-12})
    w1, log_s, m0, m1 = 1.0 / (1.0 + math.exp(-ref.x[0])), ref.x[1], ref.x[2], ref.x[3]
    # the objective at both (measured: -17.443254879109, agreeing to 6e-13): flat at a maximum, so
    # this is the sharp check; 1e-9 leaves room for the reference's own optimiser
    assert res.log_joint == pytest.approx(-ref.fun, abs=1e-9)
    assert res.log_joint == pytest.approx(_tutorial_log_joint(float(w[1]), math.log(float(s)), *locs.tolist()),
                                          abs=1e-10)  # the same number by numpy: sums of 5 terms
    # parameters: an objective error d at curvature h gives sqrt(2 d / h) ~ 1e-5 (h ~ 10)
    np.testing.assert_allclose([float(w[1]), math.log(float(s)), *locs.tolist()], [w1, log_s, m0, m1],
                               rtol=0, atol=1e-5)
    # the interior mode of Dirichlet(0.5): w_k = (N_k - 0.5) / (N - 1) with N = (2, 3) (the
    # assignments are hard to ~1e-50 here): 0.375 / 0.625. The tutorial has no closed form, so the
    # generic LBFGS M-step finds it; it stops at a relative change of Q of 1e-12
    # (tolerance_change), i.e. sqrt(2e-12 |Q| / h) ~ 1e-6 in w at curvature h ~ 17: tolerance 1e-6
    torch.testing.assert_close(w, torch.tensor([0.375, 0.625], dtype=F64), rtol=0, atol=1e-6)
    # and a stationary point: the gradient of the exact log joint (torch) in the free coordinates
    t = torch.tensor([math.log(float(w[1] / w[0])), math.log(float(s)), *locs.tolist()], dtype=F64,
                     requires_grad=True)
    wt = torch.softmax(torch.stack([torch.zeros((), dtype=F64), t[0]]), 0)
    comp = torch.distributions.Normal(t[2:], t[1].exp()).log_prob(obs[:, None]) + wt.log()
    lj = (torch.logsumexp(comp, 1).sum() + torch.distributions.Dirichlet(torch.full((2,), 0.5, dtype=F64)).log_prob(wt)
          + torch.distributions.LogNormal(0.0, 2.0).log_prob(t[1].exp()).to(F64)
          + torch.distributions.Normal(0.0, 10.0).log_prob(t[2:]).sum())
    (grad,) = torch.autograd.grad(lj, t)
    # at the MAP; the EM stop (|dL| <= 1e-13 |L|) leaves a gradient of ~1e-6 at most
    assert float(grad.abs().max()) < 1e-5


# --------------------------------------------------------------------------- scikit-learn's mixture tests
@pytest.mark.parametrize("mstep,options", [("closed", {}), ("optimizer", {}),
                                           ("closed", {"weight_concentration": 0.7})])
def test_monotone_log_joint(mstep, options):
    """sklearn: test_monotonic_likelihood (for MAP-EM the log joint is the monotone quantity)."""
    data = overlapping(n=60, sep=2.5, seed=3)
    res = fit_em("baseline", data, 3, seed=0, mstep=mstep, tol=None, max_iter=25, options=options,
                 optimizer_steps=10)
    assert_non_decreasing(res.trace)
    assert res.trace[-1] > res.trace[0]


@pytest.mark.parametrize("mstep", ["closed", "optimizer"])
def test_warm_start_continues_a_fit(mstep):
    """sklearn: test_warm_start. fit_em(init=result.params) continues a fit: 1 + 1 iterations give
    exactly what 2 iterations give (the start's E-step is recomputed from the same values)."""
    data = overlapping(n=60, sep=3.0)
    kw = dict(seed=0, tol=None, mstep=mstep, optimizer_steps=10)
    one = fit_em("baseline", data, 3, max_iter=1, **kw)
    more = fit_em("baseline", data, 3, max_iter=1, init=one.params, **kw)
    two = fit_em("baseline", data, 3, max_iter=2, **kw)
    for name in two.params:
        assert torch.equal(more.params[name], two.params[name]), name  # the same float operations
    assert one.trace + more.trace[1:] == two.trace


def test_best_of_n_init():
    """sklearn: test_n_init. The returned fit is the restart with the largest final log joint."""
    data = overlapping(n=60, sep=3.0)
    res = fit_em("baseline", data, 4, seed=0, num_inits=5)
    scores = res.info["restart_log_joint"]
    assert len(scores) == 5 and max(scores) - min(scores) > 1.0  # the restarts really differ
    assert res.log_joint == max(scores) and res.trace[-1] == max(scores)
    # each restart is its own fit: restart 0 is the single fit with the same seed
    assert scores[0] == fit_em("baseline", data, 4, seed=0).log_joint


def test_k1_map_is_a_fixed_point_of_one_iteration():
    """sklearn: one component is fitted in one step. For K = 1 the MAP is the shrunk sample mean and
    the sample variance with the prior's counts: mu(s^2) = (S + r m0) / (N + r), r = s^2 / s0^2, and
    s^2 = (sum |x - mu|^2 + 2 b) / (D N + 2 a + 1), one equation in s^2 (solved by brentq)."""
    x = overlapping(n=50, sep=2.0)["x"]
    n, d = x.shape
    xs = x.numpy()
    m0, s0, a, b = 0.0, 10.0, 2.0, 1.0  # the baseline's default priors

    def mu_of(v):
        return (xs.sum(0) + v / s0 ** 2 * m0) / (n + v / s0 ** 2)

    def gap(v):
        return (((xs - mu_of(v)) ** 2).sum() + 2 * b) / (d * n + 2 * a + 1) - v

    v = brentq(gap, 1e-6, 100.0, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    start = {"locs": torch.tensor(mu_of(v), dtype=F64)[None], "weights": torch.ones(1, dtype=F64),
             "scale": torch.tensor(math.sqrt(v), dtype=F64)}
    res = fit_em("baseline", {"x": x}, 1, init=start, max_iter=1, tol=None)
    # one closed-form step from the MAP returns it: float64 rounding of sums of 150 terms ~1e-14
    torch.testing.assert_close(res.params["locs"], start["locs"], rtol=0, atol=1e-12)
    torch.testing.assert_close(res.params["scale"], start["scale"], rtol=0, atol=1e-12)
    assert res.trace[1] == pytest.approx(res.trace[0], abs=1e-10)
