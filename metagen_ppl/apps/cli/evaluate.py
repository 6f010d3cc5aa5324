"""``metagen-ppl evaluate``: fit the projective detector model to a MetaGen detection file and score it."""

from __future__ import annotations

import argparse
import sys

from metagen_ppl.apps.cli.common import EXIT_INTERRUPTED, Formatter, prepare_output, report_created, progress_enabled, seed_argument
from metagen_ppl.apps.evaluate import LEARN_ON, METHODS, evaluate
from metagen_ppl.engine.distributed import SCHEDULER_HELP


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl evaluate``."""
    p = sub.add_parser(
        "evaluate", formatter_class=Formatter, parents=[parents["common"]],
        help="fit the projective detector model to a MetaGen detection file; write world states, V, metrics",
        description="Fit every video of a MetaGen detection JSON file with the projective detector model "
                    "(V learned across videos), write DIR/world_states.json, DIR/metacognition.json, "
                    "DIR/metrics.json (frame category Jaccard per split vs the detector, the fitted-threshold "
                    "detector and the lesioned model) and PNGs of selected videos.")
    p.add_argument("--data", "-d", required=True,
                   help="detection JSON file: the metagen-detections schema (README: 'Detection files') or the "
                        "legacy list of videos")
    p.add_argument("--categories", default=None, metavar="LABEL=NAME,...|FILE",
                   help="the object categories and the detector labels that map to them, replacing the file's "
                        "(e.g. 62=chair,64=plant; or a JSON file: a list of {name, labels}, a COCO categories "
                        "list or annotation file, or {label: name}); other labels are dropped (default: the "
                        "file's; legacy files: chair 62, plant 64, tv 72, umbrella 28, bowl 51)")
    p.add_argument("--camera", default=None, metavar="MODEL:KEY=VALUE,...|FILE",
                   help="the camera, replacing the file's: pinhole:fx=,fy=,cx=,cy=,width=,height= or "
                        "angle-linear:fov_deg=,width=,height= (add learn_fov=false to keep it fixed), JSON, or "
                        "a JSON file (default: the file's; legacy files: angle-linear 256x256, 55 degrees)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--model", default="projective",
                   help="the video model: 'projective' or the path of a .py file with a variant of it "
                        "(see the README: a user-written structured variant)")
    p.add_argument("--method", "-m", choices=METHODS, default="em", help="inference method")
    p.add_argument("--learn-on", choices=LEARN_ON, default="all",
                   help="learn V on all videos, or on videos 1-50 only (then fixed for 51-100)")
    p.add_argument("--seed", type=seed_argument, default=0, help="random seed (SVI, MCMC)")
    p.add_argument("--plots", type=int, default=1,
                   help="number of videos to draw (PNG, about 0.7 s each; evenly spread over the file)")
    p.add_argument("--max-objects", type=int, default=8, help="object slots per video")
    p.add_argument("--no-lesioned", action="store_true", help="skip the lesioned model")
    p.add_argument("--no-ground-truth-V", action="store_true", help="skip V computed from the ground truth")
    p.add_argument("--svi-steps", type=int, default=300, help="SVI-MAP steps (method svi)")
    p.add_argument("--svi-lr", type=float, default=0.01, help="SVI-MAP learning rate (method svi)")
    p.add_argument("--mcmc-videos", type=int, default=3, help="videos sampled by NUTS (method mcmc)")
    p.add_argument("--mcmc-samples", type=int, default=100, help="NUTS draws per video (method mcmc)")
    p.add_argument("--mcmc-warmup", type=int, default=100, help="NUTS warm-up steps per video (method mcmc)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr: a bar on a terminal, a line every 15 s or so when stderr "
                        "goes to a log (default: on)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command: the finished units in OUT/checkpoints/ "
                        "(each fit, SVI run, MCMC video) are reused, an unfinished fit continues from its last "
                        "structure-search round; units of other data or settings are refused")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="keep no checkpoints (OUT/checkpoints/, written atomically after every round and unit)")
    p.add_argument("--jobs", "-j", type=jobs_argument, default="auto", metavar="N",
                   help="processes: 'auto' (default: 2 when the machine has 2 cores or more and the file has at "
                        "least 400 frames -- the lesioned model and the ground-truth V are fitted in a second "
                        "process while this one fits ours; same results), 1 (everything in this process) or 2")
    p.add_argument("--online", action="store_true",
                   help="learn V online: the videos in file order, each fitted on arrival with the V learned from "
                        "the videos before it, V updated from running expected counts (stepwise EM); "
                        "metacognition.json then holds V after every video (method em, --learn-on all)")
    p.add_argument("--step-kappa", type=float, default=1.0, metavar="K",
                   help="--online step sizes eta_i = (i + t0)^-K, K in (0.5, 1] (default 1: eta_i = 1/i)")
    p.add_argument("--step-t0", type=float, default=0.0, metavar="T0", help="--online step offset t0 >= 0 (default 0)")
    # --threads auto: one torch thread in each process (two processes use the two cores; two threads in one
    # process were 0.8-0.9x the time of one on an idle machine, 2-4x slower when anything else runs, and
    # change the last bits of the fits)
    p.add_argument("--scheduler", default=None, metavar="inprocess|processes[:N]|tcp://HOST:PORT",
                   help=SCHEDULER_HELP + ". Given, every structure-search fit is the map-reduce EM (chunks of "
                        "--chunk-size videos fitted with V fixed, V from their summed statistics each round; "
                        "the same results wherever the chunks run, close to but not equal to the default batched "
                        "fit) and the MCMC videos are independent tasks (default: the batched fit, in this process)")
    p.add_argument("--chunk-size", type=int, default=10, help="videos per task of the map-reduce fit (--scheduler)")
    p.set_defaults(func=run, workload="small")
    return p


def jobs_argument(text: str):
    """argparse type of ``--jobs``: ``auto`` or a positive integer."""
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be 'auto' or a positive integer, got {text!r}")
    return n


def _fmt(x) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def summary_lines(metrics: dict) -> list:
    """A short text table of ``metrics`` (method x split)."""
    lines = []
    if "splits" in metrics:
        for metric in metrics["splits"]["A"]:
            rows = metrics["splits"]["A"][metric].keys()
            lines.append(f"{metric:<22}      A      B    all")
            for m in rows:
                lines.append(f"  {m:<20} " + " ".join(_fmt(metrics["splits"][s][metric].get(m))
                                                      for s in ("A", "B", "all")))
    lines.append(f"fitted and scored in {metrics['fit_and_score_s']:.1f} s; wall time {metrics['wall_time_s']:.1f} s")
    return lines


def run(args) -> int:
    """Run ``evaluate`` from parsed arguments; prints a summary table; returns 0 (130 on Ctrl-C, after one
    line on stderr saying what was kept and how to resume)."""
    created = prepare_output(args.out, directory=True)
    try:
        metrics = evaluate(args.data, args.out, method=args.method, learn_on=args.learn_on, seed=args.seed,
                           progress=progress_enabled(args), plots=args.plots, lesioned=not args.no_lesioned,
                           ground_truth_V=not args.no_ground_truth_V, max_objects=args.max_objects,
                           svi_steps=args.svi_steps, svi_lr=args.svi_lr, mcmc_videos=args.mcmc_videos,
                           mcmc_samples=args.mcmc_samples, mcmc_warmup=args.mcmc_warmup,
                           log=lambda m: print(m, file=sys.stderr, flush=True), num_threads=None,
                           checkpoint=not getattr(args, "no_checkpoint", False),
                           resume=getattr(args, "resume", False), model=args.model,
                           categories=getattr(args, "categories", None), camera=getattr(args, "camera", None),
                           jobs=getattr(args, "jobs", "auto"), online=getattr(args, "online", False),
                           step_kappa=getattr(args, "step_kappa", 1.0), step_t0=getattr(args, "step_t0", 0.0),
                           scheduler=getattr(args, "scheduler", None), chunk_size=getattr(args, "chunk_size", 10))
    except KeyboardInterrupt as e:
        detail = getattr(e, "detail", None) or "interrupted"
        print(f"metagen-ppl evaluate: {detail}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print("\n".join(summary_lines(metrics)))
    print(f"-> {args.out}/world_states.json, metacognition.json, metrics.json")
    report_created(created)
    return 0
