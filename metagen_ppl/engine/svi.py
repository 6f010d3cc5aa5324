"""SVI baselines on the same model functions: ``TraceEnum_ELBO`` with AutoDelta or AutoNormal.

The discrete sites stay enumerated in the model (exactly summed out by
``TraceEnum_ELBO``), so the guide covers only the continuous sites. With
``AutoDelta`` the ELBO is the log joint ``log p(x, theta)``: SVI-MAP maximises
the same objective as MAP-EM, by stochastic-gradient steps instead of EM steps.
Like EM, SVI runs from ``num_inits`` starts (EM's restart starts) and keeps the
run with the best final ELBO; a component left without observations is warned about.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Optional

import torch
import pyro
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from pyro.optim import ClippedAdam

from metagen_ppl.engine.components import component_structure, empty_components, empty_message
from metagen_ppl.engine.em import LIKELIHOOD_OF
from metagen_ppl.engine.setup import bind, initial_values
from metagen_ppl.errors import MetagenError
from metagen_ppl.engine.registry import load_model
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.validate import degeneracy_warnings
from metagen_ppl.util import check_seed, progress_bar, seeded


def loss_flattened(trace, window_frac: float = 0.1, rtol: float = 1e-4) -> bool:
    """Whether an ELBO trace has flattened: the mean of its last window is within
    noise (two standard errors) or ``rtol`` of the mean of the window before."""
    n = len(trace)
    w = max(5, int(n * window_frac))
    if n < 2 * w:
        return False
    last = torch.tensor(trace[-w:], dtype=torch.float64)
    prev = torch.tensor(trace[-2 * w:-w], dtype=torch.float64)
    diff = abs(float(last.mean() - prev.mean()))
    noise = 2.0 * float(last.std()) / w ** 0.5
    return diff <= max(noise, rtol * abs(float(last.mean())))


def fit_svi(model, data: dict, num_objects: int, *, guide: str = "delta", num_steps: int = 1000,
            lr: float = 0.05, lr_decay: float = 0.1, seed: int = 0, num_inits: int = 1,
            num_posterior_samples: int = 200, init: Optional[dict] = None, dtype=None, progress: bool = False,
            options: Optional[dict] = None) -> FitResult:
    """Fit by SVI with ``TraceEnum_ELBO``.

    ``ELBO = E_q[log p(x, theta) - log q(theta)]`` with the discrete sites summed out.

    Parameters
    ----------
    guide : {"delta", "normal"}
        ``AutoDelta`` (MAP; method ``"svi-map"``) or ``AutoNormal`` (mean field;
        method ``"svi-normal"``; its median is the point estimate and
        ``num_posterior_samples`` guide draws fill ``samples``).
    num_steps, lr, lr_decay :
        ``ClippedAdam`` steps; the learning rate decays to ``lr * lr_decay``.
    seed : int
        Seeds the initialisation (restart ``r`` starts where EM's restart ``r`` starts)
        and the SVI randomness.
    num_inits : int
        Restarts, each ``num_steps`` steps from its own start; the one with the highest
        final ELBO (mean of its last 10% of steps) is returned, like EM's restarts
        (``info["restart_elbo"]`` lists every restart's).
    init : dict, optional
        Starting values of some sites (the first restart only).
    dtype : None, "float32", "float64" or torch.dtype
        Precision, as in :func:`~metagen_ppl.engine.em.fit_em` (``None``: the data's dtype).

    Returns
    -------
    FitResult with ``trace`` the ELBO per step and ``converged`` whether it flattened.
    """
    if guide not in ("delta", "normal"):
        raise MetagenError(f"unknown guide {guide!r}; choose 'delta' (MAP) or 'normal'")
    if num_steps < 1:
        raise MetagenError("num_steps must be at least 1")
    if isinstance(num_inits, bool) or not isinstance(num_inits, int) or num_inits < 1:
        raise MetagenError(f"num_inits must be an integer, at least 1, got {num_inits!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise MetagenError(f"lr must be a positive finite number, got {lr!r}")
    if not (isinstance(lr_decay, (int, float)) and 0 < lr_decay <= 1):
        raise MetagenError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
    seed = check_seed(seed)
    spec = load_model(model)
    t0 = time.perf_counter()
    em, num_objects, dtype = bind(spec, data, num_objects, options, dtype)
    data, options = em.data, em.options
    enum_model = config_enumerate(spec.model, default="parallel")
    guide_model = poutine.block(enum_model, expose=em.sample_latents)
    best, restart_elbo = None, []
    with progress_bar(num_steps * num_inits, f"SVI-{guide} {spec.name}", progress, unit="step") as bar:
        for r in range(num_inits):
            start = initial_values(spec, em, torch.Generator().manual_seed(int(seed) * 1_000_003 + r), dtype,
                                   init if r == 0 else None)
            run = _svi_run(em, enum_model, guide_model, start, guide, num_steps, lr, lr_decay,
                           seed if r == 0 else int(seed) * 7919 + r, num_posterior_samples, bar)
            restart_elbo.append(run["final"])
            if best is None or run["final"] > best["final"]:
                best = run
    params, samples, trace = best["params"], best["samples"], best["trace"]
    est = em.estep(params)
    obs = em.data_site
    pointwise = None
    if obs is not None:
        if samples is not None:
            rows = []
            for i in range(num_posterior_samples):
                v = dict(params)
                v.update({k: s[0, i] for k, s in samples.items()})
                rows.append(em.pointwise_log_likelihood(v, obs))
            if all(r is not None for r in rows):
                pointwise = torch.stack(rows)[None]
        else:
            p = em.pointwise_log_likelihood(params, obs)
            pointwise = None if p is None else p[None, None]
    comps = component_structure(spec, em)
    for msg in degeneracy_warnings(em.data, em.data_site, params, comps.location_site or spec.location_site,
                                   num_objects):
        warnings.warn("SVI: " + msg, RuntimeWarning, stacklevel=2)
    empty = empty_components(comps, est.marginals)
    if empty and num_objects > 1:
        warnings.warn(f"SVI: {empty_message(comps, empty)}; raise num_inits (--num-inits) or lower "
                      "num_objects", RuntimeWarning, stacklevel=2)
    return FitResult(
        model=spec.name, method="svi-map" if guide == "delta" else "svi-normal", params=params,
        log_likelihood=est.log_likelihood, log_joint=est.log_joint,
        trace=trace, trace_label="ELBO", n_iter=num_steps, converged=loss_flattened(trace),
        wall_time_s=time.perf_counter() - t0, posteriors=est.marginals,
        map_assignments={k: v.argmax(-1) for k, v in est.marginals.items()},
        samples=samples, pointwise_log_likelihood=pointwise,
        observed={k: v for k, v in data.items() if torch.is_tensor(v)},
        info={"log_likelihood_of": LIKELIHOOD_OF, "dtype": str(dtype).replace("torch.", ""), "guide": guide, "lr": lr,
              "final_elbo": trace[-1], "num_inits": num_inits, "restart_elbo": restart_elbo,
              "empty_components": [list(b) + [k] for b, k in empty]},
    )


def _svi_run(em, enum_model, guide_model, start, guide, num_steps, lr, lr_decay, seed, num_posterior_samples,
             bar) -> dict:
    """One SVI run from ``start``: its ELBO trace, final ELBO (mean of the last 10%), estimate and guide draws."""
    pyro.clear_param_store()
    with seeded(seed):
        for name in em.param_latents:
            pyro.param(name, start[name], constraint=em.latents[name].constraint)
        init_fn = init_to_value(values={k: start[k] for k in em.sample_latents})
        if guide == "delta":
            auto = AutoDelta(guide_model, init_loc_fn=init_fn)
        else:
            auto = AutoNormal(guide_model, init_loc_fn=init_fn, init_scale=0.01)
        optim = ClippedAdam({"lr": lr, "lrd": lr_decay ** (1.0 / num_steps)})
        svi = SVI(enum_model, auto, optim, TraceEnum_ELBO(max_plate_nesting=em.max_plate_nesting))
        trace = []
        for _ in range(num_steps):
            loss = svi.step(em.data, em.num_objects, **em.options)
            trace.append(-float(loss))
            if bar is not None:
                bar.update(1)
        with torch.no_grad():
            params = {k: v.detach() for k, v in auto.median().items()} if em.sample_latents else {}
            for name in em.param_latents:
                params[name] = pyro.param(name).detach()
            samples = None
            if guide == "normal" and em.sample_latents:
                draws = [auto() for _ in range(num_posterior_samples)]
                samples = {k: torch.stack([d[k].detach() for d in draws])[None] for k in em.sample_latents}
    finite = [t for t in trace if math.isfinite(t)]
    w = max(1, len(trace) // 10)
    final = float(sum(finite[-w:]) / len(finite[-w:])) if finite else -math.inf
    return {"trace": trace, "final": final, "params": params, "samples": samples}
