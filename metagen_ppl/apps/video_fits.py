"""The fits of ``metagen-ppl evaluate`` and their resumable units.

EM (the structure search of the video model, V learned on all videos or on
split A), SVI-MAP and NUTS on the same model; each a unit of work with its
checkpoint in ``OUT/checkpoints/`` (:class:`Units`). ``spec`` is the video
model (:func:`video_model`: the ``projective`` model or a user's variant of it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Optional

import torch

from metagen_ppl.domain.metagen_data import SPLIT_A_SIZE
from metagen_ppl.engine.checkpoint import Checkpoint, FitInterrupted
from metagen_ppl.engine.distributed import capture
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.registry import ModelSpec, load_model, load_reference, model_reference
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.errors import DataError, ModelError
from metagen_ppl.util import make_progress, torch_threads


#: What a video model module provides to ``evaluate`` (the ``projective`` model's functions; a variant
#: gets them with ``from metagen_ppl.models.projective import *``).
VIDEO_MODEL_HOOKS = ("data_from_videos", "fit_videos", "select_videos", "compact_structure", "params_to_json",
                     "prior_params", "nuts_locations")


def video_model(model="projective") -> ModelSpec:
    """The model ``evaluate`` fits: a built-in name or a ``.py`` file whose module has :data:`VIDEO_MODEL_HOOKS`."""
    spec = load_model(model)
    missing = [h for h in VIDEO_MODEL_HOOKS if not callable(getattr(spec.module, h, None))]
    if missing:
        raise ModelError(f"model {spec.name!r} cannot be evaluated on videos: it lacks {', '.join(missing)}; a "
                         "variant of the projective model gets them with `from metagen_ppl.models.projective "
                         "import *` and overrides what it changes")
    return spec


def progress_bar(total, desc, enabled, unit="video"):
    """A bar (terminal) or log lines over videos on stderr, or ``None``."""
    return make_progress(total, desc, enabled, unit=unit)


def fit_unit(spec, data, mode, progress, desc, params=None, truth=None, units=None, name=None, **kw):
    if units is not None and units.executor is not None:     # --scheduler: the map-reduce fit
        return fit_unit_mapreduce(spec, data, mode, progress, desc, params, truth, units, name, **kw)
    if units is not None:
        kw.update(units.fit_kwargs(name))
    bar = progress_bar(data["cams"].shape[0], desc, progress)
    state = {"n": 0}

    def cb(n, info):
        if bar is not None:
            bar.update(max(0, n - state["n"]))
            state["n"] = max(state["n"], n)
            bar.set_postfix(round=info["round"], objects=info["objects"])

    try:
        fit = spec.module.fit_videos(data, mode=mode, params=params, truth=truth, progress=cb,
                                     **dict(spec.default_options, **kw))
    finally:
        if bar is not None:
            bar.update(bar.total - state["n"])
            bar.close()
    if units is not None:
        units.finished(name)
    return fit


def fit_unit_mapreduce(spec, data, mode, progress, desc, params, truth, units, name, **kw):
    """:func:`fit_unit` with a scheduler (``units.executor``): the model's ``fit_videos_mapreduce`` (map-reduce
    EM over chunks of ``units.chunk_size`` videos), its checkpoint ``mapreduce_<name>``."""
    fitter = getattr(spec.module, "fit_videos_mapreduce", None)
    if not callable(fitter):
        raise ModelError(f"model {spec.name!r} has no fit_videos_mapreduce (needed by --scheduler); a variant of the "
                         "projective model gets it with `from metagen_ppl.models.projective import *`")
    name = f"mapreduce_{name}"
    kw.update(units.fit_kwargs(name))
    bar = progress_bar(None, f"{desc}, map-reduce rounds on {units.executor.name}", progress, unit="round")

    def cb(rnd, entry):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(change=f"{entry['change']:.1e}", objects=entry.get("objects"))

    try:
        fit = fitter(data, units.executor, mode=mode, params=params, truth=truth, progress=cb,
                     chunk_size=units.chunk_size, **dict(spec.default_options, **kw))
    finally:
        if bar is not None:
            bar.close()
    units.finished(name)
    return fit


class Units:
    """The resumable units of one ``evaluate`` run, each with its file in ``OUT/checkpoints/``.

    Fits (``em_learn_all`` or ``em_learn_A`` + ``em_fixed_B``, ``lesioned``, ``ground_truth``)
    checkpoint after every structure-search round (:func:`metagen_ppl.models.projective.fit_videos`; the
    finished fit's last checkpoint is its result); ``svi_<i>`` (one per EM fit) and
    ``mcmc_video_<j>`` (one per sampled video) store their result when finished. With
    ``resume`` every finished unit is reused, an unfinished fit continues from its last round,
    and a unit written for other data or settings is refused
    (:class:`metagen_ppl.engine.checkpoint.CheckpointError`).
    """

    def __init__(self, out_dir, enabled: bool, resume: bool, data_hash: str, executor=None, chunk_size: int = 10):
        self.dir = os.path.join(out_dir, "checkpoints") if enabled else None
        self.resume = resume
        self.data_hash = data_hash
        self.done = []
        self.current = None
        #: where the units run (``--scheduler``: a :class:`~metagen_ppl.engine.distributed.Executor`; ``None``:
        #: the default path, the joint batched fit and a loop here); the map-reduce fit's videos per chunk
        self.executor, self.chunk_size = executor, chunk_size

    def path(self, name):
        return None if self.dir is None else os.path.join(self.dir, name + ".json")

    def fit_kwargs(self, name) -> dict:
        self.current = name
        if self.dir is None:
            return {}
        return {"checkpoint": self.path(name), "resume": self.resume}

    def finished(self, name) -> None:
        self.done.append(name)
        self.current = None

    def compute(self, name, settings: dict, fn):
        """``fn()`` (a JSON-able result: numbers, lists, tuples, dicts, tensors), or its stored result."""
        self.current = name
        out = self.stored(name, settings)
        if out is None:
            out = fn()
            self.store(name, settings, out)
        self.finished(name)
        return out

    def _unit(self, name, settings) -> Checkpoint:
        return Checkpoint(self.path(name), "evaluate unit", self.data_hash, dict(settings, unit=name))

    def stored(self, name, settings: dict):
        """The stored result of a finished unit (with ``resume``), else ``None``."""
        if self.dir is None or not self.resume:
            return None
        st = self._unit(name, settings).load()
        return st["state"]["result"] if st is not None and st["done"] else None

    def store(self, name, settings: dict, result) -> None:
        """Keep a finished unit's result (atomically; nothing without checkpoints)."""
        if self.dir is not None:
            self._unit(name, settings).save(1, {"result": result}, done=True)

    def interrupted(self, e: KeyboardInterrupt):
        """The :class:`FitInterrupted` to raise: one line saying what was kept and how to resume."""
        if self.dir is None:
            return FitInterrupted(None, None, "interrupted; no checkpoints were written (checkpointing was off): "
                                              "a rerun starts afresh")
        kept = []
        if self.done:
            kept.append("finished: " + ", ".join(self.done))
        rnd = getattr(e, "round", None)
        if self.current is not None and rnd is not None:
            kept.append(f"{self.current} at the end of round {rnd}")
        what = f" ({'; '.join(kept)})" if kept else ""
        return FitInterrupted(self.dir, rnd, f"interrupted; rerun with --resume to continue{what}; "
                                            f"checkpoints in {self.dir}")


def fit_hash(fit) -> str:
    return fit.info["state_hash"]


def world_objects(cats, locs, active) -> list:
    """Per video ``[(category index, [x, y, z]), ...]`` from (V, K) structure tensors."""
    out = []
    for v in range(active.shape[0]):
        ks = active[v].nonzero().reshape(-1).tolist()
        out.append([(int(cats[v, k]), [float(x) for x in locs[v, k]]) for k in ks])
    return out


def V_params(values: dict) -> dict:
    keys = ("rates", "hallucination", "pixel_scale", "mark_real", "mark_hall", "half_fov")
    return {k: values[k].detach().clone() for k in keys if k in values}


def meta_json(spec, values: dict, names=None, camera=None) -> dict:
    """V, pixel noise, marks (per category ``names``, the data's) and the learned field of view as JSON;
    for a pinhole ``camera`` also the focal lengths ``[fx, fy]`` the field of view stands for."""
    out = spec.module.params_to_json(values) if names is None else spec.module.params_to_json(values, names=names)
    out["field_of_view_deg"] = math.degrees(2 * float(values["half_fov"]))
    if camera is not None and hasattr(camera, "focal"):
        out["focal_length_px"] = [float(x) for x in camera.focal(values["half_fov"])]
    return out


@dataclasses.dataclass
class EMFits:
    """What the EM fit(s) of :func:`fit_em_units` give the rest of ``evaluate``."""

    objects: list          # per video: [(category, [x, y, z]), ...]
    learned: dict          # the learned V, pixel noise, marks, field of view
    info: dict             # {"fits": [per fit: mode, rounds, history, ...]}
    fits: list             # the VideoFitResult(s)
    index_sets: list       # the videos of each fit (positions in the file)
    resp: Optional[torch.Tensor] = None   # (V, T, D, K + 1) when one fit covers every video


def fit_em_units(spec, data, videos, learn_on, progress, kw, units=None) -> EMFits:
    """EM fit(s): V learned on all videos, or on split A and then fixed for split B."""
    V = data["cams"].shape[0]
    idx_a = [i for i, v in enumerate(videos) if v.index < SPLIT_A_SIZE]
    idx_b = [i for i, v in enumerate(videos) if v.index >= SPLIT_A_SIZE]
    if learn_on == "all" or not idx_b:
        if learn_on == "train" and not idx_a:
            raise DataError("--learn-on train needs videos 1-50 (split A) to learn V on")
        fit = fit_unit(spec, data, "learn", progress, "EM fit (V learned on all videos)", units=units,
                       name="em_learn_all",
                   **kw)
        return EMFits(fit.objects(), V_params(fit.values), {"fits": [fit_info(fit)]}, [fit], [list(range(V))],
                      fit.posteriors.get("z"))
    if not idx_a:
        raise DataError("--learn-on train needs videos 1-50 (split A) to learn V on")
    fit_a = fit_unit(spec, spec.module.select_videos(data, idx_a), "learn", progress, "EM fit, split A (V learned)",
                     units=units, name="em_learn_A", **kw)
    params = V_params(fit_a.values)
    fit_b = fit_unit(spec, spec.module.select_videos(data, idx_b), "fixed", progress, "EM fit, split B (V fixed)",
                     params=params, units=units, name="em_fixed_B", **kw)
    objs = [None] * V
    for fit, idx in ((fit_a, idx_a), (fit_b, idx_b)):
        for i, o in zip(idx, fit.objects()):
            objs[i] = o
    return EMFits(objs, params, {"fits": [fit_info(fit_a), fit_info(fit_b)]}, [fit_a, fit_b], [idx_a, idx_b])


def fit_info(fit) -> dict:
    return {"mode": fit.mode, "num_videos": fit.info["num_videos"], "num_objects": int(fit.active.sum()),
            "rounds": fit.n_rounds, "em_iterations": fit.n_iter, "births": fit.births, "deaths": fit.deaths,
            "converged": fit.converged, "field_of_view_deg": math.degrees(2 * float(fit.values["half_fov"])),
            "history": fit.history}


def fit_svi_units(spec, data, fits, index_sets, V, seed, steps, lr, progress, units=None):
    """SVI-MAP on the same model, structure from EM (see the module docstring); one unit per EM fit."""
    objs = [None] * V
    infos = []
    for i, (fit, idx) in enumerate(zip(fits, index_sets)):
        def run(fit=fit, idx=idx):
            return svi_one(spec, data, fit, idx, seed, steps, lr, progress)

        if units is None:
            part, info = run()
        else:
            part, info = units.compute(f"svi_{i}", {"seed": seed, "svi_steps": steps, "svi_lr": lr, "videos": idx,
                                                    "em_fit": fit_hash(fit)}, run)
        for j, o in zip(idx, part):
            objs[j] = o
        infos.append(info)
    return objs, infos


def svi_one(spec, data, fit, idx, seed, steps, lr, progress):
    """SVI-MAP for the videos ``idx`` of one EM fit: ``(objects per video, info)``."""
    sub = spec.module.select_videos(data, idx)
    cats, active, _, birth = spec.module.compact_structure(fit)
    K = cats.shape[1]
    opts = {"cats": cats, "active": active, "half_fov": float(fit.values["half_fov"])}
    ncat = {"num_categories": len(sub["category_names"])} if "category_names" in sub else {}
    init = dict(spec.module.prior_params(dtype=sub["centers"].dtype, **ncat))
    if fit.mode == "fixed":
        opts.update({k: fit.values[k] for k in ("rates", "hallucination", "pixel_scale", "mark_real",
                                                "mark_hall")})
        init = {}
    init["locs"] = birth
    t0 = time.perf_counter()
    res = fit_svi(spec, sub, K, guide="delta", num_steps=steps, lr=lr, seed=seed, init=init, options=opts,
                  progress=progress)
    locs = res.params["locs"]
    part = world_objects(cats, locs, active)
    em_values = {k: v for k, v in fit.values.items() if k in res.params}
    em_values["locs"] = spec.module.compact_structure(fit)[2]

    em = EnumeratedModel(spec.model, sub, K, dict(spec.default_options, **opts))
    em_lj = em.estep(em_values, need_weights=False).log_joint
    info = {"num_videos": len(idx), "steps": steps, "lr": lr, "final_elbo": res.trace[-1],
            "log_joint": res.log_joint, "em_log_joint_same_structure": em_lj,
            "converged": res.converged, "wall_time_s": time.perf_counter() - t0,
            "V": {k: res.params[k].tolist() for k in ("rates", "hallucination", "pixel_scale")
                  if k in res.params}}
    return part, info


def fit_mcmc_units(spec, data, fits, index_sets, objs_em, chosen, seed, samples, warmup, progress, units=None):
    if units is not None and units.executor is not None:
        return mcmc_units_on_executor(spec, data, fits, index_sets, objs_em, chosen, seed, samples, warmup, progress,
                                      units)
    objs = [list(o) for o in objs_em]
    where = {}
    for f, idx in zip(fits, index_sets):
        for pos, j in enumerate(idx):
            where[j] = (f, pos)
    infos = []
    bar = progress_bar(len(chosen), "MCMC (NUTS)", progress)
    for j in chosen:
        fit, pos = where[j]

        def run(fit=fit, pos=pos, j=j):
            sub = spec.module.select_videos(data, [j])
            values = dict(fit.values)
            values["locs"] = fit.values["locs"][pos:pos + 1]
            r = spec.module.nuts_locations(sub, values, fit.cats[pos:pos + 1], fit.active[pos:pos + 1],
                                           **spec.default_options, num_samples=samples,
                                 warmup_steps=warmup, seed=seed + j)
            ks = fit.active[pos].nonzero().reshape(-1).tolist()
            obj = [(int(fit.cats[pos, k]), [float(x) for x in r["mean"][i]]) for i, k in enumerate(ks)]
            sd = r["samples"].std(0) if r["samples"].shape[0] > 1 else torch.zeros_like(r["mean"])
            return obj, {"video": j, "num_objects": len(ks), "divergences": r["divergences"],
                         "accept_prob": r["accept_prob"], "posterior_sd": sd.tolist(),
                         "wall_time_s": r["wall_time_s"]}

        if units is None:
            objs[j], info = run()
        else:
            objs[j], info = units.compute(f"mcmc_video_{j}", {"seed": seed, "mcmc_samples": samples,
                                                              "mcmc_warmup": warmup, "em_fit": fit_hash(fit)}, run)
        infos.append(info)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return objs, infos


def mcmc_video_unit(model, sub, values, cats, active, samples, warmup, seed, threads=1):
    """NUTS over the objects of one video (``sub``, structure ``cats``/``active`` (1, K) and V ``values`` from
    EM): ``(objects, info)``. A task of ``--scheduler`` runs (``model``: a spec or a
    :func:`~metagen_ppl.engine.registry.model_reference`), with ``threads`` torch threads wherever it runs."""
    spec = model if isinstance(model, ModelSpec) else load_reference(model)
    with torch_threads(threads):
        r = spec.module.nuts_locations(sub, values, cats, active, **spec.default_options, num_samples=samples,
                                       warmup_steps=warmup, seed=seed)
    ks = active[0].nonzero().reshape(-1).tolist()
    obj = [(int(cats[0, k]), [float(x) for x in r["mean"][i]]) for i, k in enumerate(ks)]
    sd = r["samples"].std(0) if r["samples"].shape[0] > 1 else torch.zeros_like(r["mean"])
    return obj, {"num_objects": len(ks), "divergences": r["divergences"], "accept_prob": r["accept_prob"],
                 "posterior_sd": sd.tolist(), "wall_time_s": r["wall_time_s"]}


def mcmc_units_on_executor(spec, data, fits, index_sets, objs_em, chosen, seed, samples, warmup, progress, units):
    """:func:`fit_mcmc_units` with a scheduler: the videos not finished earlier run as independent tasks
    (:func:`mcmc_video_unit`) on ``units.executor``; each is stored as soon as it finishes."""
    objs = [list(o) for o in objs_em]
    where = {}
    for f, idx in zip(fits, index_sets):
        for pos, j in enumerate(idx):
            where[j] = (f, pos)
    results, todo = {}, []
    for j in chosen:
        fit, pos = where[j]
        settings = {"seed": seed, "mcmc_samples": samples, "mcmc_warmup": warmup, "em_fit": fit_hash(fit)}
        done = units.stored(f"mcmc_video_{j}", settings)
        if done is not None:
            results[j] = done
            units.finished(f"mcmc_video_{j}")
            continue
        values = dict(fit.values)
        values["locs"] = fit.values["locs"][pos:pos + 1]
        todo.append((j, settings, (spec.module.select_videos(data, [j]), values, fit.cats[pos:pos + 1],
                                   fit.active[pos:pos + 1])))
    bar = progress_bar(len(chosen), f"MCMC (NUTS) on {units.executor.name}", progress)
    if bar is not None:
        bar.update(len(results))
    ref = model_reference(spec)

    def finished(k, outcome):
        j, settings, _ = todo[k]
        obj, info = outcome.unwrap()          # a video that failed stops the run, as without a scheduler
        results[j] = (obj, {"video": j, **info})
        units.store(f"mcmc_video_{j}", settings, results[j])
        units.finished(f"mcmc_video_{j}")
        if bar is not None:
            bar.update(1)

    n = len(todo)
    try:
        if todo:
            units.current = "mcmc videos"
            subs, values, cats, active = zip(*(t[2] for t in todo))
            units.executor.map(capture, [mcmc_video_unit] * n, [ref] * n, subs, values, cats, active, [samples] * n,
                               [warmup] * n, [seed + t[0] for t in todo], key="mcmc-video", on_result=finished)
    finally:
        if bar is not None:
            bar.close()
    infos = []
    for j in chosen:
        objs[j], info = results[j]
        infos.append(info)
    return objs, infos
