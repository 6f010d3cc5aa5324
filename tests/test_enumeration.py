"""The generic E-step against brute-force posteriors computed by hand.

Every exact check runs in float64 and compares with a sum over *all* joint
assignments (K^N vectors for N = 4, K = 3, times the values of any global
discrete site), written with plain Python/NumPy arithmetic independent of Pyro.
Tolerance 1e-8 (absolute on log densities of size ~1e2, and on probabilities):
both sides are float64 sums of < 200 terms, so their rounding error is ~1e-13;
1e-8 leaves ample room while still catching any mis-contracted factor.
"""

from __future__ import annotations

import itertools
import math
import textwrap

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from metagen_ppl import DataError, EnumeratedModel, ModelError, fit_em, load_model
from metagen_ppl.models import baseline

ATOL = 1e-8  # see module docstring
D = 3


# --------------------------------------------------------------------------- hand-written densities
def log_normal_iso(x, mu, sigma):
    """log N(x; mu, sigma^2 I) for vectors x, mu (numpy)."""
    d = len(x)
    r2 = float(((np.asarray(x) - np.asarray(mu)) ** 2).sum())
    return -0.5 * d * math.log(2 * math.pi) - d * math.log(sigma) - 0.5 * r2 / sigma ** 2


def log_prior_baseline(locs, weights, sigma, m0=0.0, s0=10.0, alpha=1.0, a=2.0, b=1.0):
    """log p(locs) + log p(weights) + log p(sigma) of M1, by hand.

    sigma^2 ~ InverseGamma(a, b) so p(sigma) = IG(sigma^2; a, b) * 2 sigma.
    """
    locs = np.asarray(locs)
    weights = np.asarray(weights)
    k = len(weights)
    lp_locs = sum(-0.5 * math.log(2 * math.pi) - math.log(s0) - 0.5 * ((v - m0) / s0) ** 2
                  for v in locs.ravel())
    lp_w = (math.lgamma(k * alpha) - k * math.lgamma(alpha)
            + (alpha - 1) * float(np.log(weights).sum()))
    v = sigma ** 2
    lp_ig = a * math.log(b) - math.lgamma(a) - (a + 1) * math.log(v) - b / v
    lp_sigma = lp_ig + math.log(2 * sigma)
    return lp_locs + lp_w + lp_sigma


def logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def brute_force(x, k, log_complete, extra_values=(None,)):
    """Enumerate every (g, z) with z in K^N and g in ``extra_values``.

    ``log_complete(g, z)`` returns log p(x, z, g | theta) (no parameter prior).
    Returns log p(x | theta), the marginals p(z_n = k | x) as (N, K), the
    marginal of g (dict), and E[log p(x, z, g | theta)] under the posterior.
    """
    n = len(x)
    joint = {}
    for g in extra_values:
        for z in itertools.product(range(k), repeat=n):
            joint[(g, z)] = log_complete(g, z)
    log_z = logsumexp(list(joint.values()))
    marg = np.zeros((n, k))
    marg_g = {g: 0.0 for g in extra_values}
    expected = 0.0
    for (g, z), lj in joint.items():
        p = math.exp(lj - log_z)
        for i, zi in enumerate(z):
            marg[i, zi] += p
        marg_g[g] += p
        expected += p * lj
    return log_z, marg, marg_g, expected


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def tiny():
    """N = 4 points, K = 3 objects, float64; parameters away from any optimum."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, D, generator=g, dtype=torch.float64) * 2.0
    values = {
        "locs": torch.tensor([[0.5, -1.0, 0.0], [-1.5, 1.0, 2.0], [2.0, 0.3, -1.0]], dtype=torch.float64),
        "weights": torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
        "scale": torch.tensor(1.3, dtype=torch.float64),
    }
    return x, values


def baseline_complete(x, values):
    xs = x.numpy()
    locs = values["locs"].numpy()
    w = values["weights"].numpy()
    s = float(values["scale"])

    def log_complete(_g, z):
        return sum(math.log(w[zi]) + log_normal_iso(xs[i], locs[zi], s) for i, zi in enumerate(z))

    return log_complete


# --------------------------------------------------------------------------- baseline model
def test_estep_matches_brute_force(tiny):
    x, values = tiny
    em = EnumeratedModel(baseline.model, {"x": x}, 3)
    assert em.enum_sites == ["z"]
    assert set(em.sample_latents) == {"locs", "weights", "scale"}
    est = em.estep(values)

    log_lik, marg, _, _ = brute_force(x, 3, baseline_complete(x, values))
    log_prior = log_prior_baseline(values["locs"], values["weights"], float(values["scale"]))

    assert est.log_likelihood == pytest.approx(log_lik, abs=ATOL)
    assert est.log_prior == pytest.approx(log_prior, abs=ATOL)
    assert est.log_joint == pytest.approx(log_lik + log_prior, abs=ATOL)
    z = est.marginals["z"]
    assert z.shape == (4, 3)
    assert z.dtype == torch.float64
    np.testing.assert_allclose(z.numpy(), marg, rtol=0, atol=ATOL)
    np.testing.assert_allclose(z.sum(-1).numpy(), np.ones(4), rtol=0, atol=1e-12)  # float64 rounding


def test_q_at_estep_point_is_expected_complete_log_joint(tiny):
    x, values = tiny
    em = EnumeratedModel(baseline.model, {"x": x}, 3)
    est = em.estep(values)
    _, _, _, expected = brute_force(x, 3, baseline_complete(x, values))
    log_prior = log_prior_baseline(values["locs"], values["weights"], float(values["scale"]))
    q = em.q_value(values, est)
    assert float(q) == pytest.approx(expected + log_prior, abs=ATOL)
    # Gibbs' inequality: Q = log joint - H(posterior) <= log joint.
    assert float(q) <= est.log_joint + 1e-12


def test_q_is_differentiable_and_matches_brute_force_off_the_estep_point(tiny):
    """Q(theta' | theta) at theta' != theta: posterior weights of theta, log terms of theta'."""
    x, values = tiny
    em = EnumeratedModel(baseline.model, {"x": x}, 3)
    est = em.estep(values)
    new = dict(values)
    new["locs"] = (values["locs"] + 0.25).requires_grad_(True)
    new["scale"] = torch.tensor(0.9, dtype=torch.float64)
    q = em.q_value(new, est)
    q.backward()
    assert new["locs"].grad is not None and torch.isfinite(new["locs"].grad).all()

    _, marg, _, _ = brute_force(x, 3, baseline_complete(x, values))
    xs, locs2, w, s2 = x.numpy(), new["locs"].detach().numpy(), values["weights"].numpy(), 0.9
    q_hand = sum(marg[i, k] * (math.log(w[k]) + log_normal_iso(xs[i], locs2[k], s2))
                 for i in range(4) for k in range(3))
    q_hand += log_prior_baseline(locs2, w, s2)
    assert float(q.detach()) == pytest.approx(q_hand, abs=ATOL)


def test_pointwise_log_likelihood_closed_form_and_sum():
    """Per-point log p(x_n) = logsumexp_k (log w_k + log N(x_n; mu_k, s)); sums to the total."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, D, generator=g, dtype=torch.float64) * 3.0
    values = {
        "locs": torch.randn(4, D, generator=g, dtype=torch.float64) * 3.0,
        "weights": torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
        "scale": torch.tensor(0.8, dtype=torch.float64),
    }
    em = EnumeratedModel(baseline.model, {"x": x}, 4)
    est = em.estep(values)
    pw = em.pointwise_log_likelihood(values, "x")
    assert pw.shape == (40,)
    xs, locs, w, s = x.numpy(), values["locs"].numpy(), values["weights"].numpy(), 0.8
    hand = np.array([logsumexp([math.log(w[k]) + log_normal_iso(xs[i], locs[k], s) for k in range(4)])
                     for i in range(40)])
    np.testing.assert_allclose(pw.numpy(), hand, rtol=0, atol=ATOL)
    # Sum of 40 float64 terms of size ~10: rounding ~1e-13.
    assert float(pw.sum()) == pytest.approx(est.log_likelihood, abs=ATOL)
    # Per-point responsibilities in closed form, too.
    lj = np.array([[math.log(w[k]) + log_normal_iso(xs[i], locs[k], s) for k in range(4)] for i in range(40)])
    resp = np.exp(lj - hand[:, None])
    np.testing.assert_allclose(est.marginals["z"].numpy(), resp, rtol=0, atol=ATOL)


def test_fixed_options_remove_sites_from_estep(tiny):
    x, values = tiny
    em = EnumeratedModel(baseline.model, {"x": x}, 3, {"scale": 1.3, "weights": values["weights"]})
    assert em.sample_latents == ["locs"]
    est = em.estep({"locs": values["locs"]})
    log_lik, marg, _, _ = brute_force(x, 3, baseline_complete(x, values))
    assert est.log_likelihood == pytest.approx(log_lik, abs=ATOL)
    np.testing.assert_allclose(est.marginals["z"].numpy(), marg, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- a global enumerated site
SHIFT = torch.tensor([1.5, -0.5, 1.0], dtype=torch.float64)
FLIP_PROB = 0.3


def global_flip_model(data, num_objects, **_):
    """Mixture whose means all shift by ``SHIFT`` when a global coin ``flip`` is 1.

    ``flip`` lies outside the data plate; the assignment prior also depends on it
    (a (2, K) table of weights), so the posterior couples every point. Mixes a
    latent ``pyro.sample`` site (locs, MAP) with ``pyro.param`` sites.
    """
    x = data["x"]
    k = num_objects
    locs = pyro.sample("locs", dist.Normal(torch.zeros((), dtype=x.dtype), 10.0).expand([k, D]).to_event(2))
    wtab = pyro.param("wtab", torch.full((2, k), 1.0 / k, dtype=x.dtype), constraint=constraints.simplex)
    scale = pyro.param("scale", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    flip = pyro.sample("flip", dist.Bernoulli(torch.tensor(FLIP_PROB, dtype=x.dtype)),
                       infer={"enumerate": "parallel"})
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Categorical(wtab[flip.long()]), infer={"enumerate": "parallel"})
        mean = locs[z] + flip.unsqueeze(-1) * SHIFT
        pyro.sample("x", dist.Normal(mean, scale).to_event(1), obs=x)


@pytest.fixture
def flip_problem():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, D, generator=g, dtype=torch.float64) * 1.5
    values = {
        "locs": torch.tensor([[0.0, 0.5, -0.5], [1.0, -1.0, 1.0], [-1.0, 0.0, 0.8]], dtype=torch.float64),
        "wtab": torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]], dtype=torch.float64),
        "scale": torch.tensor(0.9, dtype=torch.float64),
    }
    return x, values


def flip_complete(x, values):
    xs = x.numpy()
    locs, wtab, s, shift = values["locs"].numpy(), values["wtab"].numpy(), float(values["scale"]), SHIFT.numpy()

    def log_complete(f, z):
        out = math.log(FLIP_PROB if f == 1 else 1 - FLIP_PROB)
        for i, zi in enumerate(z):
            out += math.log(wtab[f, zi]) + log_normal_iso(xs[i], locs[zi] + f * shift, s)
        return out

    return log_complete


def locs_prior(locs):
    return sum(-0.5 * math.log(2 * math.pi) - math.log(10.0) - 0.5 * (v / 10.0) ** 2
               for v in np.asarray(locs).ravel())


def test_global_enumerated_site_matches_brute_force(flip_problem):
    x, values = flip_problem
    em = EnumeratedModel(global_flip_model, {"x": x}, 3)
    assert set(em.enum_sites) == {"flip", "z"}
    assert em.sample_latents == ["locs"]
    assert set(em.param_latents) == {"wtab", "scale"}
    est = em.estep(values)

    log_lik, marg, marg_flip, expected = brute_force(x, 3, flip_complete(x, values), extra_values=(0, 1))
    lp = locs_prior(values["locs"])
    assert est.log_likelihood == pytest.approx(log_lik, abs=ATOL)
    assert est.log_prior == pytest.approx(lp, abs=ATOL)
    assert est.log_joint == pytest.approx(log_lik + lp, abs=ATOL)
    assert est.marginals["z"].shape == (4, 3)
    np.testing.assert_allclose(est.marginals["z"].numpy(), marg, rtol=0, atol=ATOL)
    flip = est.marginals["flip"].reshape(-1)
    assert flip.shape == (2,)
    np.testing.assert_allclose(flip.numpy(), [marg_flip[0], marg_flip[1]], rtol=0, atol=ATOL)
    # The posterior really is coupled: it differs from the prior of the coin.
    assert abs(marg_flip[1] - FLIP_PROB) > 1e-3

    q = em.q_value(values, est)
    assert float(q) == pytest.approx(expected + lp, abs=ATOL)
    # A global enumerated site makes the observations dependent: no pointwise likelihood.
    assert em.pointwise_log_likelihood(values, "x") is None


def test_global_site_log_evidence_is_differentiable(flip_problem):
    x, values = flip_problem
    em = EnumeratedModel(global_flip_model, {"x": x}, 3)
    locs = values["locs"].clone().requires_grad_(True)
    le = em.log_evidence({**values, "locs": locs})
    est = em.estep(values)
    assert float(le.detach()) == pytest.approx(est.log_joint, abs=ATOL)
    le.backward()
    # Fisher's identity: d log p(x)/d theta = d Q(theta | theta_old)/d theta at theta = theta_old.
    locs2 = values["locs"].clone().requires_grad_(True)
    em.q_value({**values, "locs": locs2}, est).backward()
    np.testing.assert_allclose(locs.grad.numpy(), locs2.grad.numpy(), rtol=0, atol=1e-8)


# --------------------------------------------------------------------------- unsupported models
def no_discrete_model(data, num_objects, **_):
    x = data["x"]
    loc = pyro.sample("loc", dist.Normal(torch.zeros(D, dtype=x.dtype), 10.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def poisson_latent_model(data, num_objects, **_):
    x = data["x"]
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=x.dtype), 1.0))
    with pyro.plate("data", x.shape[0]):
        count = pyro.sample("hidden_count", dist.Poisson(rate))
        pyro.sample("x", dist.Normal(count.unsqueeze(-1), 1.0).to_event(1), obs=x)


def test_model_without_discrete_site_raises():
    x = torch.zeros(5, D, dtype=torch.float64)
    with pytest.raises(ModelError, match="no enumerable discrete latent site"):
        EnumeratedModel(no_discrete_model, {"x": x}, 2)


def test_poisson_latent_raises_naming_site():
    x = torch.zeros(5, D, dtype=torch.float64)
    with pytest.raises(ModelError, match="hidden_count") as info:
        EnumeratedModel(poisson_latent_model, {"x": x}, 2)
    assert "Poisson" in str(info.value)


def test_fit_em_rejects_unsupported_model(tmp_path):
    path = tmp_path / "poisson_variant.py"
    path.write_text(textwrap.dedent('''
        import torch, pyro, pyro.distributions as dist

        def model(data, num_objects, **_):
            x = data["x"]
            with pyro.plate("data", x.shape[0]):
                n = pyro.sample("n_hits", dist.Poisson(torch.tensor(3.0, dtype=x.dtype)))
                pyro.sample("x", dist.Normal(n.unsqueeze(-1), 1.0).to_event(1), obs=x)
    '''))
    x = torch.zeros(5, D, dtype=torch.float64)
    with pytest.raises(ModelError, match="n_hits"):
        fit_em(str(path), {"x": x}, 2)


# --------------------------------------------------------------------------- models by file path / name
USER_MODEL = '''
"""A user variant: the baseline with a fixed, known noise scale of 0.5."""
import torch
import pyro
import pyro.distributions as dist

def model(data, num_objects, **_):
    x = data["x"]
    k = int(num_objects)
    locs = pyro.sample("locs", dist.Normal(torch.zeros((), dtype=x.dtype), 10.0).expand([k, 3]).to_event(2))
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Categorical(torch.full((k,), 1.0 / k, dtype=x.dtype)),
                        infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], 0.5).to_event(1), obs=x)
'''


@pytest.mark.filterwarnings("ignore:EM stopped at max_iter")
def test_model_loaded_by_path_runs_estep_and_em(tmp_path, well_separated):
    path = tmp_path / "my_variant.py"
    path.write_text(USER_MODEL)
    spec = load_model(str(path))
    assert spec.name == "my_variant"
    assert spec.closed_form_mstep is None and spec.initialize is None

    # E-step of the file model equals the baseline's with the same fixed options.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, D, generator=g, dtype=torch.float64)
    locs = torch.randn(3, D, generator=g, dtype=torch.float64)
    est_user = EnumeratedModel(spec.model, {"x": x}, 3).estep({"locs": locs})
    w = torch.full((3,), 1 / 3, dtype=torch.float64)
    est_base = EnumeratedModel(baseline.model, {"x": x}, 3, {"scale": 0.5, "weights": w}).estep({"locs": locs})
    assert est_user.log_joint == pytest.approx(est_base.log_joint, abs=ATOL)
    np.testing.assert_allclose(est_user.marginals["z"].numpy(), est_base.marginals["z"].numpy(),
                               rtol=0, atol=ATOL)

    # And the whole EM loop (generic optimiser M-step only, prior-draw start: the file
    # registers no hooks) runs on it by path; a few iterations suffice to show that.
    data, _ = well_separated
    res = fit_em(str(path), data, 3, seed=0, max_iter=10)
    assert res.model == "my_variant"
    assert set(res.params) == {"locs"}
    assert res.posteriors["z"].shape == (data["x"].shape[0], 3)
    tr = np.asarray(res.trace)
    assert (np.diff(tr) >= -1e-9 * np.abs(tr[1:])).all()  # GEM: monotone up to float64 rounding


def test_unknown_model_name_raises():
    with pytest.raises(ModelError, match="unknown model 'no_such_model'"):
        load_model("no_such_model")
    x = torch.zeros(5, D, dtype=torch.float64)
    with pytest.raises(ModelError, match="unknown model"):
        fit_em("no_such_model", {"x": x}, 2)


def test_missing_model_file_and_file_without_model_raise(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "absent.py"))
    empty = tmp_path / "empty_variant.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ModelError, match="defines no function"):
        load_model(str(empty))
    broken = tmp_path / "broken_variant.py"
    broken.write_text("import this_module_does_not_exist\n")
    with pytest.raises(ModelError, match="failed to import"):
        load_model(str(broken))


def test_builtin_name_resolves():
    spec = load_model("baseline")
    assert spec.model is baseline.model
    assert spec.closed_form_mstep is baseline.closed_form_mstep


def test_bad_data_raises_data_error_not_model_error():
    with pytest.raises(DataError):
        fit_em("baseline", {"x": torch.zeros(5, dtype=torch.float64)}, 2)


# --------------------------------------------------------------------------- size-1 dimensions
# Pyro's packing drops dims of size 1, which both an assignment with a single value (K = 1)
# and a plate of a single observation (N = 1) produce. The E-step must still return
# (N, K)-shaped marginals and the exact evidence.
def test_estep_single_object_k1(tiny):
    x, values = tiny
    one = {"locs": values["locs"][:1], "weights": torch.ones(1, dtype=torch.float64),
           "scale": values["scale"]}
    em = EnumeratedModel(baseline.model, {"x": x}, 1)
    est = em.estep(one)
    log_lik, marg, _, _ = brute_force(x, 1, baseline_complete(x, one))
    assert est.log_likelihood == pytest.approx(log_lik, abs=ATOL)
    assert est.marginals["z"].shape == (4, 1)
    np.testing.assert_allclose(est.marginals["z"].numpy(), marg, rtol=0, atol=ATOL)
    pw = em.pointwise_log_likelihood(one, "x")
    assert pw.shape == (4,)
    assert float(pw.sum()) == pytest.approx(log_lik, abs=ATOL)
    assert float(em.q_value(one, est).detach()) == pytest.approx(est.log_joint, abs=ATOL)  # H = 0


def test_estep_single_observation_n1(tiny):
    x, values = tiny
    x1 = x[:1]
    em = EnumeratedModel(baseline.model, {"x": x1}, 3)
    est = em.estep(values)
    log_lik, marg, _, _ = brute_force(x1, 3, baseline_complete(x1, values))
    assert est.log_likelihood == pytest.approx(log_lik, abs=ATOL)
    assert est.marginals["z"].shape == (1, 3)
    np.testing.assert_allclose(est.marginals["z"].numpy(), marg, rtol=0, atol=ATOL)
    pw = em.pointwise_log_likelihood(values, "x")
    assert pw.shape == (1,)
    assert float(pw[0]) == pytest.approx(log_lik, abs=ATOL)
