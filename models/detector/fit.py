"""Learning a detector's metacognition across scenes: :func:`fit_metacognition` (model M3).

:func:`fit_metacognition` fits :mod:`metagen_ppl.models.detector` to many scenes at once.
Its unknowns are

* ``V = (r, h)``: per-category detection rates and hallucination rates, shared
  by all scenes (plus the location noise ``sigma``, learned unless given);
* per scene, the *structure* -- how many objects and their categories -- and
  the objects' locations.

The search is the engine's (:func:`metagen_ppl.engine.structure.search_structure`:
rounds of births, the continuous phase, deaths; checkpoints; resume); M3's moves,
scores and continuous phase are :class:`~metagen_ppl.models.detector.structure.DetectorSearch`.
Deterministic; every step batched over scenes, no Python loop over scenes or detections.

Categories: without a confusion matrix an object explains only detections of
its own category, so ``argmax_c Q`` is degenerate (it always keeps the current
category); each birth proposes one candidate per category and the penalised
marginal likelihood picks among them, and a wrong object is removed by a death.

Modes: ``learn`` (V learned, MAP with its Gamma priors), ``fixed`` (V given,
e.g. learned on other scenes), ``lesioned`` (V fixed at its prior mean:
MetaGen's ablation). The continuous phase is EM by default (``inner="em"``);
``inner="svi"`` replaces it by SVI-MAP (``TraceEnum_ELBO`` + ``AutoDelta``,
:func:`metagen_ppl.engine.svi.fit_svi`) on the same Pyro model, with the same
structure moves. EM's log joint never decreases within an EM phase (recorded
in the history; the structure moves change the parameter space between phases).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.scenes import SceneSet, V_to_json, load_scenes, parse_V
from metagen_ppl.engine.result import StructureFitResult
from metagen_ppl.engine.structure import search_structure
from metagen_ppl.engine.validate import check_options
from metagen_ppl.errors import DataError, MetagenError
from metagen_ppl.models.detector.generative import check_V
from metagen_ppl.models.detector.structure import DetectorSearch
from metagen_ppl.util import check_seed, progress_bar

__all__ = ["MODES", "INNER", "ESTEPS", "MetacognitionResult", "fit_metacognition"]

MODES = ("learn", "fixed", "lesioned")
INNER = ("em", "svi")
ESTEPS = ("engine", "direct")


@dataclasses.dataclass
class MetacognitionResult(StructureFitResult):
    """The :class:`~metagen_ppl.engine.result.StructureFitResult` of :func:`fit_metacognition`.

    ``params``: ``locs`` (S, K, 3), ``cats`` (S, K), ``active`` (S, K), ``rates``, ``hallucination``,
    ``scale``; ``posteriors["z"]`` (S, T, D, K + 1): each detection's assignment (0 = hallucination,
    k = slot k); ``scenes``: per scene ``{"path", "objects": [{"category_name", "position"}]}``;
    ``info``: ``mode``, ``inner``, ``births``, ``deaths``, ...
    """

    @property
    def V(self) -> dict:
        """The metacognition ``{"rates": (C,), "hallucination": (C,), "scale": ()}`` (learned, given or prior)."""
        return {k: self.params[k] for k in ("rates", "hallucination", "scale")}

    @property
    def mode(self) -> str:
        return self.info["mode"]

    @property
    def inner(self) -> str:
        return self.info["inner"]

    @property
    def responsibilities(self) -> torch.Tensor:
        return self.posteriors["z"]

    def V_json(self) -> dict:
        """``{"detection_rate": {name: r}, "hallucination_rate": {name: h}, "scale": sigma}``."""
        return V_to_json(self.V)

    def to_dict(self, include_posteriors: bool = False) -> dict:
        out = super().to_dict(include_posteriors)
        out.update(mode=self.mode, inner=self.inner, V=self.V_json())
        return out


def _as_scenes(scenes, dtype) -> SceneSet:
    if isinstance(scenes, SceneSet):
        return scenes
    return load_scenes(scenes, dtype=dtype)


def fit_metacognition(scenes, *, mode: str = "learn", V: Optional[dict] = None, seed: int = 0,
                      max_iter: int = 100, tol: float = 1e-7, max_rounds: int = 20, max_objects: int = 8,
                      inner: str = "em", estep: str = "engine", scale: Optional[float] = None,
                      svi_steps: int = 200, svi_lr: float = 0.02, options: Optional[dict] = None,
                      progress: bool = False, out=None, checkpoint=None, resume: bool = False,
                      dtype=torch.float64) -> MetacognitionResult:
    """Fit the detector model M3 to many scenes: V, and per scene the objects.

    Parameters
    ----------
    scenes : SceneSet, path of a multi-scene JSON file, or the parsed JSON list
    mode : {"learn", "fixed", "lesioned"}
        Learn ``V`` across the scenes; use the given ``V``; or fix ``V`` at its
        prior mean (MetaGen's lesioned model).
    V : dict, optional
        For ``mode="fixed"``: ``{"rates", "hallucination"}`` (tensors/lists of C)
        or the JSON form ``{"detection_rate": {...}, "hallucination_rate": {...}}``
        (e.g. ``result.V`` or ``result.V_json()`` of a fit on other scenes); its
        ``"scale"``, if present, fixes ``sigma`` unless ``scale`` is given.
    seed : int
        Seeds SVI (the EM run is deterministic).
    max_iter : int
        EM iterations per continuous phase.
    tol : float
        A continuous phase stops when ``|L_t - L_{t-1}| <= tol * max(|L_t|, 1)`` (L = log joint).
    max_rounds : int
        Rounds of births / EM / deaths.
    max_objects : int
        ``K``, object slots per scene.
    inner : {"em", "svi"}
        Continuous phase: closed-form EM, or SVI-MAP on the same Pyro model.
    estep : {"engine", "direct"}
        E-step by the generic engine (Pyro enumeration, one traced call for all
        scenes) or by the model's direct batched formula (same numbers, faster).
    scale : float, optional
        Fix the location noise ``sigma``; learned (MAP) when ``None``.
    svi_steps, svi_lr : SVI budget per continuous phase (``inner="svi"``).
    options : dict, optional
        Hyperparameters of :mod:`metagen_ppl.models.detector` (``rate_prior_shape``, ...,
        ``count_prior_p``, ``num_categories``).
    progress : bool
        A progress bar over rounds.
    out : path, optional
        Write the result JSON there after every round (and at the end), atomically: a kill
        leaves the previous complete file, never a half-written one.
    checkpoint : path, optional
        Checkpoint file (:mod:`metagen_ppl.engine.checkpoint`), rewritten atomically after the
        initial E-step (round 0) and after every structure-search round: the search state
        (locations, V, structure, history, counters, RNG state), the round number, and a
        fingerprint of the data and the settings. It is kept after the fit (marked done).
        The rounds, moves and checkpoints are the engine's
        (:func:`metagen_ppl.engine.structure.search_structure`).
    resume : bool
        Continue from ``checkpoint`` (start afresh if it does not exist yet): the fit goes on
        after the last finished round and ends with exactly the result of an uninterrupted
        run (``wall_time_s`` counts both runs; ``info["resumed_from_round"]`` says where it
        went on). A finished checkpoint returns its result at once; one that stopped at
        ``max_rounds`` continues when ``max_rounds`` is raised.

    Returns
    -------
    MetacognitionResult
        A :class:`~metagen_ppl.engine.result.StructureFitResult` (``result.V``: the metacognition).

    Raises
    ------
    metagen_ppl.engine.checkpoint.CheckpointError
        ``resume`` with a checkpoint written for other data or other settings (the message
        names what differs: delete the file or run without ``resume``).
    metagen_ppl.engine.checkpoint.FitInterrupted
        On Ctrl-C (a :class:`KeyboardInterrupt`): the last checkpoint is intact; the
        exception says which round it holds.
    """
    seed = check_seed(seed)
    if mode not in MODES:
        raise MetagenError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if inner not in INNER:
        raise MetagenError(f"unknown inner {inner!r}; choose 'em' or 'svi'")
    if estep not in ESTEPS:
        raise MetagenError(f"unknown estep {estep!r}; choose 'engine' or 'direct'")
    for name, val, lo_ in (("max_iter", max_iter, 1), ("max_rounds", max_rounds, 1),
                           ("max_objects", max_objects, 1), ("svi_steps", svi_steps, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo_:
            raise MetagenError(f"{name} must be an integer >= {lo_}, got {val!r}")
    for name, val, lo_ in (("tol", tol, 0.0), ("svi_lr", svi_lr, None)):
        if (isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val)
                or (val < lo_ if lo_ is not None else val <= 0)):
            raise MetagenError(f"{name} must be a finite number {'>= 0' if lo_ is not None else '> 0'}, "
                               f"got {val!r}")
    options = dict(options or {})
    check_options(options)
    C = int(options.get("num_categories", len(CATEGORIES)))
    sc = _as_scenes(scenes, dtype)
    if int(sc.categories.max()) >= C:
        raise DataError(f"the data has category index {int(sc.categories.max())} but num_categories = {C}")
    if mode == "fixed":
        if V is None:
            raise MetagenError("mode='fixed' needs V (e.g. the V learned on other scenes)")
        if "detection_rate" in V or "hallucination_rate" in V:
            V = parse_V(V, "V", C, dtype)
        else:
            V = dict(check_V(V, C, dtype), **({"scale": V["scale"]} if V.get("scale") is not None else {}))
    elif V is not None:
        raise MetagenError(f"V is only used with mode='fixed' (mode is {mode!r})")
    search = DetectorSearch(sc, mode=mode, V=V, K=max_objects, inner=inner, estep=estep, scale=scale,
                            options=options, seed=seed, tol=tol, max_iter=max_iter, svi_steps=svi_steps,
                            svi_lr=svi_lr)
    with progress_bar(max_rounds, f"metacognition ({mode})", progress) as bar:
        def on_round(outcome, births, deaths):
            if bar is not None:
                bar.update(outcome.rounds - bar.n)
                bar.set_postfix(objects=int(search.active.sum()), births=births, deaths=deaths)
            if out is not None and not outcome.finished:
                _result(search, outcome).to_json(out)

        outcome = search_structure(search, max_rounds=max_rounds, checkpoint=checkpoint, resume=resume,
                                   on_round=on_round)
    res = _result(search, outcome)
    if out is not None:
        res.to_json(out)
    return res


def _result(search: DetectorSearch, outcome) -> MetacognitionResult:
    """The result at the search's current state (a final E-step)."""
    est = search.estep()
    score = float(search.direct()[2].sum())
    v = search.full_values()
    V = {k: v[k].detach().clone() for k in ("rates", "hallucination", "scale")}
    params = {"locs": v["locs"].detach().clone(), "cats": search.cats.clone(), "active": search.active.clone(), **V}
    info = {"mode": search.mode, "inner": search.inner, "births": outcome.births, "deaths": outcome.deaths,
            "num_scenes": search.S, "max_objects": search.K, "estep": search.estep_kind,
            "fixed": sorted(search.fixed)}
    if search.svi_elbo:
        info["svi_elbo"] = [float(e) for e in search.svi_elbo]
    if outcome.resumed_from is not None:
        info["resumed_from_round"] = outcome.resumed_from
    return MetacognitionResult(
        model="detector", method="em" if search.inner == "em" else "svi-map", params=params,
        log_likelihood=float(est.log_likelihood), log_joint=float(est.log_joint),
        trace=[h["log_joint"] for h in search.history], trace_label="log joint per EM iteration and structure step",
        n_iter=search.n_iter, converged=outcome.converged, wall_time_s=outcome.elapsed_s,
        posteriors={"z": search.responsibilities(est).detach()},
        scenes=_scene_objects(search.scenes.paths, v["locs"], search.cats, search.active),
        history=list(search.history), n_rounds=outcome.rounds, score=score, info=info)


def _scene_objects(paths, locs, cats, active) -> list:
    out = []
    for s, path in enumerate(paths):
        objs = [{"category_name": CATEGORIES[int(cats[s, k])],
                 "position": [float(v) for v in locs[s, k].tolist()]}
                for k in range(active.shape[1]) if bool(active[s, k])]
        out.append({"path": path, "objects": objs})
    return out
