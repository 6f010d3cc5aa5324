"""The ``metagen-ppl`` command line: ``simulate``, ``fit`` and ``demo``.

Every command has ``--help``. Bad input (a missing or malformed file, NaN in
the data, an unknown model, K < 1, ...) ends with one line
``metagen-ppl: error: <message>`` on stderr and exit code 2; ``--debug``
(before or after the command name) also prints the traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import traceback
import warnings
from typing import Optional, Sequence

from .errors import DataError, MetagenError, ModelError

PROG = "metagen-ppl"
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
METHODS = ("em", "svi", "svi-map", "svi-normal", "mcmc")
_RESERVED_OPTIONS = {"data": "--data", "num_objects": "--num-objects", "num_obs": "--num-obs", "seed": "--seed"}


class _UsageError(Exception):
    """A command-line syntax error (raised instead of argparse's print-usage-and-exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, exit code 2 (handled in main)
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` where a default exists and the help text does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


# --------------------------------------------------------------------------- helpers
def _say(*parts, file=None):
    print(*parts, file=file or sys.stdout, flush=True)


def _parse_options(pairs: Optional[Sequence[str]]) -> dict:
    """``["scale=0.5", "weights=[0.5,0.5]"]`` -> ``{"scale": 0.5, "weights": [0.5, 0.5]}`` (JSON when it parses)."""
    out = {}
    for item in pairs or ():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise DataError(f"--option expects key=value (e.g. --option scale=0.5), got {item!r}")
        if key in _RESERVED_OPTIONS:
            raise DataError(f"--option {key}=... is not allowed; use {_RESERVED_OPTIONS[key]}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


def _keyword_names(fn, skip: int):
    """Keyword parameter names of ``fn`` after the first ``skip`` positional ones; ``None`` if it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names, positional = set(), 0
    for p in params:
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and positional < skip:
            positional += 1
            continue
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    return names


def _check_options(spec, options: dict, for_simulate: bool = False) -> None:
    """Reject ``--option`` keys the model (or its simulator) does not take, naming the ones it does."""
    if not options:
        return
    allowed = _keyword_names(spec.model, 2)
    if for_simulate and spec.simulate is not None:
        sim = _keyword_names(spec.simulate, 3)
        params = inspect.signature(spec.simulate).parameters.values()
        forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        if sim is None and not forwards:
            allowed = None
        elif forwards:  # simulate(**options) passes the rest to the model
            own = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
            allowed = None if allowed is None else allowed | own
        else:
            allowed = sim
    if allowed is None:
        return
    allowed -= set(_RESERVED_OPTIONS)
    for key in options:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ModelError(f"model {spec.name!r} has no option {key!r}; its options are: {known}")


def _progress_enabled(args) -> bool:
    if getattr(args, "progress", None) is not None:
        return bool(args.progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _location_error(result, truth, location_site):
    """Location error of a result against a ``truth`` dict, or ``None`` if either lacks locations."""
    if not isinstance(truth, dict) or location_site not in truth or location_site not in result.params:
        return None
    import torch

    from .align import location_error

    est = result.params[location_site].detach().double()
    try:
        true = torch.as_tensor(truth[location_site], dtype=torch.float64)
    except (TypeError, ValueError):
        return None
    if true.dim() != 2 or true.shape[-1] != est.shape[-1]:
        return None
    return float(location_error(est, true))


# --------------------------------------------------------------------------- commands
def _cmd_simulate(args) -> int:
    from .io import check_output_path, save_data
    from .registry import load_model
    from .validate import check_options

    check_output_path(args.out)
    spec = load_model(args.model)
    if spec.name in _MULTI_SCENE:
        raise ModelError(f"model {spec.name!r} simulates a list of scenes, not the single-scene data file "
                         f"of 'simulate'; {_MULTI_SCENE[spec.name]}")
    if spec.simulate is None:
        raise ModelError(f"model {spec.name!r} defines no simulate(num_objects, num_obs, seed, **options); "
                         "it cannot simulate data")
    if args.num_objects < 1:
        raise DataError(f"--num-objects must be at least 1, got {args.num_objects}")
    if args.num_obs < 1:
        raise DataError(f"--num-obs must be at least 1, got {args.num_obs}")
    if args.num_objects > args.num_obs:
        raise DataError(f"--num-objects {args.num_objects} exceeds --num-obs {args.num_obs}; use K <= N")
    options = _parse_options(args.option)
    _check_options(spec, options, for_simulate=True)
    check_options(options, args.num_objects, where="--option")
    obj = spec.simulate(args.num_objects, args.num_obs, args.seed, **options)
    if isinstance(obj, list):
        raise ModelError(f"model {spec.name!r} simulates a list of scenes, not the single-scene data file "
                         f"of 'simulate'; {_MULTI_SCENE.get(spec.name, 'call its simulate() from Python')}")
    if not isinstance(obj, dict) or "observations" not in obj:
        raise ModelError(f"model {spec.name!r}: simulate() must return a dict with 'observations'")
    obj = dict(obj)
    obj.setdefault("model", spec.name)
    obj.setdefault("num_objects", int(args.num_objects))
    obj.setdefault("seed", int(args.seed))
    if options:
        obj.setdefault("options", options)
    save_data(args.out, obj)
    _say(f"simulated {len(obj['observations'])} observations of {args.num_objects} objects "
         f"(model {spec.name}, seed {args.seed}) -> {args.out}")
    return EXIT_OK


def _check_fit_args(args) -> None:
    """Numeric arguments of ``fit`` that the engines would not reject clearly."""
    import math

    if not (math.isfinite(args.tol) and args.tol >= 0):
        raise DataError(f"--tol must be a finite number >= 0, got {args.tol}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise DataError(f"--lr must be a finite number > 0, got {args.lr}")
    if not 0 < args.target_accept < 1:
        raise DataError(f"--target-accept must be in (0, 1), got {args.target_accept}")
    if args.max_tree_depth < 1:
        raise DataError(f"--max-tree-depth must be at least 1, got {args.max_tree_depth}")


#: Where the multi-scene models are fitted and simulated from the command line.
_MULTI_SCENE = {
    "detector": "use 'metagen-ppl metacognition simulate|fit' (multi-scene 3D detections)",
    "projective": "use 'metagen-ppl evaluate --data FILE --out DIR' (MetaGen detector files)",
}


def _cmd_fit(args) -> int:
    import torch

    from .io import check_output_path, data_from_json, load_json, num_objects_from_json
    from .registry import load_model
    from .validate import check_options

    _check_fit_args(args)
    if args.out:
        check_output_path(args.out)
    spec = load_model(args.model)
    options = _parse_options(args.option)
    _check_options(spec, options)
    if spec.name in _MULTI_SCENE and "cats" not in options:
        raise ModelError(f"model {spec.name!r} needs a search over each scene's objects, which 'fit' "
                         f"does not do; {_MULTI_SCENE[spec.name]}")
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
    if torch.is_tensor(x) and x.dim() >= 1 and k > x.shape[0]:
        raise DataError(f"{origin} = {k} exceeds the {x.shape[0]} observations of {args.data}; "
                        "use K <= N")
    check_options(options, k, where="--option")
    progress = _progress_enabled(args)
    method = "svi-map" if args.method == "svi" else args.method
    if args.categories is not None or spec.name == "categorical":
        result = _fit_categorical(args, spec, data, k, method, progress, options)
    elif method == "em":
        from .em import fit_em

        result = fit_em(spec, data, k, seed=args.seed, num_inits=args.num_inits, mstep=args.mstep,
                        optimizer=args.optimizer, tol=args.tol, max_iter=args.max_iter,
                        progress=progress, options=options)
    elif method in ("svi-map", "svi-normal"):
        from .svi import fit_svi

        result = fit_svi(spec, data, k, guide="normal" if method == "svi-normal" else "delta",
                         num_steps=args.num_steps, lr=args.lr, seed=args.seed, progress=progress,
                         options=options)
    else:
        from .mcmc import fit_mcmc

        result = fit_mcmc(spec, data, k, num_samples=args.num_samples, warmup_steps=args.warmup,
                          num_chains=args.num_chains, seed=args.seed, max_tree_depth=args.max_tree_depth,
                          jit_compile=args.jit,
                          target_accept_prob=args.target_accept, progress=progress, options=options)
    err = _location_error(result, obj.get("truth") if isinstance(obj, dict) else None, spec.location_site)
    if err is not None:
        result.info["location_error_vs_truth"] = err
    if args.out:
        result.to_json(args.out)
    n = next((v.shape[0] for v in data.values() if hasattr(v, "shape") and len(v.shape) > 0), "?")
    line = (f"{result.method} {result.model} K={k} N={n}: log_likelihood={result.log_likelihood:.6g} "
            f"n_iter={result.n_iter} converged={result.converged} wall={result.wall_time_s:.2f}s")
    if err is not None:
        line += f" location_error={err:.4g}"
    if args.out:
        line += f" -> {args.out}"
    _say(line)
    return EXIT_OK


def _fit_categorical(args, spec, data, k, method, progress, options):
    """Model M2 (or a variant with per-object category sites): the three EM category strategies."""
    from . import categories

    if method == "em":
        return categories.fit_categorical(
            data, k, strategy=args.categories or "mstep", model=spec,
            num_category_samples=args.num_category_samples, proposal=args.proposal, seed=args.seed,
            num_inits=args.num_inits, mstep=args.mstep, optimizer=args.optimizer, tol=args.tol,
            max_iter=args.max_iter, progress=progress, options=options)
    if method in ("svi-map", "svi-normal"):
        return categories.fit_categorical_svi(
            data, k, model=spec, guide="normal" if method == "svi-normal" else "delta",
            num_steps=args.num_steps, lr=args.lr, seed=args.seed, progress=progress, options=options)
    return categories.fit_categorical_mcmc(
        data, k, model=spec, num_samples=args.num_samples, warmup_steps=args.warmup,
        num_chains=args.num_chains, seed=args.seed, max_tree_depth=args.max_tree_depth,
        jit_compile=args.jit, target_accept_prob=args.target_accept, progress=progress, options=options)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, seed=args.seed, num_objects=args.num_objects, num_obs=args.num_obs,
                       em_inits=args.num_inits, svi_steps=args.svi_steps, mcmc_samples=args.mcmc_samples,
                       mcmc_warmup=args.mcmc_warmup, mcmc_chains=args.mcmc_chains,
                       mcmc_max_tree_depth=args.mcmc_max_tree_depth, resume=args.resume,
                       progress=_progress_enabled(args), log=lambda m: _say(m, file=sys.stderr))
    _say(summary["table"])
    for w in summary["warnings"]:
        _say(f"warning: {w}")
    _say(f"report: {summary['html']} and {summary['report']}; results: {summary['results_json']}")
    return EXIT_OK


def _run_comparison(script: str, argv) -> int:
    """Run a script of the source tree's comparisons/ folder with ``argv``."""
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "comparisons" / script
    if not path.is_file():
        _say(f"{PROG}: error: {path} not found; comparisons run from a source checkout "
             "(pip install -e .)", file=sys.stderr)
        return EXIT_USAGE
    debug = "--debug" in argv
    old_argv, old_error = sys.argv, argparse.ArgumentParser.error
    sys.argv = [f"{PROG} compare-{path.stem}", *(a for a in argv if a != "--debug")]
    argparse.ArgumentParser.error = _Parser.error  # the script's usage errors: one line, exit 2
    try:
        return int(runpy.run_path(str(path), run_name="metagen_comparison")["main"]() or 0)
    except _UsageError as e:
        _say(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:  # the script's runs record their own errors: these are its arguments
        if debug:
            traceback.print_exc()
        if isinstance(e, OSError) and not isinstance(e, MetagenError):
            where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
            e = f"cannot access{where}: {e.strerror or e}"
        _say(f"{PROG}: error: compare-{path.stem}: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_OK
    finally:
        sys.argv = old_argv
        argparse.ArgumentParser.error = old_error


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback on errors")
    model_opts = _Parser(add_help=False)
    model_opts.add_argument("--model", default="baseline",
                            help="built-in model name or path of a .py model file")
    model_opts.add_argument("--option", "-O", action="append", metavar="KEY=VALUE",
                            help="model keyword option, VALUE parsed as JSON when possible "
                                 "(e.g. -O scale=0.5); repeatable")
    progress = _Parser(add_help=False)
    progress.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="progress bars on stderr (default: on when stderr is a terminal)")

    parser = _Parser(prog=PROG, formatter_class=_Formatter,
                     description="Invert MetaGen-style perception models with EM, SVI and MCMC on Pyro.",
                     epilog="examples:\n"
                            "  metagen-ppl simulate --num-objects 4 --num-obs 600 --seed 0 --out data.json\n"
                            "  metagen-ppl fit --method em --data data.json --out fit.json\n"
                            "  metagen-ppl demo --out metagen-demo\n"
                            "run 'metagen-ppl COMMAND --help' for the options of a command")
    parser.add_argument("--debug", action="store_true", default=False, help="print the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", parents=[common, model_opts], formatter_class=_Formatter,
                       help="draw a scene and observations from a model; write a data JSON file",
                       description="Draw a ground-truth world and N observations from a model's "
                                   "simulate() hook and write them (with the truth) as JSON.")
    p.add_argument("--num-objects", "-K", type=int, required=True, help="number of objects K")
    p.add_argument("--num-obs", "-N", type=int, required=True, help="number of observations N")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", "-o", required=True, help="output data file (JSON)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("fit", parents=[common, model_opts, progress], formatter_class=_Formatter,
                       help="fit a model to a data file with EM, SVI or MCMC; write a result JSON file",
                       description="Fit a model to observations with EM (MAP-EM), SVI (AutoDelta MAP "
                                   "or AutoNormal) or MCMC (NUTS, assignments enumerated out).")
    p.add_argument("--method", "-m", choices=METHODS, default="em",
                   help="inference method ('svi' is 'svi-map')")
    p.add_argument("--data", "-d", required=True, help="data file (JSON exchange format)")
    p.add_argument("--num-objects", "-K", type=int, default=None,
                   help="number of objects K (default: the data file's num_objects)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", "-o", default=None, help="output result file (JSON); none if omitted")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="floating-point precision")
    g = p.add_argument_group("EM options")
    g.add_argument("--num-inits", type=int, default=3, help="EM restarts (best kept)")
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
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("demo", parents=[common, progress], formatter_class=_Formatter,
                       help="simulate a baseline scene and run 'compare' on it (EM, SVI, MCMC; report)",
                       description="The built-in default job, a thin default over 'metagen-ppl compare': "
                                   "simulate a baseline (M1) scene, fit it with EM, SVI-MAP, SVI-AutoNormal "
                                   "and MCMC, and write DIR/report.html (self-contained), DIR/report.md, "
                                   "DIR/results.json, the plots and DIR/methods/<method>.{json,nc}.")
    p.add_argument("--out", "-o", default="metagen-demo", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--resume", action="store_true", help="reuse the methods already finished in --out")
    g = p.add_argument_group("budget (smaller is faster)")
    g.add_argument("--num-objects", "-K", type=int, default=4, help="objects in the scene")
    g.add_argument("--num-obs", "-N", type=int, default=600, help="observations")
    g.add_argument("--num-inits", type=int, default=3, help="EM restarts")
    g.add_argument("--svi-steps", type=int, default=500, help="SVI steps")
    g.add_argument("--mcmc-samples", type=int, default=150, help="NUTS draws per chain")
    g.add_argument("--mcmc-warmup", type=int, default=150, help="NUTS warm-up steps per chain")
    g.add_argument("--mcmc-chains", type=int, default=2, help="NUTS chains")
    g.add_argument("--mcmc-max-tree-depth", type=int, default=8, help="NUTS maximum tree depth")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("metacognition", add_help=False,
                       help="model M3 over many scenes: simulate scenes, or learn the detector's "
                            "hallucination and detection rates V across scenes (fit --data FILE "
                            "--mode learn|fixed|lesioned); 'metagen-ppl metacognition --help'")
    p.add_argument("args", nargs=argparse.REMAINDER)  # listed for --help; main() delegates it
    from .evaluate import add_evaluate_parser

    add_evaluate_parser(sub)
    from .compare import add_compare_parser

    add_compare_parser(sub, parents=[common, model_opts, progress], formatter_class=_Formatter)
    p = sub.add_parser("compare-categories", add_help=False,
                       help="model M2: compare the three EM category strategies, SVI-MAP and MCMC "
                            "on simulated scenes (comparisons/categories.py); "
                            "'metagen-ppl compare-categories --help'")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _version():
    try:
        from . import __version__

        return __version__
    except Exception:  # pragma: no cover - a broken install still gets --help
        return "unknown"


def _one_line(text) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 1 internal error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "metacognition":  # its own parser takes every option after it
        from .metacognition import main as metacognition_main

        try:
            return metacognition_main(argv[1:], prog=f"{PROG} metacognition")
        except SystemExit as e:  # --help, or argparse's usage error (exit 2)
            return e.code if isinstance(e.code, int) else EXIT_OK
    if argv and argv[0] == "compare-categories":
        return _run_comparison("categories.py", argv[1:])
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        _say(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    debug = debug or getattr(args, "debug", False)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        _say(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = showwarning
        try:
            return int(args.func(args) or EXIT_OK)
        except (MetagenError, OSError) as e:
            if debug:
                traceback.print_exc()
            if isinstance(e, OSError) and not isinstance(e, MetagenError):
                where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
                msg = f"cannot access{where}: {e.strerror or e}"
            else:
                msg = str(e).split("Trace Shapes:")[0]  # Pyro appends the trace's shapes to errors
                source = getattr(args, "data", None)
                if isinstance(e, DataError) and "data['" in msg and isinstance(source, str) and source not in msg:
                    msg = f"{source}: {msg}"  # a check of the loaded tensors: name the file they came from
            _say(f"{PROG}: error: {_one_line(msg)}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt as e:
            detail = getattr(e, "detail", None)  # FitInterrupted says what was kept and how to resume
            _say(f"{PROG}: {_one_line(detail) if detail else 'interrupted'}", file=sys.stderr)
            return 130
        except Exception as e:  # a bug (ours or in a user's model file)
            if debug:
                traceback.print_exc()
            hint = "" if debug else " (run with --debug for the traceback)"
            _say(f"{PROG}: internal error: {type(e).__name__}: {_one_line(e)}{hint}", file=sys.stderr)
            return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
