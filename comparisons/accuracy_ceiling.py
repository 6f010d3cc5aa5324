"""How far the detections alone can take the world states: ceilings and a test of over-dispersion (issue 13).

The split-B targets of issue 13 (frame category Jaccard >= 0.77 RetinaNet, >= 0.84 Faster R-CNN, V
learned without labels) sit above what ``metagen-ppl evaluate`` reaches (0.725 / 0.800). The error
decomposition (``comparisons/error_decomposition.py``) puts the loss in missed objects, mostly bowls
and TVs, and the learned detection rates of those two categories far above the ground-truth V's.
This script measures, per detector file:

1. **Over-dispersion of the detection counts.** With the objects fixed at the truth (the ground-truth
   V's EM), each true object ``k`` has an expected number of detections ``n_k`` (its responsibilities)
   over the ``E_k`` frames it is visible in. Per category the Poisson model of M4 (``n_k ~ Poisson(r
   E_k)``) is compared with a Gamma-Poisson one (a per-object rate ``r_k ~ Gamma(a, a / r)``: ``n_k``
   negative binomial, over-dispersed for small ``a``) by maximum likelihood: if bowls were detected
   either often or never, the negative binomial would fit far better and a per-object detectability
   would be the fix. The table also gives the fraction of true objects with no detection against
   the Poisson prediction ``mean_k exp(-r E_k)``.
2. **What the structure search reaches when V is right.** The search with V fixed at the
   ground-truth V (learned from the labels: an oracle no label-free method has), under the count
   prior ``p`` of MetaGen (0.9) and under 0.5 and 0.35 (the data hold 1.9 objects per video, a
   geometric prior with mean 1.9 has p = 0.34), against the same searches with the label-free V.
3. **The frame-Jaccard decision threshold.** In a frame whose other categories have intersection
   ``I`` and union ``U`` with the truth, predicting one more category that is there with probability
   ``pi`` changes the expected Jaccard by ``pi / (U + 1) - (1 - pi) I / (U (U + 1))``: it pays when
   ``pi > I / (I + U)`` (1/2 in a perfect frame, less in a frame with misses, any ``pi > 0`` where
   nothing is right). With ``I / U`` near the mean frame Jaccard ``J`` of the MAP fit, the rows
   ``pi >= J / (1 + J)`` add births, V fixed, while their posterior log odds of existing exceed
   ``logit(J / (1 + J))`` (about -0.3).

Usage::

    python comparisons/accuracy_ceiling.py [--data-dir ../shared/data/metagen2021] [--out accuracy-ceiling]
        [--detectors retinanet faster_rcnn] [--threads 1]

Prints one table per detector and writes ``OUT/accuracy_ceiling.json``. About 2 minutes per detector
on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import gammaln

from metagen_ppl.domain.metagen_data import batch_videos, load_videos
from metagen_ppl.domain.metrics import split_means, world_state_frame_scores
from metagen_ppl.io import atomic_write_json

from shared_data import default_data_dir

DETECTORS = ("retinanet", "faster_rcnn")


def jaccard_threshold(intersection: float, union: float) -> float:
    """The existence probability above which predicting one more category raises a frame's expected
    Jaccard, when the frame's other categories have ``intersection`` and ``union`` with the truth:
    ``I / (I + U)`` (0 for an empty union)."""
    return 0.0 if union <= 0 else float(intersection) / (float(intersection) + float(union))


def poisson_loglik(n, e) -> tuple:
    """Maximum-likelihood Poisson rate of counts ``n`` over exposures ``e`` (arrays), ``(r, log lik)``
    without the ``-log n!`` terms (shared with :func:`negbin_fit`)."""
    n, e = np.asarray(n, float), np.asarray(e, float)
    r = max(n.sum() / max(e.sum(), 1e-12), 1e-12)
    return r, float((n * np.log(r) - r * e).sum())


def negbin_fit(n, e) -> dict:
    """Gamma-Poisson (negative binomial) fit of counts ``n`` over exposures ``e``.

    ``n_k ~ Poisson(r_k e_k)``, ``r_k ~ Gamma(a, a / r)`` (mean ``r``, variance ``r^2 / a``): the
    marginal ``log p(n_k) = a log b - log Gamma(a) + log Gamma(a + n_k) - (a + n_k) log(b + e_k)``
    (``b = a / r``, without ``-log n_k!``; ``n_k`` may be fractional, an expected count). Maximum
    likelihood over ``(log a, log r)`` by Nelder-Mead from the Poisson rate, ``a`` capped at 1e6 (the
    Poisson limit). Returns ``{"a", "r", "loglik", "poisson_r", "poisson_loglik", "gain"}``, ``gain``
    the log-likelihood gain over the Poisson model (>= 0 up to the optimiser's tolerance).
    """
    n, e = np.asarray(n, float), np.asarray(e, float)
    r0, ll0 = poisson_loglik(n, e)

    def nll(x):
        a, r = math.exp(min(x[0], math.log(1e6))), math.exp(x[1])
        b = a / r
        return -float((a * math.log(b) - gammaln(a) + gammaln(a + n) - (a + n) * np.log(b + e)).sum())

    best = None
    for la in (0.0, 3.0, 8.0):
        res = minimize(nll, [la, math.log(r0)], method="Nelder-Mead",
                       options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 2000})
        if best is None or res.fun < best.fun:
            best = res
    a, r = math.exp(min(best.x[0], math.log(1e6))), math.exp(best.x[1])
    return {"a": a, "r": r, "loglik": -float(best.fun), "poisson_r": r0, "poisson_loglik": ll0,
            "gain": -float(best.fun) - ll0}


def split_scores(videos, objects) -> dict:
    """Frame category Jaccard of per-video ``[(category, position), ...]``: ``{"A", "B", "all"}``."""
    scores = [world_state_frame_scores(v, [c for c, _ in o],
                                       torch.tensor([p for _, p in o], dtype=torch.float64).reshape(-1, 3)).mean()
              for v, o in zip(videos, objects)]
    means = split_means(scores, [v.index for v in videos])
    return {k: round(float(means[k]), 3) for k in ("A", "B", "all")}


def threshold_births(search, log_odds: float, rounds: int = 4) -> None:
    """Add, per video and round, the birth of largest gain while that gain (the candidate's posterior
    log odds of existing) exceeds ``log_odds``; V stays fixed, the locations are refitted."""
    from metagen_ppl.engine.structure import select_moves
    for _ in range(rounds):
        moves = search.propose_births()
        if moves is None:
            return
        chosen = select_moves(moves, search.V, threshold=log_odds)
        if len(chosen) == 0:
            return
        search.apply_births(moves, chosen)
        search.em_phase()


def dispersion_table(data, truth_fit, names) -> list:
    """Per category: the Poisson and negative-binomial fits of the true objects' detection counts."""
    from metagen_ppl.models.projective.generative import object_pixels
    active, cats = truth_fit.active, truth_fit.cats
    _, vis = object_pixels(data, truth_fit.params["locs"], truth_fit.params["half_fov"])
    expo = (vis & data["frame_mask"][:, :, None]).sum(1).to(torch.float64)          # (V,K)
    counts = truth_fit.resp[..., 1:].sum((1, 2))                                    # (V,K)
    rows = []
    for c, name in enumerate(names):
        m = active & (cats == c) & (expo > 0)
        if not bool(m.any()):
            continue
        n, e = counts[m].numpy(), expo[m].numpy()
        fit = negbin_fit(n, e)
        rows.append({"category": name, "objects": int(m.sum()), "mean_visible_frames": float(e.mean()),
                     "never_detected": float((n < 0.5).mean()),
                     "never_detected_poisson": float(np.exp(-fit["poisson_r"] * e).mean()), **fit})
    return rows


def run_detector(path, label, threads) -> dict:
    from metagen_ppl.engine.structure import search_structure
    from metagen_ppl.models.projective import data_from_videos, fit_videos
    from metagen_ppl.models.projective.generative import V_SITES, category_names_of
    from metagen_ppl.models.projective.structure import ProjectiveSearch

    torch.set_num_threads(threads)
    videos = load_videos(path)
    data = data_from_videos(videos)
    names = category_names_of(data)
    b = batch_videos(videos)
    t0 = time.perf_counter()
    truth = fit_videos(data, mode="truth", truth=(b.gt_categories, b.gt_positions, b.gt_mask))
    learned = fit_videos(data, mode="learn")
    V_truth = {k: truth.values[k] for k in V_SITES + ("half_fov",)}
    V_learned = {k: learned.values[k] for k in V_SITES + ("half_fov",)}
    rows = [{"V": "learned", "count prior p": 0.9, "decision": "MAP", **split_scores(videos, learned.objects()),
             "objects": int(learned.active.sum())}]
    for V_name, V, ps in (("learned", V_learned, (0.5,)), ("ground truth", V_truth, (0.9, 0.5, 0.35))):
        for p in ps:
            s = ProjectiveSearch(data, mode="fixed", params=V, count_prior_p=p)
            search_structure(s, max_rounds=12)
            rows.append({"V": V_name, "count prior p": p, "decision": "MAP", **split_scores(videos, s.objects()),
                         "objects": int(s.active.sum())})
            print(f"  {label}: V {V_name}, p {p}: {rows[-1]}", file=sys.stderr, flush=True)
            if p == 0.5:
                J = rows[-1]["all"]
                pi = jaccard_threshold(J, 1.0)
                threshold_births(s, math.log(pi / (1 - pi)))
                rows.append({"V": V_name, "count prior p": p, "decision": f"pi >= {pi:.2f}",
                             **split_scores(videos, s.objects()), "objects": int(s.active.sum())})
    true_objects = int(b.gt_mask.sum())
    rates = [{"category": n, "r learned": float(learned.values["rates"][c]),
              "r ground truth": float(truth.values["rates"][c]), "h learned": float(learned.values["hallucination"][c]),
              "h ground truth": float(truth.values["hallucination"][c])} for c, n in enumerate(names)]
    return {"detector": label, "true_objects": true_objects, "videos": len(videos), "searches": rows,
            "rates": rates, "dispersion": dispersion_table(data, truth, names),
            "seconds": round(time.perf_counter() - t0, 1)}


def print_report(res) -> None:
    print(f"\n== {res['detector']}: {res['videos']} videos, {res['true_objects']} true objects ==")
    print("frame category Jaccard of the structure search (V fixed unless 'learned' with p 0.9, the default fit)")
    print(f"{'V':<14}{'p':>6}  {'decision':<12}{'A':>7}{'B':>7}{'all':>7}{'objects':>9}")
    for r in res["searches"]:
        print(f"{r['V']:<14}{r['count prior p']:>6}  {r['decision']:<12}{r['A']:>7.3f}{r['B']:>7.3f}{r['all']:>7.3f}"
              f"{r['objects']:>9}")
    print("detection rate r and hallucination rate h per category: learned (no labels) vs ground-truth V")
    print(f"{'category':<10}{'r learned':>10}{'r truth':>9}{'h learned':>11}{'h truth':>9}")
    for r in res["rates"]:
        print(f"{r['category']:<10}{r['r learned']:>10.3f}{r['r ground truth']:>9.3f}{r['h learned']:>11.4f}"
              f"{r['h ground truth']:>9.4f}")
    print("detection counts of the true objects: Poisson (M4) vs negative binomial (per-object detectability)")
    print(f"{'category':<10}{'objects':>8}{'frames':>8}{'r':>7}{'NB a':>10}{'NB gain':>9}{'never det.':>11}"
          f"{'Poisson':>9}")
    for r in res["dispersion"]:
        a = f"{r['a']:.3g}" if r["a"] < 1e5 else ">1e5"
        print(f"{r['category']:<10}{r['objects']:>8}{r['mean_visible_frames']:>8.1f}{r['poisson_r']:>7.3f}{a:>10}"
              f"{r['gain']:>9.2f}{r['never_detected']:>11.2f}{r['never_detected_poisson']:>9.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir(), help="folder of the MetaGen detection files")
    ap.add_argument("--out", default="accuracy-ceiling", help="output folder (accuracy_ceiling.json)")
    ap.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for these fits)")
    args = ap.parse_args(argv)
    results = []
    for det in args.detectors:
        path = os.path.join(args.data_dir, f"data_labelled_{det}.json")
        if not os.path.isfile(path):
            print(f"error: {path} not found; pass --data-dir (the shared metagen2021 folder)", file=sys.stderr)
            return 2
        res = run_detector(path, det, args.threads)
        print_report(res)
        results.append(res)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "accuracy_ceiling.json"), results)
    print(f"\nwrote {os.path.join(args.out, 'accuracy_ceiling.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
