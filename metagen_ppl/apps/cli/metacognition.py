"""``metagen-ppl metacognition simulate|fit``: model M3 over many scenes from the command line."""

from __future__ import annotations

import os
import sys

from metagen_ppl.apps.cli.common import EXIT_OK, Formatter, Parser, progress_enabled, prepare_output, report_created, say, seed_argument
from metagen_ppl.errors import MetagenError
from metagen_ppl.io import load_json
from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.objects import object_metrics, truth_objects
from metagen_ppl.domain.scenes import SceneSet, V_to_json, load_scenes, parse_V, write_scenes
from metagen_ppl.io import atomic_write_json
from metagen_ppl.models.detector.fit import INNER, MODES, MetacognitionResult, fit_metacognition
from metagen_ppl.models.detector import simulate
from metagen_ppl.engine.online import StepSchedule
from metagen_ppl.models.detector.online import fit_metacognition_online
from metagen_ppl.util import make_progress


def _summary(res: MetacognitionResult, sc: SceneSet) -> list:
    lines = [f"{res.mode} ({res.inner}): {len(sc)} scenes, {sum(len(s['objects']) for s in res.scenes)} objects, "
             f"log_likelihood={res.log_likelihood:.6g} rounds={res.n_rounds} iterations={res.n_iter} "
             f"converged={res.converged} wall={res.wall_time_s:.2f}s"]
    return lines + _V_and_truth_lines(res.V_json(), res.scenes, sc)


def _V_and_truth_lines(V: dict, scenes: list, sc: SceneSet, header: str = "", truth_label: str = "") -> list:
    """The V table (learned next to the true V when the file has it), sigma, and objects vs the truth."""
    lines = ["category   r (detections/frame)   h (hallucinations/frame)" + header]
    for i, c in enumerate(CATEGORIES):
        row = f"{c:<10} {V['detection_rate'][c]:>8.3f}"
        if sc.true_V is not None:
            row += f" (true {float(sc.true_V['rates'][i]):.3f})"
        row += f"   {V['hallucination_rate'][c]:>8.3f}"
        if sc.true_V is not None:
            row += f" (true {float(sc.true_V['hallucination'][i]):.3f})"
        lines.append(row)
    lines.append(f"scale sigma = {V['scale']:.4f}")
    if sc.truth is not None:
        m = object_metrics(scenes, truth_objects(sc))
        lines.append(f"objects vs truth{truth_label}: precision={m['precision']:.3f} recall={m['recall']:.3f} "
                     f"f1={m['f1']:.3f} location_error={m['location_error']:.3f} m")
    return lines


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl metacognition simulate|fit``."""
    common = [parents["common"]]
    p = sub.add_parser("metacognition", parents=common, formatter_class=Formatter,
                       help="model M3 over many scenes: simulate scenes, or learn the detector's "
                            "hallucination and detection rates V across scenes (fit --data FILE "
                            "--mode learn|fixed|lesioned)",
                       description="Learn a detector's metacognition (model M3) across scenes.")
    inner = p.add_subparsers(dest="meta_command", metavar="COMMAND", required=True, parser_class=Parser)
    q = inner.add_parser("simulate", parents=common, formatter_class=Formatter,
                         help="simulate scenes in the multi-scene JSON format",
                         description="Simulate scenes of the detector model M3 (multi-scene JSON with the truth).")
    q.add_argument("--num-scenes", type=int, default=100, help="scenes")
    q.add_argument("--num-frames", type=int, default=20, help="frames per scene")
    q.add_argument("--seed", type=seed_argument, default=0, help="random seed")
    q.add_argument("--scale", type=float, default=0.3, help="location noise sigma of real detections")
    q.add_argument("--emission", choices=("poisson", "bernoulli"), default="poisson",
                   help="detections per object and frame: Poisson(r_c) (the model) or at most one")
    q.add_argument("--V", default=None, help="JSON file with the true V (default: drawn)")
    q.add_argument("--out", "-o", required=True, help="output scenes file (JSON)")
    q.set_defaults(func=run_simulate)
    f = inner.add_parser("fit", parents=common + [parents["progress"]], formatter_class=Formatter,
                         help="fit scenes: learn V (or use a given or the lesioned V) and infer objects",
                         description="Fit the detector model M3 to many scenes: learn V (or use a given or the "
                                     "lesioned V) and infer each scene's objects by the structure search.")
    f.add_argument("--data", "-d", required=True, help="multi-scene JSON file")
    f.add_argument("--mode", choices=MODES, default="learn", help="learn V, use a given V, or V at its prior mean")
    f.add_argument("--V", default=None, help="JSON file with V for --mode fixed (a fit's output works)")
    f.add_argument("--inner", choices=INNER, default="em", help="continuous phase: EM or SVI-MAP")
    f.add_argument("--max-rounds", type=int, default=20, help="birth/death rounds")
    f.add_argument("--max-iter", type=int, default=100, help="EM iterations per continuous phase")
    f.add_argument("--max-objects", type=int, default=8, help="object slots per scene")
    f.add_argument("--tol", type=float, default=1e-7, help="EM relative tolerance on the log joint")
    f.add_argument("--seed", type=seed_argument, default=0, help="random seed (SVI)")
    f.add_argument("--out", "-o", default=None,
                   help="result JSON (objects per scene, V, trace), rewritten atomically after every round")
    f.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="checkpoint file, rewritten atomically after every structure-search round "
                        "(default: OUT.checkpoint.json when --out is given; none otherwise)")
    f.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint")
    f.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of an interrupted run of the same command (same data and "
                        "settings; a different checkpoint is refused); the result equals an uninterrupted run's")
    f.add_argument("--online", action="store_true",
                   help="learn V online: the scenes in file order, each fitted on arrival with the current V, V "
                        "updated from running expected counts (stepwise EM); the output records each scene's objects "
                        "(with existence probabilities) and V after every scene")
    f.add_argument("--step-kappa", type=float, default=1.0, metavar="K",
                   help="--online step sizes eta_i = (i + t0)^-K, K in (0.5, 1] (default 1: eta_i = 1/i)")
    f.add_argument("--step-t0", type=float, default=0.0, metavar="T0", help="--online step offset t0 >= 0 (default 0)")
    f.set_defaults(func=run_fit, workload="batched")   # many scenes at once: 2 threads 0.80x the time of 1
    return p


def _read_V(path):
    obj = load_json(path)
    return parse_V(obj.get("V", obj) if isinstance(obj, dict) else obj, path)


def run_simulate(args) -> int:
    created = prepare_output(args.out)
    kw = {}
    if args.V:
        V = _read_V(args.V)
        kw = {"rates": V["rates"].tolist(), "hallucination": V["hallucination"].tolist()}
    scenes = simulate(args.num_scenes, args.num_frames, args.seed, scale=args.scale, emission=args.emission, **kw)
    write_scenes(args.out, scenes)
    say(f"simulated {args.num_scenes} scenes x {args.num_frames} frames -> {args.out}")
    report_created(created)
    return EXIT_OK


def _online_json(res, sc) -> dict:
    names = list(CATEGORIES)
    return {"online": True, "schedule": res.schedule.to_json(), "elapsed_s": res.elapsed_s,
            "scenes": [{"path": p, "objects": [{"category_name": names[c], "position": list(x),
                                                "existence_probability": e}
                                               for (c, x), e in zip(objs, ex)]}
                       for p, objs, ex in zip(res.paths, res.objects, res.existence)],
            "V": V_to_json(res.V[-1]), "V_trajectory": [V_to_json(v) for v in res.V], "V_start": V_to_json(res.V0),
            "step_sizes": res.steps}


def run_fit_online(args, sc, ckpt, created) -> int:
    if args.mode != "learn" or args.inner != "em":
        raise MetagenError("--online learns V with EM: it needs --mode learn and --inner em")
    schedule = StepSchedule(args.step_kappa, args.step_t0)
    bar = make_progress(len(sc), "online scenes", progress_enabled(args), unit="scene")

    def tick(n, info):
        if bar is not None:
            bar.update(1)
    try:
        res = fit_metacognition_online(sc, schedule=schedule, max_rounds=args.max_rounds, max_objects=args.max_objects,
                                       max_iter=args.max_iter, tol=args.tol, progress=tick, checkpoint=ckpt,
                                       resume=args.resume)
    finally:
        if bar is not None:
            bar.close()
    out = _online_json(res, sc)
    lines = [f"online (stepwise EM, eta_i = (i + {schedule.t0:g})^-{schedule.kappa:g}): {len(sc)} scenes, "
             f"{sum(len(o) for o in res.objects)} objects, wall={res.elapsed_s:.2f}s"]
    lines += _V_and_truth_lines(out["V"], out["scenes"], sc, "   after the last scene",
                                " (each scene as inferred on arrival)")
    say("\n".join(lines))
    if args.out:
        atomic_write_json(args.out, out)
        say(f"-> {args.out}")
    report_created(*created)
    return EXIT_OK


def run_fit(args) -> int:
    sc = load_scenes(args.data)
    V = _read_V(args.V) if args.V else None
    ckpt = None if args.no_checkpoint else (args.checkpoint or (args.out + ".checkpoint.json" if args.out else None))
    created = [prepare_output(target) for target in (args.out, ckpt)]  # fail before the fit, not after round 1
    if args.resume and ckpt is None:
        raise MetagenError("--resume needs the checkpoint of the earlier run: give the same --out (or "
                           "--checkpoint PATH), without --no-checkpoint")
    if args.resume and not os.path.exists(ckpt):
        say(f"no checkpoint at {ckpt} yet: starting afresh", file=sys.stderr)
    if args.online:
        return run_fit_online(args, sc, ckpt, created)
    res = fit_metacognition(sc, mode=args.mode, V=V, inner=args.inner, max_rounds=args.max_rounds,
                            max_iter=args.max_iter, max_objects=args.max_objects, tol=args.tol, seed=args.seed,
                            progress=progress_enabled(args), out=args.out, checkpoint=ckpt, resume=args.resume)
    say("\n".join(_summary(res, sc)))
    if args.out:
        say(f"-> {args.out}")
    report_created(*created)
    return EXIT_OK
