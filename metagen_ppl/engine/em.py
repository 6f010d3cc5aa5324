"""The EM engine: one loop for every model.

``fit_em`` alternates

* E-step: exact posterior over the enumerated sites at ``theta_t``
  (:meth:`EnumeratedModel.estep`);
* M-step: ``theta_{t+1} = argmax_theta Q(theta | theta_t) + log p(theta)``,
  by the model's registered closed form when it has one (the fast path) and by
  a torch optimiser (LBFGS by default) on the unconstrained parameters for
  everything else,

until the relative change of the log joint ``log p(x | theta) + log p(theta)``
falls below ``tol``; ``num_inits`` restarts keep the best; the returned
posteriors come from a final E-step at the returned parameters.

Empty components. After each E-step, a model module may re-seed a component
that lost all responsibility, through an optional hook

``reseed_empty(data, marginals, params, num_objects, *, threshold, skip, **options)``
    returns ``(updates, k)``: new values of some sites that move the first empty
    component ``k`` not in ``skip`` (``N_k <= threshold * N``), or ``({}, None)``.

The engine accepts a proposal only if the log joint at it is at least the
current one (see :func:`fit_em`'s ``empty``), so the trace stays monotone.

Precision. :func:`bind` (shared with SVI and MCMC) converts the data and the
options to the requested ``dtype``; everything downstream follows the data's dtype.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from typing import Optional

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to

from metagen_ppl.engine.enumeration import EnumeratedModel, EStep
from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.engine.registry import ModelSpec, load_model
from metagen_ppl.engine.result import FitResult
from metagen_ppl.util import seeded
from metagen_ppl.engine.validate import check_data, check_num_objects, check_options


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype, data: Optional[dict] = None) -> torch.dtype:
    """The floating dtype a fit runs in.

    Parameters
    ----------
    dtype : None, str or torch.dtype
        ``None``: the dtype of the data's first floating tensor (the default
        dtype if it has none); ``"float32"``/``"float64"`` or
        ``torch.float32``/``torch.float64``: that one. Half precisions are
        refused (Pyro's distributions and the E-step's sums are not written for them).
    data : dict, optional

    Raises
    ------
    MetagenError
        For any other value.
    """
    if dtype is None:
        for v in (data or {}).values():
            if torch.is_tensor(v) and v.is_floating_point():
                return v.dtype
        return torch.get_default_dtype()
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    raise MetagenError(f"unknown dtype {dtype!r}; choose None (the data's dtype), 'float32' or 'float64'")


def _convert(value, dtype):
    """Floating tensors (also inside lists, tuples and dicts) to ``dtype``; the rest unchanged."""
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: _convert(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(torch.is_tensor(v) or isinstance(v, (dict, list, tuple))
                                                for v in value):
        return type(value)(_convert(v, dtype) for v in value)
    return value


def bind(spec: ModelSpec, data: dict, num_objects, options: Optional[dict], dtype=None):
    """Validate ``data`` and ``K`` and bind them to the model: ``(EnumeratedModel, K, dtype)``.

    The one set-up shared by every inference method (EM, SVI, MCMC). With a
    ``dtype`` (see :func:`resolve_dtype`) every floating tensor of ``data`` and
    ``options`` is converted to it first, so the whole fit runs in that
    precision; ``em.data`` holds the converted data (pass it, not ``data``, to
    anything that runs the model). With ``dtype=None`` nothing is converted and
    the data's dtype rules.
    """
    check_data(data)
    check_num_objects(num_objects, data)
    num_objects = int(num_objects)
    check_options(options, num_objects)
    options = dict(options or {})
    if dtype is not None:
        dtype = resolve_dtype(dtype)
        data = _convert(dict(data), dtype)
        options = _convert(options, dtype)
        for key, value in data.items():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                raise DataError(f"data[{key!r}] does not fit in {dtype} (values overflow to inf); "
                                "rescale the data or use float64")
    else:
        dtype = resolve_dtype(None, data)
    em = EnumeratedModel(spec.model, data, num_objects, options)
    return em, num_objects, dtype


def initial_values(spec: ModelSpec, em: EnumeratedModel, generator: torch.Generator, dtype,
                   init: Optional[dict] = None) -> dict:
    """Starting values for one restart: the model's ``initialize`` hook, else a prior draw;
    entries of ``init`` (user-given values) override both."""
    unknown = sorted(set(init or {}) - set(em.latents))
    if unknown:
        raise MetagenError(f"init gives values for {unknown}, which are not unknowns of this model "
                           f"(fixed by options, or misspelt); its unknowns are {list(em.latents)}")
    values = {}
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    with seeded(seed):
        tr = poutine.trace(em.raw_model).get_trace(em.data, em.num_objects, **em.options)
    for name in em.latents:
        values[name] = tr.nodes[name]["value"].detach().to(dtype)
    if spec.initialize is not None:
        given = spec.initialize(em.data, em.num_objects, generator, **em.options)
        values.update({k: v.detach().to(dtype) for k, v in given.items() if k in em.latents})
    if init:
        values.update({k: torch.as_tensor(v, dtype=dtype) for k, v in init.items()})
    return values


def optimizer_mstep(em: EnumeratedModel, values: dict, est: EStep, names, *,
                    optimizer: str = "lbfgs", steps: int = 50, lr: Optional[float] = None) -> dict:
    """Generic M-step: maximise ``Q + log prior`` over ``names`` with a torch optimiser.

    Works in the unconstrained space of each site (``biject_to(support)``). It is
    a generalised M-step: if the optimiser does not improve Q the old values are
    kept, so Q never decreases.
    """
    names = list(names)
    if not names:
        return values
    transforms = {n: biject_to(em.latents[n].constraint) for n in names}
    free = {}
    for n in names:
        u = transforms[n].inv(values[n]).detach().clone()
        free[n] = torch.nan_to_num(u, nan=0.0, posinf=30.0, neginf=-30.0).requires_grad_(True)

    def current():
        v = dict(values)
        v.update({n: transforms[n](free[n]) for n in names})
        return v

    with torch.no_grad():
        q_old = float(em.q_value(values, est))
    norm = max(abs(q_old), 1.0)
    params = list(free.values())
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

        def closure():
            opt.zero_grad()
            loss = -em.q_value(current(), est) / norm
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr or 0.05)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = -em.q_value(current(), est) / norm
                loss.backward()
                opt.step()
    else:
        raise MetagenError(f"unknown optimizer {optimizer!r}; choose 'lbfgs' or 'adam'")
    with torch.no_grad():
        new = {k: v.detach() for k, v in current().items()}
        q_new = float(em.q_value(new, est))
    if not (q_new >= q_old) or not all(torch.isfinite(new[n]).all() for n in names):
        return values  # no improvement: keep the old point (GEM step)
    return new


def _reseed(spec, em, values, est, it, *, threshold, done, events, rejected):
    """Offer every empty component, one at a time, to the model's ``reseed_empty`` hook.

    A proposal is accepted only if the log joint at it (a fresh E-step) is not
    lower than the current one, so the EM trace stays monotone. Each component is
    offered at most once per run (``done``): accepted moves go to ``events``,
    refused ones to ``rejected`` (that component is kept as it is).
    """
    hook = getattr(spec.module, "reseed_empty", None)
    if hook is None:
        return values, est, False
    changed = False
    while True:
        upd, k = hook(em.data, est.marginals, values, em.num_objects, threshold=threshold,
                      skip=frozenset(done), **em.options)
        if k is None:
            return values, est, changed
        k = int(k)
        done.add(k)
        proposal = dict(values)
        proposal.update({n: v.detach() for n, v in upd.items() if n in em.latents})
        try:
            est_new = em.estep(proposal)
        except ModelError:
            est_new = None
        if est_new is not None and est_new.log_joint >= est.log_joint:
            values, est, changed = proposal, est_new, True
            events.append((it, k))
        else:
            rejected.append((it, k))


def _single_run(spec, em, init, *, mstep, optimizer, optimizer_steps, tol, max_iter, pbar,
                empty="reinit", empty_threshold=1e-8):
    values = dict(init)
    closed = spec.closed_form_mstep if mstep in ("auto", "closed") else None
    # a closed form that needs joint factor marginals may take the whole E-step
    accepts_estep = closed is not None and "estep" in inspect.signature(closed).parameters
    est = em.estep(values)
    trace = [est.log_joint]
    q_trace = []
    converged = False
    n_iter = 0
    done, events, rejected = set(), [], []
    for it in range(1, max_iter + 1):
        rest = list(em.latents)
        if closed is not None:
            extra = {"estep": est} if accepts_estep else {}
            upd = closed(em.data, est.marginals, values, em.num_objects, **extra, **em.options)
            values = dict(values)
            values.update({k: v.detach() for k, v in upd.items() if k in em.latents})
            rest = [n for n in em.latents if n not in upd]
        if rest:
            values = optimizer_mstep(em, values, est, rest, optimizer=optimizer, steps=optimizer_steps)
            with torch.no_grad():
                q_trace.append(float(em.q_value(values, est)))
        prev = est.log_joint
        est = em.estep(values)
        moved = False
        if empty == "reinit":
            # the trace records the log joint after any accepted re-seed (never lower)
            values, est, moved = _reseed(spec, em, values, est, it, threshold=empty_threshold,
                                         done=done, events=events, rejected=rejected)
        trace.append(est.log_joint)
        n_iter = it
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix(log_joint=f"{est.log_joint:.4g}")
        if tol is not None and not moved and abs(est.log_joint - prev) <= tol * max(abs(est.log_joint), 1.0):
            converged = True
            break
    return values, est, trace, q_trace, n_iter, converged, events, rejected


def fit_em(model, data: dict, num_objects: int, *, seed: int = 0, num_inits: int = 1,
           mstep: str = "auto", optimizer: str = "lbfgs", optimizer_steps: int = 50,
           tol: float = 1e-6, max_iter: int = 200, init: Optional[dict] = None,
           dtype=None, empty: str = "reinit", empty_threshold: float = 1e-8,
           progress: bool = False, options: Optional[dict] = None) -> FitResult:
    """Fit a model by (MAP-)EM.

    Maximises ``log p(x | theta) + log p(theta)`` with the discrete sites summed
    out, by ``theta <- argmax Q(theta | theta_old) + log p(theta)``.

    Parameters
    ----------
    model : str, path or ModelSpec
        A built-in model name (``"baseline"``), a ``.py`` path, or a loaded spec.
    data : dict of str -> tensor
        Observed tensors, e.g. ``{"x": (N, 3)}``; their dtype sets the precision
        unless ``dtype`` is given. The models' priors are in data units (see
        each model's docstring): data on a very different scale (1e-6, 1e6) is
        fitted without overflow, but the estimate is then pulled towards the prior.
    num_objects : int
        ``K``, number of objects.
    seed : int
        Seeds the initialisation of every restart (results are deterministic).
    num_inits : int
        Restarts; the run with the highest final log joint is returned.
    mstep : {"auto", "closed", "optimizer"}
        ``auto``/``closed`` use the model's closed form where it registers one
        (and the optimiser for the remaining sites); ``optimizer`` never does.
    optimizer : {"lbfgs", "adam"}, optimizer_steps : int
        The generic M-step's optimiser and its iteration budget per M-step.
    tol : float or None
        Stop when ``|L_t - L_{t-1}| <= tol * max(|L_t|, 1)``; ``None`` runs exactly
        ``max_iter`` iterations (benchmarks).
    max_iter : int
    init : dict, optional
        Starting values (overrides the initialisation of the first restart).
    dtype : None, "float32", "float64" or torch.dtype
        Precision of the fit. ``None`` (default) keeps the data's dtype;
        otherwise every floating tensor of ``data``, ``options`` and ``init`` is
        converted first, and the result's tensors are in that dtype.
    empty : {"reinit", "keep"}
        What to do with a component that loses all responsibility
        (``N_k <= empty_threshold * N`` after an E-step). ``"reinit"`` (default)
        offers it, once per run, to the model's ``reseed_empty`` hook (the
        baseline moves it onto the worst-explained observation); the move is kept
        only if it does not lower the log joint, so the trace never decreases.
        A refused move leaves the component empty (weight ~ 0: it is in effect
        dropped, though ``K`` stays). ``"keep"`` never re-seeds. Models without
        the hook keep empty components either way.
    empty_threshold : float
        Relative threshold on ``N_k`` for a component to count as empty.
    options : dict, optional
        Keyword arguments of the model (e.g. ``{"scale": 0.5}`` to fix the noise).

    Returns
    -------
    FitResult
        ``trace`` is the log joint per iteration (the initial point first; after
        an accepted re-seed, the value after it); ``info["restart_log_joint"]``
        the final objective of every restart; ``info["reinitialised"]`` and
        ``info["reinit_rejected"]`` the ``(iteration, component)`` pairs of
        accepted and refused re-seeds of the returned run (a RuntimeWarning
        reports them).
    """
    spec = load_model(model)
    if mstep not in ("auto", "closed", "optimizer"):
        raise MetagenError(f"unknown mstep {mstep!r}; choose 'auto', 'closed' or 'optimizer'")
    if mstep == "closed" and spec.closed_form_mstep is None:
        raise ModelError(f"model {spec.name!r} registers no closed-form M-step; use mstep='optimizer'")
    for name, v in (("num_inits", num_inits), ("max_iter", max_iter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MetagenError(f"{name} must be an integer, at least 1, got {v!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise MetagenError(f"tol must be a finite number >= 0 (or None: run max_iter iterations), got {tol!r}")
    if empty not in ("reinit", "keep"):
        raise MetagenError(f"unknown empty {empty!r}; choose 'reinit' or 'keep'")
    t0 = time.perf_counter()
    em, num_objects, dtype = bind(spec, data, num_objects, options, dtype)
    best = None
    restart_scores = []
    pbar = _progress(max_iter * num_inits, f"EM {spec.name}", progress)
    for r in range(num_inits):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + r)
        start = initial_values(spec, em, gen, dtype, init if r == 0 else None)
        run = _single_run(spec, em, start, mstep=mstep, optimizer=optimizer,
                          optimizer_steps=optimizer_steps, tol=tol, max_iter=max_iter, pbar=pbar,
                          empty=empty, empty_threshold=empty_threshold)
        restart_scores.append(run[1].log_joint)
        if best is None or run[1].log_joint > best[1].log_joint:
            best = run
    if pbar is not None:
        pbar.close()
    values, est, trace, q_trace, n_iter, converged, events, rejected = best
    if not converged and tol is not None:
        warnings.warn(f"EM stopped at max_iter={max_iter} before reaching tol={tol}; "
                      "raise max_iter or loosen tol", RuntimeWarning, stacklevel=2)
    if events or rejected:
        msg = []
        if events:
            msg.append(f"re-initialised empty component(s) at (iteration, component) {events} "
                       "(see result.info['reinitialised'])")
        if rejected:
            msg.append(f"kept component(s) empty at {rejected}: re-seeding would have lowered the "
                       "log joint (see result.info['reinit_rejected']; the data may support fewer "
                       "objects than num_objects)")
        warnings.warn("EM " + "; ".join(msg), RuntimeWarning, stacklevel=2)
    obs = em.data_site
    pointwise = em.pointwise_log_likelihood(values, obs) if obs else None
    return FitResult(
        model=spec.name, method="em", params=values,
        log_likelihood=est.log_likelihood, log_joint=est.log_joint,
        trace=trace, trace_label="log joint (EM objective)",
        n_iter=n_iter, converged=converged, wall_time_s=time.perf_counter() - t0,
        posteriors=est.marginals,
        map_assignments={k: v.argmax(-1) for k, v in est.marginals.items()},
        pointwise_log_likelihood=None if pointwise is None else pointwise[None, None],
        observed={k: v for k, v in em.data.items() if torch.is_tensor(v)},
        info={"restart_log_joint": restart_scores, "q_trace": q_trace, "mstep": mstep,
              "log_prior": est.log_prior, "dtype": str(dtype).replace("torch.", ""),
              "empty": empty, "reinitialised": events, "reinit_rejected": rejected},
    )
