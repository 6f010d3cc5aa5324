"""Online metacognition for M3: ``V = (r, h)`` (and ``sigma``) learned as the scenes arrive (stepwise EM).

:func:`fit_metacognition_online` runs the engine's :func:`metagen_ppl.engine.online.run_online`
over the scenes in file order: each scene, when it arrives, is fitted alone with the current
``V`` and ``sigma`` held fixed (the structure search of
:class:`~metagen_ppl.models.detector.structure.DetectorSearch`, mode ``fixed``), and gives its
objects and its expected sufficient statistics
(:func:`~metagen_ppl.models.detector.mstep.sufficient_statistics`); the running average of the
statistics goes through the batch M-step (:func:`~metagen_ppl.models.detector.mstep.mstep_from_statistics`)
to give the ``V`` the next scene is fitted with. The first scene is fitted with ``V`` at its prior
mean. Each object also gets its existence probability: the sigmoid of the difference of its
scene's penalised score with and without it (minus the gain of its death move).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from metagen_ppl.domain.scenes import SceneSet, load_scenes
from metagen_ppl.engine.checkpoint import hash_tensors
from metagen_ppl.engine.online import StepSchedule, run_online
from metagen_ppl.engine.structure import search_structure
from metagen_ppl.errors import DataError
from metagen_ppl.models.detector.generative import hyperparameter, prior_mean_V
from metagen_ppl.models.detector.mstep import mstep_from_statistics, sufficient_statistics
from metagen_ppl.models.detector.structure import DetectorSearch

__all__ = ["MetacognitionOnlineResult", "fit_metacognition_online"]


@dataclasses.dataclass
class MetacognitionOnlineResult:
    """What :func:`fit_metacognition_online` returns.

    Attributes
    ----------
    paths : list of str
    objects : list
        Per scene, ``[(category index, [x, y, z]), ...]`` as inferred when it arrived.
    existence : list
        Per scene, each object's existence probability (same order).
    V : list of dict
        Per scene, ``{"rates", "hallucination", "scale"}`` after it (``V[-1]``: the final one).
    V0 : dict
        The ``V`` the first scene was fitted with (the prior mean).
    steps : list of float
    schedule : StepSchedule
    elapsed_s : float
    resumed_from : int or None
    """

    paths: list
    objects: list
    existence: list
    V: list
    V0: dict
    steps: list
    schedule: StepSchedule
    elapsed_s: float
    resumed_from: Optional[int] = None

    def V_before(self, i: int) -> dict:
        """The ``V`` scene ``i`` was fitted with."""
        return self.V0 if i == 0 else self.V[i - 1]


def fit_metacognition_online(scenes, *, schedule: Optional[StepSchedule] = None, max_rounds: int = 20,
                             max_objects: int = 8, max_iter: int = 100, tol: float = 1e-7,
                             options: Optional[dict] = None, progress: Optional[Callable] = None,
                             checkpoint=None, resume: bool = False, dtype=torch.float64) -> MetacognitionOnlineResult:
    """Fit M3 to the scenes one after another, learning ``V`` as they arrive (see the module docstring).

    Parameters
    ----------
    scenes : SceneSet, path of a multi-scene JSON file, or the parsed JSON list
    schedule : StepSchedule, optional (default ``eta_i = 1/i``)
    max_rounds, max_objects, max_iter, tol : the per-scene structure search (as :func:`fit_metacognition`)
    options : dict, optional
        Hyperparameters of :mod:`metagen_ppl.models.detector`.
    progress : callable ``(n_done, info)``, optional
    checkpoint : path, optional
        Rewritten atomically after every scene; ``resume`` continues after the last one it holds.
    """
    schedule = StepSchedule() if schedule is None else schedule
    sc: SceneSet = scenes if isinstance(scenes, SceneSet) else load_scenes(scenes, dtype=dtype)
    S = len(sc)
    if S < 1:
        raise DataError("online fit: no scene")
    hyper = dict(options or {})
    C = int(hyper.get("num_categories", len(prior_mean_V(dtype=dtype, **hyper)["rates"])))
    V0 = dict(prior_mean_V(dtype=dtype, **hyper))
    a = float(hyperparameter(hyper, "scale_prior_shape"))
    b = float(hyperparameter(hyper, "scale_prior_rate"))
    V0["scale"] = torch.tensor((b / max(a - 1.0, 0.5)) ** 0.5, dtype=dtype)

    def infer(i, V):
        search = DetectorSearch(sc.subset([i]), mode="fixed", V=V, K=max_objects, inner="em", estep="direct",
                                scale=None, options=hyper, seed=0, tol=tol, max_iter=max_iter, svi_steps=1,
                                svi_lr=0.01)
        search_structure(search, max_rounds=max_rounds)
        est = search.estep()
        resp = search.responsibilities(est)
        locs = search.full_values()["locs"]
        stats = sufficient_statistics(search.data, {"z": resp}, locs, search.K, cats=search.cats,
                                      active=search.active, num_categories=C)
        ks = search.active[0].nonzero().reshape(-1).tolist()
        ex = [1.0] * len(ks)
        moves = search.propose("death")
        if moves is not None:
            gain = moves.gain.reshape(search.K, 1)[:, 0]                 # proposal k S + s, S = 1
            ex = [float(torch.sigmoid(-gain[k])) for k in ks]
        return {"cats": [int(search.cats[0, k]) for k in ks], "locs": [[float(x) for x in locs[0, k]] for k in ks],
                "existence": ex, "stats": stats}

    def mstep(Sbar, n):
        return mstep_from_statistics(Sbar, count=n, **hyper)

    def on_unit(i, state, V):
        if progress is not None:
            progress(i + 1, {"objects": len(state["cats"]), "scene": i})

    out = run_online(S, infer, lambda st: st["stats"], mstep, V0, schedule=schedule, checkpoint=checkpoint,
                     resume=resume, kind="metacognition-online", data_hash=hash_tensors(sc.data()),
                     settings={"max_rounds": max_rounds, "max_objects": max_objects, "max_iter": max_iter,
                               "tol": tol, **{k: v for k, v in hyper.items()}}, on_unit=on_unit)
    return MetacognitionOnlineResult(
        paths=list(sc.paths), objects=[list(zip(s["cats"], s["locs"])) for s in out.states],
        existence=[list(s["existence"]) for s in out.states], V=list(out.params), V0=V0, steps=out.steps,
        schedule=schedule, elapsed_s=out.elapsed_s, resumed_from=out.resumed_from)
