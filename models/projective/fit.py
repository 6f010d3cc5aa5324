"""Fitting the projective model to many videos: :func:`fit_videos` and its result."""

from __future__ import annotations

import dataclasses
import math

import torch

from metagen_ppl.engine.checkpoint import hash_tensors
from metagen_ppl.engine.result import StructureFitResult
from metagen_ppl.engine.structure import search_structure
from metagen_ppl.models.detector.structure import active_slots_first
from metagen_ppl.models.projective.generative import category_names_of
from metagen_ppl.models.projective.structure import MODES, ProjectiveSearch

__all__ = ["MODES", "VideoFitResult", "fit_videos", "compact_structure"]

#: The entries of ``params`` that are the structure (per video), not parameters of the model.
STRUCTURE_KEYS = ("cats", "active", "birth_locs")


@dataclasses.dataclass
class VideoFitResult(StructureFitResult):
    """The :class:`~metagen_ppl.engine.result.StructureFitResult` of :func:`fit_videos`.

    ``params``: ``locs`` (V, K, 3), ``cats`` (V, K), ``active`` (V, K), ``birth_locs`` (V, K, 3) (where
    each slot's object was proposed), and the detector's parameters ``rates``, ``hallucination``,
    ``pixel_scale``, ``mark_real``, ``mark_hall``, ``half_fov``; ``posteriors["z"]`` (V, T, D, K + 1);
    ``info``: ``mode``, ``births``, ``deaths``, ``video_log_likelihood`` and ``video_score`` (V,),
    ``occam`` (V, K), ``existence`` (V, K): each object's posterior probability of existing
    (:meth:`~metagen_ppl.models.projective.structure.ProjectiveSearch.existence_probabilities`; 0 for
    inactive slots), ``state_hash`` (a fingerprint of the fitted state).
    """

    @property
    def values(self) -> dict:
        """The fitted locations and the detector's parameters (``params`` without the structure)."""
        return {k: v for k, v in self.params.items() if k not in STRUCTURE_KEYS}

    @property
    def cats(self) -> torch.Tensor:
        return self.params["cats"]

    @property
    def active(self) -> torch.Tensor:
        return self.params["active"]

    @property
    def birth_locs(self) -> torch.Tensor:
        return self.params["birth_locs"]

    @property
    def mode(self) -> str:
        return self.info["mode"]

    @property
    def births(self) -> int:
        return self.info["births"]

    @property
    def deaths(self) -> int:
        return self.info["deaths"]

    @property
    def resp(self) -> torch.Tensor:
        return self.posteriors["z"]

    def existence(self) -> list:
        """Per video: the existence probability of each object of :meth:`objects`, in the same order."""
        ex = self.info["existence"]
        return [[float(ex[v, k]) for k in self.active[v].nonzero().reshape(-1).tolist()]
                for v in range(self.active.shape[0])]

    def objects(self) -> list:
        """Per video: ``[(category index, [x, y, z]), ...]`` of the active slots."""
        locs = self.params["locs"]
        return [[(int(self.cats[v, k]), [float(x) for x in locs[v, k]])
                 for k in self.active[v].nonzero().reshape(-1).tolist()]
                for v in range(self.active.shape[0])]


def fit_videos(data, *, mode="learn", params=None, truth=None, progress=None, checkpoint=None, resume=False,
               max_rounds=12, **kwargs) -> "VideoFitResult":
    """Fit the projective model to all videos of ``data`` (one batched structure search).

    Algorithm (deterministic; every step batched over videos, no Python loop
    over videos or detections)::

        start: no objects; V, sigma_px, marks at their prior means (learn, lesioned) or given (fixed)
        repeat (rounds):
            births:  candidates from the detections currently assigned to hallucination --
                     every pair of same-category detections in two frames, triangulated
                     (camera.pixel_to_ray + camera.triangulate), and every single detection's
                     ray at mid height; each refined by three local EM steps (responsibilities
                     against the current model, Gauss-Newton on the pixel residuals); per video
                     the candidate with the largest gain of the penalised score (log likelihood
                     + count, category and location priors + Laplace Occam factor) is added
                     if the gain is positive; repeat
            EM:      direct batched E-step, closed-form M-step for V, sigma_px and the marks
                     (pooled over videos; only the learned ones), every third iteration the
                     field of view (ECME: golden-section search of the log likelihood the first
                     time, then Newton steps), Gauss-Newton M-step for the locations (each object
                     against the detections of its category in its video), until the log joint
                     changes by less than tol (relative)
            deaths:  per video, the object whose removal raises the penalised score most is
                     removed, if any; repeat; EM again
        until a round adds and removes nothing.

    Returns
    -------
    VideoFitResult

    Parameters
    ----------
    data : dict from :func:`~metagen_ppl.models.projective.generative.data_from_videos`
    mode : "learn" (V learned), "fixed" (V, sigma_px, marks and field of view from ``params``),
        "lesioned" (r, h and marks at their prior means; sigma_px and the field of view learned)
        or "truth" (objects fixed at ``truth = (cats (V, K), positions (V, K, 3), mask (V, K))``;
        V, sigma_px, marks and field of view learned: the ground-truth V)
    progress : callable ``(n_settled_videos, info)``, optional; called after every round
    checkpoint : path, optional
        Checkpoint file, rewritten atomically after every round (the engine's
        :func:`~metagen_ppl.engine.structure.search_structure` runs the rounds).
    resume : bool
        Continue from ``checkpoint`` to the result of an uninterrupted run; a checkpoint of
        other data or settings raises :class:`metagen_ppl.engine.checkpoint.CheckpointError`.
    kwargs : max_objects, tol, max_iter, max_rounds, gn_iters, half_fov (start or fixed value),
        learn_fov (default True), fov_range (degrees) and hyperparameters (:data:`DEFAULTS`)
    """
    search = ProjectiveSearch(data, mode=mode, params=params, truth=truth, **kwargs)

    def on_round(outcome, births, deaths):
        if progress is not None:
            progress(int(outcome.settled.sum()), {"round": outcome.rounds, "births": births, "deaths": deaths,
                                                  "objects": int(search.active.sum())})

    outcome = search_structure(search, max_rounds=max_rounds, checkpoint=checkpoint, resume=resume,
                               fixed=(mode == "truth"), on_round=on_round)
    return _result(search, outcome)


def _result(search: ProjectiveSearch, outcome) -> VideoFitResult:
    """The result at the search's current state (a final E-step)."""
    final = search.final()
    loglik = final["loglik"]
    params = {k: v.detach().clone() for k, v in search.values.items()}
    params.update(cats=search.cats.clone(), active=search.active.clone(), birth_locs=search.birth_locs.clone())
    info = {"mode": search.mode, "births": outcome.births, "deaths": outcome.deaths, "num_videos": search.V,
            "learned": sorted(search.learned), "field_of_view_deg": math.degrees(2 * float(search.values["half_fov"])),
            "video_log_likelihood": loglik, "video_score": final["score"], "occam": final["occam"],
            "existence": search.existence_probabilities(),
            "state_hash": hash_tensors({k: v for k, v in search.state_dict().items() if k != "history"})[:16]}
    if outcome.resumed_from is not None:
        info["resumed_from_round"] = outcome.resumed_from
    names = category_names_of(search.data)
    scenes = [{"path": str(v), "objects": [{"category_name": names[c], "position": p} for c, p in objs]}
              for v, objs in enumerate(search.objects())]
    return VideoFitResult(
        model="projective", method="em", params=params, log_likelihood=float(loglik.sum()),
        log_joint=search.log_joint(loglik), trace=[h["log_joint"] for h in search.history],
        trace_label="log joint after each EM phase and structure step", n_iter=search.n_iter,
        converged=outcome.converged, wall_time_s=outcome.elapsed_s, posteriors={"z": final["resp"]},
        scenes=scenes, history=list(search.history), n_rounds=outcome.rounds, score=float(final["score"].sum()),
        info=info)


def compact_structure(fit: VideoFitResult):
    """The fitted structure with the active slots first and ``K = max(1, most objects in a video)``:
    ``(cats (V, K), active (V, K), locs (V, K, 3), birth_locs (V, K, 3))``."""
    order = active_slots_first(fit.active)
    idx3 = order[..., None].expand(-1, -1, 3)
    return (torch.gather(fit.cats, 1, order), torch.gather(fit.active, 1, order),
            torch.gather(fit.params["locs"], 1, idx3), torch.gather(fit.birth_locs, 1, idx3))
