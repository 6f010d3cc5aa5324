"""Online metacognition: the detector's V learned as the videos arrive (stepwise EM).

:func:`fit_videos_online` runs the engine's :func:`metagen_ppl.engine.online.run_online`
over the videos in file order. Each video, when it arrives, is fitted alone with the
current parameters held fixed -- the same structure search as the batch fit (births,
EM over the locations, deaths; :class:`~metagen_ppl.models.projective.structure.ProjectiveSearch`
in mode ``fixed``) -- and gives its world state and its expected sufficient statistics
(:func:`~metagen_ppl.models.projective.mstep.sufficient_statistics`: expected detection
counts and exposures per category, the hallucinated detections, the weighted squared
pixel residuals, the score-bin counts of real and hallucinated detections). The running
average of the statistics (step sizes :class:`~metagen_ppl.engine.online.StepSchedule`)
goes through the batch M-step (:func:`~metagen_ppl.models.projective.mstep.mstep_from_statistics`,
priors included) to give V, ``sigma_px`` and the marks for the next video.

The field of view has no closed-form M-step; its statistic is each video's quadratic
model of its log likelihood in ``half_fov`` (the profile with the objects re-placed,
:meth:`~metagen_ppl.models.projective.structure.ProjectiveSearch.fov_profile`, at
``h +- 0.1`` degrees around the current value ``h``: slope ``g_i`` and curvature
``H_i < 0``); the running sums of ``H_i`` and ``H_i h_i - g_i`` give the maximiser of the
summed quadratics, ``h = sum (H_i h_i - g_i) / sum H_i`` (clamped to the search's range).
A video without objects adds nothing.

The first video is fitted with the prior means (the lesioned model's V) and the nominal
field of view. The result records, per video, its world state (objects, categories,
locations, existence probabilities) as inferred on arrival and the parameters after it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch

from metagen_ppl.engine.checkpoint import hash_tensors
from metagen_ppl.engine.online import OnlineOutcome, StepSchedule, run_online
from metagen_ppl.engine.structure import search_structure
from metagen_ppl.errors import DataError
from metagen_ppl.models.projective.generative import V_SITES, prior_params, select_videos
from metagen_ppl.models.projective.mstep import mstep_from_statistics, sufficient_statistics
from metagen_ppl.models.projective.structure import ProjectiveSearch

__all__ = ["OnlineVideoResult", "fit_videos_online", "FOV_STEP_DEG"]

#: Half-width of the finite differences of each video's field-of-view profile (degrees of the half angle).
FOV_STEP_DEG = 0.1


@dataclasses.dataclass
class OnlineVideoResult:
    """What :func:`fit_videos_online` returns.

    Attributes
    ----------
    objects : list
        Per video, ``[(category index, [x, y, z]), ...]`` as inferred when it arrived.
    existence : list
        Per video, each object's existence probability (same order).
    params : list of dict
        Per video, V, ``sigma_px``, marks and ``half_fov`` after it (``params[-1]``: the final ones).
    params0 : dict
        The parameters the first video was fitted with.
    steps : list of float
        The step size of each video.
    schedule : StepSchedule
    elapsed_s : float
    resumed_from : int or None
    """

    objects: list
    existence: list
    params: list
    params0: dict
    steps: list
    schedule: StepSchedule
    elapsed_s: float
    resumed_from: Optional[int] = None

    @property
    def values(self) -> dict:
        """The parameters after the last video."""
        return self.params[-1]

    def params_before(self, i: int) -> dict:
        """The parameters video ``i`` was fitted with."""
        return self.params0 if i == 0 else self.params[i - 1]


def _fov_quadratic(search: ProjectiveSearch, d: float) -> tuple:
    """``(H, H h - g)`` of one fitted video's profile log likelihood in ``half_fov`` around its value ``h``."""
    if not bool(search.active.any()):
        return 0.0, 0.0
    h = float(search.values["half_fov"])
    f0, fm, fp = (search.fov_profile(x)[0] for x in (h, h - d, h + d))
    g = (fp - fm) / (2 * d)
    H = (fp + fm - 2 * f0) / (d * d)
    if not (math.isfinite(H) and math.isfinite(g)) or H >= 0:   # no curvature: no information on the FOV
        return 0.0, 0.0
    return H, H * h - g


def fit_videos_online(data, *, schedule: Optional[StepSchedule] = None, progress: Optional[Callable] = None,
                      checkpoint=None, resume: bool = False, max_rounds: int = 12, learn_fov: bool = True,
                      **kwargs) -> OnlineVideoResult:
    """Fit the videos of ``data`` one after another, learning V as they arrive (see the module docstring).

    Parameters
    ----------
    data : dict from :func:`~metagen_ppl.models.projective.generative.data_from_videos`
    schedule : StepSchedule, optional
        Step sizes (default :class:`~metagen_ppl.engine.online.StepSchedule()`: ``kappa = 1, t0 = 0``, i.e. ``1/i``).
    progress : callable ``(i, info)``, optional
        Called after every video.
    checkpoint : path, optional
        Rewritten atomically after every video; ``resume`` continues after the last video it holds.
    max_rounds : int
        Structure-search rounds per video.
    learn_fov : bool
        Learn the field of view online (default); False keeps the camera's nominal one.
    kwargs : max_objects, tol, max_iter, gn_iters, pixel_noise, fov_range and hyperparameters (as for
        :func:`~metagen_ppl.models.projective.fit.fit_videos`).

    Returns
    -------
    OnlineVideoResult
    """
    schedule = StepSchedule() if schedule is None else schedule
    V = int(data["cams"].shape[0])
    if V < 1:
        raise DataError("online fit: the data holds no video")
    probe = ProjectiveSearch(select_videos(data, [0]), mode="lesioned", **kwargs)
    C, dtype, noise = probe.C, probe.dtype, probe.noise
    options = dict(probe.options)
    lo_fov, hi_fov = probe.fov_range
    params0 = {k: v.clone() for k, v in prior_params(C, dtype, **options).items()}
    params0["half_fov"] = probe.values["half_fov"].clone()
    d = math.radians(FOV_STEP_DEG)

    def infer(i, params):
        sub = select_videos(data, [i])
        search = ProjectiveSearch(sub, mode="fixed", params=params, **kwargs)
        search_structure(search, max_rounds=max_rounds)
        _, _, resp, _, _ = search.estep()
        stats = sufficient_statistics(sub, {"z": resp}, search.values, search.K, cats=search.cats,
                                      active=search.active, num_categories=C, pixel_noise=noise)
        H, Hh_g = _fov_quadratic(search, d) if learn_fov else (0.0, 0.0)
        stats["fov_H"] = torch.tensor(H, dtype=dtype)
        stats["fov_Hh_g"] = torch.tensor(Hh_g, dtype=dtype)
        ex = search.existence_probabilities()[0]
        ks = search.active[0].nonzero().reshape(-1).tolist()
        return {"cats": [int(search.cats[0, k]) for k in ks],
                "locs": [[float(x) for x in search.values["locs"][0, k]] for k in ks],
                "existence": [float(ex[k]) for k in ks], "stats": stats}

    def mstep(S, n):
        out = mstep_from_statistics(S, count=n, num_categories=C, **options)
        H = float(S["fov_H"])
        if learn_fov and H < 0:
            h = min(hi_fov, max(lo_fov, float(S["fov_Hh_g"]) / H))
            out["half_fov"] = torch.tensor(h, dtype=dtype)
        else:
            out["half_fov"] = params0["half_fov"].clone()
        return out

    def on_unit(i, state, params):
        if progress is not None:
            progress(i + 1, {"objects": len(state["cats"]), "video": i})

    settings = {"max_rounds": max_rounds, "learn_fov": learn_fov,
                **{k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                   for k, v in kwargs.items()}}
    out: OnlineOutcome = run_online(V, infer, lambda state: state["stats"], mstep, params0, schedule=schedule,
                                    checkpoint=checkpoint, resume=resume, kind="projective-online",
                                    data_hash=hash_tensors(data), settings=settings, on_unit=on_unit)
    return OnlineVideoResult(
        objects=[list(zip(s["cats"], s["locs"])) for s in out.states],
        existence=[list(s["existence"]) for s in out.states],
        params=[{k: p[k] for k in V_SITES + ("half_fov",)} for p in out.params], params0=params0,
        steps=out.steps, schedule=schedule, elapsed_s=out.elapsed_s, resumed_from=out.resumed_from)
