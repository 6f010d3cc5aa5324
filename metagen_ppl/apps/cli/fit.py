"""``metagen-ppl fit``: fit a model to a data file with EM, SVI or MCMC; write a result file."""

from __future__ import annotations

import math

import torch

from metagen_ppl.apps.cli.common import (EXIT_OK, Formatter, check_model_options, parse_options, prepare_output,
                                         report_created,
                                         progress_enabled, say, seed_argument)
from metagen_ppl.apps.report import location_error_vs_truth
from metagen_ppl.engine.components import model_components
from metagen_ppl.engine.em import fit_em
from metagen_ppl.engine.mcmc import fit_mcmc
from metagen_ppl.engine.registry import load_model
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.engine.validate import check_options, num_observations
from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.io import data_from_json, load_json, num_objects_from_json
from metagen_ppl.models.categorical import strategies as categories
from metagen_ppl.util import auto_threads

METHODS = ("em", "svi", "svi-map", "svi-normal", "mcmc")


#: Where the multi-scene models are fitted and simulated from the command line.
MULTI_SCENE = {
    "detector": "use 'metagen-ppl metacognition simulate|fit' (multi-scene 3D detections)",
    "projective": "use 'metagen-ppl evaluate --data FILE --out DIR' (MetaGen detector files)",
}


def _structure(spec, data, k, options):
    """The model's per-object structure on this data (its observed site's plates, its location site), or
    ``None`` where the model cannot be traced alone (e.g. it needs options the categorical strategies add)."""
    try:
        return model_components(spec, data, k, options)
    except (MetagenError, RuntimeError, TypeError, ValueError, KeyError, IndexError):
        return None


def _num_inits(args, default: int) -> int:
    return default if args.num_inits is None else args.num_inits


def _check_fit_args(args) -> None:
    """Numeric arguments of ``fit`` that the engines would not reject clearly."""
    if not (math.isfinite(args.tol) and args.tol >= 0):
        raise DataError(f"--tol must be a finite number >= 0, got {args.tol}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise DataError(f"--lr must be a finite number > 0, got {args.lr}")
    if not 0 < args.target_accept < 1:
        raise DataError(f"--target-accept must be in (0, 1), got {args.target_accept}")
    if args.max_tree_depth < 1:
        raise DataError(f"--max-tree-depth must be at least 1, got {args.max_tree_depth}")


def run(args) -> int:
    _check_fit_args(args)
    created = prepare_output(args.out)
    spec = load_model(args.model)
    options = parse_options(args.option)
    check_model_options(spec, options)
    if spec.name in MULTI_SCENE and "cats" not in options:
        raise ModelError(f"model {spec.name!r} needs a search over each scene's objects, which 'fit' "
                         f"does not do; {MULTI_SCENE[spec.name]}")
    obj = load_json(args.data)
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    data = data_from_json(obj, spec, dtype=dtype, source=args.data)
    k = args.num_objects if args.num_objects is not None else num_objects_from_json(obj, args.data)
    if k is None:
        raise DataError(f"give --num-objects: {args.data!r} has no 'num_objects' field")
    origin = "--num-objects" if args.num_objects is not None else "'num_objects' (in the file)"
    if k < 1:
        raise DataError(f"{origin} must be at least 1, got {k}")
    x = data.get("x")
    if torch.is_tensor(x) and x.dim() >= 1 and k > num_observations(x):
        raise DataError(f"{origin} = {k} exceeds the {num_observations(x)} observations of {args.data}; "
                        "use K <= N")
    check_options(options, k, where="--option")
    if args.threads == "auto":  # large data sets make even the point models a batched workload
        torch.set_num_threads(auto_threads("small", size=max((v.numel() for v in data.values()
                                                               if torch.is_tensor(v)), default=0) * k))
    progress = progress_enabled(args)
    method = "svi-map" if args.method == "svi" else args.method
    if args.categories is not None or spec.name == "categorical":
        result = _fit_categorical(args, spec, data, k, method, progress, options)
    elif method == "em":
        result = fit_em(spec, data, k, seed=args.seed, num_inits=_num_inits(args, 3), mstep=args.mstep,
                        optimizer=args.optimizer, tol=args.tol, max_iter=args.max_iter,
                        progress=progress, options=options)
    elif method in ("svi-map", "svi-normal"):
        result = fit_svi(spec, data, k, guide="normal" if method == "svi-normal" else "delta",
                         num_steps=args.num_steps, lr=args.lr, seed=args.seed, num_inits=_num_inits(args, 1),
                         progress=progress, options=options)
    else:
        result = fit_mcmc(spec, data, k, num_samples=args.num_samples, warmup_steps=args.warmup,
                          num_chains=args.num_chains, seed=args.seed, max_tree_depth=args.max_tree_depth,
                          jit_compile=args.jit,
                          target_accept_prob=args.target_accept, progress=progress, options=options)
    comps = _structure(spec, data, k, options)
    site = comps.location_site if comps is not None and comps.location_site else spec.location_site
    err, why = location_error_vs_truth(result.params, obj.get("truth") if isinstance(obj, dict) else None, site)
    if err is not None:
        result.info["location_error_vs_truth"] = err
    elif why:
        result.info["location_error_missing"] = why
    if args.out:
        result.to_json(args.out)
    if comps is not None and comps.num_observations is not None:
        n = comps.describe_observations()
    else:
        n = next((num_observations(v) for v in data.values() if torch.is_tensor(v) and v.dim() > 0), "?")
    line = (f"{result.method} {result.model} K={k} N={n}: log_likelihood={result.log_likelihood:.6g} "
            f"[{result.info.get('log_likelihood_of', 'log p(data|theta)')}] "
            f"n_iter={result.n_iter} converged={result.converged} wall={result.wall_time_s:.2f}s")
    if err is not None:
        line += f" location_error={err:.4g}" + (f" ({why})" if why else "")
    if args.out:
        line += f" -> {args.out}"
    say(line)
    if err is None and why:
        say(f"no location error: {why}")
    report_created(created)
    return EXIT_OK


def _fit_categorical(args, spec, data, k, method, progress, options):
    """Model M2 (or a variant with per-object category sites): the three EM category strategies."""
    if method == "em":
        return categories.fit_categorical(
            data, k, strategy=args.categories or "mstep", model=spec,
            num_category_samples=args.num_category_samples, proposal=args.proposal, seed=args.seed,
            num_inits=_num_inits(args, 3), mstep=args.mstep, optimizer=args.optimizer, tol=args.tol,
            max_iter=args.max_iter, progress=progress, options=options)
    if method in ("svi-map", "svi-normal"):
        return categories.fit_categorical_svi(
            data, k, model=spec, guide="normal" if method == "svi-normal" else "delta",
            num_steps=args.num_steps, lr=args.lr, seed=args.seed, num_inits=_num_inits(args, 1), progress=progress,
            options=options)
    return categories.fit_categorical_mcmc(
        data, k, model=spec, num_samples=args.num_samples, warmup_steps=args.warmup,
        num_chains=args.num_chains, seed=args.seed, max_tree_depth=args.max_tree_depth,
        jit_compile=args.jit, target_accept_prob=args.target_accept, progress=progress, options=options)


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl fit``."""
    p = sub.add_parser("fit", parents=[parents["common"], parents["model"], parents["progress"]],
                       formatter_class=Formatter,
                       help="fit a model to a data file with EM, SVI or MCMC; write a result JSON file",
                       description="Fit a model to observations with EM (MAP-EM), SVI (AutoDelta MAP "
                                   "or AutoNormal) or MCMC (NUTS, assignments enumerated out).")
    p.add_argument("--method", "-m", choices=METHODS, default="em",
                   help="inference method ('svi' is 'svi-map')")
    p.add_argument("--data", "-d", required=True, help="data file (JSON exchange format)")
    p.add_argument("--num-objects", "-K", type=int, default=None,
                   help="number of objects K (default: the data file's num_objects)")
    p.add_argument("--seed", type=seed_argument, default=0, help="random seed")
    p.add_argument("--out", "-o", default=None, help="output result file (JSON); none if omitted")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="floating-point precision of the fit; the data file is read in it")
    g = p.add_argument_group("EM options")
    g.add_argument("--num-inits", type=int, default=None,
                   help="restarts, the best kept: EM (default 3) and SVI (default 1; the best final ELBO)")
    g.add_argument("--max-iter", type=int, default=200, help="EM iteration limit")
    g.add_argument("--tol", type=float, default=1e-6, help="EM relative tolerance on the log joint")
    g.add_argument("--mstep", choices=("auto", "closed", "optimizer"), default="auto",
                   help="M-step: the model's closed form where it has one, or the generic optimiser")
    g.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs", help="optimiser of the generic M-step")
    g = p.add_argument_group("SVI options")
    g.add_argument("--num-steps", type=int, default=1000, help="SVI steps")
    g.add_argument("--lr", type=float, default=0.05, help="SVI learning rate (Adam)")
    g = p.add_argument_group("MCMC options")
    g.add_argument("--num-samples", type=int, default=300, help="NUTS draws per chain")
    g.add_argument("--warmup", type=int, default=200, help="NUTS warm-up steps per chain")
    g.add_argument("--num-chains", type=int, default=2, help="NUTS chains (run one after another)")
    g.add_argument("--max-tree-depth", type=int, default=8, help="NUTS maximum tree depth")
    g = p.add_argument_group("categories (model categorical, or any model with per-object category sites)")
    g.add_argument("--categories", choices=("sample", "enumerate", "mstep"), default=None,
                   help="EM strategy for the object categories: sampled-category conditioning, exact "
                        "enumeration with the assignments, or the closed-form discrete M-step "
                        "(default for the categorical model: mstep)")
    g.add_argument("--num-category-samples", type=int, default=32,
                   help="category vectors drawn by --categories sample")
    g.add_argument("--proposal", choices=("prior", "data"), default="data",
                   help="where --categories sample draws category vectors from")
    g = p.add_argument_group("MCMC (JIT)")
    g.add_argument("--jit", action="store_true",
                   help="JIT-compile NUTS's potential energy (2-3x faster; for models whose "
                        "control flow does not depend on parameter values)")
    g.add_argument("--target-accept", type=float, default=0.8, help="NUTS target acceptance probability")
    p.set_defaults(func=run)  # _cmd_fit)
    return p
