"""Three ways to infer the object categories of M2 (:mod:`metagen_ppl.models.categorical`).

The categories ``c_k`` are discrete and global (each couples every
observation), so three EM strategies are offered (DESIGN.md section 2, M2):

``sample`` (the seed's proposal)
    Draw ``S`` category vectors from the prior (``proposal="prior"``) or from a
    data-driven proposal (``proposal="data"``: a category-blind mixture fit
    gives soft clusters, and ``q(c_k = c)`` is proportional to the number of
    detections of category ``c`` in cluster ``k``, plus one). Condition the model
    on each vector with ``poutine.condition``, run the continuous EM
    (:func:`metagen_ppl.engine.em.fit_em`) on each, keep the best vector.
    ``info["candidate_log_likelihoods"]`` lists the log marginal likelihood
    ``log p(x, o | theta_s, c_s)`` (``z`` summed out) of all ``S`` candidates and
    ``info["candidate_log_joints"]`` their MAP objective
    ``log p(x, o | theta_s, c_s) + log p(c_s) + log p(theta_s)``. "Best" is by
    ``rank_by="log_joint"`` (default) or ``"log_likelihood"`` (the seed's
    wording). They agree when ``A`` is known; with ``A`` learned, the likelihood
    alone favours labellings that give two objects of one true category two
    different labels (one more free row of ``A`` to fit: a few nats better,
    measured on simulated scenes), which the confusion prior penalises.
``enumerate``
    Hand the model, ``c`` enumerated jointly with ``z``, straight to
    :func:`fit_em`: the E-step is exact and EM maximises ``log p(x, o | theta)``
    with ``c`` summed out. The ``o`` factor has ``K * C^K * N`` entries, so it is
    refused when ``C^K`` exceeds :data:`MAX_ENUMERATED_CONFIGS` (4096, e.g. C = 5
    up to K = 5, C = 3 up to K = 7). The reported ``cats`` are the jointly most
    probable vector at the fitted parameters.
``mstep``
    Keep ``c`` as a discrete parameter of the engine's EM
    (``fit_em(..., discrete=["c_0", ...])``, the one EM loop): the E-step is the
    engine's :meth:`EnumeratedModel.estep` with ``c`` conditioned in; the
    model's ``discrete_update`` hook makes the discrete M-step -- Q splits over
    objects, so ``c_k = argmax_c sum_n g_nk log A[c, o_n] + log rho_c`` is exact
    and closed form, and ``A`` (if learned) follows by its expected-count update;
    locations, weights and scale by M1's closed form. It maximises the
    joint ``log p(x, o, c | theta) + log p(theta)`` over ``(theta, c)``.

All return a :class:`FitResult` whose ``params`` include ``"cats"`` (``(K,)``
long) and ``"confusion"``.

What SVI and MCMC can do on M2 (checked with pyro 1.9.2)
--------------------------------------------------------
Both run with the ``c_k`` enumerated: the model marks them for parallel
enumeration, ``fit_svi``'s guide (AutoDelta / AutoNormal) covers only the
continuous sites, and NUTS sums every discrete site in its potential energy.
Each gradient then costs what the ``enumerate`` E-step costs (``K C^K N``), so
:func:`fit_categorical_svi` and :func:`fit_categorical_mcmc` share its size
limit and refuse past it. Measured on one core: SVI about 50 ms per step at
K <= 3, N = 500; NUTS about 0.5 s per draw at K = 2, N = 500 (tree depth <= 6).
What Pyro cannot do here: sample the ``c_k`` inside MCMC (Pyro's NUTS always
enumerates discrete sites; it has no discrete/Gibbs moves, unlike NumPyro's
``DiscreteHMCGibbs``), so past the enumeration limit there is no Pyro MCMC for
this model; SVI with ``c`` sampled would need a hand-written discrete guide
and score-function gradients (the autoguides cannot guide discrete sites), not
provided. With ``A`` learned, MCMC can in principle also switch category labels
(permute the rows of ``A`` together with every ``c_k``); the diagonal-heavy
confusion prior makes that unlikely, and only object labels are aligned.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
import warnings
from typing import Optional

import torch
from pyro import poutine

from metagen_ppl.engine.em import fit_em
from metagen_ppl.engine.mcmc import fit_mcmc
from metagen_ppl.engine.registry import load_model, ModelSpec
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.engine.validate import check_data, check_num_objects, check_options
from metagen_ppl.errors import MetagenError, ModelError
from metagen_ppl.models.categorical import generative as cm_model
from metagen_ppl.util import progress_bar

#: Largest number of category vectors ``C^K`` that ``enumerate`` (and SVI/MCMC) will sum over.
MAX_ENUMERATED_CONFIGS = 4096

STRATEGIES = ("sample", "enumerate", "mstep")
PROPOSALS = ("prior", "data")


def _dtype(data):
    return next(v for v in data.values() if torch.is_tensor(v) and v.is_floating_point()).dtype


def _prepare(model, data, num_objects, learn_confusion, options):
    """Resolve the spec, validate, and settle whether ``A`` is learned."""
    spec = load_model(model)
    try:
        params = inspect.signature(spec.model).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and "num_categories" not in params and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ModelError(f"model {spec.name!r} has no per-object category sites (no num_categories option); "
                         "the category strategies need a model like 'categorical'")
    check_data(data)
    check_num_objects(num_objects, data)
    cm = cm_model
    options = dict(options or {})
    check_options(options, num_objects)
    C = cm.check_categorical_data(data, num_objects, **options)
    options.setdefault("num_categories", C)
    init_confusion = None
    if learn_confusion is None:
        learn_confusion = options.get("confusion") is None
    if learn_confusion:
        if options.get("confusion") is not None:  # a given A is the starting point of the learned one
            init_confusion = cm.check_confusion(options.pop("confusion"), C, _dtype(data))
    elif options.get("confusion") is None:
        raise MetagenError("learn_confusion=False needs a known confusion matrix: pass "
                           "options={'confusion': (C, C) rows summing to 1}")
    else:
        options["confusion"] = cm.check_confusion(options["confusion"], C, _dtype(data))
    return spec, options, C, init_confusion


def _check_enumerable(num_objects, C, max_configs, what="enumerate"):
    n = C ** int(num_objects)
    if n > max_configs:
        raise ModelError(
            f"{what}: enumerating the categories needs C^K = {C}^{num_objects} = {n} category vectors, "
            f"more than the limit {max_configs} (MAX_ENUMERATED_CONFIGS); use strategy 'mstep' or "
            "'sample' (they scale to any K), or raise max_configs if you have the memory "
            f"(the E-step holds about K * C^K * N = {num_objects * n} x N numbers)")


def _conditioned_spec(spec: ModelSpec, cats: torch.Tensor) -> ModelSpec:
    """The model with every ``c_k`` conditioned on ``cats`` (``poutine.condition``), and a
    closed-form M-step that knows them (for the confusion counts)."""
    cm = cm_model
    values = {cm.category_site(k): cats[k].clone() for k in range(cats.shape[0])}
    closed = (functools.partial(spec.closed_form_mstep, categories=cats.clone())
              if spec.closed_form_mstep is not None else None)
    return dataclasses.replace(spec, model=poutine.condition(spec.model, data=values),
                               closed_form_mstep=closed)


def _full_params(params, options, dtype):
    """Parameters plus the fixed options (weights, scale, confusion) as tensors."""
    out = dict(params)
    for key in ("weights", "scale", "confusion"):
        if key not in out and options.get(key) is not None:
            out[key] = torch.as_tensor(options[key], dtype=dtype)
    return out


def _pointwise_fixed(data, params, cats, options):
    """``log p(x_n, o_n | theta, c)`` per observation, ``(N,)``."""
    cm = cm_model
    base = cm.gaussian_log_terms(data, params, options)  # (N, K)
    A = params["confusion"]
    return torch.logsumexp(base + torch.log(A)[cats][:, data["o"]].T, -1)


def _log_prior_cats(cats, C, options, dtype):
    prior = options.get("category_prior")
    if prior is None:
        return -cats.shape[0] * math.log(C)
    return float(torch.log(torch.as_tensor(prior, dtype=dtype))[cats].sum())


def score_estimate(data, params, num_objects, *, options=None, max_configs=2 ** 16,
                   cats=None) -> dict:
    """Score an estimate of M2 by exact sums (the same way for every method).

    Returns
    -------
    dict with
    ``log_lik_marginal``: ``log p(x, o | theta)``, ``c`` and ``z`` summed out
    (``None`` when ``C^K > max_configs``);
    ``log_lik_fixed``: ``log p(x, o | theta, c)`` at ``cats`` (or, if ``cats`` is
    ``None``, at the jointly most probable ``c`` given ``theta``), ``z`` summed out;
    ``map_cats``: the most probable ``c`` given ``theta`` (``None`` if not enumerable);
    ``cat_marginals``: ``(K, C)`` posterior marginals of the ``c_k`` (or ``None``);
    ``log_prior``: ``log p(theta)`` of the continuous sites in ``params``;
    ``log_joint_fixed``: ``log p(x, o, c | theta) + log p(theta)`` (the MAP objective of
    ``sample`` and ``mstep``); ``log_joint_marginal``: ``log p(x, o | theta) + log p(theta)``
    (that of ``enumerate`` and SVI-MAP).
    """
    cm = cm_model
    options = dict(options or {})
    dtype = _dtype(data)
    C = cm.num_categories_of(data, num_categories=options.get("num_categories"),
                             confusion=options.get("confusion"),
                             category_prior=options.get("category_prior"))
    full = _full_params(params, options, dtype)
    out = {"log_lik_marginal": None, "map_cats": None, "cat_marginals": None}
    if C ** num_objects <= max_configs:
        opts = {k: v for k, v in options.items() if k not in ("confusion",)}
        configs, ll, lp = cm.category_vector_log_likelihoods(data, full, num_objects, **opts)
        joint = ll + lp
        out["log_lik_marginal"] = float(torch.logsumexp(joint, 0))
        best = int(joint.argmax())
        out["map_cats"] = configs[best].clone()
        post = torch.softmax(joint, 0)
        marg = torch.zeros(num_objects, C, dtype=dtype)
        for k in range(num_objects):
            marg[k].index_add_(0, configs[:, k], post)
        out["cat_marginals"] = marg
        if cats is None:
            cats = out["map_cats"]
    out["log_prior"] = log_prior_theta(data, params, num_objects, options)
    out["log_joint_marginal"] = (None if out["log_lik_marginal"] is None
                                 else out["log_lik_marginal"] + out["log_prior"])
    if cats is None:
        out["log_lik_fixed"] = out["log_joint_fixed"] = None
    else:
        cats = torch.as_tensor(cats, dtype=torch.long)
        out["log_lik_fixed"] = float(_pointwise_fixed(data, full, cats, options).sum())
        out["log_joint_fixed"] = (out["log_lik_fixed"] + out["log_prior"]
                                  + _log_prior_cats(cats, C, options, dtype))
    return out


def log_prior_theta(data, params, num_objects, options=None, model="categorical") -> float:
    """``log p(theta)``: the prior log density of the model's continuous latent sites at ``params``."""
    spec = load_model(model)
    options = dict(options or {})
    tr = poutine.trace(poutine.condition(spec.model, data={k: v for k, v in params.items() if k != "cats"}))
    with torch.no_grad():
        tr = tr.get_trace(data, num_objects, **options)
    total = 0.0
    for name, site in tr.nodes.items():
        if site["type"] == "sample" and name in params and name != "cats" and not name.startswith("c_"):
            total += float(site["fn"].log_prob(site["value"]).sum())
    return total


# ---------------------------------------------------------------------------- public API
def fit_categorical(data: dict, num_objects: int, *, strategy: str = "mstep", model="categorical",
                    num_category_samples: int = 32, proposal: str = "data", rank_by: str = "log_joint",
                    learn_confusion: Optional[bool] = None, seed: int = 0, num_inits: int = 1,
                    mstep: str = "auto", optimizer: str = "lbfgs", tol: float = 1e-6,
                    max_iter: int = 200, max_configs: int = MAX_ENUMERATED_CONFIGS,
                    score: bool = True, progress: bool = False,
                    options: Optional[dict] = None) -> FitResult:
    """Fit M2 by EM with one of the three category strategies.

    Parameters
    ----------
    data : dict
        ``{"x": (N, 3) float tensor, "o": (N,) long tensor}`` (observed
        categories, 0-based), optionally ``"num_categories"``.
    num_objects : int
        ``K``.
    strategy : {"sample", "enumerate", "mstep"}
        See the module docstring.
    model : str, path or ModelSpec
        The model (default the built-in ``categorical``); a variant must keep
        the site names ``c_0..c_{K-1}``, ``z``, ``confusion``.
    num_category_samples : int
        ``S`` for ``sample``.
    proposal : {"prior", "data"}
        Proposal of the category vectors for ``sample``.
    rank_by : {"log_joint", "log_likelihood"}
        How ``sample`` picks the best candidate (module docstring).
    learn_confusion : bool, optional
        Learn ``A`` (site ``"confusion"``, MAP under its Dirichlet prior).
        Default: learn it unless ``options["confusion"]`` gives it; with
        ``learn_confusion=True`` a given matrix is the starting value.
    seed, num_inits, tol, max_iter :
        As in :func:`fit_em` (for ``sample``: of the category-blind warm start;
        each candidate's EM starts from it).
    mstep, optimizer :
        Passed to :func:`fit_em` (``sample`` and ``enumerate``).
    max_configs : int
        Enumeration limit on ``C^K`` for ``enumerate``.
    score : bool
        Add ``info["score"]`` (:func:`score_estimate`, after the clock stops;
        its ``c``-marginal likelihood only where ``C^K <= max_configs``).
    options : dict
        Model options (``num_categories``, ``confusion``, ``category_prior``, ...).

    Returns
    -------
    FitResult
        ``params["cats"]`` the estimated categories, ``info["strategy"]``,
        ``info["score"]`` (:func:`score_estimate`), and for ``sample``
        ``info["candidates"]`` and ``info["candidate_log_likelihoods"]``.
    """
    if strategy not in STRATEGIES:
        raise MetagenError(f"unknown category strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if num_inits < 1 or max_iter < 1:
        raise MetagenError("num_inits and max_iter must be at least 1")
    spec, options, C, init_conf = _prepare(model, data, num_objects, learn_confusion, options)
    if strategy == "enumerate":
        _check_enumerable(num_objects, C, max_configs)
    t0 = time.perf_counter()
    if strategy == "enumerate":
        res = _fit_enumerate(spec, data, num_objects, options, init_conf, seed=seed, num_inits=num_inits,
                             mstep=mstep, optimizer=optimizer, tol=tol, max_iter=max_iter, progress=progress)
    elif strategy == "sample":
        if proposal not in PROPOSALS:
            raise MetagenError(f"unknown proposal {proposal!r}; choose 'prior' or 'data'")
        if num_category_samples < 1:
            raise MetagenError("num_category_samples must be at least 1")
        if rank_by not in ("log_joint", "log_likelihood"):
            raise MetagenError(f"unknown rank_by {rank_by!r}; choose 'log_joint' or 'log_likelihood'")
        res = _fit_sample(spec, data, num_objects, options, init_conf, S=num_category_samples,
                          proposal=proposal, rank_by=rank_by, seed=seed, num_inits=num_inits, mstep=mstep,
                          optimizer=optimizer, tol=tol, max_iter=max_iter, progress=progress)
    else:
        res = _fit_mstep(spec, data, num_objects, options, init_conf, seed=seed, num_inits=num_inits,
                         tol=tol, max_iter=max_iter, progress=progress)
    res.wall_time_s = time.perf_counter() - t0
    res.info["strategy"] = strategy
    res.info["learn_confusion"] = "confusion" not in options
    # sample and mstep fix the categories at their estimate; enumerate sums them out with the assignments
    res.info["log_likelihood_of"] = "log p(x,o|theta)" if strategy == "enumerate" else "log p(x,o|theta,c)"
    if score:
        sc = score_estimate(data, res.params, num_objects, options=options, cats=res.params["cats"],
                            max_configs=max_configs)
        res.info["score"] = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in sc.items()}
    return res


def _finish(res: FitResult, spec, data, num_objects, options, cats, strategy) -> FitResult:
    params = _full_params(res.params, options, _dtype(data))
    params["cats"] = torch.as_tensor(cats, dtype=torch.long)
    res.params = params
    res.model = spec.name
    res.method = "em"
    res.info["categories"] = params["cats"].tolist()
    return res


# ---------------------------------------------------------------------------- enumerate
def _fit_enumerate(spec, data, K, options, init_conf, *, seed, num_inits, mstep, optimizer, tol,
                   max_iter, progress):
    cm = cm_model
    init = {"confusion": init_conf} if init_conf is not None else None
    res = fit_em(spec, data, K, seed=seed, num_inits=num_inits, mstep=mstep, optimizer=optimizer,
                 tol=tol, max_iter=max_iter, init=init, progress=progress, options=options)
    marg = torch.stack([res.posteriors[cm.category_site(k)] for k in range(K)])  # (K, C)
    full = _full_params(res.params, options, _dtype(data))
    configs, ll, lp = cm.category_vector_log_likelihoods(
        data, full, K, **{k: v for k, v in options.items() if k != "confusion"})
    cats = configs[int((ll + lp).argmax())]
    res.posteriors = {"z": res.posteriors["z"], "c": marg}
    res.map_assignments = {"z": res.posteriors["z"].argmax(-1), "c": cats}
    res.info["category_marginals"] = marg.tolist()
    return _finish(res, spec, data, K, options, cats, "enumerate")


# ---------------------------------------------------------------------------- sample
def _warm_start(data, K, options, *, seed, num_inits, tol, max_iter):
    """Category-blind M1 fit of the locations (the shared start of every candidate)."""
    base_opts = {k: options[k] for k in ("weights", "scale", "loc_prior_mean", "loc_prior_scale",
                                         "weight_concentration", "scale_prior_shape", "scale_prior_rate")
                 if options.get(k) is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base = fit_em("baseline", {"x": data["x"]}, K, seed=seed, num_inits=num_inits, tol=tol,
                      max_iter=max_iter, options=base_opts)
    return base


def propose_categories(data, resp, C, S, proposal, generator, category_prior=None):
    """``S`` category vectors ``(S, K)`` from the prior or the data-driven proposal.

    ``data`` proposal: ``q(c_k = c) ∝ sum_n g_nk [o_n = c] + 1``, with ``g`` the
    ``(N, K)`` responsibilities of a category-blind fit. Returns the draws and
    the ``(K, C)`` proposal probabilities.
    """
    K = resp.shape[1]
    if proposal == "prior":
        rho = (torch.full((C,), 1.0 / C, dtype=torch.float64) if category_prior is None
               else torch.as_tensor(category_prior, dtype=torch.float64))
        q = rho.expand(K, C).clone()
    else:
        counts = torch.zeros(K, C, dtype=torch.float64)
        counts.index_add_(1, data["o"], resp.T.to(torch.float64))
        q = counts + 1.0
        q = q / q.sum(-1, keepdim=True)
    draws = torch.multinomial(q, S, replacement=True, generator=generator).T  # (S, K)
    return draws, q


def _fit_sample(spec, data, K, options, init_conf, *, S, proposal, rank_by, seed, num_inits, mstep, optimizer,
                tol, max_iter, progress):
    cm = cm_model
    dtype = _dtype(data)
    base = _warm_start(data, K, options, seed=seed, num_inits=num_inits, tol=tol, max_iter=max_iter)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    draws, q = propose_categories(data, base.posteriors["z"], C=options["num_categories"], S=S,
                                  proposal=proposal, generator=gen,
                                  category_prior=options.get("category_prior"))
    start = {k: v for k, v in base.params.items()}
    if "confusion" not in options:
        conc = cm.confusion_concentration_matrix(options["num_categories"],
                                                 options.get("confusion_concentration"),
                                                 options.get("confusion_diag_concentration"), dtype)
        start["confusion"] = init_conf if init_conf is not None else (conc - 1) / (conc - 1).sum(-1, keepdim=True)
    cache, lls, ljs = {}, [], []
    with progress_bar(S, "sample categories", progress) as bar:
        for s in range(S):
            key = tuple(draws[s].tolist())
            if key not in cache:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fit = fit_em(_conditioned_spec(spec, draws[s]), data, K, seed=seed, num_inits=1,
                                 mstep=mstep, optimizer=optimizer, tol=tol, max_iter=max_iter,
                                 init=start, options=options)
                ll = fit.log_likelihood - _log_prior_cats(draws[s], options["num_categories"], options, dtype)
                cache[key] = (ll, fit)
            lls.append(cache[key][0])
            ljs.append(cache[key][1].log_joint)
            if bar is not None:
                bar.update(1)
    best_key = max(cache, key=(lambda k: cache[k][1].log_joint) if rank_by == "log_joint"
                   else (lambda k: cache[k][0]))
    best_ll, res = cache[best_key]
    cats = torch.tensor(best_key, dtype=torch.long)
    res.log_likelihood = best_ll
    full = _full_params(res.params, options, dtype)
    res.pointwise_log_likelihood = _pointwise_fixed(data, full, cats, options)[None, None]
    res.posteriors = {"z": res.posteriors["z"]}
    res.map_assignments = {"z": res.posteriors["z"].argmax(-1)}
    res.info.update(candidates=draws.tolist(), candidate_log_likelihoods=lls, candidate_log_joints=ljs,
                    num_distinct_candidates=len(cache), proposal=proposal, rank_by=rank_by,
                    proposal_probs=q.tolist(), warm_start_iter=base.n_iter,
                    candidate_ll_spread={"max": max(lls), "min": min(lls),
                                         "mean": sum(lls) / len(lls)})
    return _finish(res, spec, data, K, options, cats, "sample")


# ---------------------------------------------------------------------------- mstep
def _fit_mstep(spec, data, K, options, init_conf, *, seed, num_inits, tol, max_iter, progress):
    """The categories as discrete parameters of the engine's EM: the model's ``discrete_update`` hook
    (closed-form argmax of Q over each ``c_k``, then A's expected-count update) runs in the one EM loop."""
    dtype = _dtype(data)
    C = options["num_categories"]
    sites = [cm_model.category_site(k) for k in range(K)]
    learn_a = "confusion" not in options
    init = {"confusion": init_conf} if (init_conf is not None and learn_a) else None
    res = fit_em(spec, data, K, seed=seed, num_inits=num_inits, tol=tol, max_iter=max_iter, init=init,
                 init_restarts="all", discrete=sites, progress=progress, options=options)
    cats = torch.stack([res.params.pop(s).long() for s in sites])
    full = _full_params(res.params, options, dtype)
    res.log_likelihood = res.log_likelihood - _log_prior_cats(cats, C, options, dtype)
    res.trace_label = "log joint log p(x, o, c | theta) + log p(theta) (EM objective)"
    res.pointwise_log_likelihood = _pointwise_fixed(data, full, cats, options)[None, None]
    return _finish(res, spec, data, K, options, cats, "mstep")


# ---------------------------------------------------------------------------- SVI / MCMC
def _baseline_method(fn, model, data, num_objects, learn_confusion, max_configs, options, what, **kw):
    spec, options, C, init_conf = _prepare(model, data, num_objects, learn_confusion, options)
    _check_enumerable(num_objects, C, max_configs, what)
    init = dict(kw.pop("init", None) or {})
    if init_conf is not None:
        init.setdefault("confusion", init_conf)
    res = fn(spec, data, num_objects, init=init or None, options=options, **kw)
    cm = cm_model
    full = _full_params(res.params, options, _dtype(data))
    score = score_estimate(data, full, num_objects, options=options, max_configs=max_configs)
    full["cats"] = score["map_cats"]
    res.params = full
    marg = [res.posteriors.pop(cm.category_site(k), None) for k in range(num_objects)]
    if all(m is not None for m in marg):
        res.posteriors["c"] = torch.stack(marg)
    res.map_assignments = {k: v for k, v in res.map_assignments.items() if not k.startswith("c_")}
    res.map_assignments["c"] = score["map_cats"]
    res.info["score"] = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in score.items()}
    res.info["categories"] = score["map_cats"].tolist()
    res.info["log_likelihood_of"] = "log p(x,o|theta)"
    return res


def fit_categorical_svi(data: dict, num_objects: int, *, model="categorical", guide: str = "delta",
                        learn_confusion: Optional[bool] = None,
                        max_configs: int = MAX_ENUMERATED_CONFIGS, options: Optional[dict] = None,
                        **kwargs) -> FitResult:
    """SVI (``TraceEnum_ELBO``, ``c`` and ``z`` enumerated) on M2; ``kwargs`` go to :func:`fit_svi`.

    ``params["cats"]`` is the most probable category vector at the estimate.
    """
    return _baseline_method(fit_svi, model, data, num_objects, learn_confusion, max_configs, options,
                            "svi", guide=guide, **kwargs)


def fit_categorical_mcmc(data: dict, num_objects: int, *, model="categorical",
                         learn_confusion: Optional[bool] = None,
                         max_configs: int = MAX_ENUMERATED_CONFIGS, options: Optional[dict] = None,
                         **kwargs) -> FitResult:
    """NUTS on the continuous sites of M2, ``c`` and ``z`` enumerated; ``kwargs`` go to :func:`fit_mcmc`.

    ``params`` is the posterior mean; ``params["cats"]`` the most probable
    category vector at it.
    """
    return _baseline_method(fit_mcmc, model, data, num_objects, learn_confusion, max_configs, options,
                            "mcmc", **kwargs)
