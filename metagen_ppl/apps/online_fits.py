"""``metagen-ppl evaluate --online``: the video model's online fit as one resumable unit of ``evaluate``.

The videos are fitted in file order, each with the V learned from the videos before it
(the video model's ``fit_videos_online``, e.g.
:func:`metagen_ppl.models.projective.online.fit_videos_online`); its checkpoint
(``OUT/checkpoints/em_online.json``) is rewritten after every video, so ``--resume``
continues with the next one.
"""

from __future__ import annotations

from metagen_ppl.apps.video_fits import EMFits, V_params, meta_json, progress_bar
from metagen_ppl.engine.online import StepSchedule
from metagen_ppl.errors import ModelError


def fit_online_units(spec, data, videos, progress, kw, units=None, schedule=None):
    """The online fit of every video; ``(EMFits, existence per video, V after every video as JSON)``."""
    fit_online = getattr(spec.module, "fit_videos_online", None)
    if not callable(fit_online):
        raise ModelError(f"model {spec.name!r} has no fit_videos_online: --online needs it (a variant of the "
                         "projective model gets it with `from metagen_ppl.models.projective import *`)")
    schedule = StepSchedule() if schedule is None else schedule
    V = int(data["cams"].shape[0])
    extra = units.fit_kwargs("em_online") if units is not None else {}
    bar = progress_bar(V, "online EM (V learned as the videos arrive)", progress)

    def tick(n, info):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objects=info["objects"])
    try:
        res = fit_online(data, schedule=schedule, progress=tick, **dict(spec.default_options, **kw, **extra))
    finally:
        if bar is not None:
            bar.close()
    if units is not None:
        units.finished("em_online")
    names = videos[0].category_names if videos and hasattr(videos[0], "category_names") else None
    camera = getattr(videos[0], "camera", None) if videos else None
    trajectory = [dict(meta_json(spec, p, names, camera), after_video=videos[i].path) for i, p in enumerate(res.params)]
    info = {"fits": [{"mode": "online", "num_videos": V, "schedule": schedule.to_json(),
                      "step_sizes": list(res.steps), "elapsed_s": res.elapsed_s,
                      "resumed_from_video": res.resumed_from}]}
    fits = EMFits(res.objects, V_params(res.values), info, [], [list(range(V))], None)
    return fits, res.existence, trajectory


def em_existence(em: EMFits, num_videos: int) -> list:
    """Per video, the existence probability of each object of ``em.objects`` (from the batch fits)."""
    out = [[None] * len(o) for o in em.objects]
    for fit, idx in zip(em.fits, em.index_sets):
        ex = fit.existence() if hasattr(fit, "existence") and "existence" in getattr(fit, "info", {}) else None
        if ex is None:
            continue
        for i, e in zip(idx, ex):
            if len(e) == len(out[i]):
                out[i] = list(e)
    return out
