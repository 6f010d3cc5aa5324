"""``metagen-ppl demo``: the built-in default job (a thin default over ``compare``)."""

from __future__ import annotations

import sys

from metagen_ppl.apps.cli.common import Formatter, finish_comparison, prepare_output, progress_enabled, say, seed_argument
from metagen_ppl.apps.demo import DEMO_MCMC_SAMPLES, DEMO_MCMC_WARMUP, run_demo


def run(args) -> int:

    created = prepare_output(args.out, directory=True)
    summary = run_demo(args.out, seed=args.seed, num_objects=args.num_objects, num_obs=args.num_obs,
                       em_inits=args.num_inits, svi_steps=args.svi_steps, mcmc_samples=args.mcmc_samples,
                       mcmc_warmup=args.mcmc_warmup, mcmc_chains=args.mcmc_chains,
                       mcmc_max_tree_depth=args.mcmc_max_tree_depth, resume=args.resume,
                       progress=progress_enabled(args), log=lambda m: say(m, file=sys.stderr),
                       threads=None)
    return finish_comparison(summary, created)


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl demo``."""
    p = sub.add_parser("demo", parents=[parents["common"], parents["progress"]], formatter_class=Formatter,
                       help="simulate a baseline scene and run 'compare' on it (EM, SVI, MCMC; report)",
                       description="The built-in default job, a thin default over 'metagen-ppl compare': "
                                   "simulate a baseline (M1) scene, fit it with EM, SVI-MAP, SVI-AutoNormal "
                                   "and MCMC, and write DIR/report.html (self-contained), DIR/report.md, "
                                   "DIR/results.json, the plots and DIR/methods/<method>.{json,nc}.")
    p.add_argument("--out", "-o", default="metagen-demo", help="output directory")
    p.add_argument("--seed", type=seed_argument, default=0, help="random seed")
    p.add_argument("--resume", action="store_true", help="reuse the methods already finished in --out")
    g = p.add_argument_group("budget (smaller is faster)")
    g.add_argument("--num-objects", "-K", type=int, default=4, help="objects in the scene")
    g.add_argument("--num-obs", "-N", type=int, default=600, help="observations")
    g.add_argument("--num-inits", type=int, default=3, help="EM restarts")
    g.add_argument("--svi-steps", type=int, default=500, help="SVI steps")
    g.add_argument("--mcmc-samples", type=int, default=DEMO_MCMC_SAMPLES,
                   help="NUTS draws per chain (the default meets R-hat <= 1.01; 150 is enough for a look)")
    g.add_argument("--mcmc-warmup", type=int, default=DEMO_MCMC_WARMUP, help="NUTS warm-up steps per chain")
    g.add_argument("--mcmc-chains", type=int, default=2, help="NUTS chains")
    g.add_argument("--mcmc-max-tree-depth", type=int, default=8, help="NUTS maximum tree depth")
    p.set_defaults(func=run)  # _cmd_demo)
    return p
