"""``metagen-ppl compare``: EM, SVI and MCMC on one model and one data set, one report.

For a model (built-in name or ``.py`` path) and a data set (simulated by the
model's ``simulate`` hook by default, or a JSON file), :func:`compare` runs

* EM (MAP-EM; for a model with per-object category sites, each category
  strategy: ``em-mstep``, ``em-enumerate``, ``em-sample``),
* SVI-MAP (``TraceEnum_ELBO`` + ``AutoDelta``), SVI-AutoNormal,
* MCMC (NUTS, assignments enumerated out, draws label-aligned),

with one seed and one set of budgets, and writes a report folder::

    OUT/data.json                  the data set (simulated runs)
    OUT/methods/<method>.json      each method's FitResult (written when it finishes)
    OUT/methods/<method>.nc        its arviz InferenceData (netCDF)
    OUT/methods/<method>.status.json   ok / failed (with the error), settings fingerprint
    OUT/results.json               the table, the diagnostics, the settings
    OUT/report.md, OUT/report.html the report (the HTML embeds its images)
    OUT/*.png                      the plots

Every file is written atomically. ``resume=True`` reuses each method whose
status file says it finished with the same data and settings (a failed method
is run again); a method that raises is recorded with its error in the table and
the others still run.

Models with a discrete *structure* that EM searches (the number and categories
of objects: ``detector``, ``projective``) provide a ``prepare_comparison`` hook
(see :func:`default_setup` for the protocol): the structure is found once by the
model's own EM search, and every method then fits the continuous unknowns with
that structure fixed, so the rows compare like with like.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import traceback
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from metagen_ppl.apps import plots
from metagen_ppl.engine.align import permutation_to
from metagen_ppl.engine.checkpoint import FitInterrupted
from metagen_ppl.apps.report import (agreement_warnings, column_definitions, diagnose, location_error_vs_truth,
                                     mcmc_summary, report_html, report_markdown, table_markdown, table_row)
from metagen_ppl.engine.comparison import ComparisonSetup
from metagen_ppl.engine.components import model_components
from metagen_ppl.engine.distributed import Outcome, capture, open_executor
from metagen_ppl.engine.em import fit_em
from metagen_ppl.engine.mcmc import fit_mcmc
from metagen_ppl.engine.registry import load_model, load_reference, model_reference, ModelSpec
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.engine.validate import check_data, check_num_objects
from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.io import (atomic_path, atomic_write_json, atomic_write_text, data_from_json, load_json,
                            num_objects_from_json, to_jsonable)
from metagen_ppl.models.categorical import strategies as cat
from metagen_ppl.util import check_seed, torch_threads

__all__ = ["compare", "Budget", "ComparisonSetup", "default_setup", "diagnose",
           "BASE_METHODS", "CATEGORY_STRATEGIES"]

BASE_METHODS = ("em", "svi-map", "svi-normal", "mcmc")
CATEGORY_STRATEGIES = ("mstep", "enumerate", "sample")


# --------------------------------------------------------------------------- settings
@dataclasses.dataclass
class Budget:
    """Budgets shared by every method of one comparison (``None`` = the model's default)."""

    em_inits: int = 3
    em_max_iter: int = 200
    em_tol: float = 1e-6
    svi_steps: int = 500
    svi_lr: float = 0.05
    svi_normal_samples: int = 200
    mcmc_samples: int = 150
    mcmc_warmup: int = 150
    mcmc_chains: int = 2
    mcmc_max_tree_depth: int = 8
    mcmc_target_accept: float = 0.8
    mcmc_jit: bool = True
    category_samples: int = 32

    def check(self) -> "Budget":
        positive = ("em_inits", "em_max_iter", "svi_steps", "svi_normal_samples", "mcmc_samples", "mcmc_chains",
                    "mcmc_max_tree_depth", "category_samples")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MetagenError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if isinstance(self.mcmc_warmup, bool) or not isinstance(self.mcmc_warmup, int) or self.mcmc_warmup < 0:
            raise MetagenError(f"mcmc-warmup must be a non-negative integer, got {self.mcmc_warmup!r}")
        for name in ("em_tol", "svi_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise MetagenError(f"{name.replace('_', '-')} must be a positive number, got {v!r}")
        if not (0.0 < self.mcmc_target_accept < 1.0):
            raise MetagenError(f"mcmc-target-accept must be in (0, 1), got {self.mcmc_target_accept!r}")
        return self


# --------------------------------------------------------------------------- set-up
def _as_tensor_locs(value, dtype=torch.float64):
    try:
        t = torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError):
        return None
    return t if t.dim() >= 2 else None


def _components(spec, data, k, options):
    """The model's per-object structure on the data (``None`` if the model cannot be traced alone: its
    methods then report the error); a DataError (e.g. K above the observations in the plates) propagates."""
    try:
        return model_components(spec, data, k, options)
    except DataError:
        raise
    except (MetagenError, RuntimeError, TypeError, ValueError, KeyError, IndexError):
        return None


def default_setup(spec: ModelSpec, obj: dict, *, dtype=torch.float64, num_objects: Optional[int] = None,
                  options: Optional[dict] = None, source: str = "<data>", **_) -> ComparisonSetup:
    """The set-up of a point model: observations ``x`` (N, D), or in nested plates (``(S, M, D)``: scenes).

    The accuracy columns compare the model's location site (declared, or read from its trace) with the
    truth's entry of that name (else ``truth["locs"]``), scene by scene for per-scene objects; where a
    column cannot be computed the report's notes say why.

    A model module replaces it by defining ``prepare_comparison(obj, *, seed, dtype,
    num_objects, options, progress, log, source) -> ComparisonSetup``.
    """

    data = data_from_json(obj, spec, dtype=dtype, source=source)
    k = num_objects if num_objects is not None else num_objects_from_json(obj, source)
    truth = obj.get("truth") if isinstance(obj.get("truth"), dict) else None
    if k is None:
        truth_locs = _as_tensor_locs((truth or {}).get(spec.location_site or "locs"))
        k = None if truth_locs is None else int(truth_locs.shape[-2])
    if k is None:
        raise DataError(f"give --num-objects: {source!r} has no 'num_objects' field and no truth")
    check_data(data)
    check_num_objects(k, data)      # K > N fails here, once, not in every method
    opts = dict(obj.get("options") or {}) if isinstance(obj.get("options"), dict) else {}
    opts.update(options or {})
    comps = _components(spec, data, k, opts)
    site = comps.location_site if comps is not None and comps.location_site else spec.location_site
    key = None if not (truth and site) else (site if site in truth else ("locs" if "locs" in truth else None))
    true_locs = _as_tensor_locs(truth.get(key)) if key else None
    x = data.get("x")
    notes = []

    def missing(column: str, why: str) -> None:
        line = f"No {column} column: {why}."
        if line not in notes:
            notes.append(line)

    if truth is not None and key is None:
        if site:
            missing("location error", f"the truth has no {site!r} (the model's location site) and no 'locs'; it "
                    f"has {', '.join(map(repr, sorted(truth))) or 'nothing'}")
        else:
            missing("location error", "the model has no location site to compare with the truth (declare "
                    "LOCATION_SITE)")

    strategies = CATEGORY_STRATEGIES if _has_category_sites(spec) else ()

    def score(res: FitResult) -> dict:
        # one computation for every row: categories and assignments summed out at the estimate
        # (em-mstep and em-sample optimise log p(x, o | theta, c) at their c; that stays their objective)
        sc = (res.info or {}).get("score") or {}
        return {"log_likelihood": sc.get("log_lik_marginal"), "log_joint": sc.get("log_joint_marginal")}

    def accuracy(res: FitResult) -> dict:
        out = {}
        if truth is None or key is None:
            return out
        err, why = location_error_vs_truth(res.params, truth, site)
        if err is None:
            missing("location error", why)
            return out
        out["location error"] = err
        acc, why = _assignment_accuracy(res, truth, site, comps, true_locs)
        if acc is None:
            if why:
                missing("assignment accuracy", why)
            return out
        out["assignment accuracy"], perm = acc
        cats_true, cats_hat = truth.get("cats"), res.params.get("cats")
        if cats_true is not None and cats_hat is not None and perm is not None:
            ct = torch.as_tensor(cats_true)
            out["category accuracy"] = float((torch.as_tensor(cats_hat)[perm] == ct).double().mean())
        return out

    def scene(res: FitResult):
        v = res.params.get(site) if site else None
        return None if v is None or v.dim() != 2 or v.shape[-1] != 3 else v.detach().double().numpy()

    plot3d = torch.is_tensor(x) and x.dim() == 2 and x.shape[-1] == 3
    score_of = {}
    if strategies:
        score_of = {"log_likelihood": "log p(x, o | theta) at the estimate, categories c and assignments z "
                                      "summed out by exact enumeration",
                    "log_joint": "that + log p(theta)"}
        notes.append("Category model: em-mstep and em-sample maximise log p(x, o | theta, c) at their category "
                     "vector c (their own objective, in their fit results); the table scores every method with c "
                     "summed out, so its rows compare.")
    if comps is not None and comps.note:
        notes.append(f"Label alignment: {comps.note}.")
    scene_truth = None
    if plot3d and true_locs is not None and true_locs.dim() == 2 and true_locs.shape[-1] == 3:
        scene_truth = true_locs.numpy()
    return ComparisonSetup(
        data=data, num_objects=int(k), options=opts, truth=truth, accuracy=accuracy,
        score=score if strategies else None, score_of=score_of,
        scene=scene if plot3d else None,
        scene_observations=x.detach().double().numpy() if plot3d else None,
        scene_truth=scene_truth,
        assignment_site=(comps.assignment_site if comps is not None and comps.assignment_site else "z"),
        category_strategies=strategies, notes=notes)


def _assignment_accuracy(res: FitResult, truth: dict, site: str, comps, true_locs) -> tuple:
    """``((accuracy, permutation or None), None)`` or ``(None, why)``: the share of observations whose most
    probable object is their true one, after matching estimated to true objects (per scene)."""
    assign = comps.assignment_site if comps is not None and comps.assignment_site else "z"
    z_true, z_post = truth.get("z"), (res.posteriors or {}).get(assign)
    if z_true is None or z_post is None:
        return None, None
    est = res.params[site].detach().double()
    L = est.shape[-2]
    if true_locs is None or tuple(true_locs.shape[:-2]) != tuple(est.shape[:-2]) or true_locs.shape[-2] != L:
        return None, "it needs as many true objects as estimated ones (per scene)"
    if z_post.shape[-1] != L:
        return None, (f"the assignment site {assign!r} has {z_post.shape[-1]} values for {L} objects (a clutter "
                      "or other component besides the objects)")
    try:
        zt = torch.as_tensor(z_true).long()
    except (TypeError, ValueError):
        return None, "truth['z'] is not a list of integers"
    if tuple(zt.shape) != tuple(z_post.shape[:-1]):
        return None, (f"truth['z'] has shape {tuple(zt.shape)} but the posterior of {assign!r} covers "
                      f"{tuple(z_post.shape[:-1])} observations")
    batch = tuple(est.shape[:-2])
    e, t = est.reshape(-1, L, est.shape[-1]), true_locs.reshape(-1, L, est.shape[-1])
    hits, total, perm = 0.0, 0, None
    zp = z_post.reshape(len(e), -1, L) if batch else z_post.reshape(1, -1, L)
    zt = zt.reshape(len(e), -1)
    for b in range(len(e)):
        perm = permutation_to(e[b], t[b])  # est[perm[j]] matches true j
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(len(perm))
        z_hat = inv[zp[b].argmax(-1)]
        hits += float((z_hat == zt[b]).double().sum())
        total += zt[b].numel()
    return ((hits / max(total, 1), perm if not batch else None), None)


def _has_category_sites(spec: ModelSpec) -> bool:
    declared = getattr(spec.module, "CATEGORY_STRATEGIES", None)
    if declared is not None:
        return bool(declared)
    return spec.name == "categorical"


def _setup(spec, obj, *, seed, dtype, num_objects, options, progress, log, source) -> ComparisonSetup:
    hook = getattr(spec.module, "prepare_comparison", None)
    kw = dict(dtype=dtype, num_objects=num_objects, options=options, source=source)
    if hook is None:
        return default_setup(spec, obj, **kw)
    setup = hook(obj, seed=seed, progress=progress, log=log, **kw)
    if not isinstance(setup, ComparisonSetup):
        raise ModelError(f"model {spec.name!r}: prepare_comparison must return a metagen_ppl.engine.comparison."
                         f"ComparisonSetup, got {type(setup).__name__}")
    return setup


# --------------------------------------------------------------------------- runners
def _check_method_names(methods=None) -> list:
    """The requested method names (default: all), each a known one."""
    wanted = list(BASE_METHODS) if methods is None else list(methods)
    for m in wanted:
        if m not in BASE_METHODS and not (m.startswith("em-") and m[3:] in CATEGORY_STRATEGIES):
            raise MetagenError(f"unknown method {m!r}; choose from {', '.join(BASE_METHODS)} "
                               f"(or em-{'/em-'.join(CATEGORY_STRATEGIES)} for category models)")
    return wanted


def method_names(setup: ComparisonSetup, methods=None) -> list:
    """The methods of a comparison, in report order; ``"em"`` expands to every category strategy."""
    wanted = _check_method_names(methods)
    out = []
    for m in wanted:
        if m == "em" and setup.category_strategies:
            out.extend(f"em-{s}" for s in setup.category_strategies)
        elif m.startswith("em-") and not setup.category_strategies:
            raise MetagenError(f"method {m!r} needs a model with per-object category sites; use 'em'")
        else:
            out.append(m)
    seen = set()
    return [m for m in out if not (m in seen or seen.add(m))]


def _run_method(spec: ModelSpec, setup: ComparisonSetup, method: str, budget: Budget, seed: int,
                progress: bool) -> FitResult:
    b = budget
    common = dict(seed=seed, progress=progress, options=setup.options)
    if setup.init:
        common["init"] = setup.init
    K, data = setup.num_objects, setup.data
    if setup.category_strategies:
        if method.startswith("em-"):
            res = cat.fit_categorical(data, K, strategy=method[3:], model=spec, num_inits=b.em_inits,
                                      max_iter=b.em_max_iter, tol=b.em_tol,
                                      num_category_samples=b.category_samples, **common)
        elif method in ("svi-map", "svi-normal"):
            res = cat.fit_categorical_svi(data, K, model=spec, guide="normal" if method == "svi-normal" else "delta",
                                          num_steps=b.svi_steps, lr=b.svi_lr,
                                          num_posterior_samples=b.svi_normal_samples, **common)
        else:
            res = cat.fit_categorical_mcmc(data, K, model=spec, num_samples=b.mcmc_samples,
                                           warmup_steps=b.mcmc_warmup, num_chains=b.mcmc_chains,
                                           max_tree_depth=b.mcmc_max_tree_depth,
                                           target_accept_prob=b.mcmc_target_accept, jit_compile=b.mcmc_jit,
                                           **common)
    elif method == "em":
        res = fit_em(spec, data, K, num_inits=b.em_inits, max_iter=b.em_max_iter, tol=b.em_tol, **common)
    elif method in ("svi-map", "svi-normal"):
        res = fit_svi(spec, data, K, guide="normal" if method == "svi-normal" else "delta", num_steps=b.svi_steps,
                      lr=b.svi_lr, num_posterior_samples=b.svi_normal_samples, **common)
    else:
        if setup.init:
            common["init_chains"] = setup.mcmc_init_chains
        res = fit_mcmc(spec, data, K, num_samples=b.mcmc_samples, warmup_steps=b.mcmc_warmup,
                       num_chains=b.mcmc_chains, max_tree_depth=b.mcmc_max_tree_depth,
                       target_accept_prob=b.mcmc_target_accept, jit_compile=b.mcmc_jit, **common)
    res.method = method
    return res


def run_method_unit(payload: dict, method: str, budget: Budget, seed: int) -> Outcome:
    """One method of a comparison as a task of ``--scheduler`` (any process): the model loaded from its
    reference, the set-up's data, structure and start from ``payload``; the :class:`Outcome` (result or
    error, and the warnings) instead of raising, so that a failing method is a row, not a retried task."""
    spec = load_reference(payload["model"])
    setup = ComparisonSetup(data=payload["data"], num_objects=payload["num_objects"], options=payload["options"],
                            init=payload["init"], mcmc_init_chains=payload["mcmc_init_chains"],
                            category_strategies=payload["category_strategies"])
    with torch_threads(payload["threads"]):
        return capture(_run_method, spec, setup, method, budget, seed, False)


def _run_on_executor(executor, spec, setup, pending, budget, seed, names, results, out_dir, log, run_and_save):
    """The ``pending`` methods as independent tasks on ``executor`` (:func:`run_method_unit`); each is saved
    as soon as it finishes (``run_and_save``), in the order they finish."""
    payload = {"model": model_reference(spec), "data": setup.data, "num_objects": setup.num_objects,
               "options": setup.options, "init": setup.init, "mcmc_init_chains": setup.mcmc_init_chains,
               "category_strategies": tuple(setup.category_strategies), "threads": torch.get_num_threads()}
    log(f"{', '.join(m for _, m, *_ in pending)}: {len(pending)} task(s) on {executor.name}")
    shared = executor.scatter([payload], broadcast=True)[0]

    def finished(k, outcome):
        i, m, fp, settings, inputs = pending[k]
        run_and_save(i, m, fp, settings, inputs, outcome.unwrap, outcome.traceback)

    n = len(pending)
    try:
        executor.map(run_method_unit, [shared] * n, [m for _, m, *_ in pending], [budget] * n, [seed] * n,
                     key="compare-method", on_result=finished)
    except KeyboardInterrupt as e:
        done = [m for m in names if m in results]
        kept = f" (finished: {', '.join(done)})" if done else ""
        raise FitInterrupted(out_dir, None, f"interrupted while methods ran on {executor.name}; rerun the same "
                                            f"command with --resume to continue{kept}; results in {out_dir}") from e


def _method_settings(method: str, budget: Budget) -> dict:
    b = dataclasses.asdict(budget)
    if method.startswith("em"):
        keys = ("em_inits", "em_max_iter", "em_tol", "category_samples")
    elif method.startswith("svi"):
        keys = ("svi_steps", "svi_lr") + (("svi_normal_samples",) if method == "svi-normal" else ())
    else:
        keys = ("mcmc_samples", "mcmc_warmup", "mcmc_chains", "mcmc_max_tree_depth", "mcmc_target_accept",
                "mcmc_jit")
    return {k: b[k] for k in keys}


# --------------------------------------------------------------------------- storage
def _fingerprint(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_netcdf(idata, path) -> None:
    """``idata.to_netcdf`` through :func:`metagen_ppl.io.atomic_path` (atomic)."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(tmp, engine="h5netcdf")


def _save_method(out_dir, method, res: Optional[FitResult], status: dict) -> dict:
    mdir = os.path.join(out_dir, "methods")
    os.makedirs(mdir, exist_ok=True)
    files = {}
    if res is not None:
        files["result"] = os.path.join("methods", f"{method}.json")
        res.to_json(os.path.join(out_dir, files["result"]), include_posteriors=True)
        try:
            idata = res.to_inference_data()
            files["inference_data"] = os.path.join("methods", f"{method}.nc")
            _write_netcdf(idata, os.path.join(out_dir, files["inference_data"]))
        except Exception as e:  # a result without an InferenceData still counts
            status.setdefault("notes", []).append(f"no InferenceData: {type(e).__name__}: {e}")
    status = dict(status, files=files)
    # the status file is written last: its presence means the method's files are complete
    atomic_write_json(os.path.join(mdir, f"{method}.status.json"), status)
    return status


#: The files ``compare`` writes in its folder (besides ``methods/``): a new run (not ``--resume``) removes
#: them first, so no stale report, plot or result of an earlier run stands beside the new ones.
OUTPUT_FILES = ("data.json", "results.json", "report.md", "report.html", "objectives.png", "mcmc_trace.png",
                "mcmc_rank.png", "mcmc_forest.png", "assignments.png", "scene.png")


def _clear_outputs(out_dir, keep=None) -> list:
    """Remove an earlier run's outputs (:data:`OUTPUT_FILES`, ``methods/``) from ``out_dir``, except the
    file ``keep`` (the input data, if it lives there); returns their names."""
    keep = os.path.realpath(keep) if isinstance(keep, (str, os.PathLike)) else None
    removed = [f for f in OUTPUT_FILES if os.path.isfile(os.path.join(out_dir, f))
               and os.path.realpath(os.path.join(out_dir, f)) != keep]
    for f in removed:
        os.remove(os.path.join(out_dir, f))
    mdir = os.path.join(out_dir, "methods")
    if os.path.isdir(mdir):
        for f in sorted(os.listdir(mdir)):
            if f.endswith((".json", ".nc")):
                os.remove(os.path.join(mdir, f))
                removed.append(os.path.join("methods", f))
    return removed


def _read_status(out_dir, method) -> Optional[dict]:
    path = os.path.join(out_dir, "methods", f"{method}.status.json")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _changes(old: dict, new: dict, prefix: str = "") -> list:
    """``"key old -> new"`` for every entry that differs (nested dicts flattened)."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "(unset)"), new.get(k, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a} -> {b}")
    return out


def _load_method(out_dir, method, fingerprint, inputs: Optional[dict] = None):
    """A finished method's ``(FitResult, status)`` if its files match ``fingerprint``, else the reason it
    must run again (a string)."""
    status = _read_status(out_dir, method)
    if status is None:
        return "no finished run of it in this folder"
    if status.get("status") != "ok":
        return "it failed in the earlier run"
    if status.get("fingerprint") != fingerprint:
        changed = _changes(status.get("inputs") or {}, inputs or {})
        return "its settings changed: " + ("; ".join(changed) if changed else "(another version of the settings)")
    try:
        with open(os.path.join(out_dir, status["files"]["result"]), encoding="utf-8") as fh:
            res = FitResult.from_dict(json.load(fh))
        nc = status["files"].get("inference_data")
        if nc and res.info.get("has_samples"):
            import arviz as az

            idata = az.from_netcdf(os.path.join(out_dir, nc))
            res.samples = {k: torch.as_tensor(idata.posterior[k].values) for k in idata.posterior.data_vars}
    except (OSError, ValueError, KeyError, TypeError):
        return "its result files are missing or unreadable"
    return res, status


# --------------------------------------------------------------------------- plots
def _plots(out_dir, spec, setup, results, seed, log) -> tuple:
    """Every plot of the report; a plot that fails is listed, not fatal."""
    files, failures = {}, []
    ok = [r for r in results.values() if r is not None]
    point = [r for r in ok if r.method != "mcmc"]
    mcmc = results.get("mcmc")

    def attempt(name, fn):
        try:
            out = fn()
        except Exception as e:
            failures.append(f"{name} plot failed: {type(e).__name__}: {e}")
            return
        if isinstance(out, dict):
            files.update({f"{name}_{k}": v for k, v in out.items() if v})
        elif out:
            files[name] = out

    p = lambda name: os.path.join(out_dir, name)  # noqa: E731
    attempt("objectives", lambda: plots.plot_objectives(
        p("objectives.png"), [r for r in ok if r.method.startswith(("em", "svi"))],
        title=f"{spec.name}: EM log joint per iteration and SVI ELBO per step"))
    if mcmc is not None:
        attempt("mcmc", lambda: plots.plot_mcmc_diagnostics(os.path.join(out_dir, "mcmc"), mcmc, point_results=point))
    with_post = [r for r in ok if setup.assignment_site in (r.posteriors or {})]
    if with_post:
        em_mcmc = [r for r in with_post if r.method.startswith("em") or r.method == "mcmc"] or with_post
        attempt("assignments", lambda: plots.plot_assignments(
            p("assignments.png"), em_mcmc, site=setup.assignment_site, num_obs=20, seed=seed,
            mask=setup.assignment_mask))
    if setup.scene is not None:
        estimates, draws = {}, {}
        for r in ok:
            loc = setup.scene(r)
            if loc is not None and len(loc):
                estimates[r.method] = np.asarray(loc, dtype=float)
        if mcmc is not None and mcmc.samples:
            site = spec.location_site
            if site and site in mcmc.samples and mcmc.samples[site].shape[-1] == 3:
                draws["mcmc draws"] = mcmc.samples[site].detach().double().reshape(-1, 3).numpy()
        attempt("scene", lambda: plots.plot_scene_arrays(
            p("scene.png"), observations=setup.scene_observations, truth=setup.scene_truth, estimates=estimates,
            draws=draws, extra=setup.scene_extra,
            title=f"{spec.name}: " + ("observations (grey), " if setup.scene_observations is not None else "")
            + "truth (x) and each method's estimate"))
    for f in failures:
        log(f"warning: {f}")
    return files, failures


# --------------------------------------------------------------------------- report


# --------------------------------------------------------------------------- main entry
def _check_resumed_data(out_dir, names, data_fp) -> None:
    """``--resume`` on a folder whose methods were fitted to other data is refused (nothing there could be reused)."""
    for m in names:
        old = ((_read_status(out_dir, m) or {}).get("inputs") or {}).get("data")
        if old is not None and old != data_fp:
            raise DataError(f"--resume: {out_dir!r} holds results for another data set (method {m}); use another "
                            "--out, or drop --resume to run every method again on this data")


def _load_data(spec, data, out_dir, seed, resume, simulation=None) -> tuple:
    """``(obj, source)``: the data set as parsed JSON and where it came from."""
    if data is None:
        path = os.path.join(out_dir, "data.json")
        sizes = getattr(spec.module, "COMPARE_SIMULATION", None) or {}
        args = tuple(simulation if simulation is not None else sizes.get("args", (4, 600)))
        kwargs = dict(sizes.get("kwargs", {}))
        if spec.simulate is None:
            raise ModelError(f"model {spec.name!r} has no simulate() hook; give a data file with --data")
        obj = json.loads(json.dumps(spec.simulate(*args, seed, **kwargs)))  # as it reads back from the file
        if resume and os.path.isfile(path):
            if _fingerprint(load_json(path)) != _fingerprint(obj):
                raise DataError(f"{path!r} holds a different simulated data set than this run (another seed, "
                                "model or size); use another --out, or drop --resume to start again")
        atomic_write_json(path, obj)
        return obj, f"simulated (sizes {args}, seed {seed}; data.json)"
    if isinstance(data, (dict, list)):
        return data, "<data>"
    return load_json(data), os.fspath(data)


def compare(model="baseline", data=None, *, out_dir="metagen-compare", seed: int = 0, methods=None,
            num_objects: Optional[int] = None, options: Optional[dict] = None, dtype="float64",
            budget: Optional[Budget] = None, simulation: Optional[tuple] = None, resume: bool = False,
            progress: bool = False, threads: Optional[int] = 1,
            log: Optional[Callable[[str], None]] = None, scheduler=None, **budget_kw) -> dict:
    """Run EM, SVI-MAP, SVI-AutoNormal and MCMC on one model and data set; write the report.

    Parameters
    ----------
    model : str, path or ModelSpec
    data : path, parsed JSON, or None
        ``None`` simulates a data set with the model's ``simulate`` hook (sizes from
        the module's ``COMPARE_SIMULATION = {"args": (...), "kwargs": {...}}``).
    out_dir : path
        The report folder (created).
    seed : int
        One seed for the simulation and every method.
    methods : list of str, optional
        Subset of ``("em", "svi-map", "svi-normal", "mcmc")`` (``em-<strategy>`` for category models).
    num_objects : int, optional
        ``K``; default: the data file's ``num_objects`` (or the truth's).
    options : dict, optional
        Model keyword options.
    dtype : {"float64", "float32"}
    simulation : tuple, optional
        The positional size arguments of ``simulate`` (e.g. ``(K, N)`` for the point
        models), overriding the model's ``COMPARE_SIMULATION``.
    budget : Budget, optional
        Budgets; ``budget_kw`` (fields of :class:`Budget`) override single entries.
        Model defaults (``COMPARE_BUDGET``) apply where neither is given.
    resume : bool
        Reuse every method already finished in ``out_dir`` with the same data and settings.
    threads : int or None
        torch intra-op threads during the run (restored after). The default 1 is
        fastest for the small tensors of these models: more threads only add
        synchronisation, and on a busy machine they oversubscribe the cores
        (measured up to 10x slower NUTS). ``None`` keeps torch's setting.
    scheduler : str or Executor, optional
        ``None`` (default): the methods one after another in this process. Given (``"inprocess"``,
        ``"processes[:N]"``, ``"tcp://host:port"`` or an :class:`~metagen_ppl.engine.distributed.Executor`),
        every method to run is an independent task on that scheduler (the set-up, e.g. a structure
        search, still runs here), each saved as soon as it finishes; the results are the same.

    Returns
    -------
    dict with ``rows`` (the table as dicts), ``table`` (Markdown), ``warnings``,
    ``report`` (path of report.md), ``html``, ``results_json``, ``files``, ``wall_time_s``.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise MetagenError(f"threads must be a positive integer (or None for torch's default), got {threads!r}")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with open_executor(scheduler, log=log) as executor:
            return _compare(model, data, out_dir, seed, methods, num_objects, options, dtype, budget, simulation,
                            resume, progress, log, budget_kw, executor)
    finally:
        torch.set_num_threads(saved_threads)


def _compare(model, data, out_dir, seed, methods, num_objects, options, dtype, budget, simulation, resume,
             progress, log, budget_kw, executor=None) -> dict:
    t_start = time.perf_counter()
    log = log or (lambda msg: None)
    spec = load_model(model)
    dt = {"float64": torch.float64, "float32": torch.float32, torch.float64: torch.float64,
          torch.float32: torch.float32}.get(dtype)
    if dt is None:
        raise MetagenError(f"unknown dtype {dtype!r}; choose 'float64' or 'float32'")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"--out {out_dir!r} exists and is not a directory; choose another path")
    os.makedirs(out_dir, exist_ok=True)
    seed = check_seed(seed)

    if data is not None and simulation is not None:
        raise MetagenError("give either a data set or simulation sizes, not both")
    # cheap checks first: bad budgets or method names fail before any work is done
    defaults = dict(getattr(spec.module, "COMPARE_BUDGET", None) or {})
    base = dataclasses.asdict(budget) if budget is not None else dataclasses.asdict(Budget(**defaults))
    unknown = sorted(set(budget_kw) - set(base))
    if unknown:
        raise MetagenError(f"unknown budget option(s) {unknown}; known: {sorted(base)}")
    base.update({k: v for k, v in budget_kw.items() if v is not None})
    budget = Budget(**base).check()
    _check_method_names(methods)
    if not resume:
        stale = _clear_outputs(out_dir, keep=data)
        if stale:
            log(f"removed {len(stale)} file(s) of an earlier run in {out_dir} (--resume keeps them)")
    obj, source = _load_data(spec, data, out_dir, seed, resume, simulation)
    t_setup = time.perf_counter()
    setup = _setup(spec, obj, seed=seed, dtype=dt, num_objects=num_objects, options=options,
                   progress=progress, log=log, source=source)
    setup_s = time.perf_counter() - t_setup
    names = method_names(setup, methods)
    log(f"{spec.name} on {source}: K = {setup.num_objects}; methods {', '.join(names)}")

    data_fp = _fingerprint(obj)
    common_fp = {"model": spec.name, "data": data_fp, "seed": seed, "K": setup.num_objects,
                 "options": {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in setup.options.items()},
                 "dtype": str(dt)}
    if resume:
        _check_resumed_data(out_dir, names, data_fp)
    results, statuses = {}, {}

    def run_and_save(i, m, fp, settings, inputs, compute, remote_traceback=None):
        status = {"method": m, "fingerprint": fp, "settings": settings, "inputs": inputs}
        res = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = compute()
                bad = [k for k, v in res.params.items() if torch.is_tensor(v) and v.is_floating_point()
                       and not torch.isfinite(v).all()]
                if bad or not math.isfinite(res.log_likelihood):
                    raise FloatingPointError(f"non-finite estimate (sites {bad or ['log likelihood']})")
                status["status"] = "ok"
            except KeyboardInterrupt as e:
                done = [n for n in names if n in results]
                kept = f" (finished: {', '.join(done)})" if done else ""
                raise FitInterrupted(out_dir, None, f"interrupted during {m}; rerun the same command with --resume "
                                                    f"to continue{kept}; results in {out_dir}") from e
            except Exception as e:
                res = None
                status.update(status="failed", error=f"{type(e).__name__}: {' '.join(str(e).split())}",
                              traceback=remote_traceback or traceback.format_exc())
        status["warnings"] = sorted({" ".join(str(w.message).split()) for w in caught})
        if res is not None:
            res.info["has_samples"] = bool(res.samples)
            status["wall_time_s"] = float(res.wall_time_s)
        statuses[m] = _save_method(out_dir, m, res, status)
        results[m] = res
        msg = (f"{m}: {res.info.get('log_likelihood_of', 'log lik.')} = {res.log_likelihood:.6g}, {res.n_iter} "
               f"{'draws' if m == 'mcmc' else ('steps' if m.startswith('svi') else 'iterations')}, "
               f"{res.wall_time_s:.1f} s"
               if res is not None else f"{m}: FAILED ({status['error']})")
        log(f"[{i}/{len(names)}] " + msg)

    pending = []                                  # with a scheduler: the methods to run there
    for i, m in enumerate(names, 1):
        settings = _method_settings(m, budget)
        inputs = {**common_fp, "method": m, "settings": settings}
        fp = _fingerprint(inputs)
        if resume:
            loaded = _load_method(out_dir, m, fp, inputs)
            if isinstance(loaded, tuple):
                results[m], statuses[m] = loaded
                log(f"[{i}/{len(names)}] {m}: finished in an earlier run, reused (--resume)")
                continue
            log(f"[{i}/{len(names)}] {m}: runs again (--resume): {loaded}")
        if executor is not None:
            pending.append((i, m, fp, settings, inputs))
            continue
        log(f"[{i}/{len(names)}] {m} ...")
        run_and_save(i, m, fp, settings, inputs, lambda: _run_method(spec, setup, m, budget, seed, progress))
    if pending:
        _run_on_executor(executor, spec, setup, pending, budget, seed, names, results, out_dir, log, run_and_save)

    # R-hat and ESS once per MCMC result, for the table and the diagnostics
    summaries = {m: mcmc_summary(r) for m, r in results.items() if r is not None and m == "mcmc"}
    rows = list(setup.extra_rows) + [table_row(m, results[m], statuses[m], setup, summaries.get(m)) for m in names]
    warns = []
    for m in names:
        if results[m] is None:
            warns.append(f"{m}: failed with {statuses[m].get('error')}; the other methods ran "
                         f"(traceback in methods/{m}.status.json)")
        else:
            warns.extend(diagnose(m, results[m], budget, summaries.get(m)))
    warns.extend(agreement_warnings(rows))
    files, plot_failures = _plots(out_dir, spec, setup, results, seed, log)
    warns.extend(plot_failures)
    table = table_markdown(rows)

    n_desc = _data_size(setup.data)
    header = [f"Model `{spec.name}`; data: {source} ({n_desc}); K = {setup.num_objects} object slots; seed {seed}; "
              f"{str(dt).replace('torch.', '')}.",
              f"Budgets: EM {budget.em_inits} restarts x <= {budget.em_max_iter} iterations (tol {budget.em_tol:g}); "
              f"SVI {budget.svi_steps} steps (lr {budget.svi_lr:g}); MCMC {budget.mcmc_chains} chains x "
              f"({budget.mcmc_warmup} warm-up + {budget.mcmc_samples} draws), max tree depth "
              f"{budget.mcmc_max_tree_depth}.",
              f"Set-up (data conversion{' and structure search' if setup.extra_rows else ''}): {setup_s:.1f} s."]
    figures = []
    captions = [("objectives", "Objective traces (EM and SVI)"), ("mcmc_trace", "MCMC trace (arviz)"),
                ("mcmc_rank", "MCMC rank plot (arviz)"), ("mcmc_forest", "MCMC forest plot, standardised per scalar (posterior mean 0, sd 1), with EM and "
                 "SVI estimates, ESS and R-hat"),
                ("assignments", "Posterior assignment probabilities of the 20 most uncertain observations"), ("scene", "Scene")]
    for key, caption in captions:
        if files.get(key):
            figures.append((caption, os.path.relpath(files[key], out_dir)))
    title = f"metagen-ppl compare: {spec.name}"
    definitions = column_definitions(rows, setup)
    md = report_markdown(title, header, table, warns, setup.notes, figures, definitions)

    report_md = os.path.join(out_dir, "report.md")
    html_path = os.path.join(out_dir, "report.html")
    atomic_write_text(report_md, md)
    atomic_write_text(html_path, report_html(title, header, rows, warns, setup.notes, figures, out_dir,
                                                    definitions))
    wall = time.perf_counter() - t_start
    summary = {"model": spec.name, "data": source, "num_objects": setup.num_objects, "seed": seed,
               "dtype": str(dt).replace("torch.", ""), "budget": dataclasses.asdict(budget), "methods": names,
               "rows": rows, "warnings": warns, "notes": setup.notes,
               "status": {m: {k: v for k, v in s.items() if k != "traceback"} for m, s in statuses.items()},
               "files": {k: os.path.relpath(v, out_dir) for k, v in files.items()},
               "wall_time_s": wall}
    results_json = os.path.join(out_dir, "results.json")
    atomic_write_json(results_json, to_jsonable(summary))
    return dict(rows=rows, table=table, warnings=warns, report=report_md, html=html_path, status=summary["status"],
                results_json=results_json, files=files, wall_time_s=wall, results=results, setup=setup)


def _data_size(data: dict) -> str:
    parts = []
    for k, v in data.items():
        if torch.is_tensor(v) and v.dim() > 0:
            parts.append(f"{k}: {tuple(v.shape)}")
    return ", ".join(parts[:3]) or "no tensors"
