"""Online (stepwise) EM over a stream of units -- videos or scenes arriving one after another.

The engine's side knows no model. A model provides three functions:

``infer(i, params) -> state``
    the latent state of unit ``i`` (its objects, their locations, the posterior of its
    assignments) inferred with the current parameters, which stay fixed while it runs;
``statistics(state) -> dict of tensors``
    the unit's expected sufficient statistics for the parameters: additive over units, so
    that the batch M-step over units ``1..n`` is a function of their sum;
``mstep(S, n) -> params``
    the batch M-step (MAP, priors included) evaluated at the statistics ``n * S`` of ``n``
    units at the running average ``S``.

Stepwise EM (Sato and Ishii 2000; Cappe and Moulines 2009; Liang and Klein 2009) keeps a
running average of the statistics::

    S_1 = s_1,    S_i = (1 - eta_i) S_{i-1} + eta_i s_i,    theta_i = mstep(S_i, i)

with the step sizes ``eta_i = (i + t0)^(-kappa)`` (:class:`StepSchedule`; ``eta_1 = 1``).
``kappa = 1, t0 = 0`` gives ``eta_i = 1/i``: ``S_i`` is the plain mean of the units'
statistics, each computed once with the parameters of its time (incremental EM without
revisiting a unit). ``kappa`` in ``(0.5, 1)`` forgets the first units -- inferred with
poor parameters -- faster; ``sum eta_i = inf`` and ``sum eta_i^2 < inf`` (the
Robbins-Monro conditions of the convergence results) hold for ``kappa`` in ``(0.5, 1]``.
The default is ``kappa = 1, t0 = 0``: on the shared detector data it gave the best
split-B accuracy of the schedules tried (``comparisons/online_metacognition.py``;
``kappa = 0.7`` and ``0.6`` with ``t0 = 2`` forgot useful early videos).

:func:`run_online` records, after every unit, the unit's state and the parameters that
follow it; a checkpoint (rewritten atomically after every unit) makes an interrupted run
resume exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import torch

from metagen_ppl.engine.checkpoint import Checkpoint, interrupted
from metagen_ppl.errors import MetagenError

__all__ = ["StepSchedule", "OnlineOutcome", "run_online"]


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """Step sizes ``eta_i = (i + t0)^(-kappa)`` of stepwise EM, ``i = 1, 2, ...`` (``eta_1 = 1``).

    Parameters
    ----------
    kappa : float in (0.5, 1]
        Decay exponent; 1 (with ``t0 = 0``) averages all units equally.
    t0 : float >= 0
        Offset damping the first steps.
    """

    kappa: float = 1.0
    t0: float = 0.0

    def __post_init__(self):
        for name, lo, hi in (("kappa", 0.5, 1.0), ("t0", 0.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or \
                    not (lo < v <= hi if name == "kappa" else lo <= v < hi):
                rng = "in (0.5, 1]" if name == "kappa" else ">= 0"
                raise MetagenError(f"step schedule: {name} must be a number {rng}, got {v!r}")

    def __call__(self, i: int) -> float:
        return 1.0 if i <= 1 else float((i + self.t0) ** (-self.kappa))

    def to_json(self) -> dict:
        return {"kappa": float(self.kappa), "t0": float(self.t0), "eta_i": "(i + t0)^(-kappa), eta_1 = 1"}


@dataclasses.dataclass
class OnlineOutcome:
    """What :func:`run_online` returns.

    Attributes
    ----------
    states : list
        Per unit, in order, what ``infer`` returned.
    params : list of dict
        Per unit, the parameters after it (``params[i]`` follows unit ``i``; unit ``i`` was
        inferred with ``params[i - 1]``, unit 0 with the starting parameters).
    statistics : dict
        The running statistics ``S_n`` after the last unit.
    steps : list of float
        ``eta_i`` per unit.
    elapsed_s : float
    resumed_from : int or None
        Units already done in the checkpoint the run resumed from.
    """

    states: list
    params: list
    statistics: dict
    steps: list
    elapsed_s: float
    resumed_from: Optional[int] = None


def _mix(S: Optional[dict], s: dict, eta: float) -> dict:
    if S is None:
        return {k: torch.as_tensor(v).clone() for k, v in s.items()}
    if set(S) != set(s):
        raise MetagenError(f"online EM: the statistics of a unit have keys {sorted(s)}, earlier units "
                           f"{sorted(S)}; statistics() must return the same keys for every unit")
    return {k: (1.0 - eta) * S[k] + eta * torch.as_tensor(s[k], dtype=S[k].dtype) for k in S}


def run_online(num_units: int, infer: Callable, statistics: Callable, mstep: Callable, params0: dict, *,
               schedule: StepSchedule = StepSchedule(), checkpoint=None, resume: bool = False,
               kind: str = "online", data_hash: str = "", settings: Optional[dict] = None,
               on_unit: Optional[Callable] = None) -> OnlineOutcome:
    """Stepwise EM over units ``0 .. num_units - 1`` in order (see the module docstring).

    Parameters
    ----------
    num_units : int
    infer, statistics, mstep : callables (the model's side, see the module docstring)
    params0 : dict
        The parameters the first unit is inferred with (e.g. the prior means).
    schedule : StepSchedule
    checkpoint : path, optional
        Rewritten atomically after every unit: the running statistics, the parameters, every
        state so far. ``resume`` continues after the last unit it holds (a finished run
        returns at once); one written for other data (``data_hash``) or settings is refused.
    on_unit : callable ``(i, state, params)``, optional
        Called after every unit (progress, partial outputs).

    Raises
    ------
    metagen_ppl.engine.checkpoint.FitInterrupted
        On Ctrl-C; the checkpoint holds every finished unit.
    """
    if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
        raise MetagenError(f"online EM needs at least one unit, got num_units = {num_units!r}")
    if not isinstance(schedule, StepSchedule):
        raise MetagenError(f"schedule must be a StepSchedule, got {type(schedule).__name__}")
    if resume and checkpoint is None:
        raise MetagenError("resume=True needs checkpoint=PATH (the file a previous run wrote)")
    t0 = time.perf_counter()
    ck = None
    if checkpoint is not None:
        ck = Checkpoint(checkpoint, kind, data_hash,
                        dict(settings or {}, schedule_kappa=float(schedule.kappa), schedule_t0=float(schedule.t0),
                             num_units=num_units))
    st = ck.load() if (ck is not None and resume) else None
    states, params, steps = [], [], []
    S, cur = None, dict(params0)
    elapsed0, resumed = 0.0, None
    if st is not None:
        saved = st["state"]
        states, params, steps = list(saved["states"]), list(saved["params"]), list(saved["steps"])
        S = saved["S"]
        cur = params[-1] if params else dict(params0)
        elapsed0 = float(saved["elapsed_s"])
        resumed = len(states)
    try:
        for i in range(len(states), num_units):
            state = infer(i, cur)
            eta = schedule(i + 1)
            S = _mix(S, statistics(state), eta)
            cur = mstep(S, i + 1)
            states.append(state)
            params.append(cur)
            steps.append(eta)
            if ck is not None:
                ck.save(i + 1, {"states": states, "params": params, "steps": steps, "S": S,
                                "elapsed_s": elapsed0 + time.perf_counter() - t0}, done=i + 1 == num_units)
            if on_unit is not None:
                on_unit(i, state, cur)
    except KeyboardInterrupt as e:
        raise interrupted(e, ck) from e
    return OnlineOutcome(states=states, params=params, statistics=S, steps=steps,
                         elapsed_s=elapsed0 + time.perf_counter() - t0, resumed_from=resumed)
