"""The layer around EM is as generic as EM (issue 11, part A).

* weights under a Dirichlet prior of concentration < 1: the interior local mode, or a
  named error where none exists; never a boundary weight or a +inf log joint;
* a stalled M-step (the optimiser kept the old point) is not convergence;
* float32 expanded squared distances clamped at 0 (with a warning);
* a constant in another precision reported at bind time, and a result never lost after the fit;
* ``log_likelihood`` is log p(all observed sites | theta), split by site in ``info``;
* a batch of categoricals declared with ``to_event`` gets a message that says so.

Data are float64 unless a test is about float32.
"""

from __future__ import annotations

import math
import sys
import os
import warnings

import pytest
import torch

from metagen_ppl import EnumeratedModel, ModelError, fit_em, load_model
from metagen_ppl.engine.distributions import IsotropicNormal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_em import overlapping  # noqa: E402
from test_peer_checks import GMM_TUTORIAL  # noqa: E402  (Pyro's GMM tutorial model: one copy)

F64 = torch.float64

#: Five points on a line, two groups ({0, 1} and {10, 11, 12}); used with K = 2 (an interior mode
#: exists: N_k + a - 1 = 1.5, 2.5 > 0) and K = 3 (some starts empty a component below 1 - a).
FIVE = torch.tensor([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0], [12, 0, 0]], dtype=F64)
HALF = {"weight_concentration": 0.5}
#: A start for K = 3 whose third component is far from every point: its expected count is ~0 <= 1 - a.
FAR_THIRD = {"locs": torch.tensor([[0.5, 0, 0], [11, 0, 0], [40, 0, 0]], dtype=F64)}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- 1. concentration < 1
def test_concentration_below_one_returns_the_interior_mode():
    """With every N_k + a - 1 > 0 the closed form is w_k ∝ N_k + a - 1 (not N_k + a - 1 clamped)."""
    init = {"locs": torch.tensor([[0.5, 0, 0], [11, 0, 0]], dtype=F64)}
    res = fit_em("baseline", {"x": FIVE}, 2, options=HALF, init=init, tol=1e-12)
    assert res.converged and math.isfinite(res.log_joint)
    nk = res.posteriors["z"].sum(0)
    # w_k = (N_k + a - 1) / (N + K (a - 1)): float64 arithmetic on numbers of size ~1, so 1e-12
    torch.testing.assert_close(res.params["weights"], (nk - 0.5) / (5 - 1.0), rtol=0, atol=1e-12)
    assert res.params["weights"].min() > 0.3  # (2 - 0.5) / 4 = 0.375


def test_no_interior_mode_stops_with_an_error_naming_site_concentration_and_fix():
    """A component of K = 3 holds N_k ~ 0 <= 1 - a: before, the closed form put its weight at
    exactly 0 and the next E-step blamed the data ("check the data for NaN/inf")."""
    with pytest.raises(ModelError) as info:
        fit_em("baseline", {"x": FIVE}, 3, seed=0, options=HALF, init=FAR_THIRD)
    msg = str(info.value)
    assert "'weights'" in msg and "0.5" in msg
    assert "concentration >= 1" in msg and "lower K" in msg and "AutoNormal" in msg and "MCMC" in msg
    assert "NaN" not in msg
    from metagen_ppl.engine.mstep import NoInteriorModeError
    assert isinstance(info.value, NoInteriorModeError)


@pytest.mark.parametrize("mstep", ["auto", "optimizer"])
def test_restarts_never_prefer_a_boundary_weight(mstep):
    """Before, the optimiser M-step walked to a weight of 6e-309, where the log joint is +312 (the
    Dirichlet(0.5) density grows without bound), and the restart driver preferred it to the
    interior modes at -39.6. Now that restart is dropped (named), the others compete."""
    with pytest.warns(RuntimeWarning, match="without an interior mode"):
        res = fit_em("baseline", {"x": FIVE}, 3, seed=0, num_inits=3, mstep=mstep, options=HALF,
                     init=FAR_THIRD)  # restart 0 only (init_restarts="first")
    assert math.isfinite(res.log_joint) and res.log_joint < 0
    assert float(res.params["weights"].min()) > 1e-3
    scores = res.info["restart_log_joint"]
    assert math.isnan(scores[0]) and res.info["restarts_without_mode"][0][0] == 0
    assert res.log_joint == max(s for s in scores if math.isfinite(s))


def test_optimizer_mstep_refuses_to_walk_to_the_boundary():
    """The generic M-step on its own (no EM loop around it) checks the weights before optimising."""
    from metagen_ppl.engine.mstep import NoInteriorModeError, optimizer_mstep, simplex_log_coefficients
    spec = load_model("baseline")
    em = EnumeratedModel(spec.model, {"x": FIVE}, 3, dict(spec.default_options, **HALF))
    values = {"locs": FAR_THIRD["locs"],
              "weights": torch.tensor([0.4, 0.5, 0.1], dtype=F64), "scale": torch.tensor(1.0, dtype=F64)}
    est = em.estep(values)
    # the measured coefficients of Q in log w are N_k + a - 1 (generic: read off Q's gradient)
    c = simplex_log_coefficients(em, values, est, "weights")
    nk = est.marginals["z"].sum(0)
    torch.testing.assert_close(c, nk - 0.5, rtol=0, atol=1e-9)  # gradients of a ~1e1 float64 sum
    assert float(c[2]) < 0  # the far component holds ~0 points: no interior maximum
    with pytest.raises(NoInteriorModeError, match="'weights'"):
        optimizer_mstep(em, values, est, list(em.latents))


def test_boundary_weight_gives_a_plus_inf_message_naming_the_site():
    spec = load_model("baseline")
    em = EnumeratedModel(spec.model, {"x": FIVE}, 2, dict(spec.default_options, **HALF))
    values = {"locs": torch.tensor([[0.5, 0, 0], [11, 0, 0]], dtype=F64),
              "weights": torch.tensor([0.0, 1.0], dtype=F64), "scale": torch.tensor(1.0, dtype=F64)}
    with pytest.raises(ModelError, match=r"\+inf.*'weights'"):
        em.estep(values)




def test_gmm_tutorial_from_a_prior_draw_never_returns_the_infinite_density(tmp_path):
    """Pyro's GMM tutorial (Dirichlet(0.5)) from a start with a far component. Before, EM returned a
    weight of 2.2e-16 and log joint -8.63 from it (from the prior draw of seed 0: 2e-308 and +327.5),
    both "converged" and both above the interior mode's -17.44; now the collapsing start is an error."""
    path = _write(tmp_path, "gmm_tutorial.py", GMM_TUTORIAL)
    obs = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0], dtype=F64)
    # its float32 constants in a float64 fit: named, with the fix (they cost ~3e-8 nats here)
    with pytest.raises(ModelError, match="no interior local mode"), \
            pytest.warns(RuntimeWarning, match=r"scale\.scale \(float32\).*set_default_dtype"):
        fit_em(path, {"obs": obs}, 2, seed=0, init={"locs": [6.0, 40.0], "weights": [0.5, 0.5], "scale": 5.0})


# --------------------------------------------------------------------------- 2. stalls
def test_stalled_optimizer_is_not_convergence():
    """Adam (10 steps a M-step) overshoots near the optimum, the GEM guard keeps the old point, the
    log joint changes by exactly 0: before, converged=True 0.030 nats short of the closed form."""
    data = overlapping(n=45, sep=3.5)
    closed = fit_em("baseline", data, 3, seed=0, mstep="closed", tol=1e-12, max_iter=500)
    with pytest.warns(RuntimeWarning, match="stalled.*optimizer_steps"):
        res = fit_em("baseline", data, 3, seed=0, mstep="optimizer", optimizer="adam", optimizer_steps=10)
    assert not res.converged
    assert res.info["stalled"] and res.info["stalled_iteration"] == res.n_iter
    assert res.n_iter in res.info["mstep_rejected"]
    assert closed.log_joint - res.log_joint > 1e-3  # really short (measured 0.0297 nats)


def test_lbfgs_convergence_is_not_a_stall():
    data = overlapping(n=45, sep=3.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = fit_em("baseline", data, 3, seed=0, mstep="optimizer", tol=1e-12, max_iter=300)
    assert res.converged and not res.info["stalled"] and "stalled_iteration" not in res.info


def test_optimizer_mstep_record_tells_stall_from_stationary():
    from metagen_ppl.engine.mstep import optimizer_mstep
    data = overlapping(n=45, sep=3.5)
    spec = load_model("baseline")
    em = EnumeratedModel(spec.model, data, 3, spec.default_options)
    fixed = fit_em("baseline", data, 3, seed=0, mstep="closed", tol=1e-14, max_iter=2000)
    # at EM's fixed point the gradient of Q is ~0: whatever the optimiser does, it is not a stall
    rec = {}
    optimizer_mstep(em, fixed.params, em.estep(fixed.params), list(em.latents), record=rec)
    assert rec["stalled"] is False
    # far from it, Adam with a huge step makes Q worse: the old point is kept, and that is a stall
    start = {"locs": torch.zeros(3, 3, dtype=F64) + torch.arange(3.0, dtype=F64)[:, None],
             "weights": torch.full((3,), 1 / 3, dtype=F64), "scale": torch.tensor(1.0, dtype=F64)}
    rec = {}
    out = optimizer_mstep(em, start, em.estep(start), ["locs"], optimizer="adam", steps=3, lr=50.0, record=rec)
    assert rec["accepted"] is False and rec["stalled"] is True and rec["grad"] > 1e-3
    assert out is start


def test_run_em_reports_a_stall_of_any_steps_object():
    from metagen_ppl.engine.em import EMSteps, run_em
    from metagen_ppl.engine.enumeration import EStep

    class Stuck(EMSteps):
        def estep(self, values):
            return EStep(log_joint=-1.0, log_likelihood=-1.0, log_prior=0.0, marginals={}, weights={})

        def mstep(self, values, est, iteration):
            return values, False

        def mstep_stalled(self):
            return True

    run = run_em(Stuck(), {}, tol=1e-6, max_iter=10)
    assert not run.converged and run.stalled == 1
    assert EMSteps().mstep_stalled() is False  # the default: models' own steps are unaffected


# --------------------------------------------------------------------------- 3. float32 distances
def _far_pairs(seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(2, 3, generator=g, dtype=F64) * 30
    x = c[torch.arange(100) % 2] + 1e-6 * torch.randn(100, 3, generator=g, dtype=F64)
    return c, x


def test_float32_expanded_distance_never_exceeds_the_maximum_density():
    """Scale 1e-4 next to locations ~30 apart: the expansion |x|^2 - 2 x.mu + |mu|^2 rounds to
    -1e-4 and more in float32; before, log N(x; mu, s) reached 6144 against a maximum of 24.87."""
    c, x = _far_pairs(0)
    s = 1e-4
    const = -3 * math.log(s) - 1.5 * math.log(2 * math.pi)  # log density at distance 0
    with pytest.warns(RuntimeWarning, match="negative"):
        lp = IsotropicNormal(c.float().unsqueeze(-2), torch.tensor(s)).log_prob(x.float())
    # float32 rounding of const itself (~24.9): 1 ulp is 2e-6; allow 1e-5
    assert float(lp.max()) <= const + 1e-5
    # and the fit: the log likelihood of N points is at most N * const (a mixture density is at
    # most its largest component's maximum); before, 810938 against 2487 (seed 3)
    c, x = _far_pairs(3)
    with pytest.warns(RuntimeWarning, match="negative"):
        res = fit_em("baseline", {"x": x.float()}, 2, seed=0, options={"scale": s})
    assert res.log_likelihood <= 100 * const * (1 + 1e-6)  # float32 sum of 100 terms of ~25


def test_float64_point_on_a_location_is_not_warned():
    """A point exactly on a location (a re-seeded component) may round its distance to ~-1e-14:
    no warning (that needs rounding above 1e-6 nats), and the log density is Normal's to 1e-12."""
    x = torch.tensor([[3.0, 1.0, 2.0], [-7.0, 4.0, 0.5], [0.1, 0.2, 0.3]], dtype=F64)
    locs = torch.tensor([[3.0, 1.0, 2.0], [-7.0, 4.0, 0.5]], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        lp = IsotropicNormal(locs.unsqueeze(-2), torch.tensor(0.5, dtype=F64)).log_prob(x)
    ref = torch.distributions.Normal(locs.unsqueeze(-2), 0.5).log_prob(x).sum(-1)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-12)  # float64 on numbers of size <= 500


# --------------------------------------------------------------------------- 4. dtypes
FLOAT32_CONSTANT = '''
import torch, pyro, pyro.distributions as dist

def model(data, num_objects):
    x = data["x"]
    locs = pyro.sample("locs", dist.Normal(torch.zeros(num_objects, x.shape[1], dtype=x.dtype), 10.0).to_event(2))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.ones(num_objects) / num_objects),  # float32!
                        infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], torch.tensor(1.0, dtype=x.dtype)).to_event(1), obs=x)
'''


def test_float32_constant_in_a_float64_fit_is_reported_at_bind_time(tmp_path):
    """Before, the fit ran to the end and then crashed in the pointwise log likelihood (Pyro's
    einsum: "expected scalar type Double but found Float"), losing the result."""
    path = _write(tmp_path, "f32_constant.py", FLOAT32_CONSTANT)
    x = overlapping(n=30)["x"]
    with pytest.raises(ModelError, match=r"site 'z'.*float32.*float64.*dtype="):
        fit_em(path, {"x": x}, 2, seed=0)
    # the same model in float32 runs
    res = fit_em(path, {"x": x.float()}, 2, seed=0)
    assert res.params["locs"].dtype == torch.float32


def test_result_is_never_lost_after_the_fit(monkeypatch):
    def broken(self, values, site):
        raise RuntimeError("expected scalar type Double but found Float")

    monkeypatch.setattr(EnumeratedModel, "pointwise_log_likelihood", broken)
    with pytest.warns(RuntimeWarning, match="fit finished"):
        res = fit_em("baseline", overlapping(n=30), 3, seed=0)
    assert res.converged and res.pointwise_log_likelihood is None and math.isfinite(res.log_joint)


# --------------------------------------------------------------------------- 5. what log_likelihood is
WITH_COUNT = '''
import torch, pyro, pyro.distributions as dist

def model(data, num_objects):
    x = data["x"]
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=x.dtype), torch.tensor(0.1, dtype=x.dtype)))
    pyro.sample("count", dist.Poisson(rate), obs=torch.tensor(float(x.shape[0]), dtype=x.dtype))
    locs = pyro.sample("locs", dist.Normal(torch.zeros(num_objects, x.shape[1], dtype=x.dtype), 10.0).to_event(2))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.ones(num_objects, dtype=x.dtype) / num_objects),
                        infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], torch.tensor(1.0, dtype=x.dtype)).to_event(1), obs=x)
'''


def test_log_likelihood_includes_every_observed_site_and_is_split_by_site(tmp_path):
    path = _write(tmp_path, "with_count.py", WITH_COUNT)
    x = overlapping(n=30)["x"]
    res = fit_em(path, {"x": x}, 3, seed=0)
    by_site = res.info["log_likelihood_by_site"]
    assert set(by_site) == {"count", "x"}
    count_lp = float(torch.distributions.Poisson(res.params["rate"]).log_prob(torch.tensor(30.0, dtype=F64)))
    assert by_site["count"] == pytest.approx(count_lp, abs=1e-12)  # the same float64 expression
    # sums of float64 terms of size ~1e2: 1e-9
    assert sum(by_site.values()) == pytest.approx(res.log_likelihood, abs=1e-9)
    # the split also tells what the count adds to log_likelihood, which per-point values cannot
    assert res.log_likelihood - by_site["x"] == pytest.approx(count_lp, abs=1e-9)


def test_log_likelihood_by_site_of_the_builtin_models():
    x = overlapping(n=30)["x"]
    res = fit_em("baseline", {"x": x}, 3, seed=0)
    assert list(res.info["log_likelihood_by_site"]) == ["x"]
    assert res.info["log_likelihood_by_site"]["x"] == pytest.approx(res.log_likelihood, abs=1e-9)
    o = torch.arange(30) % 2
    res = fit_em("categorical", {"x": x, "o": o, "num_categories": 2}, 2, seed=0, max_iter=5, tol=None)
    # x and o share the assignment z: their log probability does not split
    assert list(res.info["log_likelihood_by_site"]) == ["x+o"]
    assert res.info["log_likelihood_by_site"]["x+o"] == pytest.approx(res.log_likelihood, abs=1e-9)


# --------------------------------------------------------------------------- 6. to_event message
TO_EVENT = '''
import torch, pyro, pyro.distributions as dist

def model(data, num_objects):
    x = data["x"]
    locs = pyro.sample("locs", dist.Normal(torch.zeros(num_objects, x.shape[1], dtype=x.dtype), 10.0).to_event(2))
    probs = torch.ones(num_objects, dtype=x.dtype) / num_objects
    z = pyro.sample("z", dist.Categorical(probs).expand([x.shape[0]]).to_event(1),
                    infer={"enumerate": "parallel"})
    pyro.sample("x", dist.Normal(locs[z], torch.tensor(1.0, dtype=x.dtype)).to_event(2), obs=x)
'''


def test_categorical_batch_declared_as_an_event_gets_a_plate_message(tmp_path):
    """Before: "a discrete latent (Independent) without finite support ... use Categorical"."""
    path = _write(tmp_path, "to_event.py", TO_EVENT)
    with pytest.raises(ModelError) as info:
        fit_em(path, {"x": overlapping(n=12)["x"]}, 2, seed=0)
    msg = str(info.value)
    assert "'z'" in msg and "to_event" in msg and "pyro.plate" in msg and "Categorical" in msg
    assert "without finite support" not in msg
