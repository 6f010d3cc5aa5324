"""``metagen-ppl compare`` set-up of the projective model: the structure and field of view found by the
structure search, then fixed for every method."""

from __future__ import annotations

import math
import time

import torch

from metagen_ppl.domain.metagen_data import parse_videos
from metagen_ppl.domain.objects import object_metrics
from metagen_ppl.engine.comparison import ComparisonSetup
from metagen_ppl.errors import DataError
from metagen_ppl.models.projective.fit import compact_structure, fit_videos
from metagen_ppl.models.projective.generative import data_from_videos


#: ``metagen-ppl compare`` simulates ``simulate(2 videos, 12 frames, seed)`` by default.
COMPARE_SIMULATION = {"args": (2, 12)}


#: NUTS over every location and the detector's parameters of the videos at once: short chains.
COMPARE_BUDGET = {"mcmc_samples": 60, "mcmc_warmup": 60, "mcmc_max_tree_depth": 5, "svi_steps": 300,
                  "svi_lr": 0.02}


def prepare_comparison(obj, *, seed=0, dtype=torch.float64, num_objects=None, options=None, progress=False,
                       log=None, source="<data>", **_):
    """Set-up of ``metagen-ppl compare`` for M4 (see :mod:`metagen_ppl.apps.compare`).

    ``obj`` is a MetaGen detection file (a list of videos, or the ``metagen-detections`` schema with
    its own categories and camera). The structure (object
    count and categories per video) and the field of view are found once by the
    structure-search EM of :func:`fit_videos` (V learned); every method then fits
    the locations, rates, hallucination rates, pixel noise and score marks with the
    structure and field of view fixed. Accuracy, when the file has ground-truth
    ``labels``: object precision / recall / F1 and location error (same category,
    within 1 m, Hungarian matching).
    """
    log = log or (lambda m: None)
    if num_objects is not None:
        raise DataError("the projective model finds the number of objects per video itself; drop --num-objects")
    videos = parse_videos(obj)
    data = data_from_videos(videos, dtype=dtype)
    log(f"structure search: projective EM over {len(videos)} videos (V learned)")
    t0 = time.perf_counter()
    fit = fit_videos(data, mode="learn")
    search_s = time.perf_counter() - t0
    cats, active, locs0, _ = compact_structure(fit)
    K = int(cats.shape[1])
    half_fov = fit.values["half_fov"].detach().clone()
    has_truth = all(v.gt_categories is not None for v in videos)
    names = videos[0].category_names
    truth = None
    if has_truth:
        truth = [{"path": v.path, "objects": [{"category_name": names[int(c)], "position": p.tolist()}
                                               for c, p in zip(v.gt_categories, v.gt_positions)]}
                 for v in videos]

    def objects(locs, c=cats, a=active):
        return [{"path": v.path, "objects": [{"category_name": names[int(c[i, k])],
                                              "position": [float(x) for x in locs[i, k]]}
                                             for k in range(c.shape[1]) if bool(a[i, k])]}
                for i, v in enumerate(videos)]

    def measures(pred):
        if truth is None:
            return {}
        m = object_metrics(pred, truth)
        return {"object F1": m["f1"], "precision": m["precision"], "recall": m["recall"],
                "location error": m["location_error"]}

    def accuracy(res):
        return measures(objects(res.params["locs"].detach()))

    def scene(res):
        return res.params["locs"].detach().double()[0][active[0]].numpy()

    true0 = videos[0].gt_positions.double().numpy().reshape(-1, 3) if has_truth else None
    search_row = {"method": "em structure search", "status": "ok", "error": None,
                  "accuracy": measures(objects(fit.values["locs"].detach(), fit.cats, fit.active)),
                  "log_likelihood": float(fit.log_likelihood), "log_joint": None, "elbo": None,
                  "n_iter": int(fit.n_iter), "iter_kind": "iterations", "converged": bool(fit.converged),
                  "wall_time_s": float(search_s)}
    notes = [f"Structure: {int(active.sum())} objects in {len(videos)} videos (K = {K} slots) and the field of "
             f"view {math.degrees(2 * float(half_fov)):.1f} degrees, found by the projective structure-search EM "
             f"({fit.n_rounds} rounds, {search_s:.1f} s; row `em structure search`). Every other row fits the "
             "locations, rates, hallucination rates, pixel noise and score marks with both fixed, starting from "
             "the search's object locations (EM's first restart, SVI, every MCMC chain; the detector's "
             "parameters start at their prior means or each chain's own start).",
             "Scene plot: the first video, objects in room coordinates (x, y, z), with its camera positions "
             "(triangles); the observations themselves are pixels."]
    opts = {"cats": cats, "active": active, "half_fov": half_fov, **(options or {})}
    return ComparisonSetup(
        data=data, num_objects=K, options=opts, truth={"objects": truth} if truth else None, accuracy=accuracy,
        scene=scene, scene_extra={"cameras": data["cams"][0].double().numpy()}, scene_truth=true0,
        assignment_site="z", assignment_mask=data["det_mask"], notes=notes, extra_rows=[search_row],
        init={"locs": locs0.detach().clone()}, mcmc_init_chains="all")
