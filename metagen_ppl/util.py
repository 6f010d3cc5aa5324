"""Small shared helpers: seeding, progress bars, numbers."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from typing import Optional

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from metagen_ppl.errors import MetagenError


#: Seeds are integers in ``0 .. SEED_LIMIT - 1`` (numpy's range).
SEED_LIMIT = 2 ** 32


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an int in ``0 .. 2**32 - 1``; :class:`~metagen_ppl.errors.MetagenError` naming it otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise MetagenError(f"{what} must be an integer in 0..{SEED_LIMIT - 1}, got {seed!r}")
    return int(seed)


@contextlib.contextmanager
def seeded(seed):
    """Run a block with torch, numpy and Python RNGs seeded, restoring their state after.

    Any non-negative integer works: numpy takes seeds below 2**32, so a derived seed
    (``seed * 7919 + chain``) is reduced modulo 2**32."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(int(seed) % SEED_LIMIT)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class LogProgress:
    """Progress for a log (stderr is not a terminal): a line ``desc: n/total (p%), t s`` at most every
    ``interval`` seconds, none in the first ``interval`` seconds (short runs stay quiet). It offers
    what the callers use of a tqdm bar: ``update``, ``set_postfix``, ``close``, ``n``, ``total``."""

    def __init__(self, total, desc: str, interval: float = 15.0, unit: str = "it", **_):
        self.total, self.desc, self.interval, self.unit = total, desc, float(interval), unit
        self.n, self.postfix = 0, ""
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            done = f"{self.n}/{self.total} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")
            post = f", {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {done}, {now - self.t0:.0f} s{post}", file=sys.stderr, flush=True)

    def set_postfix(self, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(total, desc: str, enabled: bool, **kwargs):
    """A progress object (``None`` when not ``enabled``): a tqdm bar on a terminal, :class:`LogProgress`
    lines when stderr goes to a log."""
    if not enabled:
        return None
    if stderr_is_terminal():
        return tqdm(total=total, desc=desc, leave=False, **kwargs)
    return LogProgress(total, desc, **kwargs)


@contextlib.contextmanager
def progress_bar(total, desc: str, enabled: bool, **kwargs):
    """:func:`make_progress` while the block runs, closed afterwards."""
    bar = make_progress(total, desc, enabled, **kwargs)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


#: torch intra-op threads per kind of workload, chosen by measurement on 2 cores
#: (``comparisons/bench_threads.py``). The point models, SVI and NUTS work on small tensors: on an
#: idle machine 2 threads change their time by -8% .. +4%, but when anything else runs (a CI box, a
#: second job) 2 threads took 1.6-1.8x the time of 1 (SVI 14.0 s vs 7.6 s, NUTS 35.5 s vs 21.8 s), so
#: they get 1. Batched work (evaluate's videos, metacognition's scenes, large data) gains from a
#: second thread (0.80-0.86x the time of 1 on an idle machine).
AUTO_THREADS = {"small": 1, "batched": 2}


#: Data size (entries of the largest data tensor x objects, e.g. N * D * K) from which a point model's tensors are large enough to be a
#: "batched" workload: measured on 2 cores, EM on N = 600, D = 3, K = 4 (7.2e3) is fastest on 1 thread,
#: EM on N = 100000, D = 3, K = 10 (3e6) on 2 (``comparisons/bench_threads.py``).
BATCHED_FROM = 100_000


def auto_threads(workload: str, size: Optional[int] = None) -> int:
    """The thread count for a workload kind of :data:`AUTO_THREADS` (a ``"small"`` workload of ``size`` >=
    :data:`BATCHED_FROM` counts as ``"batched"``), at most the machine's cores."""
    if workload == "small" and size is not None and size >= BATCHED_FROM:
        workload = "batched"
    return max(1, min(AUTO_THREADS[workload], os.cpu_count() or 1))


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run a block with ``n`` torch intra-op threads (``None``: leave torch's setting), restoring it after."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def to_float(x):
    """A Python float from a tensor or number."""
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` in plain Python (same result, same :class:`RuntimeError` on shapes that
    do not broadcast). Torch's imports sympy on its first call (about 0.5 s) and costs ~0.15 ms a call."""
    out = []
    for shape in shapes:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if len(shape) > len(out):
            out = [1] * (len(shape) - len(out)) + out
        for i, n in enumerate(shape, len(out) - len(shape)):
            n = int(n)
            if n < 0:
                raise RuntimeError(f"Trying to create tensor with negative dimension {n}: {list(shape)}")
            m = out[i]
            if m == 1:
                out[i] = n
            elif n != 1 and n != m:
                raise RuntimeError(f"Shape mismatch: objects cannot be broadcast to a single shape. "
                                   f"Mismatch is between {list(shapes)}")
    return torch.Size(out)


#: Sizes solved by enumeration in :func:`linear_assignment`: at most this many rows (after
#: putting the shorter side first) and this many columns.
SMALL_ASSIGNMENT = (3, 7)
#: An enumerated optimum counts as unique when every other assignment costs this much more.
ASSIGNMENT_MARGIN = 1e-9


def linear_assignment(cost):
    """``scipy.optimize.linear_sum_assignment(cost)`` (a minimum-cost matching of an ``(n, m)`` cost
    matrix: ``rows`` ascending, ``cols``), without importing scipy for the small matrices of the metrics.

    A matrix whose shorter side has at most 3 entries and longer side at most 7 (the frames and scenes
    of the metrics: a handful of objects per category) is solved by enumerating every assignment; when
    the optimum is unique by :data:`ASSIGNMENT_MARGIN` it is the assignment scipy returns, since scipy's
    is optimal. Ties, larger matrices and non-finite costs go to scipy (imported then: ~0.4 s).
    """
    c = np.asarray(cost, dtype=float)
    if c.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {c.shape}")
    n, m = c.shape
    if n == 0 or m == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    short, long_ = min(n, m), max(n, m)
    if short <= SMALL_ASSIGNMENT[0] and long_ <= SMALL_ASSIGNMENT[1] and np.isfinite(c).all():
        t = c if n <= m else c.T                                              # (short, long)
        perms = _partial_permutations(long_, short)                          # (P, short)
        totals = t[np.arange(short), perms].sum(-1)                          # (P,)
        best = int(np.argmin(totals))
        if len(totals) == 1 or np.partition(totals, 1)[1] > totals[best] + ASSIGNMENT_MARGIN:
            if n <= m:
                return np.arange(n, dtype=np.intp), perms[best].astype(np.intp)
            order = np.argsort(perms[best])
            return perms[best][order].astype(np.intp), order.astype(np.intp)
    from scipy.optimize import linear_sum_assignment
    return linear_sum_assignment(c)


_PERMS = {}


def _partial_permutations(m: int, k: int) -> np.ndarray:
    """Every ordered choice of ``k`` distinct columns out of ``m``, ``(m! / (m - k)!, k)`` (memoised)."""
    key = (m, k)
    if key not in _PERMS:
        import itertools
        _PERMS[key] = np.array(list(itertools.permutations(range(m), k)), dtype=np.intp).reshape(-1, k)
    return _PERMS[key]
