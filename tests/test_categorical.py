"""M2 ``categorical`` and its three category strategies (issue 3).

Exact checks in float64 against brute-force sums over every category vector and
every assignment; recovery checks on fixed-seed simulated scenes; bad input.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from pyro import poutine

from metagen_ppl.models.categorical.strategies import (MAX_ENUMERATED_CONFIGS, fit_categorical, propose_categories,
                                    score_estimate)
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.models import categorical as cm

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and thrash on a loaded 2-core box)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _scene(K, N, seed, C=3, diag=0.8, cats=None, weights="uniform", dtype=F64):
    sim = cm.simulate(K, N, seed, num_categories=C, confusion_diag=diag, cats=cats,
                      weights=[1.0 / K] * K if weights == "uniform" else weights)
    data = {"x": torch.tensor(sim["observations"], dtype=dtype),
            "o": torch.tensor(sim["categories"], dtype=torch.long)}
    return data, cm.truth_from_json(sim, dtype), sim


def _random_params(K, C, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(C, C, generator=g, dtype=F64) + 0.1
    return {"locs": torch.randn(K, 3, generator=g, dtype=F64),
            "weights": torch.softmax(torch.randn(K, generator=g, dtype=F64), 0),
            "scale": torch.tensor(1.3, dtype=F64),
            "confusion": A / A.sum(-1, keepdim=True)}


def _brute_force(data, params, K, C, rho):
    """log p(x, o | theta) and the posterior marginals of every c_k and z_n, by explicit sums
    over all C^K category vectors and all K^N assignment vectors."""
    x, o = data["x"], data["o"]
    N = x.shape[0]
    locs, w, s, A = params["locs"], params["weights"], params["scale"], params["confusion"]
    log_n = torch.distributions.Normal(locs.unsqueeze(0), s).log_prob(x.unsqueeze(1)).sum(-1)  # (N, K)
    terms, cs, zs = [], [], []
    for c in itertools.product(range(C), repeat=K):
        for z in itertools.product(range(K), repeat=N):
            t = sum(math.log(rho[ck]) for ck in c)
            for n in range(N):
                t = t + math.log(w[z[n]]) + float(log_n[n, z[n]]) + math.log(A[c[z[n]], o[n]])
            terms.append(t)
            cs.append(c)
            zs.append(z)
    terms = torch.tensor(terms, dtype=F64)
    log_z = torch.logsumexp(terms, 0)
    post = torch.exp(terms - log_z)
    cs, zs = torch.tensor(cs), torch.tensor(zs)
    marg_c = torch.stack([torch.stack([post[cs[:, k] == c].sum() for c in range(C)]) for k in range(K)])
    marg_z = torch.stack([torch.stack([post[zs[:, n] == k].sum() for k in range(K)]) for n in range(N)])
    return float(log_z), marg_c, marg_z


# ---------------------------------------------------------------------------- exact E-step
@pytest.mark.parametrize("learned", [True, False])
def test_enumeration_estep_equals_brute_force(learned):
    K, C, N = 2, 3, 5
    g = torch.Generator().manual_seed(3)
    data = {"x": torch.randn(N, 3, generator=g, dtype=F64) * 2.0,
            "o": torch.randint(C, (N,), generator=g)}
    params = _random_params(K, C, 11)
    rho = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    options = {"num_categories": C, "category_prior": rho}
    values = dict(params)
    if not learned:  # a known confusion matrix is an option, not a site
        options["confusion"] = values.pop("confusion")
    em = EnumeratedModel(cm.model, data, K, options)
    assert em.enum_sites == ["c_0", "c_1", "z"]
    est = em.estep(values)
    log_z, marg_c, marg_z = _brute_force(data, params, K, C, rho.tolist())
    assert est.log_likelihood == pytest.approx(log_z, abs=1e-8)
    for k in range(K):
        torch.testing.assert_close(est.marginals[f"c_{k}"], marg_c[k], atol=1e-8, rtol=0)
    torch.testing.assert_close(est.marginals["z"], marg_z, atol=1e-8, rtol=0)
    # the direct chunked sum used for scoring agrees too
    score = score_estimate(data, params, K, options={"num_categories": C, "category_prior": rho})
    assert score["log_lik_marginal"] == pytest.approx(log_z, abs=1e-8)
    torch.testing.assert_close(score["cat_marginals"], marg_c, atol=1e-8, rtol=0)


def test_conditioned_model_equals_per_vector_likelihood():
    """``poutine.condition`` on a category vector gives log p(x, o, c | theta) (z summed)."""
    K, C, N = 2, 3, 6
    g = torch.Generator().manual_seed(5)
    data = {"x": torch.randn(N, 3, generator=g, dtype=F64), "o": torch.randint(C, (N,), generator=g)}
    params = _random_params(K, C, 2)
    configs, ll, lp = cm.category_vector_log_likelihoods(data, params, K, num_categories=C)
    for i, c in enumerate(configs):
        cond = poutine.condition(cm.model, data={f"c_{k}": c[k] for k in range(K)})
        est = EnumeratedModel(cond, data, K, {"num_categories": C}).estep(params)
        assert est.log_likelihood == pytest.approx(float(ll[i] + lp[i]), abs=1e-8)


# ---------------------------------------------------------------------------- discrete M-step
def test_mstep_category_update_equals_brute_force_argmax_q():
    K, C, N = 3, 4, 30
    g = torch.Generator().manual_seed(7)
    data = {"x": torch.randn(N, 3, generator=g, dtype=F64), "o": torch.randint(C, (N,), generator=g)}
    A = torch.rand(C, C, generator=g, dtype=F64) + 0.05
    A = A / A.sum(-1, keepdim=True)
    rho = torch.softmax(torch.randn(C, generator=g, dtype=F64), 0)
    for trial in range(5):
        resp = torch.softmax(3 * torch.randn(N, K, generator=g, dtype=F64), -1)
        best, best_q = None, -math.inf
        for c in itertools.product(range(C), repeat=K):
            q = sum(float(resp[n, k] * torch.log(A[c[k], data["o"][n]]))
                    for n in range(N) for k in range(K)) + sum(math.log(rho[ck]) for ck in c)
            if q > best_q:
                best, best_q = c, q
        assert cm.category_mstep(data, resp, A, rho).tolist() == list(best)


def test_mstep_category_update_maximises_engine_q():
    """The same argmax through the engine's Q: every conditioned category vector scored
    with the E-step weights of the current one."""
    K, C, N = 2, 3, 25
    data, _, _ = _scene(K, N, seed=4, C=C)
    params = _random_params(K, C, 9)
    params["locs"] = torch.stack([data["x"][0], data["x"][1]])

    def em_for(c):
        cond = poutine.condition(cm.model, data={f"c_{k}": torch.tensor(c[k]) for k in range(K)})
        return EnumeratedModel(cond, data, K, {"num_categories": C})

    est = em_for((0, 0)).estep(params)
    qs = {c: float(em_for(c).q_value(params, est)) for c in itertools.product(range(C), repeat=K)}
    best = max(qs, key=qs.get)
    assert tuple(cm.category_mstep(data, est.marginals["z"], params["confusion"]).tolist()) == best


def test_enumerated_confusion_update_equals_optimizer():
    """The closed-form A update under enumeration (recomputed joint counts) is the optimiser's argmax of Q."""
    from metagen_ppl.engine.mstep import optimizer_mstep

    K, C = 2, 3
    data, _, _ = _scene(K, 60, seed=2, C=C)
    em = EnumeratedModel(cm.model, data, K, {"num_categories": C})
    values = cm.initialize(data, K, torch.Generator().manual_seed(0), num_categories=C)
    est = em.estep(values)
    closed = cm.closed_form_mstep(data, est.marginals, values, K, num_categories=C)["confusion"]
    opt = optimizer_mstep(em, values, est, ["confusion"], steps=200)["confusion"]
    torch.testing.assert_close(closed, opt, atol=2e-5, rtol=0)


def test_mstep_log_joint_never_decreases():
    data, _, _ = _scene(3, 150, seed=8, C=4, diag=0.6)
    res = fit_categorical(data, 3, strategy="mstep", num_inits=2, seed=1)
    tr = np.asarray(res.trace)
    assert np.all(np.diff(tr) >= -1e-8 * np.abs(tr[1:]))


# ---------------------------------------------------------------------------- recovery
def _matched_cats(res, truth):
    from scipy.optimize import linear_sum_assignment

    est, tru = res.params["locs"].numpy(), truth["locs"].numpy()
    rows, cols = linear_sum_assignment(((tru[:, None] - est[None]) ** 2).sum(-1))
    return res.params["cats"][cols].tolist(), truth["cats"][rows].tolist()


def test_sample_with_many_candidates_finds_true_categories():
    K, C = 2, 3
    data, truth, _ = _scene(K, 200, seed=1, C=C, diag=0.9, cats=[2, 0])
    res = fit_categorical(data, K, strategy="sample", proposal="prior", num_category_samples=40,
                          seed=0, options={"num_categories": C})
    got, want = _matched_cats(res, truth)
    assert got == want
    assert len(res.info["candidate_log_likelihoods"]) == 40
    assert res.log_joint == pytest.approx(max(res.info["candidate_log_joints"]))
    by_ll = fit_categorical(data, K, strategy="sample", proposal="prior", num_category_samples=40,
                            seed=0, rank_by="log_likelihood", options={"num_categories": C})
    assert by_ll.log_likelihood == pytest.approx(max(by_ll.info["candidate_log_likelihoods"]))
    assert _matched_cats(by_ll, truth)[0] == want
    assert res.info["num_distinct_candidates"] == C ** K  # 40 prior draws cover all 9 vectors here


@pytest.mark.parametrize("strategy", ["mstep", "enumerate", "sample"])
def test_strategies_agree_on_an_easy_scene(strategy):
    K, C = 3, 4
    data, truth, sim = _scene(K, 300, seed=6, C=C, diag=0.8, cats=[3, 1, 1])
    res = fit_categorical(data, K, strategy=strategy, seed=0, num_category_samples=8,
                          options={"num_categories": C, "confusion": sim["truth"]["confusion"]})
    got, want = _matched_cats(res, truth)
    assert got == want
    assert res.params["cats"].shape == (K,) and res.params["cats"].dtype == torch.long
    assert res.info["score"]["log_lik_marginal"] is not None


def test_learned_confusion_recovers_simulated_matrix():
    """K = C = 3 objects of distinct categories, N = 4000: every row of A has ~1300
    detections, so each entry's sampling sd is ~0.011 (plus the prior's pull of
    ~4/1300); tolerance: max abs error <= 0.05."""
    K, C = 3, 3
    data, truth, _ = _scene(K, 4000, seed=12, C=C, diag=0.8, cats=[0, 1, 2])
    res = fit_categorical(data, K, strategy="mstep", seed=0, options={"num_categories": C})
    got, want = _matched_cats(res, truth)
    assert got == want
    err = (res.params["confusion"] - truth["confusion"]).abs().max()
    assert err <= 0.05, res.params["confusion"]


def test_data_proposal_concentrates_on_observed_categories():
    data, truth, _ = _scene(2, 100, seed=3, C=3, diag=0.9, cats=[1, 2])
    resp = torch.nn.functional.one_hot(torch.tensor(cm.simulate(2, 100, 3, num_categories=3,
                                                                confusion_diag=0.9, cats=[1, 2],
                                                                weights=[.5, .5])["truth"]["z"]), 2).double()
    draws, q = propose_categories(data, resp, 3, 50, "data", torch.Generator().manual_seed(0))
    assert draws.shape == (50, 2)
    assert q.argmax(-1).tolist() == [1, 2]


# ---------------------------------------------------------------------------- IO and errors
def test_simulate_json_round_trip(tmp_path):
    sim = cm.simulate(3, 40, 0, num_categories=5)
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(sim))
    obj = json.loads(path.read_text())
    data = cm.data_from_json(obj, F64)
    assert data["x"].shape == (40, 3) and data["o"].dtype == torch.long
    assert int(data["num_categories"]) == 5
    assert len(obj["truth"]["cats"]) == 3 and all(0 <= c < 5 for c in obj["truth"]["cats"])
    torch.testing.assert_close(torch.tensor(obj["truth"]["confusion"]).diagonal(), torch.full((5,), 0.8))


def test_bad_inputs_give_clear_errors():
    data, _, sim = _scene(2, 20, seed=0, C=3)
    bad = dict(data, o=data["o"].clone())
    bad["o"][4] = 3
    with pytest.raises(DataError, match=r"out of range.*data\['o'\]\[4\] = 3.*0\.\.2"):
        fit_categorical(bad, 2, options={"num_categories": 3})
    bad["o"][4] = -1
    with pytest.raises(DataError, match="out of range"):
        fit_categorical(bad, 2, options={"num_categories": 3})
    A = torch.tensor(sim["truth"]["confusion"], dtype=F64)
    A[1, 1] += 0.1
    with pytest.raises(DataError, match="row 1 sums to 1.1"):
        fit_categorical(data, 2, options={"num_categories": 3, "confusion": A})
    with pytest.raises(DataError, match="mismatch.*C = 3.*confusion says C = 4"):
        fit_categorical(data, 2, options={"num_categories": 3, "confusion": torch.eye(4, dtype=F64)})
    with pytest.raises(DataError, match="mismatch"):
        fit_categorical(dict(data, num_categories=torch.tensor(4)), 2, options={"num_categories": 3})
    with pytest.raises(DataError, match="one category per observation"):
        fit_categorical(dict(data, o=data["o"][:-1]), 2, options={"num_categories": 3})
    with pytest.raises(DataError, match="integer"):
        fit_categorical(dict(data, o=data["o"].double()), 2, options={"num_categories": 3})
    with pytest.raises(DataError, match="needs observed categories"):
        fit_categorical({"x": data["x"]}, 2, options={"num_categories": 3})
    with pytest.raises(MetagenError, match="unknown category strategy"):
        fit_categorical(data, 2, strategy="guess")
    with pytest.raises(MetagenError, match="needs a known confusion"):
        fit_categorical(data, 2, learn_confusion=False)
    big = {"x": torch.randn(40, 3, dtype=F64), "o": torch.randint(5, (40,))}
    with pytest.raises(ModelError, match=r"C\^K = 5\^6 = 15625.*limit 4096"):
        fit_categorical(big, 6, strategy="enumerate", options={"num_categories": 5})
    assert 5 ** 5 <= MAX_ENUMERATED_CONFIGS < 5 ** 6
    with pytest.raises(DataError, match="categories"):
        cm.data_from_json({"observations": [[0, 0, 0]]})
    with pytest.raises(DataError, match="out of range"):
        cm.data_from_json({"observations": [[0, 0, 0]], "categories": [7], "num_categories": 3})


def test_results_serialise(tmp_path):
    data, _, _ = _scene(2, 60, seed=2, C=3)
    for strategy in ("mstep", "sample", "enumerate"):
        res = fit_categorical(data, 2, strategy=strategy, num_category_samples=4,
                              options={"num_categories": 3})
        out = json.loads(res.to_json(tmp_path / f"{strategy}.json"))
        assert len(out["params"]["cats"]) == 2 and len(out["params"]["confusion"]) == 3
        assert out["info"]["strategy"] == strategy
        assert res.posteriors["z"].shape == (60, 2)
    idata = res.to_inference_data()
    assert "cats" in idata.posterior
