"""The EM engine: one iteration loop and one restart driver for every model.

:func:`run_em` is the only EM iteration loop of the package. It alternates,
from a starting point ``theta_0``,

* M-step: ``theta_{t+1} = argmax_theta Q(theta | theta_t) + log p(theta)``
  (:meth:`EMSteps.mstep`);
* E-step at ``theta_{t+1}``: the posterior of the discrete sites, the log joint
  ``L = log p(x | theta) + log p(theta)`` (:meth:`EMSteps.estep`);
* an after-E-step hook (:meth:`EMSteps.after_estep`, e.g. re-seeding an empty
  component);

until ``|L_t - L_{t-1}| <= tol * max(|L_t|, 1)`` (:func:`has_converged`, the
one convergence test) with no discrete parameter changed. :func:`fit_em` runs
it from ``num_inits`` starts and keeps the best (the restart driver).

Stalls are not convergence. When the M-step's optimiser makes no progress it
keeps the old point (a GEM step), so the log joint changes by exactly 0 and the
test above passes although the point need not be stationary. The M-step reports
such a step (:meth:`EMSteps.mstep_stalled`: kept the old point where the gradient
of Q, which there equals the gradient of the log joint, is not zero); a run that
stops on it is *stalled* (``EMRun.stalled``, ``info["stalled"]``), not converged,
and :func:`fit_em` warns.

Weights under Dirichlet priors of concentration < 1 (see
:mod:`metagen_ppl.engine.mstep`): the posterior density is unbounded at the
simplex boundary, so EM returns the interior local mode (closed form
``w_k ∝ N_k + a - 1``) and, when a component's expected count falls to
``N_k <= 1 - a`` so that no interior mode exists, the run stops with a
:class:`~metagen_ppl.engine.mstep.NoInteriorModeError` naming the site, the
concentration and the fix. :func:`fit_em` drops such a restart (and raises the
error if every restart ends so); no restart can end at a boundary or +inf value.

Hooks. An :class:`EMSteps` object is the set of hooks of one fit. The default,
:class:`ModelSteps`, is built from a model module's optional hooks (protocol:
:mod:`metagen_ppl.engine.registry`):

``estep(data, params, num_objects, **options) -> EStep``
    a model's own (batched) E-step, used instead of Pyro enumeration; it must
    equal :meth:`EnumeratedModel.estep <metagen_ppl.engine.enumeration.EnumeratedModel.estep>`
    (test it so);
``closed_form_mstep(data, marginals, params, num_objects, **options) -> dict``
    closed-form M-steps for some sites; the engine's generic optimiser
    (:func:`~metagen_ppl.engine.mstep.optimizer_mstep`) takes the rest;
``discrete_update(data, estep, params, num_objects, *, iteration, **options) -> (dict, bool)``
    parameters updated in closed form after the continuous ones: the discrete
    parameters named by ``fit_em(discrete=...)`` (e.g. the object categories of
    the categorical model) and whatever depends on them (its confusion matrix).
    Returns the new values and whether a discrete value changed (EM has not
    converged while one does). Called once more before the first E-step of every
    restart with ``estep=None`` and ``iteration=0``, to start the discrete
    parameters from the continuous start;
``reseed_empty(data, marginals, params, num_objects, *, threshold, skip, **options)``
    the after-E-step hook: a new start ``(updates, k)`` for the first component
    ``k`` not in ``skip`` that lost all responsibility (``N_k <= threshold * N``),
    or ``({}, None)``. The engine accepts a proposal only if the log joint at it
    is not lower (``empty="reinit"``), so the trace stays monotone.

A model whose fit needs more than these (e.g. the projective model's camera and
location steps inside a structure search) subclasses :class:`ModelSteps` or
:class:`EMSteps`; the loop stays :func:`run_em`.

Precision. :func:`~metagen_ppl.engine.setup.bind` (shared with SVI and MCMC)
converts the data and the options to the requested ``dtype``; everything
downstream follows the data's dtype.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
import warnings
from typing import Callable, Optional, Sequence

import torch

from metagen_ppl.engine.components import component_structure, default_reseed, empty_components, empty_message
from metagen_ppl.engine.enumeration import EnumeratedModel, EStep
from metagen_ppl.engine.mstep import NoInteriorModeError, check_interior_mode, optimizer_mstep
from metagen_ppl.engine.registry import ModelSpec, load_model
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.setup import bind, initial_values
from metagen_ppl.engine.validate import degeneracy_warnings
from metagen_ppl.errors import MetagenError, ModelError
from metagen_ppl.util import check_seed, progress_bar

MSTEPS = ("auto", "closed", "optimizer")
#: What ``FitResult.log_likelihood`` is (``info["log_likelihood_of"]``): log p(observed | theta), the log
#: probability of *every* observed site (the data x, and also e.g. an observed category o, a Poisson count
#: of detections, a pyro.factor) at the estimate theta, with every discrete latent site summed out (a
#: method that fixes some discrete sites says so). ``info["log_likelihood_by_site"]`` splits it by site.
#: "data" in the label means all observed sites, not only x.
LIKELIHOOD_OF = "log p(data|theta)"


def has_converged(previous: float, current: float, tol: Optional[float]) -> bool:
    """EM's convergence test: ``|L_t - L_{t-1}| <= tol * max(|L_t|, 1)`` (never with ``tol=None``)."""
    return tol is not None and abs(current - previous) <= tol * max(abs(current), 1.0)


@dataclasses.dataclass
class EMRun:
    """One run of :func:`run_em`.

    Attributes
    ----------
    values : dict
        The parameters at the end (continuous sites, discrete parameters, model options EM updates).
    estep : EStep
        The E-step at ``values`` (its posteriors are consistent with ``values``).
    trace : list of float
        The log joint before the first M-step, then after every iteration.
    n_iter : int
    converged : bool
        The convergence test passed after an M-step that did not stall.
    stalled : int or None
        The iteration at which the run stopped because the M-step made no progress at a
        non-stationary point (the log joint did not change, but not because EM converged).
    mstep_rejected : list of int
        Iterations whose optimiser M-step kept the old point (stalled or already stationary).
    """

    values: dict
    estep: EStep
    trace: list
    n_iter: int
    converged: bool
    stalled: Optional[int] = None
    mstep_rejected: list = dataclasses.field(default_factory=list)


class EMSteps:
    """The hooks of one EM fit (see the module docstring); subclass and override."""

    def start(self, values: dict) -> dict:
        """Called once per run before the first E-step; returns the starting values (default: as given)."""
        return values

    def estep(self, values: dict) -> EStep:
        raise NotImplementedError

    def mstep(self, values: dict, est: EStep, iteration: int) -> tuple:
        """``(new values, changed)``: ``changed`` says a discrete parameter moved."""
        raise NotImplementedError

    def after_estep(self, values: dict, est: EStep, iteration: int) -> tuple:
        """``(values, est, moved)`` after each E-step; ``moved``: the hook changed the parameters."""
        return values, est, False

    def mstep_stalled(self) -> bool:
        """Whether the last :meth:`mstep` stopped short: it kept (part of) the old point although
        the objective's gradient there is not zero (its optimiser made no progress). Default False."""
        return False

    def mstep_rejected(self) -> bool:
        """Whether the last :meth:`mstep`'s optimiser kept the old point (stalled or stationary)."""
        return False


def run_em(steps: EMSteps, values: dict, *, tol: Optional[float], max_iter: int, est: Optional[EStep] = None,
           progress=None, on_iteration: Optional[Callable] = None) -> EMRun:
    """The EM iteration loop (the only one in the package).

    Parameters
    ----------
    steps : EMSteps
        The E-step, M-step and after-E-step hooks.
    values : dict
        Starting parameters (passed through ``steps.start``).
    tol : float or None
        Relative tolerance of :func:`has_converged`; ``None`` runs exactly ``max_iter`` iterations.
    max_iter : int
    est : EStep, optional
        The E-step at ``values`` if the caller already has it (skips the first E-step).
    progress : tqdm-like bar, optional
        Advanced by one per iteration, its postfix showing the log joint.
    on_iteration : callable ``(iteration, values, est)``, optional
        Called after every iteration (e.g. to record a trace entry or a checkpoint).
    """
    values = steps.start(dict(values))
    est = steps.estep(values) if est is None else est
    trace = [est.log_joint]
    converged, n_iter, stalled, rejected = False, 0, None, []
    for it in range(1, max_iter + 1):
        values, changed = steps.mstep(values, est, it)
        if steps.mstep_rejected():
            rejected.append(it)
        previous = est.log_joint
        est = steps.estep(values)
        values, est, moved = steps.after_estep(values, est, it)
        trace.append(est.log_joint)
        n_iter = it
        if on_iteration is not None:
            on_iteration(it, values, est)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(log_joint=f"{est.log_joint:.4g}")
        if not changed and not moved and has_converged(previous, est.log_joint, tol):
            # a step that kept the old point at a non-stationary point leaves L unchanged without
            # EM having converged; the next (deterministic) step would stall again: stop either way
            if steps.mstep_stalled():
                stalled = it
            else:
                converged = True
            break
    return EMRun(values=values, estep=est, trace=trace, n_iter=n_iter, converged=converged, stalled=stalled,
                 mstep_rejected=rejected)


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class ModelSteps(EMSteps):
    """EM hooks of a model module: its own where it has them, the engine's elsewhere.

    Parameters
    ----------
    spec : ModelSpec
    em : EnumeratedModel
        The model bound to its data and options (the engine's E-step and Q).
    mstep : {"auto", "closed", "optimizer"}
        ``auto``/``closed``: the model's closed form where it has one, the generic
        optimiser for the rest; ``optimizer``: the generic optimiser for every site.
    optimizer, optimizer_steps :
        Of the generic M-step.
    empty : {"reinit", "keep"}, empty_threshold : float
        Re-seeding of empty components through the model's ``reseed_empty`` hook (else the
        engine's :func:`~metagen_ppl.engine.components.default_reseed`).
    fast_estep : bool
        Use the model's ``estep`` hook where it has one (``False``: always Pyro enumeration).
    """

    def __init__(self, spec: ModelSpec, em: EnumeratedModel, *, mstep: str = "auto", optimizer: str = "lbfgs",
                 optimizer_steps: int = 50, empty: str = "reinit", empty_threshold: float = 1e-8,
                 fast_estep: bool = True):
        self.spec, self.em = spec, em
        self.closed = spec.closed_form_mstep if mstep in ("auto", "closed") else None
        # a closed form that needs joint factor marginals may take the whole E-step
        self.closed_takes_estep = self.closed is not None and _takes(self.closed, "estep")
        self.model_estep = spec.estep if fast_estep else None
        self.discrete_update = spec.discrete_update
        if em.discrete and self.discrete_update is None:
            raise ModelError(f"model {spec.name!r} has discrete parameters {list(em.discrete)} but no "
                             "discrete_update hook to update them; sum them out (drop discrete=) or add the hook")
        # the model's hook, else the engine's generic one (engine.components.default_reseed)
        self.reseed = (spec.reseed_empty or default_reseed(spec, em)) if empty == "reinit" else None
        self.optimizer, self.optimizer_steps = optimizer, optimizer_steps
        self.empty_threshold = empty_threshold
        self.q_trace, self.reinitialised, self.reinit_rejected, self._offered = [], [], [], set()
        self._mstep_record: dict = {}

    # ------------------------------------------------------------------ hooks
    def start(self, values):
        self.q_trace, self.reinitialised, self.reinit_rejected, self._offered = [], [], [], set()
        if self.em.discrete:
            upd, _ = self.discrete_update(self.em.data, None, values, self.em.num_objects, iteration=0,
                                          **self.em.options)
            values = self._merge(values, upd)
        return values

    def estep(self, values):
        if self.model_estep is not None:
            return self.model_estep(self.em.data, values, self.em.num_objects, **self.em.options)
        return self.em.estep(values)

    def mstep(self, values, est, iteration):
        em = self.em
        rest = list(em.latents)
        self._mstep_record = {}
        if em.boundary_priors:
            # a weight under a Dirichlet of concentration < 1: stop where no interior mode exists
            # (before a closed form clamps a weight to 0 or the optimiser walks to the +inf boundary)
            check_interior_mode(em, values, est if est.weights else em.estep(values))
        if self.closed is not None:
            extra = {"estep": est} if self.closed_takes_estep else {}
            upd = self.closed(em.data, est.marginals, values, em.num_objects, **extra, **em.options)
            values = self._merge(values, upd)
            rest = [n for n in rest if n not in upd]
        changed = False
        if em.discrete:
            upd, changed = self.discrete_update(em.data, est, values, em.num_objects, iteration=iteration,
                                                **em.options)
            values = self._merge(values, upd)
            rest = [n for n in rest if n not in upd]
        if rest:
            if not est.weights:
                # a model's own E-step has no weights for Q: the engine's E-step at the values so far
                # (after the closed forms; an extra E-step inside the M-step keeps EM monotone)
                est = em.estep(values)
            values = optimizer_mstep(em, values, est, rest, optimizer=self.optimizer, steps=self.optimizer_steps,
                                     record=self._mstep_record, check_boundary=False)  # checked above
            with torch.no_grad():
                self.q_trace.append(float(em.q_value(values, est)))
        return values, bool(changed)

    def mstep_stalled(self):
        return bool(self._mstep_record.get("stalled", False))

    def mstep_rejected(self):
        return not self._mstep_record.get("accepted", True)

    def after_estep(self, values, est, iteration):
        if self.reseed is None:
            return values, est, False
        moved = False
        while True:
            upd, k = self.reseed(self.em.data, est.marginals, values, self.em.num_objects,
                                 threshold=self.empty_threshold, skip=frozenset(self._offered), **self.em.options)
            if k is None:
                return values, est, moved
            k = int(k)
            self._offered.add(k)  # each component is offered at most once per run
            proposal = self._merge(values, upd)
            try:
                est_new = self.estep(proposal)
            except ModelError:
                est_new = None
            if est_new is not None and est_new.log_joint >= est.log_joint:
                values, est, moved = proposal, est_new, True
                self.reinitialised.append((iteration, k))
            else:
                self.reinit_rejected.append((iteration, k))

    # ------------------------------------------------------------------ helpers
    def _merge(self, values: dict, upd: dict) -> dict:
        """``values`` with the updates of known unknowns (sites, discrete parameters, model options) applied."""
        out = dict(values)
        known = set(self.em.latents) | set(self.em.discrete)
        out.update({k: v.detach() if torch.is_tensor(v) else v for k, v in upd.items()
                    if k in known or k in values})
        return out

    def info(self) -> dict:
        return {"q_trace": list(self.q_trace), "reinitialised": list(self.reinitialised),
                "reinit_rejected": list(self.reinit_rejected)}


def _check_settings(spec, mstep, num_inits, max_iter, tol, empty):
    if mstep not in MSTEPS:
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


def fit_em(model, data: dict, num_objects: int, *, seed: int = 0, num_inits: int = 1,
           mstep: str = "auto", optimizer: str = "lbfgs", optimizer_steps: int = 50,
           tol: float = 1e-6, max_iter: int = 200, init: Optional[dict] = None, init_restarts: str = "first",
           discrete: Sequence[str] = (), dtype=None, empty: str = "reinit", empty_threshold: float = 1e-8,
           progress: bool = False, options: Optional[dict] = None) -> FitResult:
    """Fit a model by (MAP-)EM: :func:`run_em` from ``num_inits`` starts, the best kept.

    Maximises ``log p(x | theta) + log p(theta)`` with the discrete sites summed out
    (or, for the sites in ``discrete``, maximised over), by
    ``theta <- argmax Q(theta | theta_old) + log p(theta)``.

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
        Starting values (override the initialisation of the first restart, or of every
        restart with ``init_restarts="all"``).
    init_restarts : {"first", "all"}
    discrete : sequence of str
        Discrete latent sites to treat as parameters instead of summing them out; the
        model's ``discrete_update`` hook updates them (e.g. ``["c_0", "c_1"]``, the
        categories of the categorical model: its discrete M-step).
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
        the hook get the engine's generic re-seeding
        (:func:`~metagen_ppl.engine.components.default_reseed`: the component moves onto
        the observation explained worst, in its scene for per-scene objects). With
        ``"reinit"`` a component still empty at the end is warned about; either way
        ``info["empty_components"]`` lists them.
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
        reports them). ``info["log_likelihood_by_site"]`` splits
        ``log_likelihood`` by observed site (see
        :meth:`~metagen_ppl.engine.enumeration.EnumeratedModel.log_likelihood_by_site`).
        ``info["stalled"]`` (and, when True, ``info["stalled_iteration"]``): the run
        stopped because the optimiser M-step made no progress at a non-stationary
        point (then ``converged`` is False and a RuntimeWarning says what to do);
        ``info["mstep_rejected"]`` the iterations whose optimiser M-step kept the old
        point. ``info["restarts_without_mode"]``: ``(restart, message)`` of restarts
        dropped because a weight under a Dirichlet prior of concentration < 1 lost
        its interior mode (their ``restart_log_joint`` is NaN; if every restart
        ends so, that :class:`~metagen_ppl.engine.mstep.NoInteriorModeError` is raised).

    Notes
    -----
    Warm start: ``fit_em(..., init=res.params, max_iter=m)`` continues a fit ``res`` (one
    restart, same options): ``m`` more iterations from ``res.params`` give what ``n + m``
    iterations would have given (the E-step at the start is recomputed from the values).
    """
    seed = check_seed(seed)
    spec = load_model(model)
    _check_settings(spec, mstep, num_inits, max_iter, tol, empty)
    if init_restarts not in ("first", "all"):
        raise MetagenError(f"unknown init_restarts {init_restarts!r}; choose 'first' or 'all'")
    t0 = time.perf_counter()
    em, num_objects, dtype = bind(spec, data, num_objects, options, dtype, discrete=discrete)
    steps = ModelSteps(spec, em, mstep=mstep, optimizer=optimizer, optimizer_steps=optimizer_steps, empty=empty,
                       empty_threshold=empty_threshold)
    best, best_info, restart_scores, no_mode = None, None, [], []
    with progress_bar(max_iter * num_inits, f"EM {spec.name}", progress) as pbar:
        for r in range(num_inits):
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + r)
            start = initial_values(spec, em, gen, dtype, init if (r == 0 or init_restarts == "all") else None)
            try:
                run = run_em(steps, start, tol=tol, max_iter=max_iter, progress=pbar)
            except NoInteriorModeError as e:  # this start has no interior mode: drop it, keep the others
                no_mode.append((r, e))
                restart_scores.append(math.nan)
                continue
            restart_scores.append(run.estep.log_joint)
            # only finite objectives compete (the E-step refuses non-finite ones; belt and braces)
            if math.isfinite(run.estep.log_joint) and (best is None or run.estep.log_joint > best.estep.log_joint):
                best, best_info = run, steps.info()
    if best is None:
        raise no_mode[0][1]
    if no_mode:
        warnings.warn(f"EM: restart(s) {[r for r, _ in no_mode]} of {num_inits} stopped without an interior "
                      f"mode and were dropped ({no_mode[0][1]})", RuntimeWarning, stacklevel=2)
    _warn_run(best, best_info, max_iter, tol)
    values, est = best.values, best.estep
    empty_left = _warn_empty(spec, em, est, best_info, empty_threshold, warn=empty == "reinit")
    for msg in degeneracy_warnings(em.data, em.data_site, values, spec.location_site, num_objects):
        warnings.warn("EM: " + msg, RuntimeWarning, stacklevel=2)
    obs = em.data_site
    # the fit is done: what follows only adds diagnostics, and must never lose the result
    pointwise, by_site = None, {}
    try:
        pointwise = em.pointwise_log_likelihood(values, obs) if obs else None
        by_site = dict(em.log_likelihood_by_site(values))
    except (MetagenError, RuntimeError) as e:
        warnings.warn(f"EM: the fit finished, but its per-observation log likelihood could not be computed "
                      f"({type(e).__name__}: {e}); result.pointwise_log_likelihood is None",
                      RuntimeWarning, stacklevel=2)
    return FitResult(
        model=spec.name, method="em", params=values,
        log_likelihood=est.log_likelihood, log_joint=est.log_joint,
        trace=best.trace, trace_label="log joint (EM objective)",
        n_iter=best.n_iter, converged=best.converged, wall_time_s=time.perf_counter() - t0,
        posteriors=est.marginals,
        map_assignments={k: v.argmax(-1) for k, v in est.marginals.items()},
        pointwise_log_likelihood=None if pointwise is None else pointwise[None, None],
        observed={k: v for k, v in em.data.items() if torch.is_tensor(v)},
        info={"log_likelihood_of": LIKELIHOOD_OF if not discrete else f"log p(data|theta,{','.join(discrete)})",
              "restart_log_joint": restart_scores, "q_trace": best_info["q_trace"], "mstep": mstep,
              "log_prior": est.log_prior, "dtype": str(dtype).replace("torch.", ""),
              "empty": empty, "reinitialised": best_info["reinitialised"],
              "reinit_rejected": best_info["reinit_rejected"],
              "log_likelihood_by_site": by_site,
              "stalled": best.stalled is not None,
              **({"stalled_iteration": best.stalled} if best.stalled is not None else {}),
              "mstep_rejected": list(best.mstep_rejected),
              "restarts_without_mode": [(r, str(e)) for r, e in no_mode],
              "empty_components": empty_left},
    )


def _warn_empty(spec: ModelSpec, em: EnumeratedModel, est: EStep, info: dict, threshold: float,
                warn: bool = True) -> list:
    """Warn about components without observations at the end (those not already reported as kept empty;
    none with ``empty="keep"``, which asks for them); returns them as ``[batch..., component]`` lists."""
    if em.num_objects < 2:
        return []
    try:
        comps = component_structure(spec, em)
    except MetagenError:
        return []
    empty = empty_components(comps, est.marginals, threshold)
    reported = {k for _, k in info.get("reinit_rejected") or []}
    new = [(b, k) for b, k in empty if (b or ()) != () or k not in reported]
    if new and warn:
        warnings.warn(f"EM: {empty_message(comps, new)}; lower num_objects, or raise num_inits (the start: the "
                      "model's initialize hook, else k-means++ seeds of the observations)", RuntimeWarning,
                      stacklevel=3)
    return [list(b) + [k] for b, k in empty]


def _warn_run(run: EMRun, info: dict, max_iter: int, tol) -> None:
    if run.stalled is not None:
        warnings.warn(f"EM stalled at iteration {run.stalled}: the M-step's optimiser made no progress "
                      "(Q did not increase) at a point where the gradient is not zero, so the log joint "
                      "stopped changing without EM having converged (result.converged is False, "
                      "result.info['stalled'] is True). Give the optimiser more steps (optimizer_steps), "
                      "use optimizer='lbfgs' (or mstep='closed' where the model has a closed form), "
                      "or loosen tol", RuntimeWarning, stacklevel=3)
    elif not run.converged and tol is not None:
        warnings.warn(f"EM stopped at max_iter={max_iter} before reaching tol={tol}; "
                      "raise max_iter or loosen tol", RuntimeWarning, stacklevel=3)
    events, rejected = info["reinitialised"], info["reinit_rejected"]
    if events or rejected:
        msg = []
        if events:
            msg.append(f"re-initialised empty component(s) at (iteration, component) {events} "
                       "(see result.info['reinitialised'])")
        if rejected:
            msg.append(f"kept component(s) empty at {rejected}: re-seeding would have lowered the "
                       "log joint (see result.info['reinit_rejected']; the data may support fewer "
                       "objects than num_objects)")
        warnings.warn("EM " + "; ".join(msg), RuntimeWarning, stacklevel=3)
