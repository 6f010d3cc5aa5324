"""``metagen-ppl evaluate``: fit the projective detector model (or a variant) to real detector output and score it.

:func:`evaluate` reads a MetaGen detection file (``../shared/data/metagen2021/``
or the same format), fits :mod:`metagen_ppl.models.projective` to all videos at once --
the metacognition ``V = (r, h)``, the pixel noise, the score-mark histograms
and the camera's field of view are shared by the videos and learned across
them; each video's objects (count, categories, 3D positions) are inferred by
the model's own model selection -- and writes to ``out_dir``:

``world_states.json``
    a list in file order, one entry per video:
    ``{"path": <the video's path>, "objects": [{"category_name": <one of the file's categories, e.g.
    "chair"|"plant"|"tv"|"umbrella"|"bowl">, "position": [x, y, z], "existence_probability": p}, ...]}``
    (``p``: the posterior probability that the object exists given the rest of its video and V,
    :meth:`~metagen_ppl.models.projective.structure.ProjectiveSearch.existence_probabilities`; with
    ``online`` each video's world state as inferred when it arrived);
``metacognition.json``
    the learned V, ``sigma_px``, marks and field of view (``learned``), the same
    computed from the ground truth (``ground_truth``: EM with the objects fixed
    at their true positions), the lesioned model's, and a side-by-side table
    ``V_table`` (per category: r and h learned vs from the ground truth), and the file's
    ``categories`` and ``camera``;
``metrics.json``
    per split (``A`` = videos 1-50, ``B`` = 51-100) and ``all``: the frame
    category Jaccard of our method, the detector alone (top 5), the detector
    with a score threshold fitted on split A, and the lesioned model (r, h and
    the score marks at their prior means; ``sigma_px`` and the field of view are
    still learned: they describe the localisation noise and the camera, not the
    metacognition); the box similarity likewise when the data has
    ``labels2D``; per-video scores; timings in seconds (``load_s``: reading the file;
    ``em_fit_s``, ``lesioned_fit_s``, ``ground_truth_V_s``: each fit, the last two in the second
    process when ``jobs`` is 2, at the same time as the first; ``worker_wait_s``: waiting for them;
    ``score_s`` and ``metrics_s``: scoring; ``plots_s`` and ``plots_in`` (the process that drew them);
    ``write_s``: the JSON outputs;
    ``fit_and_score_s``: fitting and scoring our method; ``wall_time_s``: the whole run, from
    reading the file) and the run's ``jobs``, ``threads`` (per process) and ``second_process``
    (``"fork"``, ``"spawn"`` or ``null``);
``plots/video_<path>.png``
    for ``plots`` selected videos: every frame with its detections (coloured by
    category, size by score, hollow when the fit calls them hallucinations),
    the true objects (circles) and the inferred objects (crosses) projected;
``checkpoints/``
    one file per unit of work (:mod:`metagen_ppl.engine.checkpoint`): ``em_learn_all.json``
    (or ``em_learn_A.json`` and ``em_fixed_B.json``), ``lesioned.json`` and
    ``ground_truth.json`` are the structure-search fits, rewritten after every round;
    ``svi_<i>.json`` and ``mcmc_video_<j>.json`` the SVI runs and MCMC videos;
    ``evaluate.json`` marks a complete run. ``--resume`` reuses every finished unit and
    continues an unfinished fit from its last round (``--no-checkpoint``: none kept).

Every file is written as soon as its result is done and atomically (a temporary file,
then :func:`os.replace`): a kill leaves the previous file or the complete new one. Ctrl-C
prints one line saying what was kept and how to resume, and exits with 130.

Methods (``method``)
--------------------
``em`` (default)
    :func:`metagen_ppl.models.projective.fit_videos`: batched structure search (births from
    triangulated detections, EM, deaths), one traced model for all videos.
``svi``
    SVI-MAP (``TraceEnum_ELBO`` + ``AutoDelta``, :func:`metagen_ppl.engine.svi.fit_svi`)
    on the same Pyro model for all continuous sites (locations, V, ``sigma_px``,
    marks), given the model-selection structure (object count and categories
    per video) found by EM -- SVI has no birth/death moves. It starts from the
    locations where EM's births proposed the objects and V at its prior mean;
    the field of view is EM's.
``mcmc``
    NUTS over the object locations of a few videos (``mcmc_videos``; the
    assignments summed out exactly, structure and V from EM); the posterior
    mean is the world state of those videos, EM's elsewhere; the metrics of
    ``mcmc`` are reported on those videos only, next to EM's on the same videos.

``learn_on``: ``"all"`` learns V on every video (no ground truth is used);
``"train"`` learns V (with ``sigma_px``, the marks and the field of view) on
videos 1-50 only and keeps it fixed for videos 51-100.

Speed: one batched fit of all videos. On the shared data (100 videos x 20 frames, 2 cores)
each fit takes one core: ours (a structure search) about 3.5-5 s, the lesioned model's (another
search) about 4-5 s and the ground-truth V's (the objects fixed) about 0.3 s; with ``jobs`` 2
(the default where it pays) the last two run in a second process at the same time as ours, so
the whole run takes about the time of one search plus the imports, scores and the plot: 8-10 s
(``comparisons/bench_evaluate.py`` prints every stage). The run uses one torch thread per
process by default (``num_threads``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Optional

import numpy as np
import torch

from metagen_ppl.domain.metagen_data import batch_videos, load_videos
from metagen_ppl.domain.metrics import (detector_baselines, object_extents, projected_labels2d, split_means,
                                        world_state_frame_scores)
from metagen_ppl.apps.online_fits import em_existence, fit_online_units
from metagen_ppl.engine.online import StepSchedule
from metagen_ppl.apps.video_fits import (PlotRequest, SecondProcess, SideJob, Units, draw_plot, fit_em_units,
                                         fit_mcmc_units, fit_svi_units, meta_json, progress_bar, resolve_jobs, side_fit,
                                         video_model)
from metagen_ppl.engine.checkpoint import Checkpoint, CheckpointError, hash_file, hash_tensors
from metagen_ppl.engine.distributed import open_executor
from metagen_ppl.errors import DataError, MetagenError
from metagen_ppl.io import atomic_write_json, load_json
from metagen_ppl.util import check_seed

__all__ = ["evaluate", "METHODS", "LEARN_ON"]

METHODS = ("em", "svi", "mcmc")
LEARN_ON = ("all", "train")


# --------------------------------------------------------------------------- scoring
def _score_objects(videos, objs, metric, progress=False, desc="scoring") -> np.ndarray:
    out = np.empty(len(videos))
    bar = progress_bar(len(videos), desc, progress)
    for i, (v, o) in enumerate(zip(videos, objs)):
        cats = [c for c, _ in o]
        pos = torch.tensor([p for _, p in o], dtype=v.cams.dtype).reshape(-1, 3)
        out[i] = world_state_frame_scores(v, cats, pos, metric).mean()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _splits(scores, videos) -> dict:
    return split_means(scores, [v.index for v in videos])


def _regroup(per_method: dict) -> dict:
    """``{method: {"A", "B", "all", "n_*"}}`` -> ``{"A": {method: value}, ..., "n_videos": {...}}``."""
    out = {}
    for split in ("A", "B", "all"):
        out[split] = {m: (None if r is None or not math.isfinite(r[split]) else float(r[split]))
                      for m, r in per_method.items()}
    first = next((r for r in per_method.values() if r is not None), None)
    if first is not None:
        out["n_videos"] = {s: int(first["n_" + s]) for s in ("A", "B", "all")}
    return out


def _plot_indices(n: int, total: int) -> list:
    if n <= 0 or total == 0:
        return []
    n = min(n, total)
    return sorted(set(int(round(x)) for x in np.linspace(0, total - 1, n)))


# --------------------------------------------------------------------------- main entry
def evaluate(data_path, out_dir, method: str = "em", learn_on: str = "all", seed: int = 0, progress: bool = True,
             plots: int = 1, lesioned: bool = True, ground_truth_V: bool = True, max_objects: int = 8,
             svi_steps: int = 300, svi_lr: float = 0.01, mcmc_videos: int = 3, mcmc_samples: int = 100,
             mcmc_warmup: int = 100, log=None, num_threads: Optional[int] = 1, checkpoint: bool = True,
             resume: bool = False, model="projective", categories=None, camera=None, jobs="auto",
             online: bool = False, step_kappa: float = 1.0, step_t0: float = 0.0, scheduler=None,
             chunk_size: int = 10) -> dict:
    """Fit every video of a MetaGen detection file and write world states, V and metrics.

    Parameters
    ----------
    data_path : str
        A MetaGen detection JSON file (:func:`metagen_ppl.domain.metagen_data.load_videos`: the legacy
        list of videos or the ``metagen-detections`` schema).
    out_dir : str
        Output directory (created): ``world_states.json``, ``metacognition.json``,
        ``metrics.json``, ``plots/``.
    method : "em", "svi" or "mcmc" (see the module docstring)
    learn_on : "all" (V learned on every video) or "train" (on videos 1-50, fixed for 51-100)
    seed : int
        Seeds SVI and MCMC (EM is deterministic).
    progress : bool
        Progress bars (per video) on stderr.
    plots : int
        Number of videos (evenly spread over the file) to draw (about 0.7 s each on the shared data).
    lesioned, ground_truth_V : bool
        Also fit the lesioned model / compute V from the ground truth (when the file has it).
    max_objects : int
        Object slots per video of the structure search.
    svi_steps, svi_lr, mcmc_videos, mcmc_samples, mcmc_warmup :
        Budgets of the SVI and MCMC methods.
    model : str or path
        The video model: ``"projective"`` (default) or a ``.py`` file of a variant of it (its module
        has the functions of :data:`metagen_ppl.apps.video_fits.VIDEO_MODEL_HOOKS`, e.g. by
        ``from metagen_ppl.models.projective import *``, and may set ``DEFAULT_OPTIONS``).
    categories : optional
        The categories and their detector labels, replacing the file's
        (:func:`metagen_ppl.domain.metagen_data.parse_categories`: e.g. ``"62=chair,64=plant"`` or a
        JSON file); the outputs name the categories as given.
    camera : optional
        The camera, replacing the file's (:func:`metagen_ppl.domain.camera.parse_camera`: e.g.
        ``"pinhole:fx=500,fy=500,cx=320,cy=240,width=640,height=480"``).
    scheduler : str or Executor, optional
        ``None`` (default): the joint batched fit, everything in this process. Given
        (``"inprocess"``, ``"processes[:N]"``, ``"tcp://host:port"`` or an
        :class:`~metagen_ppl.engine.distributed.Executor`; :func:`~metagen_ppl.engine.distributed.make_executor`),
        every structure-search fit (EM, lesioned, ground truth) is the model's map-reduce EM
        (:func:`metagen_ppl.models.projective.fit_videos_mapreduce`: chunks of ``chunk_size`` videos fitted
        with V fixed as independent tasks, V from their summed statistics each round) and the MCMC videos
        are independent tasks, all on that scheduler. The results do not depend on where the tasks run
        (``"inprocess"`` gives the same numbers as a cluster), but the map-reduce fit is not the batched
        fit: its scores differ slightly (README: "Scale-out on Dask").
    chunk_size : int
        Videos per task of the map-reduce fit (with ``scheduler``).
    log : callable, optional
        Receives one-line status messages.
    num_threads : int or None
        torch intra-op threads during the run (restored afterwards), in each process; default 1: the
        work is many small tensor operations, and on a shared 2-core machine two threads were measured
        3-7x slower than one (they contend with other processes); the thread count also changes the
        last bits of the fits. ``None`` keeps torch's setting.
    online : bool
        Learn V online (:func:`metagen_ppl.models.projective.online.fit_videos_online`): the videos in file
        order, each fitted on arrival with the V learned from the videos before it, V updated from
        running expected sufficient statistics (stepwise EM, step sizes ``(i + step_t0)^-step_kappa``);
        needs ``method="em"`` and ``learn_on="all"``. ``world_states.json`` then holds each video's
        world state as inferred on arrival and ``metacognition.json`` V after every video
        (``online.V_trajectory``).
    step_kappa, step_t0 : float
        The online step sizes (default 1 and 0: ``eta_i = 1/i``).
    jobs : "auto" or int
        Processes: ``1`` fits everything here, one fit after the other; ``2`` fits the lesioned model
        and the ground-truth V in a second process while this one fits ours (they do not depend on it);
        the plots are drawn by the second process when it has finished by the time ours is fitted (this
        one scores meanwhile), else here; the outputs are the same (bit for bit, with the same
        ``num_threads``).
        ``"auto"`` (default) is 2 when there is such a fit, the machine has 2 cores or more and the
        file has at least :data:`metagen_ppl.apps.video_fits.SECOND_PROCESS_FROM` frames (videos x
        frames; below that every fit takes a second or two and one process is simpler), else 1. The
        second process is a fork on Linux with one thread (it starts at once), else spawned (a fresh
        interpreter: its imports take 2-3 s); it ignores Ctrl-C, is stopped when this run ends or
        fails, and keeps its checkpoints like every unit. A ``model`` given as an object (not a name
        or a path) runs in one process.
    checkpoint : bool
        Keep every unit of work in ``out_dir/checkpoints/`` as soon as it is done (atomically):
        each structure-search fit after every round, each SVI run and each MCMC video when
        finished, and ``evaluate.json`` when all outputs are written.
    resume : bool
        Continue an interrupted run with the same data and settings: finished units are reused
        (not recomputed), an unfinished fit goes on from its last round, and the outputs equal
        an uninterrupted run's (timings aside). If ``evaluate.json`` says the run completed, its
        ``metrics.json`` is returned at once. A unit written for other data or settings is
        refused (:class:`metagen_ppl.engine.checkpoint.CheckpointError`: delete ``out_dir/checkpoints``
        or drop ``resume``).

    Every output file is written atomically (temporary file, then :func:`os.replace`): a kill
    leaves the previous file or the complete new one. On Ctrl-C the run raises
    :class:`metagen_ppl.engine.checkpoint.FitInterrupted` (a :class:`KeyboardInterrupt`) whose
    message says what was kept and how to resume.

    Returns
    -------
    dict: the content of ``metrics.json``.
    """
    if resume and not checkpoint:
        raise MetagenError("resume=True needs checkpoint=True (the units of the earlier run are in "
                           "OUT/checkpoints/)")
    spec = video_model(model)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise MetagenError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    units = Units(out_dir, bool(checkpoint), bool(resume), None, chunk_size=chunk_size)
    settings = dict(data_path=data_path, out_dir=out_dir, method=method, learn_on=learn_on, seed=seed,
                    progress=progress, plots=plots, lesioned=lesioned, ground_truth_V=ground_truth_V,
                    max_objects=max_objects, svi_steps=svi_steps, svi_lr=svi_lr, mcmc_videos=mcmc_videos,
                    mcmc_samples=mcmc_samples, mcmc_warmup=mcmc_warmup, log=log, categories=categories,
                    camera=camera, model=model, jobs=jobs, online=online, step_kappa=step_kappa, step_t0=step_t0)
    previous = None
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise MetagenError(f"num_threads must be a positive integer or None, got {num_threads!r}")
        previous = torch.get_num_threads()
        torch.set_num_threads(num_threads)
    try:
        with contextlib.ExitStack() as cleanup, open_executor(scheduler, log=log) as executor:
            # cleanup stops the second process, if any, on every way out
            units.executor = executor
            return _evaluate(spec, units, cleanup, **settings)
    except KeyboardInterrupt as e:
        raise units.interrupted(e) from e
    except CheckpointError as e:
        if e.path is None or units.dir is None:
            raise
        raise CheckpointError(f"checkpoint {e.path!r} {e.why}; to start afresh delete {units.dir} (or run without "
                              "--resume / with resume=False, which overwrites it), or resume with the data and "
                              "settings of the earlier run", e.path, e.why) from None
    finally:
        if previous is not None:
            torch.set_num_threads(previous)


def _evaluate(spec, units, cleanup, *, data_path, out_dir, method, learn_on, seed, progress, plots, lesioned,
              ground_truth_V, max_objects, svi_steps, svi_lr, mcmc_videos, mcmc_samples, mcmc_warmup, log, model, jobs,
              categories=None, camera=None, online=False, step_kappa=1.0, step_t0=0.0) -> dict:
    t_start = time.perf_counter()
    seed = check_seed(seed)
    if method not in METHODS:
        raise MetagenError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if learn_on not in LEARN_ON:
        raise MetagenError(f"unknown learn_on {learn_on!r}; choose 'all' or 'train'")
    for name, val in (("plots", plots), ("max_objects", max_objects), ("svi_steps", svi_steps),
                      ("mcmc_videos", mcmc_videos), ("mcmc_samples", mcmc_samples), ("mcmc_warmup", mcmc_warmup)):
        if isinstance(val, bool) or not isinstance(val, int) or val < (1 if name in ("max_objects", "svi_steps",
                                                                                     "mcmc_samples") else 0):
            raise MetagenError(f"{name} must be a {'positive' if name in ('max_objects', 'svi_steps', 'mcmc_samples') else 'non-negative'} integer, got {val!r}")
    if isinstance(svi_lr, bool) or not isinstance(svi_lr, (int, float)) or not math.isfinite(svi_lr) or svi_lr <= 0:
        raise MetagenError(f"svi_lr must be a finite number > 0, got {svi_lr!r}")
    schedule = None
    if online:
        if method != "em" or learn_on != "all":
            raise MetagenError("online=True (--online) learns V with EM over every video in file order: it needs "
                               "method 'em' and learn_on 'all'")
        schedule = StepSchedule(step_kappa, step_t0)
        if units.executor is not None:
            raise MetagenError("online=True (--online) fits the videos one after another in this process; drop "
                               "scheduler (--scheduler)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"output directory {os.fspath(out_dir)!r} is an existing file; give a directory")
    say = log or (lambda m: None)

    videos = load_videos(data_path, categories=categories, camera=camera)
    names, cam = list(videos[0].category_names), videos[0].camera
    if not any(v.has_detections for v in videos):
        raise DataError(f"{os.fspath(data_path)!r} has no 'detections' in its frames; evaluate needs a "
                        "detector's output (e.g. data_labelled_retinanet.json), not unlabelled_data.json")
    has_gt = all(v.has_ground_truth for v in videos)
    has_box = all(v.labels2d is not None for v in videos)
    box_source = "labels2D" if has_box else None
    if has_gt and not has_box:       # pseudo ground-truth boxes around the projected labelled objects
        extents = object_extents(videos)
        for v in videos:
            v.labels2d = projected_labels2d(v, extents)
        has_box, box_source = True, "projected ground truth"
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output directory {os.fspath(out_dir)!r}: {e.strerror or e}") from None
    data = spec.module.data_from_videos(videos)
    V = len(videos)
    timings = {}

    units.data_hash = hash_tensors(data)
    marker = None
    if units.dir is not None:
        marker = Checkpoint(os.path.join(units.dir, "evaluate.json"), "evaluate", hash_file(data_path),
                            {"model": spec.name, "model_options": repr(spec.default_options),
                             "method": method, "learn_on": learn_on, "seed": seed, "plots": plots,
                             "lesioned": lesioned, "ground_truth_V": ground_truth_V, "max_objects": max_objects,
                             "svi_steps": svi_steps, "svi_lr": svi_lr, "mcmc_videos": mcmc_videos,
                             "mcmc_samples": mcmc_samples, "mcmc_warmup": mcmc_warmup,
                             "categories": names, "camera": cam.to_json(),
                             **({"online": schedule.to_json()} if online else {}),
                             **({} if units.executor is None else {"em_fit": f"map-reduce/{units.chunk_size}"})})
        done = None
        if units.resume:
            try:
                done = marker.load()
            except CheckpointError:          # other settings: the units decide what can be reused
                done = None
        outputs = [os.path.join(out_dir, f) for f in ("world_states.json", "metacognition.json", "metrics.json")]
        if done is not None and done["done"] and all(os.path.isfile(f) for f in outputs):
            say(f"resume: {out_dir} already holds the complete results of this run; nothing to do")
            return load_json(outputs[2])
        if os.path.exists(marker.path):      # the outputs are about to change
            os.remove(marker.path)
        if units.resume:
            say(f"resume: reusing the finished units in {units.dir}")

    timings["load_s"] = time.perf_counter() - t_start

    # ---- the fits that do not need ours (lesioned model, ground-truth V): a second process starts on them now
    side_jobs = []
    if lesioned:
        side_jobs.append(SideJob("lesioned", "lesioned", "lesioned model (V at its prior)",
                                 {"max_objects": max_objects}, objects=True))
    if has_gt and ground_truth_V:
        b = batch_videos(videos)
        side_jobs.append(SideJob("ground_truth", "truth", "V from the ground truth",
                                 {"truth": (b.gt_categories, b.gt_positions, b.gt_mask)}))
    side = None
    chosen_plots = _plot_indices(plots, V)
    # with --scheduler the side fits are map-reduce fits on the executor, run from this process
    if units.executor is None and resolve_jobs(jobs, sum(v.num_frames for v in videos), len(side_jobs), model) > 1:
        side = SecondProcess(model, data, side_jobs, units, names, cam, torch.get_num_threads(),
                             {j: videos[j] for j in chosen_plots})
        cleanup.callback(side.stop)
        if progress:      # what runs beside the EM fit's progress
            say(f"{' and '.join(j.desc for j in side_jobs)}: fitting in a second process")

    # ---- our method
    t0 = time.perf_counter()
    fit_kw = {"max_objects": max_objects}
    trajectory = None
    if online:
        em, existence, trajectory = fit_online_units(spec, data, videos, progress, fit_kw, units, schedule)
    else:
        em = fit_em_units(spec, data, videos, learn_on, progress, fit_kw, units)
        existence = em_existence(em, V)
    objs_em, learned, fit_info, fits, index_sets, resp_all = (em.objects, em.learned, em.info, em.fits,
                                                              em.index_sets, em.resp)
    timings["em_fit_s"] = time.perf_counter() - t0
    method_info = {}
    objs = objs_em
    if method == "svi":
        t1 = time.perf_counter()
        objs, method_info["svi"] = fit_svi_units(spec, data, fits, index_sets, V, seed, svi_steps, svi_lr, progress,
                                            units)
        timings["svi_fit_s"] = time.perf_counter() - t1
    chosen = []
    if method == "mcmc":
        t1 = time.perf_counter()
        chosen = _plot_indices(mcmc_videos, V)
        objs, method_info["mcmc"] = fit_mcmc_units(spec, data, fits, index_sets, objs_em, chosen, seed, mcmc_samples,
                                              mcmc_warmup, progress, units)
        timings["mcmc_fit_s"] = time.perf_counter() - t1
    per_video = {}
    metrics_by = {}
    if has_gt:
        t1 = time.perf_counter()
        per_video["ours"] = _score_objects(videos, objs, "jaccard", progress, f"scoring ({method})")
        timings["score_s"] = time.perf_counter() - t1
    timings["fit_and_score_s"] = time.perf_counter() - t0
    if method == "em":
        say(f"EM: {sum(len(o) for o in objs)} objects in {V} videos; fitted"
            f"{' and scored' if has_gt else ''} in {timings['fit_and_score_s']:.1f} s")

    writing = [0.0]

    def write_json(name, obj):
        t = time.perf_counter()
        atomic_write_json(os.path.join(out_dir, name), obj)
        writing[0] += time.perf_counter() - t

    def entry(c, p, e):
        return {"category_name": names[c], "position": p,
                **({"existence_probability": e} if e is not None else {})}
    # SVI and MCMC keep EM's structure (which objects exist), so EM's existence probabilities are theirs too
    world = [{"path": v.path, "objects": [entry(c, p, e) for (c, p), e in
                                          zip(o, existence[j] if len(existence[j]) == len(o) else [None] * len(o))]}
             for j, (v, o) in enumerate(zip(videos, objs))]
    write_json("world_states.json", world)

    # ---- plots of ours: drawn by the second process if it has finished its fits (it has matplotlib ready
    # and this process scores meanwhile), else here
    t1 = time.perf_counter()
    pdir = os.path.join(out_dir, "plots")
    if chosen_plots:
        os.makedirs(pdir, exist_ok=True)
    requests = []
    for j in chosen_plots:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in videos[j].path)
        requests.append(PlotRequest(
            os.path.join(pdir, f"video_{safe}.png"), j, objs[j], resp_all[j] if resp_all is not None else None,
            f"video {videos[j].path} ({method}): {len(objs[j])} inferred objects"
            + (f", {len(videos[j].gt_categories)} true" if videos[j].has_ground_truth else "")))
    written = [os.path.relpath(r.path, out_dir) for r in requests]
    plots_elsewhere = []
    if requests and side is not None and side.idle():
        plots_elsewhere = side.draw(requests)
        timings["plots_in"] = "second process"
    elif requests:
        for r in requests:
            draw_plot(r, videos)
        timings["plots_s"] = time.perf_counter() - t1
        timings["plots_in"] = "main process"

    # ---- the scores that do not need the side fits: ours (every metric), EM's, the detector baselines
    metric_names = ("jaccard",) + (("box",) if has_box else ())
    partial = {}
    t1 = time.perf_counter()
    if has_gt:
        for metric in metric_names:
            by = {}
            scores = per_video["ours"] if metric == "jaccard" else _score_objects(videos, objs, "box")
            per_video_m = {"ours": scores}
            by["ours"] = _splits(scores, videos)
            if method == "mcmc":
                sel = [videos[j] for j in chosen]
                em_sc = _score_objects(sel, [objs_em[j] for j in chosen], metric)
                mc_sc = scores[chosen]
                by = {"ours": by["ours"], "mcmc_videos_only": _splits(mc_sc, sel),
                      "em_same_videos": _splits(em_sc, sel)}
            if method != "em":
                em_scores = _score_objects(videos, objs_em, metric)
                per_video_m["em"] = em_scores
                by["em"] = _splits(em_scores, videos)
            base = detector_baselines(videos, top_n=5, metric=metric)
            by["detector"] = base["detector"]
            by["detector_fitted"] = base["detector_fitted"]
            partial[metric] = (by, per_video_m, base)
    timings["metrics_s"] = time.perf_counter() - t1

    # ---- lesioned model and ground-truth V (waits for the second process)
    t1 = time.perf_counter()
    side_results = {}
    for job in side_jobs:
        if side is not None:
            side_results[job.name] = side.result(job.name)
        else:
            side_results[job.name] = side_fit(spec, data, job, progress, units, names, cam)
    if plots_elsewhere:
        timings["plots_s"] = sum(side.result(name) for name in plots_elsewhere)
    if side is not None:
        timings["worker_wait_s"] = time.perf_counter() - t1
    meta = {"method": method, "learn_on": learn_on, "learned": meta_json(spec, learned, names, cam),
            "learned_on": ("all videos, online in file order" if online else "all videos") if learn_on == "all"
            else "videos 1-50 (split A)"}
    if online:
        meta["online"] = {"schedule": schedule.to_json(), "V_trajectory": trajectory,
                          "note": "each video fitted on arrival with the V learned from the videos before it; "
                                  "V_trajectory[i] is V after video i"}
    objs_les = None
    if "lesioned" in side_results:
        objs_les = side_results["lesioned"]["objects"]
        meta["lesioned"] = side_results["lesioned"]["meta"]
        timings["lesioned_fit_s"] = side_results["lesioned"]["seconds"]
    if "ground_truth" in side_results:
        meta["ground_truth"] = side_results["ground_truth"]["meta"]
        meta["ground_truth_note"] = ("EM with every object fixed at its true category and position: V, sigma_px, "
                                     "marks and field of view learned from the detections given the truth")
        meta["V_table"] = {c: {"r_learned": meta["learned"]["detection_rate"][c],
                               "r_ground_truth": meta["ground_truth"]["detection_rate"][c],
                               "h_learned": meta["learned"]["hallucination_rate"][c],
                               "h_ground_truth": meta["ground_truth"]["hallucination_rate"][c]}
                           for c in names}
        timings["ground_truth_V_s"] = side_results["ground_truth"]["seconds"]
    meta["categories"], meta["camera"] = names, cam.to_json()
    meta["fits"] = fit_info["fits"]
    if method_info:
        meta[method] = method_info[method]
    write_json("metacognition.json", meta)

    # ---- metrics
    metrics = {"data": os.fspath(data_path), "model": spec.name, "method": method, "learn_on": learn_on, "seed": seed,
               "num_videos": V, "split_A": "videos 1-50 (file positions 0-49)",
               "split_B": "videos 51-100 (file positions 50-99)"}
    if units.executor is not None:
        metrics["scheduler"] = {"executor": units.executor.name, "fit": "map-reduce EM", "chunk_size": units.chunk_size}
    if has_gt:
        t1 = time.perf_counter()
        metrics_by = {}
        for metric in metric_names:
            by, per_video_m, base = partial[metric]
            if objs_les is not None:
                les = _score_objects(videos, objs_les, metric)
                per_video_m["lesioned"] = les
                by["lesioned"] = _splits(les, videos)
            metrics_by[metric] = {"splits": _regroup(by), "detector_threshold": base["threshold"],
                                  "per_video": {m: [float(x) for x in s] for m, s in per_video_m.items()}}
        timings["metrics_s"] += time.perf_counter() - t1
        metrics["splits"] = {s: {m: metrics_by[m]["splits"][s] for m in metrics_by} for s in ("A", "B", "all")}
        metrics["n_videos"] = metrics_by["jaccard"]["splits"].get("n_videos")
        metrics["detector_threshold"] = {m: metrics_by[m]["detector_threshold"] for m in metrics_by}
        metrics["per_video"] = {"path": [v.path for v in videos],
                                **{f"{metric}_{m}": s for metric in metrics_by
                                   for m, s in metrics_by[metric]["per_video"].items()}}
        if method == "mcmc":
            metrics["mcmc_videos"] = [videos[j].path for j in chosen]
    else:
        metrics["note"] = "the file has no ground truth ('labels'): no scores; world states and V written"
    if not has_box:
        metrics["box_note"] = "the file has no labels2D and no ground truth: box similarity not computed"
    elif box_source == "projected ground truth":
        metrics["box_note"] = ("the file has no labels2D: the box similarity is scored against pseudo boxes centred "
                               "on the projections of the labelled 3D objects, sized by each category's physical "
                               "extent measured from the file's matched detections (metrics.projected_labels2d)")
    metrics["box_source"] = box_source
    metrics["V"] = {"learned": {k: meta["learned"][k] for k in ("detection_rate", "hallucination_rate",
                                                                  "pixel_scale", "field_of_view_deg")}}
    if "ground_truth" in meta:
        metrics["V"]["ground_truth"] = {k: meta["ground_truth"][k] for k in ("detection_rate", "hallucination_rate",
                                                                               "pixel_scale", "field_of_view_deg")}
    metrics["plots"] = written
    timings["write_s"] = writing[0]
    timings["jobs"] = 2 if side is not None else 1
    timings["second_process"] = side.start_method if side is not None else None
    timings["threads"] = torch.get_num_threads()
    t1 = time.perf_counter()
    timings["wall_time_s"] = t1 - t_start
    metrics["timings"] = timings
    metrics["wall_time_s"] = timings["wall_time_s"]
    metrics["fit_and_score_s"] = timings["fit_and_score_s"]
    atomic_write_json(os.path.join(out_dir, "metrics.json"), metrics)
    if marker is not None:
        marker.save(1, {"outputs": ["world_states.json", "metacognition.json", "metrics.json"] + written},
                    done=True)
    return metrics
