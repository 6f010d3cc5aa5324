"""Compare the three EM category strategies of M2 with SVI-MAP and MCMC on simulated scenes.

Usage::

    metagen-ppl compare-categories              # the default study of issue 3 (long)
    metagen-ppl compare-categories --quick      # a few minutes: fewer settings and seeds
    python comparisons/categories.py --quick    # the same, from a source checkout

Scenes are drawn from the ``categorical`` model itself with C = 5 categories,
equal mixture weights (every object produces about N / K detections), noise
scale 1 and locations from the prior N(0, 10^2 I). The default design varies
one factor at a time around a centre (K = 4, confusion diagonal 0.75, N = 500):
K = 2..6, diagonal 0.6 and 0.9, N = 50 and 2000; 20 seeds per setting (9
settings, 180 scenes). The confusion matrix is learned (MAP under its
diagonal-heavy Dirichlet prior) by every method unless ``--known-confusion``.

Methods (all single-threaded, run in ``--jobs`` worker processes):

``em-mstep``       categories as a discrete parameter (closed-form argmax), 1 start;
``em-mstep-x5``    the same with 5 k-means++ restarts (best kept);
``em-enumerate``   c enumerated jointly with z (exact E-step), 1 start; only where C^K <= 4096;
``em-sample-data`` S = 16 category vectors from the data-driven proposal, continuous EM on each;
``em-sample-prior`` S = 16 category vectors from the uniform prior (the seed's original proposal);
``svi-map``        TraceEnum_ELBO + AutoDelta, c and z enumerated; only where C^K * N <= --svi-budget
                   (its per-step cost grows like the enumerate E-step);
``mcmc``           NUTS, c and z enumerated, 1 chain; only on the first --mcmc-seeds seeds of
                   the settings with K <= --mcmc-max-k (it is by far the slowest).

Metrics per scene, after Hungarian matching of estimated to true locations:
category accuracy, mean location error, ``ll_fixed`` = log p(x, o | theta_hat, c_hat)
(z summed out; the objective of sample/mstep), ``ll_marg`` = log p(x, o | theta_hat)
(c and z summed out; the objective of enumerate/SVI/MCMC; only where C^K <= 4096),
the same two plus the log prior of theta (and of c_hat), i.e. the MAP
objectives (``lj_fixed``, ``lj_marg``), and wall time. A method "finds the best
known optimum" of a scene when its MAP objective is within ``max(0.05, 1e-5 |best|)``
nats of the best of all methods on that scene (with A learned the plain
likelihood rewards giving two objects of one category two labels, one more
free row of A, so the likelihood alone is not the objective any method optimises).

Writes ``--out`` (default ``comparisons/out/categories/``): ``scenes.csv`` (one row per scene and
method), ``summary.md`` (the tables printed here), ``summary.json`` and
``accuracy_vs_time.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections import defaultdict

import numpy as np
import torch
from metagen_ppl.util import linear_assignment

from metagen_ppl.engine.checkpoint import FitInterrupted
from metagen_ppl.errors import MetagenError
from metagen_ppl.models.categorical import generative as cm
from metagen_ppl.models.categorical.strategies import (fit_categorical, fit_categorical_mcmc, fit_categorical_svi,
                                                       score_estimate)

C = 5
CENTRE = dict(K=4, diag=0.75, N=500)
DEFAULT_SETTINGS = (
    [dict(CENTRE, K=k) for k in (2, 3, 4, 5, 6)]
    + [dict(CENTRE, diag=d) for d in (0.6, 0.9)]
    + [dict(CENTRE, N=n) for n in (50, 2000)]
)
QUICK_SETTINGS = [dict(K=2, diag=0.75, N=200), dict(K=4, diag=0.75, N=200), dict(K=6, diag=0.6, N=200)]
METHODS = ("em-mstep", "em-mstep-x5", "em-enumerate", "em-sample-data", "em-sample-prior", "svi-map", "mcmc")
ENUM_LIMIT = 4096


def _setting_name(s):
    return f"K={s['K']} diag={s['diag']:.2f} N={s['N']}"


def _scene(setting, seed):
    K, N = setting["K"], setting["N"]
    scene_seed = 100_000 * K + 1000 * int(round(100 * setting["diag"])) + 7 * N + seed
    sim = cm.simulate(K, N, scene_seed, num_categories=C, confusion_diag=setting["diag"],
                      weights=[1.0 / K] * K)
    data = {"x": torch.tensor(sim["observations"], dtype=torch.float64),
            "o": torch.tensor(sim["categories"], dtype=torch.long)}
    return data, cm.truth_from_json(sim, torch.float64)


def _evaluate(data, truth, params, K, options):
    """Accuracy, location error, ll_fixed and ll_marg of an estimate (outside the clock)."""
    est = params["locs"].detach().double().numpy()
    tru = truth["locs"].numpy()
    rows, cols = linear_assignment(((tru[:, None] - est[None]) ** 2).sum(-1))
    cats = params["cats"].long()
    acc = float((cats[cols] == truth["cats"][rows]).double().mean())
    loc_err = float(np.sqrt(((est[cols] - tru[rows]) ** 2).sum(-1)).mean())
    sc = score_estimate(data, {k: v for k, v in params.items() if k != "cats"}, K,
                        options=options, cats=cats, max_configs=ENUM_LIMIT)
    return dict(accuracy=acc, location_error=loc_err, ll_fixed=sc["log_lik_fixed"],
                ll_marg=sc["log_lik_marginal"], lj_fixed=sc["log_joint_fixed"], lj_marg=sc["log_joint_marginal"])


def run_task(task):
    """One (setting, seed, method): fit, time, score. Runs in a worker process."""
    torch.set_num_threads(task[3]["threads"])
    warnings.simplefilter("ignore")

    setting, seed, method, cfg = task
    K = setting["K"]
    data, truth = _scene(setting, seed)
    options = {"num_categories": C}
    if cfg["known_confusion"]:
        options["confusion"] = truth["confusion"]
    row = dict(setting=_setting_name(setting), K=K, diag=setting["diag"], N=setting["N"], seed=seed,
               method=method, error="")
    try:
        t0 = time.perf_counter()
        if method == "truth":
            params = {"locs": truth["locs"], "weights": torch.full((K,), 1.0 / K, dtype=torch.float64),
                      "scale": torch.tensor(truth["scale"], dtype=torch.float64),
                      "confusion": truth["confusion"], "cats": truth["cats"]}
            n_iter = 0
        elif method.startswith("em-"):
            kw = dict(seed=seed, score=False, options=options)
            if method == "em-mstep":
                res = fit_categorical(data, K, strategy="mstep", **kw)
            elif method == "em-mstep-x5":
                res = fit_categorical(data, K, strategy="mstep", num_inits=5, **kw)
            elif method == "em-enumerate":
                res = fit_categorical(data, K, strategy="enumerate", **kw)
            elif method == "em-sample-data":
                res = fit_categorical(data, K, strategy="sample", proposal="data",
                                      num_category_samples=cfg["samples"], **kw)
            else:
                res = fit_categorical(data, K, strategy="sample", proposal="prior",
                                      num_category_samples=cfg["samples"], **kw)
            params, n_iter = res.params, res.n_iter
        elif method == "svi-map":
            res = fit_categorical_svi(data, K, guide="delta", num_steps=cfg["svi_steps"], seed=seed,
                                      options=options)
            params, n_iter = res.params, res.n_iter
        elif method == "mcmc":
            res = fit_categorical_mcmc(data, K, num_samples=cfg["mcmc_samples"], warmup_steps=cfg["mcmc_warmup"],
                                       num_chains=1, seed=seed, max_tree_depth=cfg["mcmc_tree_depth"],
                                       max_assignment_draws=5, options=options)
            params, n_iter = res.params, res.n_iter
        else:
            raise ValueError(method)
        wall = time.perf_counter() - t0
        row.update(_evaluate(data, truth, params, K, options))
        row.update(wall_time_s=wall, n_iter=n_iter)
    except Exception as e:  # keep the study going; the row records the failure
        row.update(error=f"{type(e).__name__}: {e}"[:300], wall_time_s=float("nan"))
    return row


def _ignore_sigint():
    """Pool initializer: Ctrl-C reaches the main process only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_pool(jobs: int):
    """A pool of ``jobs`` spawned worker processes that ignore Ctrl-C.

    Stopping it on Ctrl-C leaves a semaphore behind, which multiprocessing's resource tracker
    (a child interpreter started with the pool, taking this interpreter's ``-W`` options) would
    report in two lines of warnings after the one-line message; it is told to keep quiet."""
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    sys.warnoptions.append(quiet)
    try:
        return multiprocessing.get_context("spawn").Pool(jobs, initializer=_ignore_sigint)
    finally:
        sys.warnoptions.remove(quiet)


def _tasks(settings, seeds, cfg, methods):
    tasks = []
    for s in settings:
        for seed in range(seeds):
            tasks.append((s, seed, "truth", cfg))
            for m in methods:
                if m == "em-enumerate" and C ** s["K"] > ENUM_LIMIT:
                    continue
                if m == "svi-map" and (C ** s["K"] * s["N"] > cfg["svi_budget"]
                                       or (cfg["svi_seeds"] is not None and seed >= cfg["svi_seeds"])):
                    continue
                if m == "mcmc" and (s["K"] > cfg["mcmc_max_k"] or seed >= cfg["mcmc_seeds"]):
                    continue
                tasks.append((s, seed, m, cfg))

    def cost(t):  # longest first, for load balance
        s, _, m, _ = t
        base = C ** s["K"] * s["N"] if m in ("em-enumerate", "svi-map", "mcmc") else s["K"] * s["N"]
        return base * {"mcmc": 1000, "svi-map": 30, "em-sample-prior": 20, "em-sample-data": 20}.get(m, 1)

    return sorted(tasks, key=cost, reverse=True)


def _mark_best(rows):
    by_scene = defaultdict(list)
    for r in rows:
        by_scene[(r["setting"], r["seed"])].append(r)
    for group in by_scene.values():
        for key in ("ll_fixed", "ll_marg", "lj_fixed", "lj_marg"):
            vals = [r[key] for r in group if r["method"] != "truth" and not r["error"] and r.get(key) is not None]
            best = max(vals) if vals else None
            for r in group:
                v = r.get(key)
                if best is None or v is None or r["error"]:
                    r[f"gap_{key}"] = None
                    r[f"best_{key}"] = None
                else:
                    r[f"gap_{key}"] = best - v
                    r[f"best_{key}"] = (best - v) <= max(0.05, 1e-5 * abs(best))


def _summarise(rows, group_keys):
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in group_keys)].append(r)
    out = []
    for key, rs in groups.items():
        ok = [r for r in rs if not r["error"]]

        def mean(field, subset=ok):
            v = [r[field] for r in subset if r.get(field) is not None]
            return float(np.mean(v)) if v else None

        def median(field):
            v = [r[field] for r in ok if r.get(field) is not None]
            return float(np.median(v)) if v else None

        out.append(dict(zip(group_keys, key), runs=len(rs), failed=len(rs) - len(ok),
                        accuracy=mean("accuracy"), location_error=median("location_error"),
                        gap_ll_fixed=median("gap_ll_fixed"), gap_ll_marg=median("gap_ll_marg"),
                        gap_lj_fixed=median("gap_lj_fixed"), gap_lj_marg=median("gap_lj_marg"),
                        best_fixed=mean("best_lj_fixed"), best_marg=mean("best_lj_marg"),
                        wall_time_s=mean("wall_time_s")))
    return out


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if spec == "pct":
        return f"{100 * v:.0f}%"
    return format(v, spec)


def _table(summary, first_cols):
    cols = first_cols + [("runs", "d", "runs"), ("accuracy", "pct", "cat. acc."),
                         ("location_error", ".3f", "loc. err (med)"),
                         ("gap_ll_fixed", ".2f", "Δll fixed"), ("gap_lj_fixed", ".2f", "ΔMAP fixed"),
                         ("best_fixed", "pct", "best fixed"),
                         ("gap_ll_marg", ".2f", "Δll marg"), ("gap_lj_marg", ".2f", "ΔMAP marg"),
                         ("best_marg", "pct", "best marg"),
                         ("wall_time_s", ".2f", "wall s (mean)")]
    lines = ["| " + " | ".join(c[2] for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in summary:
        lines.append("| " + " | ".join(_fmt(r[c[0]], c[1]) if c[1] != "s" else str(r[c[0]]) for c in cols) + " |")
    return "\n".join(lines)


def _plot(summary_by_setting, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = dict(zip(("truth",) + METHODS, "*osD^v<>"))
    for method in METHODS:
        pts = [r for r in summary_by_setting if r["method"] == method and r["wall_time_s"] is not None]
        if not pts:
            continue
        ax.scatter([r["wall_time_s"] for r in pts], [100 * r["accuracy"] for r in pts],
                   marker=markers[method], label=method, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("mean wall time per scene (s, one core; log scale)")
    ax.set_ylabel("category accuracy (%)")
    ax.set_title("M2 categories: accuracy vs wall time (one point per method and setting)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of the study (shared by ``metagen-ppl compare-categories`` and the script)."""
    p.add_argument("--quick", action="store_true", help="3 settings x 3 seeds, shorter SVI/MCMC (minutes)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 20; quick 3)")
    p.add_argument("--settings", default=None,
                   help="semicolon-separated K,diag,N triples, e.g. '2,0.75,500;4,0.6,2000' "
                        "(default: the 9-setting design of the module docstring)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--samples", type=int, default=16, help="S, category vectors of the sample strategies")
    p.add_argument("--svi-steps", type=int, default=None, help="SVI steps (default 300; quick 150)")
    p.add_argument("--svi-budget", type=float, default=C ** 3 * 2000,
                   help="run SVI only where C^K * N <= this (default 5^3 * 2000)")
    p.add_argument("--svi-seeds", type=int, default=None, help="SVI on this many seeds per setting (default all)")
    p.add_argument("--mcmc-seeds", type=int, default=None, help="MCMC on this many seeds per setting (default 3; quick 1)")
    p.add_argument("--mcmc-max-k", type=int, default=2, help="MCMC only for K <= this (default 2)")
    p.add_argument("--mcmc-samples", type=int, default=None, help="NUTS draws (default 100; quick 30)")
    p.add_argument("--mcmc-warmup", type=int, default=None, help="NUTS warm-up (default 100; quick 30)")
    p.add_argument("--mcmc-tree-depth", type=int, default=6, help="NUTS max tree depth")
    p.add_argument("--known-confusion", action="store_true", help="give every method the true A instead of learning it")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (each single-threaded)")
    p.add_argument("--out", default=os.path.join("comparisons", "out", "categories"), help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs already recorded in OUT/runs.jsonl (written as runs finish)")
    return p


def run(args, command: str = "metagen-ppl compare-categories") -> int:
    """Run the study with parsed ``args``; bad arguments raise :class:`MetagenError`."""
    quick = args.quick
    seeds = args.seeds if args.seeds is not None else (3 if quick else 20)
    if args.settings:
        settings = []
        for part in args.settings.split(";"):
            try:
                k, d, n = part.split(",")
                settings.append(dict(K=int(k), diag=float(d), N=int(n)))
            except ValueError as e:
                raise MetagenError(f"compare-categories: --settings {part!r} is not K,diag,N ({e})") from None
    else:
        settings = QUICK_SETTINGS if quick else DEFAULT_SETTINGS
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise MetagenError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    cfg = dict(samples=args.samples, svi_steps=args.svi_steps or (150 if quick else 300),
               svi_budget=args.svi_budget, svi_seeds=args.svi_seeds, mcmc_seeds=args.mcmc_seeds if args.mcmc_seeds is not None else (1 if quick else 3),
               mcmc_max_k=args.mcmc_max_k, mcmc_samples=args.mcmc_samples or (30 if quick else 100),
               mcmc_warmup=args.mcmc_warmup or (30 if quick else 100), mcmc_tree_depth=args.mcmc_tree_depth,
               known_confusion=args.known_confusion, threads=torch.get_num_threads())
    tasks = _tasks(settings, seeds, cfg, methods)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise MetagenError(f"compare-categories: cannot create --out {args.out!r}: {e.strerror or e}") from None
    log_path = os.path.join(args.out, "runs.jsonl")
    rows = []
    if args.resume and os.path.exists(log_path):
        with open(log_path) as f:
            done = [json.loads(line) for line in f if line.strip()]
        wanted = {(_setting_name(s), seed, m) for s, seed, m, _ in tasks}
        rows = [r for r in done if (r["setting"], r["seed"], r["method"]) in wanted]
        have = {(r["setting"], r["seed"], r["method"]) for r in rows}
        tasks = [t for t in tasks if (_setting_name(t[0]), t[1], t[2]) not in have]
        print(f"resuming: {len(rows)} runs reused from {log_path}", flush=True)
    else:
        open(log_path, "w").close()
    print(f"{len(tasks)} runs: {len(settings)} settings x {seeds} seeds, methods {', '.join(methods)}; "
          f"{args.jobs} worker(s)", flush=True)
    t0 = time.perf_counter()
    step = max(1, len(tasks) // 20)

    def record(i, row):
        rows.append(row)
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if i % step == 0 or i == len(tasks):
            print(f"  {i}/{len(tasks)} runs done, {time.perf_counter() - t0:.0f}s", flush=True)

    try:
        if args.jobs > 1 and tasks:
            # the workers ignore Ctrl-C (no tracebacks from them); this process stops and joins the pool
            pool = _worker_pool(args.jobs)
            try:
                for i, row in enumerate(pool.imap_unordered(run_task, tasks, chunksize=1), 1):
                    record(i, row)
                pool.close()
            finally:
                pool.terminate()
                pool.join()
        else:
            for i, t in enumerate(tasks, 1):
                record(i, run_task(t))
    except KeyboardInterrupt:
        raise FitInterrupted(None, None, f"interrupted after {len(rows)} finished runs (kept in {log_path}); rerun "
                                         "the same command with --resume to reuse them") from None
    total = time.perf_counter() - t0
    _mark_best(rows)
    order = {m: i for i, m in enumerate(("truth",) + METHODS)}
    set_order = {_setting_name(s): i for i, s in enumerate(settings)}
    rows.sort(key=lambda r: (set_order[r["setting"]], r["seed"], order[r["method"]]))

    fields = ["setting", "K", "diag", "N", "seed", "method", "accuracy", "location_error", "ll_fixed", "ll_marg",
              "lj_fixed", "lj_marg", "gap_ll_fixed", "gap_ll_marg", "gap_lj_fixed", "gap_lj_marg",
              "best_lj_fixed", "best_lj_marg", "wall_time_s", "n_iter", "error"]
    with open(os.path.join(args.out, "scenes.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    overall = sorted(_summarise(rows, ["method"]), key=lambda r: order[r["method"]])
    by_setting = sorted(_summarise(rows, ["setting", "method"]),
                        key=lambda r: (set_order[r["setting"]], order[r["method"]]))
    failures = [r for r in rows if r["error"]]
    header = (f"M2 categories comparison: {len(settings)} settings x {seeds} seeds, C = {C}, "
              f"confusion {'known' if args.known_confusion else 'learned'}; S = {cfg['samples']}, "
              f"SVI {cfg['svi_steps']} steps, NUTS {cfg['mcmc_warmup']}+{cfg['mcmc_samples']} draws (1 chain, "
              f"tree depth <= {cfg['mcmc_tree_depth']}); {len(rows)} runs ({len(tasks)} in this invocation: "
              f"{total:.0f} s wall with {args.jobs} worker(s)).\n"
              f"command: {command}\n"
              "cat. acc.: mean category accuracy after Hungarian matching of locations; loc. err: median "
              "over scenes of the mean location error; Δll: median gap (nats) to the best log likelihood "
              "of all methods on the scene (fixed: log p(x,o|theta,c_hat), z summed; marg: log p(x,o|theta), "
              "c and z summed, only where C^K <= 4096); ΔMAP: the same for the MAP objective (ll + log prior "
              "of theta, + log p(c_hat) for fixed); best fixed / best marg: share of scenes whose MAP "
              "objective is within max(0.05, 1e-5|best|) nats of the best of all methods; 'truth' = the "
              "simulation's parameters (reference, not counted in 'best'); wall: mean per run, one core.")
    text = [header, "", "Overall (all settings pooled):", "", _table(overall, [("method", "s", "method")]),
            "", "Per setting:", "", _table(by_setting, [("setting", "s", "setting"), ("method", "s", "method")])]
    if failures:
        text += ["", f"{len(failures)} failed runs (first 5):"] + [
            f"- {r['setting']} seed {r['seed']} {r['method']}: {r['error']}" for r in failures[:5]]
    text = "\n".join(text)
    print()
    print(text)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"settings": settings, "seeds": seeds, "config": cfg, "methods": methods,
                   "total_wall_s": total, "overall": overall, "by_setting": by_setting}, f, indent=1)
    _plot(by_setting, os.path.join(args.out, "accuracy_vs_time.png"))
    print(f"\nwrote {args.out}/scenes.csv, summary.md, summary.json, accuracy_vs_time.png")
    return 0

