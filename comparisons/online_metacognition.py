"""Online metacognition against batch EM on real detector data (issue 14 item 1).

For each detector file of the shared MetaGen data it runs

* **batch EM**: V learned on all 100 videos at once (``metagen-ppl evaluate``'s fit);
* the **lesioned** model (V at its prior mean);
* V from the **ground truth** (EM with the true objects fixed), the reference for V's error;
* the **online** run (:func:`metagen_ppl.models.projective.online.fit_videos_online`): the videos in
  file order, each fitted on arrival with the V learned so far, V updated by stepwise EM;

and prints

1. the split-B frame category Jaccard (videos 51-100) of each, the online run's scored on the world
   states it inferred when each video arrived;
2. the learning curve: split-B accuracy with V fixed at the online V after ``n`` videos
   (``n = 0``: V, the pixel noise and the marks at their prior means and the nominal field of view;
   ``n = 50``: V learned online on split A only),
   against batch EM and the lesioned model;
3. the error of V against V from the ground truth as videos accumulate (mean absolute error of
   ``r`` and of ``h`` over the categories);
4. the calibration of the objects' existence probabilities (online and batch world states)
   against "the object matches a true object of its category" (expected calibration error,
   Brier score, reliability diagram).

Plots: ``OUT/learning_curve.png`` (accuracy and V error against the number of videos seen) and
``OUT/existence_reliability.png``. Everything printed is also in ``OUT/online.json``.

Usage::

    python comparisons/online_metacognition.py [--data-dir ../shared/data/metagen2021] [--out online-metacognition]
        [--detectors retinanet faster_rcnn] [--kappa 1.0] [--t0 0.0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from metagen_ppl.domain.metagen_data import batch_videos, load_videos
from metagen_ppl.domain.metrics import calibration, split_means, world_state_frame_scores
from metagen_ppl.engine.online import StepSchedule
from metagen_ppl.io import atomic_write_json
from metagen_ppl.models.projective import data_from_videos, fit_videos, select_videos
from metagen_ppl.models.projective.online import fit_videos_online

from shared_data import default_data_dir

DETECTORS = ("retinanet", "faster_rcnn")
CURVE = (0, 5, 10, 20, 30, 40, 50, 75, 100)


def scores(videos, objects) -> np.ndarray:
    out = []
    for v, objs in zip(videos, objects):
        pos = torch.tensor([p for _, p in objs], dtype=v.cams.dtype).reshape(-1, 3)
        out.append(world_state_frame_scores(v, [c for c, _ in objs], pos, "jaccard").mean())
    return np.array(out)


def existence_outcomes(videos, objects, existence, classify) -> tuple:
    probs, hits = [], []
    for v, objs, ex in zip(videos, objects, existence):
        cls = classify(v, objs, 1.5)
        good = {i for i, k in cls["pairs"] if objs[i][0] == int(v.gt_categories[k])}
        probs += list(ex)
        hits += [i in good for i in range(len(objs))]
    return probs, hits


def V_error(params, gt) -> tuple:
    return (float((params["rates"] - gt["rates"]).abs().mean()),
            float((params["hallucination"] - gt["hallucination"]).abs().mean()))


def run_detector(path, schedule, classify) -> dict:
    videos = load_videos(path)
    data = data_from_videos(videos)
    idx = [v.index for v in videos]
    B = [i for i, v in enumerate(videos) if v.index >= 50]
    out = {"timings": {}}
    t = time.perf_counter()
    batch = fit_videos(data, mode="learn")
    out["timings"]["batch_s"] = time.perf_counter() - t
    les = fit_videos(data, mode="lesioned")
    b = batch_videos(videos)
    gt = fit_videos(data, mode="truth", truth=(b.gt_categories, b.gt_positions, b.gt_mask)).values
    t = time.perf_counter()
    online = fit_videos_online(data, schedule=schedule)
    out["timings"]["online_s"] = time.perf_counter() - t
    s_batch, s_les, s_on = scores(videos, batch.objects()), scores(videos, les.objects()), \
        scores(videos, online.objects)
    out["split_B"] = {"batch EM": split_means(s_batch, idx)["B"], "lesioned": split_means(s_les, idx)["B"],
                      "online (on arrival)": split_means(s_on, idx)["B"]}
    out["split_A"] = {"batch EM": split_means(s_batch, idx)["A"], "lesioned": split_means(s_les, idx)["A"],
                      "online (on arrival)": split_means(s_on, idx)["A"]}
    data_B = select_videos(data, B)
    vids_B = [videos[i] for i in B]
    curve = []
    for n in CURVE:
        if n > len(videos):
            break
        params = online.params_before(n) if n < len(videos) else online.values
        fit = fit_videos(data_B, mode="fixed", params=params)
        err_r, err_h = V_error(params, gt)
        curve.append({"n": n, "split_B": float(scores(vids_B, fit.objects()).mean()), "V_error_r": err_r,
                      "V_error_h": err_h})
    out["learning_curve"] = curve
    out["V_error_every_video"] = [V_error(online.params_before(n), gt) for n in range(len(videos) + 1)] \
        if len(videos) else []
    out["V_error_batch"] = V_error(batch.values, gt)
    cal = {}
    for name, objs, ex in (("online", online.objects, online.existence),
                           ("batch EM", batch.objects(), batch.existence())):
        p, y = existence_outcomes(videos, objs, ex, classify)
        cal[name] = calibration(p, y)
    out["existence_calibration"] = cal
    out["V"] = {"online": {k: v.tolist() for k, v in online.values.items()},
                "batch": {k: batch.values[k].tolist() for k in online.values},
                "ground_truth": {k: gt[k].tolist() for k in ("rates", "hallucination")}}
    return out


def plot(path_curve, path_rel, results) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for (det, r), color in zip(results.items(), ("C0", "C1")):
        n = [c["n"] for c in r["learning_curve"]]
        axes[0].plot(n, [c["split_B"] for c in r["learning_curve"]], marker="o", color=color,
                     label=f"{det}: online V after n videos")
        axes[0].axhline(r["split_B"]["batch EM"], color=color, ls="--", lw=1, label=f"{det}: batch EM")
        axes[0].axhline(r["split_B"]["lesioned"], color=color, ls=":", lw=1, label=f"{det}: lesioned")
        e = np.array(r["V_error_every_video"])
        axes[1].plot(np.arange(len(e)), e[:, 0], color=color, label=f"{det}: r")
        axes[1].plot(np.arange(len(e)), e[:, 1], color=color, ls="--", label=f"{det}: h")
    axes[0].set_xlabel("videos seen (n)")
    axes[0].set_ylabel("split-B frame Jaccard")
    axes[0].set_title("Learning curve: split B with the online V after n videos")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("videos seen (n)")
    axes[1].set_ylabel("mean |V - V from the ground truth|")
    axes[1].set_title("Error of the online V")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_curve)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfect calibration")
    for det, r in results.items():
        for name, cal in r["existence_calibration"].items():
            b = cal["bins"]
            ax.plot([x["mean_probability"] for x in b], [x["frequency"] for x in b], marker="o",
                    label=f"{det} {name} (ECE {cal['ece']:.3f}, n={cal['n']})")
    ax.set_xlabel("existence probability (bin mean)")
    ax.set_ylabel("fraction matching a true object")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_title("Existence calibration")
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path_rel)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--out", default="online-metacognition", help="output folder")
    ap.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    ap.add_argument("--kappa", type=float, default=1.0, help="step sizes eta_i = (i + t0)^-kappa (default 1)")
    ap.add_argument("--t0", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    schedule = StepSchedule(args.kappa, args.t0)
    from error_decomposition import classify     # the sibling script (this folder is on sys.path)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for det in args.detectors:
        path = os.path.join(args.data_dir, f"data_labelled_{det}.json")
        if not os.path.isfile(path):
            print(f"error: {path} not found (give --data-dir)", file=sys.stderr)
            return 2
        r = run_detector(path, schedule, classify)
        results[det] = r
        print(f"\n== {det} (online schedule: eta_i = (i + {args.t0:g})^-{args.kappa:g})")
        print(f"{'split B frame Jaccard':36s}" + "".join(f"{k:>22s}" for k in r["split_B"]))
        print(f"{'':36s}" + "".join(f"{v:22.3f}" for v in r["split_B"].values()))
        diff = r["split_B"]["online (on arrival)"] - r["split_B"]["batch EM"]
        print(f"online (on arrival) - batch EM on split B: {diff:+.3f}")
        print("learning curve (split B with the online V after n videos; V error = mean |V - V_ground_truth|):")
        print(f"{'n':>5s}{'split B':>10s}{'err r':>9s}{'err h':>9s}")
        for c in r["learning_curve"]:
            print(f"{c['n']:5d}{c['split_B']:10.3f}{c['V_error_r']:9.3f}{c['V_error_h']:9.4f}")
        at50 = next((c for c in r["learning_curve"] if c["n"] == 50), None)
        if at50 is not None:
            print(f"after 50 videos: split B {at50['split_B']:.3f} vs batch EM {r['split_B']['batch EM']:.3f} "
                  f"({at50['split_B'] - r['split_B']['batch EM']:+.3f})")
        print(f"batch EM V error: r {r['V_error_batch'][0]:.3f}, h {r['V_error_batch'][1]:.4f}")
        for name, cal in r["existence_calibration"].items():
            print(f"existence calibration ({name}): ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}, n={cal['n']}")
        print(f"timings: batch {r['timings']['batch_s']:.1f} s, online {r['timings']['online_s']:.1f} s")
    plot(os.path.join(args.out, "learning_curve.png"), os.path.join(args.out, "existence_reliability.png"), results)
    atomic_write_json(os.path.join(args.out, "online.json"), results)
    print(f"\n-> {args.out}/online.json, learning_curve.png, existence_reliability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
