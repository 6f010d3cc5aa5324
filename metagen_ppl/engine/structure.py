"""The structure search: one driver for every model with an unknown number of objects per scene.

A model whose scenes hold an unknown number of objects (each with discrete
attributes, e.g. a category) cannot enumerate every structure. It is fitted by
a greedy search over structures, scored by a penalised marginal likelihood,
alternating with EM for the continuous unknowns (:func:`search_structure`)::

    start: the model's initial state (record "init"; checkpoint round 0)
    repeat (rounds 1..max_rounds):
        births: the model proposes moves that add an object (batched over scenes, each with
                the gain of its scene's penalised score); per scene the best is made if its
                gain is positive; repeated while any scene accepts one (at most K times)
        continuous phase: the model's EM (metagen_ppl.engine.em.run_em) with the structure fixed
        deaths: the same with moves that remove an object; the continuous phase again if any
        checkpoint the round (state, counters, RNG state), then report it
    until a round neither adds nor removes an object.

The driver owns the rounds, the acceptance rule (:func:`select_moves`), the
counters, the per-scene "settled" flags, checkpoints and resume
(:mod:`metagen_ppl.engine.checkpoint`: a resumed search ends with exactly the
result of an uninterrupted one) and Ctrl-C. The model owns what a move is and
what it gains: it implements :class:`StructureSearch` (proposals, how to apply
them, the continuous phase, its state). Nothing here knows a model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import torch

from metagen_ppl.engine.checkpoint import Checkpoint, interrupted, rng_state, set_rng_state
from metagen_ppl.errors import MetagenError

#: The kinds of structure moves, in the order a round makes them.
MOVES = ("birth", "death")


@dataclasses.dataclass
class Moves:
    """Proposed structure moves of one kind, batched over scenes.

    Attributes
    ----------
    scene : (P,) long tensor
        The scene each proposal belongs to.
    gain : (P,) tensor
        The change of that scene's penalised score if the move is made (``-inf``: not possible).
    payload : dict
        Whatever the model needs to make a move (tensors indexed like ``gain``).
    """

    scene: torch.Tensor
    gain: torch.Tensor
    payload: dict = dataclasses.field(default_factory=dict)


def select_moves(moves: Moves, num_scenes: int, threshold: float = 1e-9) -> torch.Tensor:
    """The proposals to make: per scene the first of its highest gains, if that gain exceeds ``threshold``.

    Returns the indices of the chosen proposals, in scene order (at most one per scene).
    """
    gain, scene = moves.gain, moves.scene
    ok = torch.isfinite(gain) & (gain > threshold)
    if not bool(ok.any()):
        return torch.zeros(0, dtype=torch.long)
    floor = torch.full((num_scenes,), -math.inf, dtype=gain.dtype)
    best = floor.scatter_reduce(0, scene[ok], gain[ok], "amax")
    idx = (ok & (gain == best[scene])).nonzero().reshape(-1)          # every top proposal, index order
    idx = idx[torch.argsort(scene[idx], stable=True)]                  # grouped by scene, index order kept
    first = torch.ones(len(idx), dtype=torch.bool)
    first[1:] = scene[idx][1:] != scene[idx][:-1]
    return idx[first]


class StructureSearch:
    """What a model provides to :func:`search_structure` (subclass it).

    Attributes
    ----------
    kind : str
        Names the checkpoints of this search (a checkpoint of another kind is refused).
    num_scenes : int
    max_objects : int
        Object slots per scene; also the most moves of one kind per round.
    round : int
        The current round (set by the driver; 0 before the first).
    """

    kind = "structure"
    num_scenes = 0
    max_objects = 1
    round = 0

    def data_fingerprint(self) -> str:
        """A hash of the data (a checkpoint of other data is refused)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """Every setting the result depends on (a checkpoint of other settings is refused)."""
        raise NotImplementedError

    def propose(self, kind: str) -> Optional[Moves]:
        """Moves of ``kind`` (``"birth"`` or ``"death"``) from the current state, or ``None``."""
        raise NotImplementedError

    def apply(self, kind: str, moves: Moves, chosen: torch.Tensor) -> None:
        """Make the moves ``chosen`` (indices into ``moves``, at most one per scene)."""
        raise NotImplementedError

    def fit_parameters(self) -> bool:
        """The continuous phase with the structure fixed (EM: :func:`metagen_ppl.engine.em.run_em`);
        returns whether it converged."""
        raise NotImplementedError

    def record(self, phase: str) -> None:
        """Add an entry to the search's history (``phase``: init, birth, death)."""

    def state_dict(self) -> dict:
        """Everything that changes during the search (tensors, numbers, lists)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class SearchOutcome:
    """How a :func:`search_structure` run ended (the fitted state stays in the problem).

    ``rounds``: the last round run; ``finished``: a round changed nothing (the search stopped by
    itself, not at ``max_rounds``); ``converged``: finished and its continuous phase met its
    tolerance; ``settled``: (S,) scenes whose structure the last round did not change;
    ``elapsed_s``: wall time, over every run of a resumed search; ``resumed_from``: the round a
    resumed run went on from.
    """

    rounds: int
    births: int
    deaths: int
    converged: bool
    finished: bool
    settled: torch.Tensor
    elapsed_s: float
    resumed_from: Optional[int] = None


def search_structure(problem: StructureSearch, *, max_rounds: int, checkpoint=None, resume: bool = False,
                     fixed: bool = False, on_round: Optional[Callable] = None) -> SearchOutcome:
    """Greedy birth/death search over structures with a continuous phase between moves.

    Parameters
    ----------
    problem : StructureSearch
        The model's side (proposals, moves, the continuous phase, its state).
    max_rounds : int
    checkpoint : path, optional
        Rewritten atomically after the initial state (round 0) and every round. It is not part
        of the settings: a search that stopped at ``max_rounds`` continues when it is raised.
    resume : bool
        Continue from ``checkpoint`` (start afresh if it does not exist): a finished checkpoint
        returns at once; otherwise the search goes on after the last saved round.
    fixed : bool
        No search: one continuous phase with the structure as it starts (e.g. the true objects).
    on_round : callable ``(outcome_so_far, births, deaths)``, optional
        Called after every round (after its checkpoint), e.g. for progress or partial outputs.

    Raises
    ------
    metagen_ppl.engine.checkpoint.CheckpointError
        ``resume`` with a checkpoint of other data, other settings or another kind.
    metagen_ppl.engine.checkpoint.FitInterrupted
        On Ctrl-C; the last checkpoint is intact and the message says which round it holds.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise MetagenError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    t0 = time.perf_counter()
    if resume and checkpoint is None:
        raise MetagenError("resume=True needs checkpoint=PATH (the file a previous run wrote)")
    ck = (Checkpoint(checkpoint, problem.kind, problem.data_fingerprint(), dict(problem.settings(), fixed=fixed))
          if checkpoint is not None else None)
    state = ck.load() if (ck is not None and resume) else None
    out = SearchOutcome(rounds=0, births=0, deaths=0, converged=False, finished=False,
                        settled=torch.zeros(problem.num_scenes, dtype=torch.bool), elapsed_s=0.0)
    elapsed0 = 0.0

    def save(rnd: int, done: bool) -> None:
        if ck is not None:
            ck.save(rnd, {"problem": problem.state_dict(), "births": out.births, "deaths": out.deaths,
                          "converged": out.converged, "finished": out.finished, "settled": out.settled,
                          "elapsed_s": elapsed0 + time.perf_counter() - t0, "rng": rng_state()}, done=done)

    try:
        if state is None:
            problem.round = 0
            problem.record("init")
            if fixed:
                out.converged = bool(problem.fit_parameters())
                out.finished = True
                out.settled[:] = True
            save(0, out.finished)
        else:
            st = state["state"]
            problem.load_state_dict(st["problem"])
            out.births, out.deaths = int(st["births"]), int(st["deaths"])
            out.converged, out.finished = bool(st["converged"]), bool(st["finished"])
            out.settled = st["settled"].to(torch.bool)
            elapsed0 = float(st["elapsed_s"])
            set_rng_state(st["rng"])
            out.rounds = out.resumed_from = problem.round = state["round"]
            if not out.finished and state["round"] > max_rounds:
                raise ck.refuse(f"holds round {state['round']}, beyond max_rounds = {max_rounds}: raise "
                                f"max_rounds to at least {state['round']}")
        start = out.rounds + 1
        for rnd in (range(start, max_rounds + 1) if not out.finished else ()):
            problem.round = out.rounds = rnd
            out.settled[:] = True
            births = _moves(problem, "birth", out.settled)
            if births:
                problem.record("birth")
            phase_ok = problem.fit_parameters()
            deaths = _moves(problem, "death", out.settled)
            if deaths:
                problem.record("death")
                phase_ok = problem.fit_parameters()
            out.births += births
            out.deaths += deaths
            out.finished = births == 0 and deaths == 0
            out.converged = out.finished and bool(phase_ok)
            save(rnd, out.finished or rnd == max_rounds)
            out.elapsed_s = elapsed0 + time.perf_counter() - t0
            if on_round is not None:
                on_round(out, births, deaths)
            if out.finished:
                break
    except KeyboardInterrupt as e:
        raise interrupted(e, ck) from e
    out.elapsed_s = elapsed0 + time.perf_counter() - t0
    return out


def _moves(problem: StructureSearch, kind: str, settled: torch.Tensor) -> int:
    """Moves of one kind, repeated while any scene accepts one (at most ``max_objects`` times)."""
    total = 0
    for _ in range(problem.max_objects):
        moves = problem.propose(kind)
        if moves is None:
            break
        chosen = select_moves(moves, problem.num_scenes)
        if len(chosen) == 0:
            break
        problem.apply(kind, moves, chosen)
        settled[moves.scene[chosen]] = False
        total += len(chosen)
    return total
