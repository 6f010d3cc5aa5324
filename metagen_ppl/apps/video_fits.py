"""The fits of ``metagen-ppl evaluate`` and their resumable units.

EM (the structure search of the video model, V learned on all videos or on
split A), SVI-MAP and NUTS on the same model; each a unit of work with its
checkpoint in ``OUT/checkpoints/`` (:class:`Units`). ``spec`` is the video
model (:func:`video_model`: the ``projective`` model or a user's variant of it).

The fits that do not need ours (the lesioned model, the ground-truth V: :class:`SideJob`) run
either here, one after the other (:func:`side_fit`), or in a second process while this one fits
ours (:class:`SecondProcess`); both give the same plain results.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
import warnings
from typing import Optional

import torch

from metagen_ppl.apps.plots import plot_video
from metagen_ppl.domain.metagen_data import SPLIT_A_SIZE
from metagen_ppl.engine.checkpoint import Checkpoint, CheckpointError, FitInterrupted
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
        #: units running in the second process (:class:`SecondProcess`), not finished yet
        self.elsewhere = []
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
        others = [n for n in self.elsewhere if n not in self.done and n != self.current]
        if others:
            kept.append(f"{', '.join(others)} stopped in the second process at {'their' if len(others) > 1 else 'its'} "
                        "last checkpoint")
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


# --------------------------------------------------------------------------- fits that do not need ours
@dataclasses.dataclass
class SideJob:
    """A fit of ``evaluate`` that does not depend on our EM fit: the lesioned model or the ground-truth V."""

    name: str                 # the unit (its checkpoint: ``OUT/checkpoints/<name>.json``)
    mode: str                 # the ``fit_videos`` mode
    desc: str                 # the progress label
    kwargs: dict              # more ``fit_videos`` keywords (``max_objects``, ``truth``)
    objects: bool = False     # also return the fitted objects per video


def side_fit(spec, data, job: SideJob, progress, units, names, camera) -> dict:
    """Run one :class:`SideJob`; its result as plain data, the same in this process and in the second one:
    ``{"objects": per video [(category, [x, y, z]), ...] or None, "meta": meta_json(...), "seconds": float,
    "resumed_from_round": int or None}``."""
    t0 = time.perf_counter()
    fit = fit_unit(spec, data, job.mode, progress, job.desc, units=units, name=job.name, **job.kwargs)
    return {"objects": fit.objects() if job.objects else None, "meta": meta_json(spec, fit.values, names, camera),
            "seconds": time.perf_counter() - t0, "resumed_from_round": fit.info.get("resumed_from_round")}


@dataclasses.dataclass
class PlotRequest:
    """One video PNG of ``evaluate`` (:func:`draw_plot`), drawn here or in the second process."""

    path: str
    video: int                # the video's position in the file
    objects: list             # [(category, [x, y, z]), ...]
    resp: Optional[torch.Tensor]
    title: str


def draw_plot(request: PlotRequest, videos) -> float:
    """Draw ``request`` (``videos``: the file's videos, by position, or a dict of the needed ones); its
    seconds."""
    t0 = time.perf_counter()
    plot_video(request.path, videos[request.video], request.objects, resp=request.resp, title=request.title)
    return time.perf_counter() - t0


def warm_up_plots() -> None:
    """Import matplotlib and load its fonts (about 0.6-0.8 s the first time in a process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba_array  # noqa: F401  (what plot_video imports)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D  # noqa: F401

    fig = Figure(figsize=(1, 1))
    fig.suptitle("warm-up", fontsize=13)
    fig.add_subplot().set_title("frame", fontsize=10)
    FigureCanvasAgg(fig).draw()


#: Frames (videos x frames) from which ``jobs="auto"`` runs the side jobs in a second process. With a free
#: second core the run then takes about max(ours, lesioned + ground-truth V) instead of their sum: on the
#: shared files (2000 frames) 8-9 s less; with the second core busy (another job) it costs nothing: the
#: same CPU and wall time as one process (RetinaNet, ``comparisons/bench_evaluate.py``: 23.0 vs 23.1 CPU
#: s, 22.9 vs 23.2 s). The side fits take about 5 ms a frame, so below 400 frames (2 s) the gain is
#: small and one process is simpler to profile, debug and interrupt.
SECOND_PROCESS_FROM = 400


def resolve_jobs(jobs, num_frames: int, side_jobs: int, model) -> int:
    """The processes of one ``evaluate`` run: 1 (everything here) or 2 (the side jobs in a second process).

    ``jobs`` is ``"auto"`` (2 when there are side jobs, the machine has 2 cores or more and the data has at
    least :data:`SECOND_PROCESS_FROM` frames) or a positive integer (more than 2 is 2: there are two
    independent parts). A model given as an object rather than a name or a path runs here (the second
    process loads the model by name)."""
    if jobs != "auto" and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise DataError(f"jobs must be 'auto' or a positive integer, got {jobs!r}")
    if not side_jobs or not isinstance(model, (str, os.PathLike)):
        return 1
    if jobs == "auto":
        return 2 if (os.cpu_count() or 1) >= 2 and num_frames >= SECOND_PROCESS_FROM else 1
    return min(int(jobs), 2)


class SecondProcessError(RuntimeError):
    """The second process of ``evaluate`` failed with an exception that could not be sent back as it was,
    or ended without a result (killed, out of memory)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in the second process (the ``__cause__`` of the one raised here)."""

    def __str__(self):
        return self.args[0] if self.args else ""


def _error_payload(e: BaseException):
    """An exception of the second process as something that pickles: ``(kind, value, traceback text)``."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if isinstance(e, FitInterrupted):
        return "interrupted", (e.checkpoint, e.round, getattr(e, "detail", None)), tb
    if isinstance(e, CheckpointError):
        return "checkpoint", (str(e), e.path, e.why), tb
    try:
        blob = pickle.dumps(e)
        pickle.loads(blob)
        return "pickled", blob, tb
    except Exception:
        return "text", f"{type(e).__name__}: {e}", tb


def _rebuild_error(name: str, payload) -> BaseException:
    kind, value, tb = payload
    if kind == "interrupted":
        err = FitInterrupted(*value)
    elif kind == "checkpoint":
        err = CheckpointError(*value)
    elif kind == "pickled":
        err = pickle.loads(value)
    else:
        err = SecondProcessError(f"{name} (second process): {value}")
    err.__cause__ = RemoteTraceback(f"in the second process ({name}):\n{tb}")
    return err


def _stop_quietly(signum, frame):
    """SIGTERM in the second process: unwind (atomic writes remove their temporary files) and exit, silently."""
    raise SystemExit(0)


def _second_process(conn, payload, threads: int) -> None:
    """The second process: run the side jobs in order, send ``("ok", name, result, warnings)`` after each, or
    ``("error", name, payload, warnings)`` and stop at the first failure (the next would only add a checkpoint
    that the resumed run repeats anyway). Then, if it was given videos to plot, get matplotlib ready and wait
    for ``("plots", [PlotRequest, ...])`` (drawn, each answered like a job) or the end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C is for the main process; it stops this one
    signal.signal(signal.SIGTERM, _stop_quietly)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    torch.set_num_threads(threads)
    if isinstance(payload, bytes):
        payload = pickle.loads(payload)
    model, data, jobs, units, names, camera, plot_videos = payload
    spec = None
    for job in jobs:
        with warnings.catch_warnings(record=True) as caught:
            try:
                spec = spec or video_model(model)
                result = side_fit(spec, data, job, False, units, names, camera)
            except (Exception, KeyboardInterrupt) as e:
                conn.send(("error", job.name, _error_payload(e), _warnings_payload(caught)))
                return
        conn.send(("ok", job.name, result, _warnings_payload(caught)))
    if not plot_videos:
        return
    # idle until ours is fitted: get matplotlib ready, then draw the plots this process is sent, if any
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            warm_up_plots()
        except Exception:           # drawing will say what is wrong
            pass
    try:
        message = conn.recv()
    except EOFError:
        return
    if message[0] != "plots":
        return
    for request in message[1]:
        name = f"plot {os.path.basename(request.path)}"
        with warnings.catch_warnings(record=True) as caught:
            try:
                seconds = draw_plot(request, plot_videos)
            except (Exception, KeyboardInterrupt) as e:
                conn.send(("error", name, _error_payload(e), _warnings_payload(caught)))
                return
        conn.send(("ok", name, seconds, _warnings_payload(caught)))


def _warnings_payload(caught) -> list:
    return [(str(w.message), w.category if _pickles(w.category) else UserWarning, w.filename, w.lineno)
            for w in caught]


def _pickles(obj) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:
        return False


#: How the second process starts: ``None`` (:func:`start_method`), or ``"spawn"`` / ``"forkserver"`` /
#: ``"fork"`` always.
START_METHOD: Optional[str] = None


def start_method(threads: int) -> str:
    """How the second process starts: :data:`START_METHOD` if set; else a fork on Linux when the worker runs
    one torch thread (it never enters OpenMP, so a fork of a process that used OpenMP cannot hang; measured:
    a fork after two-thread work hangs when the child uses two threads), else spawn."""
    if START_METHOD is not None:
        return START_METHOD
    linux_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    return "fork" if linux_fork and threads == 1 else "spawn"


class SecondProcess:
    """The side jobs (:class:`SideJob`) in one worker process, started by the constructor, while this
    process fits ours; :meth:`result` waits for one, :meth:`stop` ends the process (always call it).
    Once its fits are done (:meth:`idle`) it can draw plots (:meth:`draw`) of the videos ``plot_videos``
    (``{position: video}``), matplotlib imported while it waited.

    The worker is a fork of this process where that is safe -- on Linux with one torch thread in the
    worker: OpenMP is never entered, so a fork of a process that used OpenMP cannot hang -- and starts at
    once with this process's modules and data; elsewhere (or with more threads) it is spawned: a fresh
    interpreter that imports torch and the model first (2-3 s). It runs ``threads`` torch threads: the
    same as here, so that its results equal a run in one process bit for bit. It ignores Ctrl-C (this
    process gets it and stops the worker; the worker's checkpoints are kept); SIGTERM ends it quietly.
    Its warnings are re-issued here; its exceptions are raised here (the same type and message, with the
    worker's traceback as ``__cause__``; one that cannot be sent back, or a worker that dies, is a
    :class:`SecondProcessError`)."""

    def __init__(self, model, data, jobs, units, names, camera, threads: int, plot_videos=None):
        self.jobs = list(jobs)
        self.units = units
        self.start_method = start_method(threads)
        ctx = multiprocessing.get_context(self.start_method)
        payload = (os.fspath(model), data, self.jobs, units, list(names), camera, dict(plot_videos or {}))
        if self.start_method != "fork":
            payload = pickle.dumps(payload)
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_second_process, args=(child, payload, threads), daemon=True,
                                   name="metagen-ppl evaluate (lesioned model, ground-truth V)")
        for stream in (sys.stdout, sys.stderr):   # a fork must not write this process's buffered output again
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:                               # no Ctrl-C in the worker before it ignores it
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        try:
            self.process.start()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child.close()
        self.results = {}
        units.elsewhere.extend(j.name for j in self.jobs)

    def result(self, name: str):
        """The result of the side job ``name`` (waits for it; a plot's: its seconds); raises the worker's
        exception."""
        while name not in self.results:
            if self.conn.poll(0.1):
                try:
                    message = self.conn.recv()
                except EOFError:
                    raise self._died([name]) from None
                self._take(*message)
            elif not self.process.is_alive() and not self.conn.poll():
                raise self._died([name])
        return self.results[name]

    def idle(self) -> bool:
        """Whether every side job has finished (without waiting); raises the worker's exception."""
        while self.conn.poll():
            try:
                message = self.conn.recv()
            except EOFError:
                raise self._died() from None
            self._take(*message)
        return all(j.name in self.results for j in self.jobs)

    def draw(self, requests) -> list:
        """Send plot requests (:class:`PlotRequest`, of videos given to the constructor) to the worker,
        which has finished its fits; returns the names to wait for with :meth:`result`."""
        names = [f"plot {os.path.basename(r.path)}" for r in requests]
        try:
            self.conn.send(("plots", list(requests)))
        except OSError:                 # it has ended since
            raise self._died(names) from None
        return names

    def _take(self, kind, name, value, caught) -> None:
        for text, category, filename, lineno in caught:
            warnings.warn_explicit(text, category, filename, lineno)
        if kind == "ok":
            self.results[name] = value
            if not name.startswith("plot "):
                self.units.done.append(name)
            return
        if not name.startswith("plot "):
            self.units.current = name
        raise _rebuild_error(name, value)

    def _died(self, also=()) -> SecondProcessError:
        self.process.join(1)
        code = self.process.exitcode
        waiting = list(dict.fromkeys([j.name for j in self.jobs if j.name not in self.results] + list(also)))
        how = f"with exit code {code}" if code is not None and code >= 0 else (
            f"by signal {-code} ({signal.Signals(-code).name})" if code is not None else "")
        return SecondProcessError(f"the second process of evaluate ({', '.join(waiting)}) ended {how} without "
                                  "its result (killed? out of memory?); rerun with --resume to reuse the finished "
                                  "units, or with --jobs 1 to fit everything in one process")

    def stop(self) -> None:
        """End the worker (at once if it is still fitting: SIGTERM, then SIGKILL after 5 s) and close the pipe."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
        self.process.join()
        self.conn.close()


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
