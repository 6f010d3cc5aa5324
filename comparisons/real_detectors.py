"""Real detectors: the projective detector model against the detectors themselves (issue 5 item 6).

Runs :func:`metagen_ppl.apps.evaluate.evaluate` on the shared MetaGen data
(``../shared/data/metagen2021/``; RetinaNet and Faster R-CNN detections on 100
rendered videos x 20 frames; MIT licence, from the public MetaGen repository)
and prints one table: method x detector x split (A = videos 1-50, B = 51-100)
of the frame category Jaccard:

* ``EM (learn all)``: V learned on all 100 videos (no ground truth used);
* ``EM (learn 1-50)``: V learned on videos 1-50, fixed for 51-100;
* ``lesioned``: V and the score marks at their prior (no metacognition);
* ``detector`` (top 5) and ``detector, fitted threshold`` (threshold fitted on 1-50);
* ``SVI-MAP``: TraceEnum_ELBO + AutoDelta on the same model, given EM's structure;
* ``MCMC (k videos)`` and ``EM (same k videos)``: NUTS over the object locations of
  ``k`` videos, next to EM on the same videos.

Also prints the learned V next to V computed from the ground truth, and the
timings. Writes every run's outputs under ``--out``.

Usage::

    python comparisons/real_detectors.py [--data-dir ../shared/data/metagen2021] [--out real-detectors]
        [--svi-steps 300] [--mcmc-videos 3] [--skip-svi] [--skip-mcmc] [--resume]

Every run (detector x fit setting x method) keeps its units in ``OUT/<detector>/<run>/checkpoints/``
as soon as they are done; after an interruption (Ctrl-C: exit 130) ``--resume`` reuses every
finished run and unit and continues the unfinished fit from its last round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from metagen_ppl.apps.evaluate import evaluate
from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.errors import MetagenError
from metagen_ppl.io import atomic_write_json

from shared_data import default_data_dir

DETECTORS = ("retinanet", "faster_rcnn")


def _fmt(x):
    return "     -" if x is None else f"{x:6.3f}"


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)          # a shared 2-core machine: intra-op threads only add contention

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--out", default="real-detectors")
    p.add_argument("--svi-steps", type=int, default=300)
    p.add_argument("--svi-lr", type=float, default=0.03)
    p.add_argument("--mcmc-videos", type=int, default=3)
    p.add_argument("--mcmc-samples", type=int, default=100)
    p.add_argument("--skip-svi", action="store_true")
    p.add_argument("--skip-mcmc", action="store_true")
    p.add_argument("--plots", type=int, default=3)
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished runs and units of an interrupted invocation (same --out)")
    args = p.parse_args(argv)
    resume_kw = {"resume": args.resume}

    rows = {}        # (label) -> {(detector, split): value}
    order = []
    extra = {}

    def put(label, det, splits):
        if label not in rows:
            rows[label] = {}
            order.append(label)
        for s in ("A", "B", "all"):
            rows[label][(det, s)] = splits.get(s)

    try:
        for det in DETECTORS:
            path = os.path.join(args.data_dir, f"data_labelled_{det}.json")
            if not os.path.isfile(path):
                raise MetagenError(f"{path} not found: the MetaGen detection data (MIT licence, from the public "
                                   "MetaGen repository) is expected in ../shared/data/metagen2021/")
            print(f"[{det}] EM, V learned on all videos ...", file=sys.stderr, flush=True)
            out = os.path.join(args.out, det, "em_all")
            m = evaluate(path, out, method="em", learn_on="all", progress=False, plots=args.plots, **resume_kw)
            j = m["splits"]
            put("EM (learn all)", det, {s: j[s]["jaccard"]["ours"] for s in ("A", "B", "all")})
            put("lesioned", det, {s: j[s]["jaccard"]["lesioned"] for s in ("A", "B", "all")})
            put("detector (top 5)", det, {s: j[s]["jaccard"]["detector"] for s in ("A", "B", "all")})
            put("detector, fitted thr.", det, {s: j[s]["jaccard"]["detector_fitted"] for s in ("A", "B", "all")})
            meta = json.load(open(os.path.join(out, "metacognition.json")))
            extra[det] = {"V_table": meta["V_table"], "fit_and_score_s": m["fit_and_score_s"],
                          "wall_time_s": m["wall_time_s"], "sigma_px": meta["learned"]["pixel_scale"],
                          "sigma_px_gt": meta["ground_truth"]["pixel_scale"],
                          "fov": meta["learned"]["field_of_view_deg"],
                          "fov_gt": meta["ground_truth"]["field_of_view_deg"],
                          "threshold": m["detector_threshold"]["jaccard"]}
            print(f"[{det}] EM, V learned on videos 1-50 ...", file=sys.stderr, flush=True)
            m = evaluate(path, os.path.join(args.out, det, "em_train"), method="em", learn_on="train", progress=False,
                         plots=0, lesioned=False, **resume_kw)
            put("EM (learn 1-50)", det, {s: m["splits"][s]["jaccard"]["ours"] for s in ("A", "B", "all")})
            extra[det]["train_fit_and_score_s"] = m["fit_and_score_s"]
            if not args.skip_svi:
                print(f"[{det}] SVI-MAP ...", file=sys.stderr, flush=True)
                out = os.path.join(args.out, det, "svi")
                m = evaluate(path, out, method="svi", progress=False, plots=0, lesioned=False, ground_truth_V=False,
                             svi_steps=args.svi_steps, svi_lr=args.svi_lr, **resume_kw)
                put("SVI-MAP (EM structure)", det, {s: m["splits"][s]["jaccard"]["ours"] for s in ("A", "B", "all")})
                svi = json.load(open(os.path.join(out, "metacognition.json")))["svi"][0]
                extra[det]["svi"] = {k: svi[k] for k in ("log_joint", "em_log_joint_same_structure", "converged",
                                                         "wall_time_s")}
            if not args.skip_mcmc and args.mcmc_videos > 0:
                print(f"[{det}] MCMC (NUTS) on {args.mcmc_videos} videos ...", file=sys.stderr, flush=True)
                out = os.path.join(args.out, det, "mcmc")
                m = evaluate(path, out, method="mcmc", progress=False, plots=0, lesioned=False,
                             ground_truth_V=False, mcmc_videos=args.mcmc_videos, mcmc_samples=args.mcmc_samples,
                             mcmc_warmup=args.mcmc_samples, **resume_kw)
                k = args.mcmc_videos
                put(f"MCMC ({k} videos)", det, {s: m["splits"][s]["jaccard"]["mcmc_videos_only"]
                                                for s in ("A", "B", "all")})
                put(f"EM (same {k} videos)", det, {s: m["splits"][s]["jaccard"]["em_same_videos"]
                                                   for s in ("A", "B", "all")})
                mc = json.load(open(os.path.join(out, "metacognition.json")))["mcmc"]
                extra[det]["mcmc"] = {"videos": m["mcmc_videos"], "divergences": sum(x["divergences"] for x in mc),
                                      "wall_time_s": sum(x["wall_time_s"] for x in mc)}
    except MetagenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(getattr(e, "detail", None) or "interrupted", "(this script: rerun with --resume)", file=sys.stderr)
        return 130

    head = "frame category Jaccard".ljust(26) + "".join(f"{d:^21}" for d in DETECTORS)
    print(head)
    print(" " * 26 + "".join(f"{'A':>7}{'B':>7}{'all':>7}" for _ in DETECTORS))
    for label in order:
        print(f"{label:<26}" + "".join(_fmt(rows[label].get((d, s))).rjust(7) for d in DETECTORS
                                      for s in ("A", "B", "all")))
    print()
    for det in DETECTORS:
        e = extra[det]
        print(f"{det}: fitted and scored in {e['fit_and_score_s']:.1f} s (learn all), "
              f"{e['train_fit_and_score_s']:.1f} s (learn 1-50); evaluate wall time {e['wall_time_s']:.1f} s; "
              f"fitted threshold {e['threshold']:.3f}")
        print(f"  sigma_px {e['sigma_px']:.2f} (ground truth {e['sigma_px_gt']:.2f}); field of view "
              f"{e['fov']:.2f} deg (ground truth {e['fov_gt']:.2f})")
        print(f"  {'category':<10}{'r learned':>10}{'r truth':>9}{'h learned':>11}{'h truth':>9}")
        for c in CATEGORIES:
            r = e["V_table"][c]
            print(f"  {c:<10}{r['r_learned']:>10.3f}{r['r_ground_truth']:>9.3f}{r['h_learned']:>11.3f}"
                  f"{r['h_ground_truth']:>9.3f}")
        if "svi" in e:
            s = e["svi"]
            print(f"  SVI-MAP: log joint {s['log_joint']:.1f} (EM at the same structure {s['em_log_joint_same_structure']:.1f}), "
                  f"flattened={s['converged']}, {s['wall_time_s']:.1f} s")
        if "mcmc" in e:
            s = e["mcmc"]
            print(f"  MCMC: videos {s['videos']}, {s['divergences']} divergences, {s['wall_time_s']:.1f} s")
    atomic_write_json(os.path.join(args.out, "table.json"),
                      {"rows": {lab: {f"{d}/{s}": v for (d, s), v in r.items()} for lab, r in rows.items()},
                       "extra": extra})
    return 0


if __name__ == "__main__":
    sys.exit(main())
