"""``metagen-ppl compare``: every inference method on one model and one data set, one report."""

from __future__ import annotations

import dataclasses
import sys

from metagen_ppl.apps.cli.common import (Formatter, check_model_options, parse_options, finish_comparison, prepare_output,
                                         progress_enabled, say, seed_argument)
from metagen_ppl.apps.compare import BASE_METHODS, Budget, compare
from metagen_ppl.engine.distributed import SCHEDULER_HELP
from metagen_ppl.engine.registry import load_model
from metagen_ppl.errors import MetagenError


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl compare``."""
    p = sub.add_parser(
        "compare", parents=[parents["common"], parents["model"], parents["progress"]], formatter_class=Formatter,
        help="fit one model with EM, SVI-MAP, SVI-AutoNormal and MCMC; write a report (HTML, Markdown, "
             "JSON, netCDF)",
        description="Run EM (each category strategy for category models), SVI-MAP, SVI-AutoNormal and MCMC "
                    "(NUTS) on one model and one data set (simulated by default) with a shared seed and "
                    "budgets, and write DIR/report.html (self-contained), DIR/report.md, DIR/results.json "
                    "and DIR/methods/<method>.{json,nc}. Each method's files are written as soon as it "
                    "finishes; --resume reuses them after an interruption. A method that fails is reported "
                    "with its error and the others still run.",
        epilog="examples:\n  metagen-ppl compare --out cmp\n  metagen-ppl compare --model categorical --out cmp-cat\n"
               "  metagen-ppl compare --model detector --methods em,mcmc --out cmp-det\n"
               "  metagen-ppl compare --data data.json --num-objects 4 --out cmp --resume")
    p.add_argument("--data", "-d", default=None, help="data file (default: simulate with the model's simulate hook)")
    p.add_argument("--out", "-o", default="metagen-compare", help="report directory")
    p.add_argument("--seed", type=seed_argument, default=0, help="random seed shared by the simulation and every method")
    p.add_argument("--methods", default=",".join(BASE_METHODS),
                   help="comma-separated subset of em,svi-map,svi-normal,mcmc (default: all)")
    p.add_argument("--num-objects", "-K", type=int, default=None,
                   help="number of objects K (default: the data file's num_objects)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="floating-point precision")
    p.add_argument("--resume", action="store_true", help="reuse the methods already finished in --out")
    p.add_argument("--scheduler", default=None, metavar="inprocess|processes[:N]|tcp://HOST:PORT",
                   help=SCHEDULER_HELP + "; each method is an independent task there, saved as it finishes "
                        "(default: one after another in this process)")
    g = p.add_argument_group("budgets (default: the model's own, else the values shown)")
    d = Budget()
    for name, typ, help_ in (("em_inits", int, "EM restarts"), ("em_max_iter", int, "EM iteration limit"),
                             ("em_tol", float, "EM relative tolerance"), ("svi_steps", int, "SVI steps"),
                             ("svi_lr", float, "SVI learning rate"),
                             ("mcmc_samples", int, "NUTS draws per chain"),
                             ("mcmc_warmup", int, "NUTS warm-up steps per chain"),
                             ("mcmc_chains", int, "NUTS chains (run one after another)"),
                             ("mcmc_max_tree_depth", int, "NUTS maximum tree depth"),
                             ("mcmc_target_accept", float, "NUTS target acceptance probability"),
                             ("category_samples", int, "category vectors drawn by em-sample")):
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=f"{help_} (default: {getattr(d, name)})")
    g.add_argument("--no-jit", dest="mcmc_jit", action="store_false", default=None,
                   help="do not JIT-compile NUTS's potential energy")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    spec = load_model(args.model)
    options = parse_options(args.option)
    check_model_options(spec, options)
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    if not methods:
        raise MetagenError("--methods is empty; give e.g. --methods em,mcmc")
    budget_kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(Budget) if hasattr(args, f.name)}
    created = prepare_output(args.out, directory=True)
    summary = compare(spec, args.data, out_dir=args.out, seed=args.seed, methods=methods,
                      num_objects=args.num_objects, options=options, dtype=args.dtype, resume=args.resume,
                      threads=None,                    # set by the command line (--threads)
                      progress=progress_enabled(args), log=lambda m: say(m, file=sys.stderr),
                      scheduler=getattr(args, "scheduler", None), **budget_kw)
    return finish_comparison(summary, created)
