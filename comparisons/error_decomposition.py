"""Where the loss of ``metagen-ppl evaluate`` comes from, on real detector data (issue 13 item 1).

For each detector file and split (A = videos 1-50, B = 51-100) the script reads
the world states of an ``evaluate`` run (it runs ``evaluate`` with its defaults
when ``OUT/<detector>/world_states.json`` is missing) and classifies every
inferred and every true object of every video:

* the inferred objects of a video are matched to its true objects by the
  Hungarian algorithm on 3D distance, pairs farther apart than ``--gate``
  metres (default 1.5) left unmatched;
* ``correct``: a matched pair of the same category; ``wrong category``: a
  matched pair of different categories;
* ``missed``: a true object left unmatched, broken down by category and by the
  number of frames in which the detector saw it (a detection of its category
  within ``--radius`` px, default 20, of its projection in a frame where it is
  visible);
* ``duplicate``: an unmatched inferred object within the gate of a true object
  of its category that another inferred object already matches;
* ``hallucination``: any other unmatched inferred object (a kept false alarm).

It also prints the box similarity of the same world states (DESIGN.md section 5; the
shared files have no ``labels2D``, so the true boxes are the pseudo boxes of
:func:`metagen_ppl.domain.metrics.projected_labels2d`: centred on the projections of
the labelled 3D objects).

The loss is then attributed by *oracle fixes*: the split's frame category
Jaccard after fixing one class of error alone (missed objects added at their
true positions, all of them or only those the detector saw in at least one
frame -- the part any method that reads detections could recover; hallucinations removed; duplicates removed; wrong categories
corrected; matched objects moved to their true positions: the location error,
which changes the frames in which an object counts as visible). The gain of
each fix is the part of ``1 - score`` that class costs; the gains need not add
up (one frame can suffer from two classes).

Usage::

    python comparisons/error_decomposition.py [--data-dir ../shared/data/metagen2021] [--out error-decomposition]
        [--detectors retinanet faster_rcnn] [--gate 1.5] [--radius 20] [--rerun] [--json FILE]

When the world states carry ``existence_probability`` per object (``evaluate`` writes it), the
calibration of those probabilities against "the object matches a true object of its
category" is printed (expected calibration error, Brier score) and drawn as a reliability
diagram, ``OUT/existence_reliability.png``.

Prints one table per detector and writes ``OUT/decomposition.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from metagen_ppl.domain.camera import project, visible
from metagen_ppl.domain.metagen_data import load_videos
from metagen_ppl.domain.metrics import (calibration, object_extents, projected_labels2d, split_means,
                                        world_state_frame_scores)
from metagen_ppl.io import atomic_write_json

from shared_data import default_data_dir

DETECTORS = ("retinanet", "faster_rcnn")
FIXES = ("missed", "missed, seen", "hallucination", "duplicate", "wrong category", "location")
SEEN_BINS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 10 ** 6))


def frames_seen(video, category: int, position, radius: float) -> int:
    """Frames in which the true object is visible and the detector has a detection of its category near it."""
    pos = torch.as_tensor(position, dtype=video.cams.dtype).reshape(1, 3)
    pix, depth = project(pos, video.cams, video.looks, video.camera)          # (T, 2), (T,)
    vis = visible(pix, depth, video.camera)
    n = 0
    for t, det in enumerate(video.detections):
        if not bool(vis[t]) or len(det) == 0:
            continue
        same = det.categories == category
        if same.any() and float((det.centers[same] - pix[t]).norm(dim=-1).min()) <= radius:
            n += 1
    return n


def classify(video, objects, gate: float) -> dict:
    """Match one video's inferred objects to its true objects; the classes of every object.

    Returns ``{"pairs": [(i_pred, k_true)], "missed": [k], "duplicate": [i], "hallucination": [i]}``.
    """
    true_c = video.gt_categories.tolist()
    true_p = video.gt_positions.numpy()
    pred_c = [c for c, _ in objects]
    pred_p = np.array([p for _, p in objects], dtype=float).reshape(-1, 3)
    pairs = []
    if len(pred_c) and len(true_c):
        d = np.linalg.norm(pred_p[:, None] - true_p[None], axis=-1)
        # prefer a same-category partner at equal distance: a small bonus inside the gate
        cost = d + 0.25 * (np.array(pred_c)[:, None] != np.array(true_c)[None])
        rows, cols = linear_sum_assignment(cost)
        pairs = [(int(i), int(k)) for i, k in zip(rows, cols) if d[i, k] <= gate]
    matched_p = {i for i, _ in pairs}
    matched_t = {k for _, k in pairs}
    missed = [k for k in range(len(true_c)) if k not in matched_t]
    dup, hall = [], []
    for i in range(len(pred_c)):
        if i in matched_p:
            continue
        near_same = [k for k in range(len(true_c))
                     if true_c[k] == pred_c[i] and np.linalg.norm(pred_p[i] - true_p[k]) <= gate]
        (dup if any(k in matched_t for k in near_same) else hall).append(i)
    return {"pairs": pairs, "missed": missed, "duplicate": dup, "hallucination": hall}


def fixed_objects(video, objects, cls: dict, fix: str, radius: float = 20.0) -> list:
    """The world state of one video with one class of error fixed by the oracle (``"missed, seen"``: only
    the missed objects the detector saw in at least one frame, the part a method reading detections
    can recover)."""
    objs = [list(o) for o in objects]
    true_c = video.gt_categories.tolist()
    true_p = video.gt_positions.tolist()
    if fix == "missed":
        return [tuple(o) for o in objs] + [(true_c[k], true_p[k]) for k in cls["missed"]]
    if fix == "missed, seen":
        return [tuple(o) for o in objs] + [(true_c[k], true_p[k]) for k in cls["missed"]
                                           if frames_seen(video, true_c[k], video.gt_positions[k], radius) > 0]
    if fix in ("hallucination", "duplicate"):
        drop = set(cls[fix])
        return [tuple(o) for i, o in enumerate(objs) if i not in drop]
    if fix == "wrong category":
        for i, k in cls["pairs"]:
            objs[i][0] = true_c[k]
        return [tuple(o) for o in objs]
    if fix == "location":
        for i, k in cls["pairs"]:
            objs[i][1] = true_p[k]
        return [tuple(o) for o in objs]
    raise ValueError(fix)


def _score(video, objects, metric="jaccard") -> float:
    cats = [c for c, _ in objects]
    pos = torch.tensor([p for _, p in objects], dtype=video.cams.dtype).reshape(-1, 3)
    return float(world_state_frame_scores(video, cats, pos, metric).mean())


def decompose(videos, world: list, gate: float, radius: float) -> dict:
    """Counts, oracle-fix gains and missed-object breakdowns per split (``A``, ``B``, ``all``)."""
    by_path = {w["path"]: w for w in world}
    idx = [v.index for v in videos]
    if any(v.labels2d is None for v in videos):          # pseudo boxes around the projected truth
        extents = object_extents(videos)
        for v in videos:
            v.labels2d = projected_labels2d(v, extents)
    base, box, gains = [], [], {f: [] for f in FIXES}
    rows, exist = [], []
    for v in videos:
        names = list(v.category_names)
        index = {n.lower(): i for i, n in enumerate(names)}
        objs = [(index[o["category_name"].lower()], o["position"]) for o in by_path[v.path]["objects"]]
        cls = classify(v, objs, gate)
        good = {i for i, k in cls["pairs"] if objs[i][0] == int(v.gt_categories[k])}
        for i, o in enumerate(by_path[v.path]["objects"]):
            if "existence_probability" in o:
                exist.append((v.index, float(o["existence_probability"]), i in good))
        s0 = _score(v, objs)
        base.append(s0)
        box.append(_score(v, objs, "box"))
        for f in FIXES:
            gains[f].append(_score(v, fixed_objects(v, objs, cls, f, radius)) - s0)
        true_c = v.gt_categories.tolist()
        rows.append({
            "index": v.index, "split": "A" if v.index < 50 else "B", "n_true": len(true_c), "n_pred": len(objs),
            "correct": sum(objs[i][0] == true_c[k] for i, k in cls["pairs"]),
            "wrong category": [(names[true_c[k]], names[objs[i][0]]) for i, k in cls["pairs"]
                               if objs[i][0] != true_c[k]],
            "missed": [(names[true_c[k]], frames_seen(v, true_c[k], v.gt_positions[k], radius))
                       for k in cls["missed"]],
            "duplicate": [names[objs[i][0]] for i in cls["duplicate"]],
            "hallucination": [names[objs[i][0]] for i in cls["hallucination"]],
            "location_error_m": [float(np.linalg.norm(np.subtract(objs[i][1], v.gt_positions[k].tolist())))
                                 for i, k in cls["pairs"]],
        })
    out = {}
    for split in ("A", "B", "all"):
        sel = [r for r in rows if split == "all" or r["split"] == split]
        sm = split_means(base, idx)[split]
        seen = Counter()
        for r in sel:
            for _, n in r["missed"]:
                seen[next(f"{a}-{b}" if b < 10 ** 6 else f">={a}" for a, b in SEEN_BINS if a <= n <= b)] += 1
        errs = [e for r in sel for e in r["location_error_m"]]
        out[split] = {
            "score": sm, "loss": 1 - sm, "box similarity": split_means(box, idx)[split],
            "gain": {f: split_means(gains[f], idx)[split] for f in FIXES},
            "n_true": sum(r["n_true"] for r in sel), "n_pred": sum(r["n_pred"] for r in sel),
            "correct": sum(r["correct"] for r in sel),
            "wrong category": len([p for r in sel for p in r["wrong category"]]),
            "wrong category pairs (true->pred)": dict(Counter(f"{a}->{b}" for r in sel
                                                              for a, b in r["wrong category"])),
            "missed": len([m for r in sel for m in r["missed"]]),
            "missed by category": dict(Counter(c for r in sel for c, _ in r["missed"])),
            "missed by frames seen": dict(seen),
            "duplicate": len([d for r in sel for d in r["duplicate"]]),
            "hallucination": len([h for r in sel for h in r["hallucination"]]),
            "hallucination by category": dict(Counter(c for r in sel for c in r["hallucination"])),
            "location error median m": float(np.median(errs)) if errs else None,
            "location error p90 m": float(np.percentile(errs, 90)) if errs else None,
        }
        ex = [(p, y) for i, p, y in exist if split == "all" or (i < 50) == (split == "A")]
        if ex:
            out[split]["existence calibration"] = calibration([p for p, _ in ex], [y for _, y in ex])
    out["videos"] = rows
    return out


def plot_reliability(path: str, decs: dict) -> None:
    """Reliability diagram of the objects' existence probabilities (all videos), one line per detector."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for name, dec in decs.items():
        cal = dec["all"].get("existence calibration")
        if cal is None:
            continue
        b = cal["bins"]
        ax.plot([x["mean_probability"] for x in b], [x["frequency"] for x in b], marker="o",
                label=f"{name} (ECE {cal['ece']:.3f}, n={cal['n']})")
        for x in b:
            ax.annotate(str(x["n"]), (x["mean_probability"], x["frequency"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("existence probability (bin mean)")
    ax.set_ylabel("fraction matching a true object")
    ax.set_title("Inferred objects: existence calibration")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_table(name: str, dec: dict) -> None:
    print(f"\n== {name}")
    print(f"{'':34s}{'A':>9s}{'B':>9s}{'all':>9s}")
    row = lambda label, key, fmt: print(f"{label:34s}" + "".join(fmt(dec[s][key]) for s in ("A", "B", "all")))
    row("frame Jaccard", "score", lambda x: f"{x:9.3f}")
    row("box similarity", "box similarity", lambda x: f"{x:9.3f}")
    row("loss (1 - Jaccard)", "loss", lambda x: f"{x:9.3f}")
    for f in FIXES:
        print(f"{'  gain if ' + f + ' fixed':34s}" + "".join(f"{dec[s]['gain'][f]:9.3f}" for s in ("A", "B", "all")))
    for key in ("n_true", "n_pred", "correct", "wrong category", "missed", "duplicate", "hallucination"):
        row(key, key, lambda x: f"{x:9d}")
    row("location error median (m)", "location error median m", lambda x: f"{x:9.2f}" if x is not None else "        -")
    row("location error p90 (m)", "location error p90 m", lambda x: f"{x:9.2f}" if x is not None else "        -")
    cal = {s: dec[s].get("existence calibration") for s in ("A", "B", "all")}
    if cal["all"] is not None:
        print(f"{'existence ECE':34s}" + "".join(f"{c['ece']:9.3f}" if c else "        -" for c in cal.values()))
        print(f"{'existence Brier':34s}" + "".join(f"{c['brier']:9.3f}" if c else "        -" for c in cal.values()))
    for key in ("missed by category", "missed by frames seen", "hallucination by category",
                "wrong category pairs (true->pred)"):
        print(f"{key} (B): {json.dumps(dec['B'][key], sort_keys=True)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir(), help="folder of data_labelled_<detector>.json")
    ap.add_argument("--out", default="error-decomposition", help="output folder (evaluate runs and decomposition.json)")
    ap.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    ap.add_argument("--gate", type=float, default=1.5, help="matching gate in metres (default 1.5)")
    ap.add_argument("--radius", type=float, default=20.0, help="px: a detection this close to a projection "
                    "'sees' the object (default 20)")
    ap.add_argument("--rerun", action="store_true", help="run evaluate again even if its outputs exist")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the evaluate runs (default 2)")
    args = ap.parse_args(argv)
    from metagen_ppl.apps.evaluate import evaluate
    result = {}
    for det in args.detectors:
        data = os.path.join(args.data_dir, f"data_labelled_{det}.json")
        if not os.path.isfile(data):
            print(f"error: {data} not found (give --data-dir)", file=sys.stderr)
            return 2
        run = os.path.join(args.out, det)
        ws = os.path.join(run, "world_states.json")
        if args.rerun or not os.path.isfile(ws):
            evaluate(data, run, progress=False, plots=0, num_threads=args.threads)
        videos = load_videos(data)
        with open(ws) as f:
            world = json.load(f)
        dec = decompose(videos, world, args.gate, args.radius)
        print_table(det, dec)
        result[det] = dec
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "decomposition.json"), result)
    if any(d["all"].get("existence calibration") for d in result.values()):
        plot_reliability(os.path.join(args.out, "existence_reliability.png"), result)
        print(f"-> {os.path.join(args.out, 'existence_reliability.png')}")
    print(f"\n-> {os.path.join(args.out, 'decomposition.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
