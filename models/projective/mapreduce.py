"""Map-reduce EM of the projective model over many videos: V learned from chunks fitted anywhere.

:func:`fit_videos_mapreduce` runs the engine's :func:`metagen_ppl.engine.mapreduce.run_mapreduce` over
fixed chunks of videos (``chunk_size`` consecutive videos each). A round is::

    map (each chunk, independently; in this process or on a Dask cluster):
        with V, sigma_px, the marks and the field of view fixed, the chunk's structure search
        (births, EM over the locations, deaths: ProjectiveSearch in mode "fixed"), warm-started
        from the chunk's structure of the previous round (categories, active slots, locations);
        then one E-step, and back to the reduce only
          - the chunk's expected sufficient statistics (mstep.sufficient_statistics: expected
            detection counts and exposures per category, hallucinated detections, frames, the
            weighted squared pixel residuals, the score-bin counts; O(C x bins) numbers),
          - the field-of-view statistics: the chunk's profile log likelihood in the half field of
            view h (its objects re-placed by Gauss-Newton at each value) at h and at h + the
            offsets FOV_STENCIL_DEG (+-0.1 to 1 degree), and in the first round also on a grid of
            FOV_GRID_POINTS values over the whole range,
          - its structure (categories, active slots, locations; the active slots only) and per
            video its log likelihood, penalised score and each object's existence probability;
    reduce (here): sum the statistics over chunks (in chunk order), the MAP M-step of the learned
        sites from the sums (mstep.mstep_from_statistics, priors included), and h moves to the
        best point of the summed profile if it beats h itself (a pattern search: the batched
        fit's golden-section search, then local steps; the finite-difference Newton step of the
        online fit stalled here where the profile is rough);
    until V (every learned site, and h) changes by less than tol (relative), or max_rounds.

Modes as :func:`~metagen_ppl.models.projective.fit.fit_videos`: ``learn`` (every site), ``lesioned`` (r,
h and the marks at their prior means; sigma_px and the field of view learned), ``fixed`` (nothing learned:
one round) and ``truth`` (the objects fixed at the true ones; V learned from them).

It is not the joint batched fit (:func:`~metagen_ppl.models.projective.fit.fit_videos`): there V is
updated inside every EM phase of one search over all videos; here V is updated once per round from
searches that hold it fixed (each round is one generalised EM step of V), and the EM phases stop on
each chunk's own log joint, so the answer depends on ``chunk_size`` (not on where the chunks run). On the
shared detector data the two give close scores (README: "Scale-out on Dask").

Deterministic: fixed chunks, float64, ``threads`` torch threads in every task, statistics summed in
chunk order. The result of a local or remote Dask cluster equals the in-process result.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from metagen_ppl.engine.checkpoint import hash_tensors
from metagen_ppl.engine.distributed import Executor
from metagen_ppl.engine.mapreduce import relative_change, run_mapreduce
from metagen_ppl.engine.structure import search_structure
from metagen_ppl.errors import DataError
from metagen_ppl.models.detector.structure import active_slots_first
from metagen_ppl.models.projective.fit import VideoFitResult
from metagen_ppl.models.projective.generative import (V_SITES, category_names_of, log_prior, prior_params,
                                                      select_videos)
from metagen_ppl.models.projective.mstep import mstep_from_statistics, sufficient_statistics
from metagen_ppl.models.projective.structure import MODES, ProjectiveSearch
from metagen_ppl.util import torch_threads

__all__ = ["fit_videos_mapreduce", "chunk_step", "chunk_videos", "fov_grid", "fov_stencil", "DEFAULT_CHUNK_SIZE",
           "FOV_GRID_POINTS", "FOV_STENCIL_DEG"]

#: Videos per chunk (the unit of work of a round). Fixed by the fit's settings, never by the workers.
DEFAULT_CHUNK_SIZE = 10

#: Offsets (degrees of the full field of view) of the local search of the field of view in every round.
FOV_STENCIL_DEG = (-1.0, -0.3, -0.1, 0.1, 0.3, 1.0)

#: Points of the first round's global search of the field of view (over its range, 1 degree apart by default).
FOV_GRID_POINTS = 21

#: The learned sites of each mode (``half_fov`` too where the camera allows it).
LEARNED = {"learn": V_SITES, "truth": V_SITES, "lesioned": ("pixel_scale",), "fixed": ()}


def chunk_videos(num_videos: int, chunk_size: int) -> list:
    """The video indices of each chunk: ``chunk_size`` consecutive videos (the last chunk may be smaller)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise DataError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return [list(range(s, min(num_videos, s + chunk_size))) for s in range(0, num_videos, chunk_size)]


# --------------------------------------------------------------------------- the map (runs on a worker)
def _compact(search: ProjectiveSearch) -> dict:
    """The search's structure with each video's active slots first and the unused slots dropped."""
    order = active_slots_first(search.active)
    idx3 = order[..., None].expand(-1, -1, 3)
    return {"cats": torch.gather(search.cats, 1, order), "active": torch.gather(search.active, 1, order),
            "locs": torch.gather(search.values["locs"], 1, idx3),
            "birth_locs": torch.gather(search.birth_locs, 1, idx3)}, order


def _wire(d: dict) -> dict:
    """Tensors as numpy arrays: what a task sends back (pickled numpy is smaller than pickled torch)."""
    return {k: (v.detach().numpy() if torch.is_tensor(v) else v) for k, v in d.items()}


def _warm_start(search: ProjectiveSearch, state: dict) -> None:
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    k = min(search.K, state["cats"].shape[1])
    cats, active = search.cats.clone(), search.active.clone()
    locs, birth = search.values["locs"].clone(), search.birth_locs.clone()
    cats[:, :k], active[:, :k] = state["cats"][:, :k], state["active"][:, :k]
    locs[:, :k], birth[:, :k] = state["locs"][:, :k].to(locs.dtype), state["birth_locs"][:, :k].to(birth.dtype)
    search.cats, search.active, search.birth_locs = cats, active, birth
    search.values["locs"] = locs


def fov_grid(fov_range) -> torch.Tensor:
    """The half fields of view of the first round's global search: :data:`FOV_GRID_POINTS` over ``fov_range``."""
    lo, hi = fov_range
    return torch.linspace(lo, hi, FOV_GRID_POINTS, dtype=torch.float64)


def fov_stencil(h: float, fov_range) -> torch.Tensor:
    """The half fields of view of a later round's local search: ``h`` and ``h`` + :data:`FOV_STENCIL_DEG`
    (offsets of the full field of view), clamped to ``fov_range``."""
    lo, hi = fov_range
    offsets = torch.tensor((0.0,) + FOV_STENCIL_DEG, dtype=torch.float64) * (math.pi / 360.0)
    return (h + offsets).clamp(lo, hi)


def _fov_statistics(search: ProjectiveSearch, resp, move_locations: bool, grid: bool) -> dict:
    """The chunk's profile log likelihood in ``half_fov`` (its objects re-placed by Gauss-Newton at each
    value, :meth:`ProjectiveSearch.fov_profile`) at the points of :func:`fov_stencil` around its value
    (``fov_local``) and, with ``grid``, at :func:`fov_grid` (``fov_grid``). Additive over chunks (zeros for
    a chunk without objects)."""
    h = float(search.values["half_fov"])
    points = {"fov_local": fov_stencil(h, search.fov_range)}
    if grid:
        points["fov_grid"] = fov_grid(search.fov_range)
    out = {k: torch.zeros(len(x), dtype=search.dtype) for k, x in points.items()}
    if bool(search.active.any()):
        for k, x in points.items():
            out[k] = torch.tensor([search.fov_profile(float(v), move_locations, resp)[0] for v in x],
                                  dtype=search.dtype)
    return out


def chunk_step(chunk: dict, params: dict, state: Optional[dict], settings: dict) -> dict:
    """One chunk's part of a round (the map task): its structure search with V fixed, its statistics.

    Parameters
    ----------
    chunk : ``{"data": the chunk's data dict, "truth": (cats, positions, mask) or None}``
    params : V, ``sigma_px``, marks and ``half_fov`` (fixed during the task)
    state : the chunk's structure of the previous round (``None``: start without objects, or at the truth)
    settings : ``mode``, ``search`` (keyword arguments of :class:`ProjectiveSearch`), ``max_rounds``,
        ``learn_fov``, ``threads``

    Returns
    -------
    ``{"stats": {...}, "state": {...}, "info": {...}}``: statistics (tensors, additive over chunks), the
    chunk's compacted structure, and numbers for the round's history plus per-video tensors under
    ``info["video"]``.
    """
    data, truth = chunk["data"], chunk.get("truth")
    mode = settings["mode"]
    with torch_threads(settings.get("threads", 1)):
        kw = dict(settings["search"])
        if mode == "truth":
            kw["max_objects"] = max(1, int(truth[0].shape[1]))
        search = ProjectiveSearch(data, mode="fixed", params=params, **kw)
        if state is not None:
            _warm_start(search, state)
        elif mode == "truth":
            cats, pos, mask = truth
            _warm_start(search, {"cats": cats, "active": mask, "locs": pos, "birth_locs": pos})
        births = deaths = 0
        inner_rounds, inner_converged = 0, True
        if mode == "truth":                    # the true objects stay where they are
            inner_converged = bool(search.em_phase(move_locations=False))
        else:
            out = search_structure(search, max_rounds=int(settings["max_rounds"]))
            births, deaths, inner_rounds, inner_converged = out.births, out.deaths, out.rounds, out.converged
        _, _, resp, loglik, _ = search.estep()
        score, occam = search.scores(resp, loglik)
        stats = sufficient_statistics(data, {"z": resp}, search.values, search.K, cats=search.cats,
                                      active=search.active, num_categories=search.C, pixel_noise=search.noise)
        if settings.get("learn_fov"):
            stats.update(_fov_statistics(search, resp, mode != "truth", grid=state is None))
        existence = search.existence_probabilities()
        compact, order = _compact(search)
        video = {"log_likelihood": loglik, "score": score, "existence": torch.gather(existence, 1, order),
                 "occam": torch.gather(occam, 1, order)}
    info = {"births": int(births), "deaths": int(deaths), "objects": int(search.active.sum()),
            "log_likelihood": float(loglik.sum()), "score": float(score.sum()), "em_iterations": int(search.n_iter),
            "inner_rounds": int(inner_rounds), "inner_unconverged": int(not inner_converged), "video": _wire(video)}
    return {"stats": _wire(stats), "state": _wire(compact), "info": info}


# --------------------------------------------------------------------------- the reduce (runs here)
class _MStep:
    """``(S, params) -> params``: the learned sites from the summed statistics; the field of view at the best
    point of the summed profile (grid or stencil), if better than the current value."""

    def __init__(self, learned, options, fov_range, learn_fov):
        self.learned, self.options = tuple(learned), dict(options)
        self.fov_range, self.learn_fov = fov_range, bool(learn_fov)

    def __call__(self, S, params):
        out = dict(params)
        if self.learned:
            out.update(mstep_from_statistics(S, 1.0, sites=self.learned, **self.options))
        if not self.learn_fov:
            return out
        h = float(params["half_fov"])
        # the best point of the summed profile: the first round's grid, else the stencil around h (its
        # first point is h itself, so h stays unless another point is better)
        cands = [(S["fov_local"], fov_stencil(h, self.fov_range))]
        if "fov_grid" in S:
            cands.append((S["fov_grid"], fov_grid(self.fov_range)))
        best_val, best_h = float(S["fov_local"][0]), h
        for vals, points in cands:
            i = int(torch.argmax(vals))
            if float(vals[i]) > best_val:
                best_val, best_h = float(vals[i]), float(points[i])
        out["half_fov"] = torch.tensor(best_h, dtype=params["half_fov"].dtype)
        return out


def fit_videos_mapreduce(data, executor: Optional[Executor] = None, *, mode: str = "learn", params=None, truth=None,
                         chunk_size: int = DEFAULT_CHUNK_SIZE, tol: float = 1e-4, max_em_rounds: int = 60,
                         max_rounds: int = 12, threads: int = 1, progress: Optional[Callable] = None,
                         checkpoint=None, resume: bool = False, **kwargs) -> VideoFitResult:
    """Fit the projective model to all videos of ``data`` by map-reduce EM (see the module docstring).

    Parameters
    ----------
    data : dict from :func:`~metagen_ppl.models.projective.generative.data_from_videos`
    executor : :class:`~metagen_ppl.engine.distributed.Executor`, optional
        Where the chunks run (default: in this process).
    mode : "learn", "lesioned", "fixed" (``params`` given) or "truth" (``truth = (cats, positions, mask)``)
    chunk_size : int
        Videos per chunk (the answer depends on it, not on the executor).
    tol : float
        Stop when every learned site (and the half field of view) changes by less than ``tol``, relative.
    max_em_rounds : int
        The most map-reduce rounds.
    max_rounds : int
        Structure-search rounds of each chunk per map-reduce round.
    threads : int
        torch threads of every task (the same everywhere, so that results do not depend on where tasks ran).
    progress : callable ``(round, entry)``, optional
        Called after every round with its history entry (``change``, ``objects``, ``score``, ...).
    checkpoint, resume :
        A checkpoint rewritten after every round; ``resume`` continues from it (with any executor).
    kwargs : max_objects, tol of the EM phases (``em_tol``), max_iter, gn_iters, learn_fov, fov_range,
        half_fov, pixel_noise and the hyperparameters (as for :func:`~metagen_ppl.models.projective.fit.fit_videos`)

    Returns
    -------
    VideoFitResult
        ``params`` (``locs``, ``cats``, ``active``, ``birth_locs`` (V, K) and V), ``info`` as
        :func:`~metagen_ppl.models.projective.fit.fit_videos` (no ``posteriors``: the responsibilities
        stay on the workers) plus ``info["mapreduce"]`` (chunks, rounds, per-round history).
    """
    if mode not in MODES:
        raise DataError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    V = int(data["cams"].shape[0])
    if V < 1:
        raise DataError("map-reduce fit: the data holds no video")
    if mode == "truth" and truth is None:
        raise DataError("mode 'truth' needs the true objects (cats, positions, mask)")
    em_tol = kwargs.pop("em_tol", None)
    search_kw = dict(kwargs)
    if em_tol is not None:
        search_kw["tol"] = em_tol
    probe = ProjectiveSearch(select_videos(data, [0]), mode=mode if mode != "truth" else "learn", params=params,
                             **search_kw)
    C, dtype = probe.C, probe.dtype
    options = dict(probe.options)
    search_kw["num_categories"] = C
    learn_fov = probe.learn_fov
    if mode == "fixed":
        params0 = {k: torch.as_tensor(params[k], dtype=dtype) for k in V_SITES}
        params0["half_fov"] = probe.values["half_fov"].clone()
    else:
        params0 = {k: v.clone() for k, v in prior_params(C, dtype, **options).items()}
        params0["half_fov"] = probe.values["half_fov"].clone()
        if mode == "learn" and params is not None:
            params0.update({k: torch.as_tensor(params[k], dtype=dtype) for k in V_SITES if k in params})
    learned = LEARNED[mode]
    index = chunk_videos(V, chunk_size)
    chunks = []
    for idx in index:
        t = None
        if mode == "truth":
            t = tuple(x[idx] for x in truth)
        chunks.append({"data": select_videos(data, idx), "truth": t})
    step_settings = {"mode": mode, "search": {k: v for k, v in search_kw.items() if k not in ("half_fov",)},
                     "max_rounds": int(max_rounds), "learn_fov": learn_fov,
                     "threads": threads}
    mstep = _MStep(learned, options, probe.fov_range, learn_fov)
    keys = tuple(learned) + (("half_fov",) if learn_fov else ())
    settings = {"mode": mode, "chunk_size": int(chunk_size), "max_rounds": int(max_rounds), "threads": threads,
                "learned": list(keys), "search": probe.settings(), "params0": params0,
                "truth": "none" if truth is None else hash_tensors(list(truth))[:16]}
    settings["search"].pop("start (params, truth, half_fov)", None)
    settings["search"].pop("mode", None)
    settings["search"].pop("learned", None)

    out = run_mapreduce(chunks, chunk_step, mstep, params0, executor=executor, extra_args=(step_settings,),
                        tol=tol, max_rounds=1 if mode == "fixed" else max_em_rounds,
                        change=lambda a, b: relative_change(a, b, keys), checkpoint=checkpoint, resume=resume,
                        kind="projective-mapreduce", data_hash=hash_tensors(data), settings=settings,
                        on_round=progress, key="projective-chunk")
    return _result(data, out, index, mode, probe.K if mode != "truth" else None, keys, options, chunk_size)


def _result(data, out, index, mode, K, keys, options, chunk_size) -> VideoFitResult:
    V = int(data["cams"].shape[0])
    dtype = data["centers"].dtype
    K = K or max(1, max(int(s["cats"].shape[1]) for s in out.states))
    cats = torch.zeros(V, K, dtype=torch.long)
    active = torch.zeros(V, K, dtype=torch.bool)
    locs = torch.zeros(V, K, 3, dtype=dtype)
    birth = torch.zeros(V, K, 3, dtype=dtype)
    lo, hi = data["box"][0], data["box"][1]
    locs[:], birth[:] = (lo + hi) / 2, (lo + hi) / 2
    existence = torch.zeros(V, K, dtype=dtype)
    occam = torch.zeros(V, K, dtype=dtype)
    loglik = torch.zeros(V, dtype=dtype)
    score = torch.zeros(V, dtype=dtype)
    for idx, st, info in zip(index, out.states, out.infos):
        st = {k: torch.as_tensor(v) for k, v in st.items()}
        vid = {k: torch.as_tensor(v) for k, v in info["video"].items()}
        k = min(K, st["cats"].shape[1])
        rows = torch.as_tensor(idx)
        cats[rows, :k], active[rows, :k] = st["cats"][:, :k], st["active"][:, :k]
        locs[rows, :k], birth[rows, :k] = st["locs"][:, :k], st["birth_locs"][:, :k]
        existence[rows, :k], occam[rows, :k] = vid["existence"][:, :k], vid["occam"][:, :k]
        loglik[rows], score[rows] = vid["log_likelihood"], vid["score"]
    values = {k: v.detach().clone() for k, v in out.params.items()}
    params = dict(values, locs=locs, cats=cats, active=active, birth_locs=birth)
    learned = [k for k in keys if k != "half_fov"]
    log_joint = float(loglik.sum() + log_prior(values, set(learned), active, data, **options))
    births = sum(h.get("births", 0) for h in out.history)
    deaths = sum(h.get("deaths", 0) for h in out.history)
    history = [dict(h, iteration=h["round"], phase="map-reduce round", log_joint=h.get("log_likelihood"))
               for h in out.history]
    info = {"mode": mode, "births": births, "deaths": deaths, "num_videos": V, "learned": sorted(keys),
            "field_of_view_deg": math.degrees(2 * float(values["half_fov"])),
            "video_log_likelihood": loglik, "video_score": score, "occam": occam, "existence": existence,
            "state_hash": hash_tensors({"values": values, "cats": cats, "active": active, "locs": locs})[:16],
            "mapreduce": {"chunk_size": int(chunk_size), "num_chunks": len(index), "rounds": out.rounds,
                          "converged": out.converged, "last_change": out.history[-1]["change"] if out.history else None,
                          "round_seconds": [h["seconds"] for h in out.history]}}
    if out.resumed_from is not None:
        info["resumed_from_round"] = out.resumed_from
    names = category_names_of(data)
    scenes = [{"path": str(v), "objects": [{"category_name": names[int(cats[v, k])],
                                            "position": [float(x) for x in locs[v, k]]}
                                           for k in active[v].nonzero().reshape(-1).tolist()]} for v in range(V)]
    return VideoFitResult(
        model="projective", method="em", params=params, log_likelihood=float(loglik.sum()), log_joint=log_joint,
        trace=[h.get("log_likelihood", float("nan")) for h in out.history],
        trace_label="log likelihood after each map-reduce round (V of the round before)",
        n_iter=int(sum(h.get("em_iterations", 0) for h in out.history)), converged=out.converged,
        wall_time_s=out.elapsed_s, posteriors={}, scenes=scenes, history=history, n_rounds=out.rounds,
        score=float(score.sum()), info=info)
