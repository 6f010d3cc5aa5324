"""Comparison for model M3 (issue 4): learning a detector's metacognition across scenes.

Run from the repository root::

    python comparisons/metacognition.py [--quick] [--out DIR]

On simulated data (default 100 scenes x 20 frames, 1-3 objects per scene, 5
categories, hallucination rates h_c ~ U(0.05, 0.8) and detection rates
r_c ~ U(0.3, 0.95) per frame, location noise 0.3 m in a 10 x 2 x 10 m box) it
prints and saves (``DIR/results.json``, ``DIR/tables.md``):

1. the error of the learned V against the truth as scenes accumulate (10, 20, 50, 100);
2. object-level precision / recall / F1 (a predicted object matches a true one of
   the same category within 1 m, Hungarian matching) and location error for
   learned V, lesioned V (V at its prior mean, MetaGen's ablation), the true V
   (oracle), V learned on scenes 1-50 and fixed on 51-100, the raw detections,
   SVI-MAP on the same model (same structure moves, continuous phase by
   ``TraceEnum_ELBO`` + ``AutoDelta``), each with its wall time;
3. MCMC (NUTS over V, sigma and the locations, assignments enumerated out) on
   a small subset of scenes with the structure (object count and categories)
   fixed at the EM fit's -- NUTS cannot make the discrete structure moves --
   next to EM on the identical problem;
4. a harder setting (strong hallucinations h_c ~ U(2, 5), 0.5 m noise, 10
   frames) where the metacognition matters most.

PNGs: ``v_error_vs_scenes.png`` and ``scene.png`` (detections, truth and the
inference of the learned and the lesioned model on one hard scene).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import torch

from metagen_ppl.apps.plots import plot_scene_topview as plot_scene
from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.objects import object_metrics, raw_detection_objects, truth_objects, V_error
from metagen_ppl.domain.scenes import parse_scenes, write_scenes
from metagen_ppl.engine.em import fit_em
from metagen_ppl.engine.mcmc import fit_mcmc
from metagen_ppl.io import atomic_write_json, atomic_write_text
from metagen_ppl.models import detector
from metagen_ppl.models.detector.fit import fit_metacognition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the source checkout (outputs go to ROOT/comparisons/out)


def _now():
    return time.perf_counter(), time.process_time()


def _since(t0):
    """``(wall, cpu)`` seconds since ``t0``: the machine is shared, so CPU time is the steadier number."""
    return time.perf_counter() - t0[0], time.process_time() - t0[1]


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def table(rows, cols, header=None) -> str:
    head = header or cols
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _row(name, scenes_label, metrics, V=None, V_true=None, wall=None, extra=None):
    row = {"method": name, "scenes": scenes_label, "precision": metrics["precision"], "recall": metrics["recall"],
           "f1": metrics["f1"], "loc_err": metrics["location_error"], "tp": metrics["tp"], "fp": metrics["fp"],
           "fn": metrics["fn"]}
    if wall is not None:
        row["wall_s"], row["cpu_s"] = wall
    if V is not None and V_true is not None:
        e = V_error(V, V_true)
        row["r_mae"], row["h_mae"] = e["rates_mae"], e["hallucination_mae"]
    if extra:
        row.update(extra)
    return row


def fitted_raw_threshold(sc_fit, sc_eval):
    """Raw detections with the frame-fraction threshold that maximises F1 on ``sc_fit``."""
    best = (-1.0, 0.0)
    truth = truth_objects(sc_fit)
    for frac in np.linspace(0.0, 0.9, 19):
        f1 = object_metrics(raw_detection_objects(sc_fit, min_frame_fraction=float(frac)), truth)["f1"]
        if f1 > best[0] + 1e-12:
            best = (f1, float(frac))
    return best[1], raw_detection_objects(sc_eval, min_frame_fraction=best[1])


def objects_from(locs, cats, active, paths):
    return [{"path": p, "objects": [{"category_name": CATEGORIES[int(cats[s, k])],
                                     "position": locs[s, k].tolist()}
                                    for k in range(cats.shape[1]) if bool(active[s, k])]}
            for s, p in enumerate(paths)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--out", default=os.path.join(ROOT, "comparisons", "out", "metacognition"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-svi", action="store_true")
    ap.add_argument("--no-mcmc", action="store_true")
    ap.add_argument("--save-data", action="store_true", help="also write the simulated scenes (DIR/scenes.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    q = args.quick
    S, T = (30, 10) if q else (100, 20)
    counts = (10, 30) if q else (10, 20, 50, 100)
    svi_steps = 60 if q else 200
    mcmc_scenes, mcmc_warm, mcmc_draws, mcmc_depth = (2, 30, 30, 4) if q else (3, 150, 150, 5)
    hard_S, hard_T = (20, 10) if q else (50, 10)
    results = {"settings": {"num_scenes": S, "num_frames": T, "seed": args.seed, "quick": q,
                            "threads": args.threads, "match_radius_m": 1.0}}
    t_all = time.perf_counter()

    sims = detector.simulate(S, T, args.seed)
    if args.save_data:
        write_scenes(os.path.join(args.out, "scenes.json"), sims)
    sc = parse_scenes(sims)
    Vt = sc.true_V
    truth = truth_objects(sc)
    print(f"simulated {S} scenes x {T} frames, {sum(len(t['objects']) for t in truth)} objects, "
          f"{int(sc.num_detections.sum())} detections ({int(sc.det_mask.sum())} kept)")
    print("true V:  r =", [round(v, 3) for v in Vt["rates"].tolist()],
          " h =", [round(v, 3) for v in Vt["hallucination"].tolist()])

    # 1. V error vs number of scenes ------------------------------------------------------
    rows1 = []
    learned_all = None
    for n in counts:
        sub = sc.subset(range(n))
        t0 = _now()
        res = fit_metacognition(sub, mode="learn")
        wall, cpu = _since(t0)
        e = V_error(res.V, Vt)
        m = object_metrics(res.scenes, truth_objects(sub))
        rows1.append({"scenes": n, "r_mae": e["rates_mae"], "r_max": e["rates_max"], "h_mae": e["hallucination_mae"],
                      "h_max": e["hallucination_max"], "sigma": float(res.V["scale"]), "f1": m["f1"],
                      "em_iters": res.n_iter, "rounds": res.n_rounds, "wall_s": wall, "cpu_s": cpu})
        if n == S:
            learned_all = (res, (wall, cpu))
    t1 = table(rows1, ["scenes", "r_mae", "r_max", "h_mae", "h_max", "sigma", "f1", "em_iters", "rounds", "wall_s",
                       "cpu_s"],
               ["scenes", "r MAE", "r max err", "h MAE", "h max err", "sigma (true 0.3)", "object F1",
                "EM iters", "rounds", "wall (s)", "CPU (s)"])
    print("\n## 1. Error of the learned V vs number of scenes (EM, learn mode)\n")
    print(t1)
    results["v_error_vs_scenes"] = rows1
    learned, learned_wall = learned_all
    learned.to_json(os.path.join(args.out, "fit_learned.json"))
    per_cat = [{"category": c, "r_true": float(Vt["rates"][i]), "r_learned": float(learned.V["rates"][i]),
                "h_true": float(Vt["hallucination"][i]), "h_learned": float(learned.V["hallucination"][i])}
               for i, c in enumerate(CATEGORIES)]
    t1b = table(per_cat, ["category", "r_true", "r_learned", "h_true", "h_learned"])
    print(f"\nlearned V on all {S} scenes:\n")
    print(t1b)
    results["learned_V"] = per_cat

    # 2. object-level comparison ------------------------------------------------------------
    rows2 = [_row("EM, learned V", f"1-{S}", object_metrics(learned.scenes, truth), learned.V, Vt, learned_wall)]
    t0 = _now()
    rd = fit_metacognition(sc, mode="learn", estep="direct")
    rows2.append(_row("EM, learned V, direct E-step (identical fit)", f"1-{S}", object_metrics(rd.scenes, truth),
                      rd.V, Vt, _since(t0)))
    for mode, label, kw in (("lesioned", "EM, lesioned V (prior mean)", {}),
                            ("fixed", "EM, true V (oracle)", {"V": {"rates": Vt["rates"],
                                                                       "hallucination": Vt["hallucination"]}})):
        t0 = _now()
        r = fit_metacognition(sc, mode=mode, **kw)
        rows2.append(_row(label, f"1-{S}", object_metrics(r.scenes, truth), r.V, Vt, _since(t0)))
    half = S // 2
    A, B = sc.subset(range(half)), sc.subset(range(half, S))
    tB = truth_objects(B)
    t0 = _now()
    rA = fit_metacognition(A, mode="learn")
    rB = fit_metacognition(B, mode="fixed", V=rA.V)
    rows2.append(_row(f"EM, V learned on 1-{half}, fixed", f"{half + 1}-{S}", object_metrics(rB.scenes, tB),
                      rB.V, Vt, _since(t0)))
    t0 = _now()
    rBl = fit_metacognition(B, mode="learn")
    rows2.append(_row("EM, learned V", f"{half + 1}-{S}", object_metrics(rBl.scenes, tB), rBl.V, Vt,
                      _since(t0)))
    t0 = _now()
    rBles = fit_metacognition(B, mode="lesioned")
    rows2.append(_row("EM, lesioned V", f"{half + 1}-{S}", object_metrics(rBles.scenes, tB), rBles.V, Vt,
                      _since(t0)))
    t0 = _now()
    raw = raw_detection_objects(sc)
    rows2.append(_row("raw detections (every cluster)", f"1-{S}", object_metrics(raw, truth),
                      wall=_since(t0)))
    t0 = _now()
    frac, rawB = fitted_raw_threshold(A, B)
    rows2.append(_row(f"raw detections, clusters in > {frac:.2f} of frames (fitted on 1-{half})", f"{half + 1}-{S}",
                      object_metrics(rawB, tB), wall=_since(t0)))
    if not args.no_svi:
        t0 = _now()
        rs = fit_metacognition(sc, mode="learn", inner="svi", svi_steps=svi_steps, seed=args.seed)
        rows2.append(_row(f"SVI-MAP ({svi_steps} steps/phase), learned V", f"1-{S}", object_metrics(rs.scenes, truth),
                          rs.V, Vt, _since(t0)))
        results["svi_log_joint"] = rs.log_joint
    results["em_log_joint"] = learned.log_joint
    cols2 = ["method", "scenes", "precision", "recall", "f1", "loc_err", "tp", "fp", "fn", "r_mae", "h_mae",
             "wall_s", "cpu_s"]
    head2 = ["method", "scenes", "precision", "recall", "F1", "loc err (m)", "TP", "FP", "FN", "r MAE", "h MAE",
             "wall (s)", "CPU (s)"]
    t2 = table(rows2, cols2, head2)
    print("\n## 2. Objects: learned vs lesioned V vs raw detections vs SVI-MAP\n")
    print(t2)
    results["objects"] = rows2

    # 3. MCMC on a subset, structure fixed at EM's ------------------------------------------
    t3 = ""
    if not args.no_mcmc:
        idx = list(range(mcmc_scenes))
        sub = sc.subset(idx)
        tsub = truth_objects(sub)
        params = {k: v[idx] for k, v in learned.params.items() if k in ("locs", "cats", "active")}
        K, cats, active, locs = detector.compact_structure(params)
        opts = {"cats": cats, "active": active}
        init = {"locs": locs, "rates": learned.V["rates"], "hallucination": learned.V["hallucination"],
                "scale": learned.V["scale"]}
        rows3 = []
        t0 = _now()
        fe = fit_em("detector", sub.data(), K, options=opts, init=init, max_iter=500, tol=1e-9)
        rows3.append(_row("EM (MAP), structure from the full EM fit", f"1-{mcmc_scenes}",
                          object_metrics(objects_from(fe.params["locs"], cats, active, sub.paths), tsub),
                          fe.params, Vt, _since(t0)))
        t0 = _now()
        fm = fit_mcmc("detector", sub.data(), K, num_samples=mcmc_draws, warmup_steps=mcmc_warm, num_chains=1,
                      max_tree_depth=mcmc_depth, init=init, options=opts, max_assignment_draws=10)
        wall = _since(t0)
        sd = {k: fm.samples[k].reshape(-1, *fm.samples[k].shape[2:]).std(0) for k in ("rates", "hallucination")}
        rows3.append(_row(f"NUTS ({mcmc_warm}+{mcmc_draws} draws, 1 chain), posterior mean", f"1-{mcmc_scenes}",
                          object_metrics(objects_from(fm.params["locs"], cats, active, sub.paths), tsub),
                          fm.params, Vt, wall, {"divergences": sum(fm.info["divergences"])}))
        t3 = table(rows3, ["method", "scenes", "precision", "recall", "f1", "loc_err", "r_mae", "h_mae", "wall_s",
                           "cpu_s"],
                   ["method", "scenes", "precision", "recall", "F1", "loc err (m)", "r MAE", "h MAE", "wall (s)",
                    "CPU (s)"])
        print(f"\n## 3. MCMC on {mcmc_scenes} scenes (structure fixed at the EM fit's; V mostly prior here)\n")
        print(t3)
        vr = [{"category": c, "r_true": float(Vt["rates"][i]), "r_em": float(fe.params["rates"][i]),
               "r_nuts": float(fm.params["rates"][i]), "r_nuts_sd": float(sd["rates"][i]),
               "h_true": float(Vt["hallucination"][i]), "h_em": float(fe.params["hallucination"][i]),
               "h_nuts": float(fm.params["hallucination"][i]), "h_nuts_sd": float(sd["hallucination"][i])}
              for i, c in enumerate(CATEGORIES)]
        t3 += "\n\n" + table(vr, list(vr[0]))
        print()
        print(table(vr, list(vr[0])))
        results["mcmc"] = {"rows": rows3, "V": vr}

    # 4. strong hallucinations ---------------------------------------------------------------
    hard = parse_scenes(detector.simulate(hard_S, hard_T, args.seed + 1, hall_range=(2.0, 5.0), scale=0.5))
    th = truth_objects(hard)
    rows4 = []
    fits4 = {}
    for mode in ("learn", "lesioned"):
        t0 = _now()
        r = fit_metacognition(hard, mode=mode)
        fits4[mode] = r
        rows4.append(_row(f"EM, {'learned' if mode == 'learn' else 'lesioned'} V", f"1-{hard_S}",
                          object_metrics(r.scenes, th), r.V, hard.true_V, _since(t0)))
    t0 = _now()
    r = fit_metacognition(hard, mode="fixed", V={"rates": hard.true_V["rates"],
                                                 "hallucination": hard.true_V["hallucination"]})
    rows4.append(_row("EM, true V (oracle)", f"1-{hard_S}", object_metrics(r.scenes, th), r.V, hard.true_V,
                      _since(t0)))
    rows4.append(_row("raw detections (every cluster)", f"1-{hard_S}",
                      object_metrics(raw_detection_objects(hard), th)))
    t4 = table(rows4, cols2, head2)
    print(f"\n## 4. Strong hallucinations: {hard_S} scenes x {hard_T} frames, h ~ U(2, 5), r ~ U(0.3, 0.95), "
          f"sigma 0.5 m\n")
    print("true V:  r =", [round(v, 3) for v in hard.true_V["rates"].tolist()],
          " h =", [round(v, 3) for v in hard.true_V["hallucination"].tolist()], "\n")
    print(t4)
    results["strong_hallucinations"] = rows4

    # PNGs -------------------------------------------------------------------------------------
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ns = [r["scenes"] for r in rows1]
    ax.plot(ns, [r["r_mae"] for r in rows1], "o-", label="detection rate r: mean abs error")
    ax.plot(ns, [r["h_mae"] for r in rows1], "s-", label="hallucination rate h: mean abs error")
    ax.plot(ns, [r["r_max"] for r in rows1], "o--", alpha=0.5, label="r: max abs error")
    ax.plot(ns, [r["h_max"] for r in rows1], "s--", alpha=0.5, label="h: max abs error")
    ax.set_xscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("number of scenes")
    ax.set_ylabel("error (detections per frame)")
    ax.set_title("Learned metacognition V vs truth (EM)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "v_error_vs_scenes.png"), dpi=110)
    # the hard scene where learned and lesioned differ most
    def per_scene(fit, i):
        return object_metrics([fit.scenes[i]], [th[i]])

    gaps = []
    for i in range(len(hard)):
        a, b = per_scene(fits4["learn"], i), per_scene(fits4["lesioned"], i)
        gaps.append((a["f1"] - b["f1"], a["tp"], b["fp"]))
    j = max(range(len(gaps)), key=lambda i: gaps[i])   # learned right where lesioned is most wrong
    fig = Figure(figsize=(12, 6))
    for i, mode in enumerate(("learn", "lesioned")):
        ax = fig.add_subplot(1, 2, i + 1)
        plot_scene(None, hard, j, inferred=fits4[mode].scenes, responsibilities=fits4[mode].responsibilities,
                   ax=ax, title=f"scene {hard.paths[j]}: {'learned' if mode == 'learn' else 'lesioned'} V")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "scene.png"), dpi=100)

    results["total_wall_s"] = time.perf_counter() - t_all
    atomic_write_json(os.path.join(args.out, "results.json"), results)
    md = ["# Metacognition comparison (model M3)", "", f"settings: {json.dumps(results['settings'])}", "",
          "## 1. V error vs number of scenes", "", t1, "", t1b, "", "## 2. Objects", "", t2, ""]
    if t3:
        md += ["## 3. MCMC on a subset", "", t3, ""]
    md += ["## 4. Strong hallucinations", "", t4, "", f"total wall time: {results['total_wall_s']:.1f} s"]
    atomic_write_text(os.path.join(args.out, "tables.md"), "\n".join(md) + "\n")
    print(f"\ntotal wall time {results['total_wall_s']:.1f} s; results, tables and PNGs in {args.out}")


if __name__ == "__main__":
    main()
