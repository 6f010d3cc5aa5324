"""Scale-out: independent units of work on Dask distributed, or in this process (model-free).

One small interface for everything that can run apart -- the chunks of a map-reduce EM round
(:mod:`metagen_ppl.engine.mapreduce`), the methods of ``metagen-ppl compare``, the MCMC videos of
``metagen-ppl evaluate``. It is a thin layer over an existing engine; it schedules nothing itself::

    with make_executor("processes:2") as ex:          # or None / "inprocess", or "tcp://host:8786"
        chunks = ex.scatter([data_0, data_1, ...])    # placed on the workers once
        out = ex.map(step, chunks, [params] * n)      # results in the order of the items

``scheduler``:

``None`` or ``"inprocess"``
    a plain Python loop in this process (the default everywhere; Dask is not needed, not even
    installed). :meth:`Executor.scatter` returns the objects themselves.
``"processes"`` or ``"processes:N"``
    a local Dask cluster (:class:`distributed.LocalCluster`) of ``N`` worker processes (default:
    the machine's cores), one thread each, started here and shut down by :meth:`Executor.close`.
``"tcp://host:port"``
    an existing Dask scheduler (``dask scheduler`` and ``dask worker tcp://host:port`` on the machines
    of a cluster); the workers must have this package installed (the same version) and see every
    file a task reads (e.g. a user's model file).

Robustness (Dask's, not ours): a task whose worker dies (killed, out of memory) is re-run on another
worker by the scheduler; a task that raises is retried ``retries`` times (then its error is raised
here). Scattered data lost with its worker is scattered again from this process's copy and the
tasks that needed it are submitted again. Results are the same as in-process: the tasks are pure
functions of their arguments, run with the same torch thread count wherever they run.

Errors that are the user's to fix raise :class:`~metagen_ppl.errors.MetagenError` (the command line
exits with 2): Dask not installed (``pip install -e ".[distributed]"``), an address that cannot be
reached, a scheduler string that is none of the above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
import traceback as _traceback
import uuid
import warnings as _warnings
from typing import Callable, Iterable, Optional

from metagen_ppl.errors import MetagenError

__all__ = ["SCHEDULER_HELP", "DistributedError", "Executor", "InProcessExecutor", "DaskExecutor", "make_executor",
           "open_executor", "parse_scheduler", "scheduler_name", "payload_bytes", "Outcome", "capture"]

#: One line for ``--help`` of the commands that take ``--scheduler``.
SCHEDULER_HELP = ("where independent units run: 'inprocess' (a loop in this process), 'processes' or "
                  "'processes:N' (a local Dask cluster of N worker processes), or 'tcp://HOST:PORT' (a running "
                  "Dask scheduler); needs the [distributed] extra: pip install -e \".[distributed]\"")

#: Retries of a task that raises (a worker that dies is handled by Dask's scheduler, not counted here).
DEFAULT_RETRIES = 2

#: Seconds to wait for a remote scheduler to answer.
CONNECT_TIMEOUT_S = 10.0

_INSTALL = 'pip install -e ".[distributed]" (or pip install -c constraints.txt dask distributed)'


class DistributedError(MetagenError):
    """A scheduler cannot be used: Dask missing, an unreachable address, a malformed ``--scheduler``."""


def payload_bytes(obj) -> int:
    """Bytes of ``obj`` pickled (protocol 5): what sending it costs, about (Dask's own framing aside)."""
    try:
        return len(pickle.dumps(obj, protocol=5))
    except Exception:      # e.g. a closure: Dask would use cloudpickle
        try:
            import cloudpickle
        except ImportError:
            return -1
        return len(cloudpickle.dumps(obj, protocol=5))


class RemoteTaskError(Exception):
    """A task's error that could not be sent back as itself (not picklable): its type name and message."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


class Outcome:
    """What :func:`capture` returns from a task: its value, or its error (with the traceback text), and the
    warnings it issued. :meth:`unwrap` replays the warnings here and returns the value or raises the error,
    as if the task had run in this process."""

    def __init__(self, value=None, error=None, traceback: str = "", warnings: Optional[list] = None):
        self.value, self.error, self.traceback = value, error, traceback
        self.warnings = list(warnings or [])

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self):
        for message, category in self.warnings:
            _warnings.warn(message, category, stacklevel=2)
        if self.error is not None:
            raise self.error
        return self.value


def capture(fn: Callable, *args, **kwargs) -> Outcome:
    """Run ``fn(*args, **kwargs)`` and return its :class:`Outcome`: the value or the error (never raised,
    so a failing unit is not retried), and every warning it issued. ``KeyboardInterrupt`` propagates."""
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        try:
            value, error, tb = fn(*args, **kwargs), None, ""
        except Exception as e:
            value, error, tb = None, e, _traceback.format_exc()
    ws = []
    for w in caught:
        cat = w.category if _picklable(w.category) else UserWarning
        ws.append((str(w.message), cat))
    if error is not None and not _picklable(error):
        error = RemoteTaskError(type(error).__name__, str(error))
    return Outcome(value, error, tb, ws)


def _picklable(obj) -> bool:
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:
        return False
    return True


def parse_scheduler(scheduler) -> tuple:
    """``("inprocess", None)``, ``("processes", n_workers or None)`` or ``("address", "tcp://...")``."""
    if scheduler is None:
        return "inprocess", None
    if not isinstance(scheduler, str):
        raise DistributedError(f"scheduler must be a string, got {type(scheduler).__name__}")
    text = scheduler.strip()
    low = text.lower()
    if low in ("", "inprocess", "in-process", "none", "local"):
        return "inprocess", None
    if low == "processes" or low.startswith("processes:"):
        n = None
        if ":" in low:
            tail = low.split(":", 1)[1]
            if not tail.isdigit() or int(tail) < 1:
                raise DistributedError(f"--scheduler {scheduler!r}: the worker count after 'processes:' must be a "
                                       "positive integer, e.g. processes:2")
            n = int(tail)
        return "processes", n
    if "://" in text:
        proto, _, rest = text.partition("://")
        if proto not in ("tcp", "tls", "ucx", "ws", "wss", "inproc") or not rest:
            raise DistributedError(f"--scheduler {scheduler!r} is not a scheduler address; give e.g. "
                                   "tcp://HOST:8786")
        return "address", text
    raise DistributedError(f"unknown --scheduler {scheduler!r}; choose 'inprocess', 'processes', 'processes:N' or "
                           "a scheduler address tcp://HOST:PORT")


def scheduler_name(scheduler) -> str:
    """A short description of ``scheduler`` for logs and result files."""
    kind, arg = parse_scheduler(scheduler)
    if kind == "inprocess":
        return "in-process"
    if kind == "processes":
        return f"local Dask cluster ({arg or os.cpu_count() or 1} worker processes)"
    return f"Dask scheduler at {arg}"


class Executor:
    """What the applications and the map-reduce EM use (see the module docstring).

    Attributes
    ----------
    name : str
        A description (``"in-process"``, ``"local Dask cluster (2 worker processes)"``, ...).
    workers : int
        Workers at the start.
    retries : int
    measure : bool
        Count the pickled bytes of what goes to the tasks and comes back (:attr:`traffic`); costs an
        extra serialisation of every argument and result.
    traffic : dict
        ``tasks``, ``bytes_to_tasks`` (arguments, scattered data counted as a reference),
        ``bytes_from_tasks`` (results), ``bytes_scattered``, ``resubmitted`` (tasks submitted again after
        scattered data was lost), summed over the executor's life.
    """

    name = "executor"
    workers = 1
    distributed = False

    def __init__(self, retries: int = DEFAULT_RETRIES, measure: bool = False):
        self.retries = int(retries)
        self.measure = bool(measure)
        self.traffic = {"tasks": 0, "bytes_to_tasks": 0, "bytes_from_tasks": 0, "bytes_scattered": 0,
                        "resubmitted": 0}

    def scatter(self, objs: list, broadcast: bool = False) -> list:
        """Place each of ``objs`` on the workers once (spread over them, or on every worker with
        ``broadcast``); returns handles to pass to :meth:`map` in place of the objects."""
        raise NotImplementedError

    def map(self, fn: Callable, *iterables: Iterable, key: str = "task",
            on_result: Optional[Callable] = None) -> list:
        """``[fn(*args) for args in zip(*iterables)]``, run as independent tasks.

        ``fn`` must be a module-level function (it is sent by reference) and must not change its
        arguments. ``on_result(i, result)`` is called here as each task finishes (in the order they
        finish), e.g. to checkpoint it. The first task that fails (after its retries) raises its
        error here; the other tasks are cancelled.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _count(self, args, result=None, sent=True):
        if not self.measure:
            return
        if sent:
            self.traffic["tasks"] += 1
            self.traffic["bytes_to_tasks"] += payload_bytes(args)
        else:
            self.traffic["bytes_from_tasks"] += payload_bytes(result)


class _Ref:
    """What a scattered object costs to send once placed: its key."""

    def __init__(self, key):
        self.key = key


class InProcessExecutor(Executor):
    """Every task in this process, in order (no Dask)."""

    name = "in-process"

    def scatter(self, objs: list, broadcast: bool = False) -> list:
        objs = list(objs)
        if self.measure:
            self.traffic["bytes_scattered"] += sum(payload_bytes(o) for o in objs)
        return [_Local(o, i) for i, o in enumerate(objs)]

    def map(self, fn, *iterables, key="task", on_result=None) -> list:
        out = []
        for i, args in enumerate(zip(*iterables)):
            if self.measure:
                self._count(tuple(_Ref(a.key) if isinstance(a, _Local) else a for a in args))
            res = fn(*(a.obj if isinstance(a, _Local) else a for a in args))
            self._count(None, res, sent=False)
            if on_result is not None:
                on_result(i, res)
            out.append(res)
        return out


class _Local:
    """A "scattered" object in this process: the object itself."""

    __slots__ = ("obj", "key")

    def __init__(self, obj, i):
        self.obj, self.key = obj, f"local-{i}"


class _Scattered:
    """A scattered object: its future on the cluster, and this process's copy (to scatter it again
    if the worker holding it dies)."""

    __slots__ = ("obj", "future", "broadcast")

    def __init__(self, obj, future, broadcast=False):
        self.obj, self.future, self.broadcast = obj, future, broadcast


def _import_distributed():
    try:
        import distributed
    except ImportError as e:
        raise DistributedError(f"--scheduler needs Dask distributed, which is not installed ({e}); install the "
                               f"extra: {_INSTALL}") from None
    return distributed


class DaskExecutor(Executor):
    """Tasks on a Dask cluster through a :class:`distributed.Client`."""

    distributed = True

    def __init__(self, client, cluster=None, name: str = "Dask", retries: int = DEFAULT_RETRIES,
                 measure: bool = False):
        super().__init__(retries, measure)
        self.client, self.cluster, self.name = client, cluster, name
        self.workers = len(client.scheduler_info().get("workers", {}))
        self._dist = _import_distributed()

    # ----------------------------------------------------------------- data
    def _put(self, objs: list, broadcast: bool) -> list:
        futures = self.client.scatter(list(objs), hash=False, broadcast=broadcast)
        if self.measure:
            copies = max(1, self.workers) if broadcast else 1
            self.traffic["bytes_scattered"] += copies * sum(payload_bytes(o) for o in objs)
        return futures

    def scatter(self, objs: list, broadcast: bool = False) -> list:
        objs = list(objs)
        return [_Scattered(o, f, broadcast) for o, f in zip(objs, self._put(objs, broadcast))]

    def _refresh(self, handles) -> int:
        """Scatter again the handles whose data the cluster lost; returns how many."""
        lost = [h for h in handles if h.future.status in ("cancelled", "lost", "error")]
        for h in lost:
            h.future = self._put([h.obj], h.broadcast)[0]
        return len(lost)

    # ----------------------------------------------------------------- tasks
    def map(self, fn, *iterables, key="task", on_result=None) -> list:
        items = list(zip(*iterables))
        handles = {id(a): a for args in items for a in args if isinstance(a, _Scattered)}
        self._refresh(list(handles.values()))
        run = uuid.uuid4().hex[:8]
        futures, index = {}, {}

        def submit(i, attempt=0):
            args = items[i]
            if self.measure and attempt == 0:
                self._count(tuple(_Ref(a.future.key) if isinstance(a, _Scattered) else a for a in args))
            f = self.client.submit(fn, *(a.future if isinstance(a, _Scattered) else a for a in args),
                                   key=f"{key}-{run}-{i}-{attempt}", pure=False, retries=self.retries)
            futures[i], index[f.key] = f, i
            return f

        ac = self._dist.as_completed([submit(i) for i in range(len(items))])
        out = [None] * len(items)
        attempts = [0] * len(items)
        try:
            for f in ac:
                i = index[f.key]
                if f.status == "finished":
                    res = f.result()
                    self._count(None, res, sent=False)
                    out[i] = res
                    if on_result is not None:
                        on_result(i, res)
                    f.release()
                    continue
                mine = [a for a in items[i] if isinstance(a, _Scattered)]
                if f.status == "cancelled" and mine and attempts[i] < 3:
                    # its scattered input was lost with a worker: place it again and resubmit
                    time.sleep(0.2 * attempts[i])
                    self._refresh(mine)
                    attempts[i] += 1
                    self.traffic["resubmitted"] += 1
                    ac.add(submit(i, attempts[i]))
                    continue
                f.result()          # raises the task's error (its remote traceback attached)
                raise DistributedError(f"task {f.key} ended as {f.status!r} on the cluster")
        except BaseException:
            self.client.cancel([x for x in futures.values() if not x.done()])
            raise
        return out

    def close(self) -> None:
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception:       # closing a cluster that is already gone
                    pass
        self.client = self.cluster = None


def make_executor(scheduler=None, *, retries: int = DEFAULT_RETRIES, measure: bool = False,
                  timeout: float = CONNECT_TIMEOUT_S, log: Optional[Callable] = None) -> Executor:
    """The :class:`Executor` of ``scheduler`` (see the module docstring). Use it as a context manager
    (or call :meth:`Executor.close`): a local cluster's processes end with it.

    Raises
    ------
    DistributedError
        Dask not installed (the message names the extra to install), an address that cannot be
        reached within ``timeout`` seconds, or a malformed ``scheduler``.
    """
    kind, arg = parse_scheduler(scheduler)
    if kind == "inprocess":
        return InProcessExecutor(retries=retries, measure=measure)
    dist = _import_distributed()
    if kind == "processes":
        n = arg or max(1, os.cpu_count() or 1)
        try:
            import dask

            # Dask's statistical profiler samples every task's stack each 10 ms: on these Python-heavy tasks it
            # made a worker ~1.4x slower than the same task in-process (comparisons/bench_distributed.py)
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                cluster = dist.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR)
            client = dist.Client(cluster)
        except Exception as e:
            raise DistributedError(f"could not start a local Dask cluster of {n} workers: "
                                   f"{type(e).__name__}: {e}") from e
        ex = DaskExecutor(client, cluster, name=f"local Dask cluster ({n} worker processes)", retries=retries,
                          measure=measure)
    else:
        try:
            client = dist.Client(arg, timeout=f"{float(timeout)}s")
        except (OSError, TimeoutError) as e:
            raise DistributedError(f"cannot reach the Dask scheduler at {arg} ({type(e).__name__}: {e}); start one "
                                   "with `dask scheduler` and workers with `dask worker "
                                   f"{arg}`, or check the address and port") from None
        ex = DaskExecutor(client, None, name=f"Dask scheduler at {arg}", retries=retries, measure=measure)
        if ex.workers == 0 and log is not None:
            log(f"warning: the Dask scheduler at {arg} has no workers yet; tasks wait until one connects")
    if log is not None:
        log(f"scheduler: {ex.name}")
    return ex


@contextlib.contextmanager
def open_executor(scheduler, log: Optional[Callable] = None, **kwargs):
    """``with open_executor(scheduler) as ex:`` -- ``None`` when ``scheduler`` is ``None`` (the caller's own
    default path), the given :class:`Executor` itself (not closed here), or :func:`make_executor`'s
    (closed at the end of the block)."""
    if scheduler is None:
        yield None
        return
    if isinstance(scheduler, Executor):
        yield scheduler
        return
    ex = make_executor(scheduler, log=log, **kwargs)
    try:
        yield ex
    finally:
        ex.close()
