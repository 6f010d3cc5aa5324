"""Map-reduce EM over chunks of independent units (videos, scenes): one driver, any model, any executor.

EM over many units whose latent states are independent given the shared parameters ``theta`` is a
map-reduce: with ``theta`` fixed, each unit's E-step (and any per-unit structure search) is
independent of the others, and the M-step needs only the sum of the units' expected sufficient
statistics. The units are split into fixed chunks, placed on the workers once
(:meth:`~metagen_ppl.engine.distributed.Executor.scatter`), and every round is::

    map:     for each chunk c (independently, on any worker):
                 (s_c, state_c, info_c) = step(chunk_c, theta, state_c)   # warm start from state_c
    reduce:  S = sum_c s_c  (in chunk order: the same numbers wherever the chunks ran)
             theta' = mstep(S, theta)
    stop when change(theta, theta') < tol (or after max_rounds)

The model provides ``step`` (a module-level function: it is sent to the workers by reference) and
``mstep``; ``step`` returns only what the reduce needs and the chunk's small state for the next round,
never its data. Run in-process (the default executor) the same functions run in the same order, so a
cluster's result equals the in-process result.

Every round is checkpointed (atomically) after its reduce: the parameters, every chunk's state and the
history; ``resume`` continues after the last saved round (with any executor).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import torch

from metagen_ppl.engine.checkpoint import Checkpoint, interrupted
from metagen_ppl.engine.distributed import Executor, InProcessExecutor
from metagen_ppl.errors import MetagenError

__all__ = ["MapReduceOutcome", "run_mapreduce", "sum_statistics", "relative_change"]


@dataclasses.dataclass
class MapReduceOutcome:
    """What :func:`run_mapreduce` returns.

    Attributes
    ----------
    params : dict
        The parameters after the last M-step.
    params_used : dict
        The parameters the last round's chunks were fitted with (``states`` go with them).
    states : list
        Per chunk, its state after the last round.
    infos : list
        Per chunk, the ``info`` of its last step.
    statistics : dict
        The summed statistics of the last round.
    rounds : int
    converged : bool
        The last change was below ``tol`` (else ``max_rounds`` was reached).
    history : list of dict
        Per round: ``round``, ``change``, ``seconds`` and the sums of the chunks' numeric ``info``.
    elapsed_s : float
        Over every run of a resumed fit.
    resumed_from : int or None
    """

    params: dict
    params_used: dict
    states: list
    infos: list
    statistics: dict
    rounds: int
    converged: bool
    history: list
    elapsed_s: float
    resumed_from: Optional[int] = None


def sum_statistics(stats: list) -> dict:
    """The key-wise sum of a list of statistics dicts, in list order (deterministic)."""
    if not stats:
        raise MetagenError("map-reduce EM: no chunk returned statistics")
    keys = set(stats[0])
    out = {k: torch.as_tensor(v).clone() for k, v in stats[0].items()}
    for s in stats[1:]:
        if set(s) != keys:
            raise MetagenError(f"map-reduce EM: chunks returned statistics with different keys ({sorted(keys)} "
                               f"and {sorted(s)}); step() must return the same keys for every chunk")
        for k in out:
            out[k] = out[k] + torch.as_tensor(s[k], dtype=out[k].dtype)
    return out


def relative_change(old: dict, new: dict, keys=None, floor: float = 1e-6) -> float:
    """``max |new - old| / max(|old|, floor)`` over the entries of ``keys`` (default: every tensor of ``new``)."""
    worst = 0.0
    for k in (new if keys is None else keys):
        if k not in old or k not in new:
            continue
        a = torch.as_tensor(old[k], dtype=torch.float64)
        b = torch.as_tensor(new[k], dtype=torch.float64)
        if a.shape != b.shape:
            return math.inf
        if a.numel() == 0:
            continue
        d = ((b - a).abs() / a.abs().clamp_min(floor)).max()
        worst = max(worst, float(d))
    return worst


def _info_sums(infos: list) -> dict:
    out = {}
    for info in infos:
        for k, v in (info or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            out[k] = out.get(k, 0) + v
    return out


def run_mapreduce(chunks: list, step: Callable, mstep: Callable, params0: dict, *,
                  executor: Optional[Executor] = None, states0: Optional[list] = None, extra_args: tuple = (),
                  tol: float = 1e-4, max_rounds: int = 50, change: Optional[Callable] = None,
                  checkpoint=None, resume: bool = False, kind: str = "mapreduce", data_hash: str = "",
                  settings: Optional[dict] = None, on_round: Optional[Callable] = None,
                  key: str = "chunk") -> MapReduceOutcome:
    """Map-reduce EM (see the module docstring).

    Parameters
    ----------
    chunks : list
        The chunks' data (anything picklable); scattered to the workers once.
    step : module-level callable ``(chunk, params, state, *extra_args) -> {"stats", "state", "info"}``
        One chunk's part of a round with ``params`` fixed; ``state`` is its previous state (``None`` in the
        first round, or ``states0[c]``); ``stats`` a dict of tensors (additive over chunks); ``info`` a dict
        (its numbers are summed into the round's history).
    mstep : callable ``(S, params) -> params``
        The M-step from the summed statistics (run here).
    executor : Executor, optional
        Default: in-process.
    extra_args : tuple
        Further arguments of ``step``, the same for every chunk and round (settings).
    tol, max_rounds : stop when ``change(params, new params) < tol``, or after ``max_rounds`` rounds.
    change : callable ``(old, new) -> float``, optional
        Default :func:`relative_change` over every parameter.
    checkpoint : path, optional
        Rewritten atomically after every round; ``resume`` continues after the last round it holds (a
        finished run returns at once); one of other data (``data_hash``) or ``settings`` is refused.
    on_round : callable ``(round, entry)``, optional
        Called after every round with its history entry.

    Raises
    ------
    metagen_ppl.engine.checkpoint.FitInterrupted
        On Ctrl-C; the checkpoint holds every finished round.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise MetagenError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise MetagenError(f"tol must be a finite number >= 0, got {tol!r}")
    if not chunks:
        raise MetagenError("map-reduce EM needs at least one chunk")
    if resume and checkpoint is None:
        raise MetagenError("resume=True needs checkpoint=PATH (the file a previous run wrote)")
    executor = InProcessExecutor() if executor is None else executor
    change = relative_change if change is None else change
    t0 = time.perf_counter()
    n = len(chunks)
    ck = None
    if checkpoint is not None:
        ck = Checkpoint(checkpoint, kind, data_hash, dict(settings or {}, num_chunks=n, tol=float(tol)))
    st = ck.load() if (ck is not None and resume) else None
    params, params_used = dict(params0), dict(params0)
    states = list(states0) if states0 is not None else [None] * n
    if len(states) != n:
        raise MetagenError(f"states0 has {len(states)} entries for {n} chunks")
    infos, S, history = [None] * n, {}, []
    elapsed0, resumed, rnd, converged = 0.0, None, 0, False
    if st is not None:
        saved = st["state"]
        params, params_used = saved["params"], saved["params_used"]
        states, infos, S, history = list(saved["states"]), list(saved["infos"]), saved["S"], list(saved["history"])
        elapsed0, converged = float(saved["elapsed_s"]), bool(saved["converged"])
        rnd = resumed = st["round"]
        if st["done"] and (converged or rnd >= max_rounds):
            return MapReduceOutcome(params, params_used, states, infos, S, rnd, converged, history,
                                    elapsed0, resumed)
    try:
        if rnd < max_rounds and not converged:
            handles = executor.scatter(chunks)                               # the data: once
            extra = executor.scatter(list(extra_args), broadcast=True) if extra_args else []
        while rnd < max_rounds and not converged:
            rnd += 1
            t_round = time.perf_counter()
            theta = executor.scatter([params], broadcast=True)[0]             # the parameters: once a round
            outs = executor.map(step, handles, [theta] * n, states, *([e] * n for e in extra),
                                key=f"{key}-r{rnd}")
            S = sum_statistics([o["stats"] for o in outs])
            new = mstep(S, params)
            delta = change(params, new)
            params_used, params = params, new
            states, infos = [o["state"] for o in outs], [o.get("info") or {} for o in outs]
            converged = delta < tol
            entry = {"round": rnd, "change": float(delta), "seconds": time.perf_counter() - t_round,
                     **_info_sums(infos)}
            history.append(entry)
            if ck is not None:
                ck.save(rnd, {"params": params, "params_used": params_used, "states": states, "infos": infos,
                              "S": S, "history": history, "converged": converged,
                              "elapsed_s": elapsed0 + time.perf_counter() - t0},
                        done=converged or rnd >= max_rounds)
            if on_round is not None:
                on_round(rnd, entry)
    except KeyboardInterrupt as e:
        raise interrupted(e, ck) from e
    return MapReduceOutcome(params, params_used, states, infos, S, rnd, converged, history,
                            elapsed0 + time.perf_counter() - t0, resumed)
