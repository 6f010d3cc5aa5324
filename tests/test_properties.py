"""Property-based checks (hypothesis) of the EM engine on random small problems.

(a) EM's guarantee: the log joint never decreases, on random data sets
    (N 2..30, D 1..3, K 1..min(4, N), random seeds, coordinate scales 1e-3..1e3,
    with and without duplicated points, from the usual start or with one object
    started far from the data so that re-seeding of empty components takes part),
    for the closed-form and the generic optimiser M-step.
(b) The E-step is exact: its posterior marginals, log evidence, log prior and
    pointwise log likelihood equal brute-force enumeration over all K^N
    assignment vectors (N <= 5, K <= 3), written with plain NumPy.

Everything is float64. ``derandomize=True`` makes the examples a fixed function
of the test code, so runs are reproducible; ``deadline=None`` because the first
example pays Pyro's warm-up.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metagen_ppl import EnumeratedModel, fit_em
from metagen_ppl.models import baseline

# (a) Relative slack of "never decreases", as in test_em.py: the log joint is a float64 sum
# of O(N) terms, rounding ~1e-16 * N * |term| << 1e-9 * |L| (|L| >= 1 is enforced by max()).
REL_SLACK = 1e-9
# (b) Both sides are float64 sums of at most 3^5 = 243 terms of size < 1e3: rounding ~1e-12.
ATOL = 1e-8


@st.composite
def mixture_data(draw):
    """A random small data set: ``(x (N, D) float64, K)``."""
    n = draw(st.integers(2, 30))
    d = draw(st.integers(1, 3))
    k = draw(st.integers(1, min(4, n)))
    seed = draw(st.integers(0, 2**31 - 1))
    k_true = draw(st.integers(1, 4))
    separation = draw(st.floats(0.0, 8.0))  # cluster spread in noise units
    log10_scale = draw(st.floats(-3.0, 3.0))
    duplicate = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k_true, d, generator=g, dtype=torch.float64) * separation
    z = torch.randint(k_true, (n,), generator=g)
    x = centres[z] + torch.randn(n, d, generator=g, dtype=torch.float64)
    if duplicate:  # the second half repeats the first
        half = n // 2
        x[n - half:] = x[:half]
    return x * 10.0 ** log10_scale, k


@settings(max_examples=80, deadline=None, derandomize=True)
@given(problem=mixture_data(), mstep=st.sampled_from(["closed", "optimizer"]),
       seed=st.integers(0, 1000), far_start=st.booleans())
def test_em_log_joint_never_decreases(problem, mstep, seed, far_start):
    x, k = problem
    init = None
    if far_start and k >= 2:
        # the last object starts far from every point: it empties, and the run exercises the
        # re-seeding of empty components (accepted moves must not lower the log joint either)
        locs = x[torch.arange(k) % x.shape[0]].clone()
        locs[-1] = x.abs().max() * 1e3 + 1.0
        init = {"locs": locs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # max_iter, re-seeded components
        # the optimiser M-step costs ~10x the closed form per iteration: fewer iterations
        res = fit_em("baseline", {"x": x}, k, seed=seed, mstep=mstep, optimizer_steps=10,
                     max_iter=30 if mstep == "closed" else 12, tol=1e-10, init=init)
    trace = np.asarray(res.trace)
    assert np.isfinite(trace).all()
    drops = trace[:-1] - trace[1:]
    slack = REL_SLACK * np.maximum(np.abs(trace[1:]), 1.0)
    assert (drops <= slack).all(), f"log joint decreased by {drops.max():.3g} at step {drops.argmax()}"
    assert res.log_joint == trace[-1]


# --------------------------------------------------------------------------- (b) brute force
def brute_force(x, locs, weights, sigma):
    """log p(x | theta), p(z_n = k | x, theta) (N, K) and log p(x_n | theta) over all K^N z."""
    n, d = x.shape
    k = len(weights)
    # log w_k + log N(x_n; mu_k, sigma^2 I), (N, K), by the textbook formula
    r2 = ((x[:, None, :] - locs[None, :, :]) ** 2).sum(-1)
    ll = np.log(weights)[None, :] - 0.5 * d * math.log(2 * math.pi) - d * math.log(sigma) - 0.5 * r2 / sigma ** 2
    joint = {z: sum(ll[i, zi] for i, zi in enumerate(z)) for z in itertools.product(range(k), repeat=n)}
    values = np.array(list(joint.values()))
    m = values.max()
    log_z = m + math.log(np.exp(values - m).sum())
    marg = np.zeros((n, k))
    for z, lj in joint.items():
        p = math.exp(lj - log_z)
        for i, zi in enumerate(z):
            marg[i, zi] += p
    pointwise = np.array([max(row) + math.log(np.exp(row - max(row)).sum()) for row in ll])
    return log_z, marg, pointwise


def log_prior(locs, weights, sigma, m0=0.0, s0=10.0, a=2.0, b=1.0):
    """log N(locs; m0, s0^2) + log Dirichlet(weights; 1) + log p(sigma), sigma^2 ~ IG(a, b)."""
    lp_locs = float((-0.5 * math.log(2 * math.pi) - math.log(s0) - 0.5 * ((locs - m0) / s0) ** 2).sum())
    lp_w = math.lgamma(len(weights))  # Dirichlet(1, ..., 1) is uniform: log (K - 1)!
    v = sigma ** 2
    lp_sigma = a * math.log(b) - math.lgamma(a) - (a + 1) * math.log(v) - b / v + math.log(2 * sigma)
    return lp_locs + lp_w + lp_sigma


@st.composite
def small_model(draw):
    n = draw(st.integers(1, 5))
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    sigma = draw(st.floats(0.3, 3.0))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0
    locs = torch.randn(k, d, generator=g, dtype=torch.float64) * 2.0
    w = torch.distributions.Dirichlet(torch.ones(k, dtype=torch.float64)).sample()
    w = (w + 1e-3) / (w + 1e-3).sum()  # keep log w_k of size < 10
    return x, {"locs": locs, "weights": w, "scale": torch.tensor(sigma, dtype=torch.float64)}


@settings(max_examples=150, deadline=None, derandomize=True)
@given(problem=small_model())
def test_estep_matches_brute_force_enumeration(problem):
    x, values = problem
    k = values["locs"].shape[0]
    em = EnumeratedModel(baseline.model, {"x": x}, k)
    est = em.estep(values)
    xs, locs, w, s = x.numpy(), values["locs"].numpy(), values["weights"].numpy(), float(values["scale"])
    log_z, marg, pointwise = brute_force(xs, locs, w, s)
    lp = log_prior(locs, w, s)
    assert abs(est.log_likelihood - log_z) <= ATOL
    assert abs(est.log_prior - lp) <= ATOL
    assert abs(est.log_joint - (log_z + lp)) <= ATOL
    assert est.marginals["z"].shape == marg.shape
    np.testing.assert_allclose(est.marginals["z"].numpy(), marg, rtol=0, atol=ATOL)
    np.testing.assert_allclose(em.pointwise_log_likelihood(values, "x").numpy(), pointwise, rtol=0, atol=ATOL)
