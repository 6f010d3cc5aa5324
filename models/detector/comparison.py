"""``metagen-ppl compare`` set-up of M3: the structure found by the metacognition search, then fixed."""

from __future__ import annotations

import time

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.objects import V_error, object_metrics, truth_objects
from metagen_ppl.domain.scenes import parse_scenes
from metagen_ppl.engine.comparison import ComparisonSetup
from metagen_ppl.errors import DataError
from metagen_ppl.models.detector.fit import fit_metacognition
from metagen_ppl.models.detector.structure import compact_structure


#: ``metagen-ppl compare`` simulates ``simulate(3 scenes, 10 frames, seed)`` by default.
COMPARE_SIMULATION = {"args": (3, 10)}


#: NUTS on 3 scenes: every scene's locations and V at once; shorter chains than the point models.
COMPARE_BUDGET = {"mcmc_samples": 100, "mcmc_warmup": 100, "mcmc_max_tree_depth": 6, "svi_steps": 400}


def prepare_comparison(obj, *, seed=0, dtype=torch.float64, num_objects=None, options=None, progress=False,
                       log=None, source="<data>", **_):
    """Set-up of ``metagen-ppl compare`` for M3 (see :mod:`metagen_ppl.apps.compare`).

    The structure (object count and categories per scene) is found once by the
    metacognition EM search (:func:`metagen_ppl.models.detector.fit.fit_metacognition`,
    V learned); every method then fits the locations, ``V`` and ``sigma`` with
    that structure fixed. Accuracy: object precision / recall / F1 and location
    error against the truth (same category, within 1 m, Hungarian matching), and
    the mean absolute error of the learned rates when the detector's truth is known.
    """
    log = log or (lambda m: None)
    if num_objects is not None:
        raise DataError("the detector model finds the number of objects per scene itself; drop --num-objects")
    scenes = parse_scenes(obj, dtype=dtype)
    log(f"structure search: metacognition EM over {len(scenes.paths)} scenes (V learned)")
    t0 = time.perf_counter()
    search = fit_metacognition(scenes, mode="learn", seed=seed, options=options, progress=progress, dtype=dtype)
    search_s = time.perf_counter() - t0
    K, cats, active, locs0 = compact_structure(search.params)
    truth = truth_objects(scenes) if scenes.truth is not None else None
    V_true = scenes.true_V

    def objects(locs):
        return [{"path": p, "objects": [{"category_name": CATEGORIES[int(cats[s, k])],
                                         "position": locs[s, k].tolist()}
                                        for k in range(K) if bool(active[s, k])]}
                for s, p in enumerate(scenes.paths)]

    def measures(pred, V):
        out = {}
        if truth is not None:
            m = object_metrics(pred, truth)
            out.update({"object F1": m["f1"], "precision": m["precision"], "recall": m["recall"],
                        "location error": m["location_error"]})
        if V_true is not None and V is not None:
            e = V_error(V, V_true)
            out.update({k.replace("_mae", " MAE"): v for k, v in e.items() if k.endswith("_mae")})
        return out

    def accuracy(res):
        V = {k: res.params[k] for k in ("rates", "hallucination") if k in res.params}
        return measures(objects(res.params["locs"].detach()), V or None)

    def scene(res):
        locs = res.params["locs"].detach().double()
        return locs[0][active[0]].numpy()

    pos = scenes.positions[0][scenes.det_mask[0]].detach().double().numpy()
    true0 = None
    if scenes.truth is not None:
        true0 = scenes.truth[0]["positions"].detach().double().numpy().reshape(-1, 3)
    n_obj = int(active.sum())
    search_row = {"method": "em structure search", "status": "ok", "error": None,
                  "accuracy": measures(search.scenes, search.V), "log_likelihood": float(search.log_likelihood),
                  "log_joint": float(search.log_joint), "elbo": None, "n_iter": int(search.n_iter),
                  "iter_kind": "iterations", "converged": bool(search.converged), "wall_time_s": float(search_s)}
    notes = [f"Structure: {n_obj} objects in {len(scenes.paths)} scenes (K = {K} slots), found by the metacognition "
             f"EM search (birth/death moves, {search.n_rounds} rounds, {search_s:.1f} s; row `em structure search`). "
             "Every other row fits the locations, detection rates, hallucination rates and noise with that "
             "structure fixed, starting from the search's object locations (EM's first restart, SVI, every MCMC "
             "chain; V and the noise start at their prior means or each chain's own start).",
             "Scene plot: the first scene only."]
    return ComparisonSetup(
        data=scenes.data(), num_objects=K, options={"cats": cats, "active": active, **(options or {})},
        truth={"objects": truth} if truth is not None else None, accuracy=accuracy, scene=scene,
        scene_observations=pos, scene_truth=true0, assignment_site="z", assignment_mask=scenes.det_mask,
        notes=notes, extra_rows=[search_row], init={"locs": locs0.detach().clone()}, mcmc_init_chains="all")
