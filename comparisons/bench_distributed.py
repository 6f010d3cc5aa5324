"""Time per map-reduce EM round of the projective model: in-process vs a local Dask cluster of 1 and 2 workers.

Simulates ``--videos`` videos (default 2,000 x 20 frames, :func:`metagen_ppl.models.projective.simulate`),
and runs :func:`metagen_ppl.models.projective.fit_videos_mapreduce` for ``--rounds`` rounds with each
executor, in this one process (so the ratios compare like with like on the same machine):

* ``in-process``: the chunks one after another here (no Dask);
* ``LocalCluster N``: ``make_executor("processes:N")`` (N worker processes, 1 thread each).

Before the clock starts every setting fits 4 small videos through its executor (imports and first calls
on every worker); the chunks' data are scattered before round 1 (timed apart: ``scatter s``).

Per setting it prints round 1 (the structure search from scratch and the field-of-view grid: the
heaviest) and the mean of the later rounds (warm-started), their ratio to the in-process time, and the
bytes sent per round (pickled size: to the tasks -- each chunk's small structure state and a reference
to its scattered data; back -- each chunk's sufficient statistics, state and per-video numbers; the
parameters, broadcast once a round) next to the bytes of the videos' data, scattered once. It also
prints the CPU seconds the tasks used per round and the machine's load average: on a shared machine
the wall time of N workers depends on the cores other jobs leave free. The fits must end with the
same parameters in every setting (checked).

Examples::

    python comparisons/bench_distributed.py                            # 2,000 videos, 3 rounds, 1 and 2 workers
    python comparisons/bench_distributed.py --videos 200 --rounds 2 --workers 2 --json comparisons/out/dist.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from metagen_ppl.domain.metagen_data import parse_videos
from metagen_ppl.engine.distributed import InProcessExecutor, make_executor
from metagen_ppl.models import projective as P
from metagen_ppl.models.projective.mapreduce import chunk_videos


def _warm(ex, small) -> None:
    """Import the package on every worker and run a small fit through the executor (first calls of the
    code paths), outside the timed rounds; the same in-process, for a fair ratio."""
    client = getattr(ex, "client", None)
    if client is not None:
        client.run(__import__, "metagen_ppl.models.projective.mapreduce")
    P.fit_videos_mapreduce(small, ex, chunk_size=1, max_em_rounds=2, tol=0.0)
    ex.traffic = dict.fromkeys(ex.traffic, 0)


def _cpu(ex) -> float:
    """CPU seconds used so far by whatever runs the tasks: this process, or the sum over the workers."""
    client = getattr(ex, "client", None)
    if client is None:
        return time.process_time()
    return sum(client.run(time.process_time).values())


def run_setting(label, ex, data, rounds, chunk_size) -> dict:
    rows = []
    last = {"t": time.perf_counter(), "traffic": dict(ex.traffic), "cpu": _cpu(ex)}
    t_start = time.perf_counter()

    def on_round(rnd, entry):
        now, tr, cpu = time.perf_counter(), dict(ex.traffic), _cpu(ex)
        rows.append({"round": rnd, "seconds": now - last["t"], "cpu_s": cpu - last["cpu"], "load": os.getloadavg()[0],
                     "bytes_to_tasks": tr["bytes_to_tasks"] - last["traffic"]["bytes_to_tasks"],
                     "bytes_from_tasks": tr["bytes_from_tasks"] - last["traffic"]["bytes_from_tasks"],
                     "bytes_scattered": tr["bytes_scattered"] - last["traffic"]["bytes_scattered"],
                     "tasks": tr["tasks"] - last["traffic"]["tasks"], "objects": entry.get("objects"),
                     "change": entry["change"]})
        last["t"], last["traffic"], last["cpu"] = now, tr, _cpu(ex)
        print(f"  {label}: round {rnd}: {rows[-1]['seconds']:.1f} s (CPU {rows[-1]['cpu_s']:.1f} s), "
              f"{entry.get('objects')} objects, change {entry['change']:.2e}, load {rows[-1]['load']:.1f}",
              file=sys.stderr, flush=True)

    # the scatter of the chunks' data happens inside the fit, before round 1: time it apart
    class Timed:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, k):
            return getattr(self.inner, k)

        def scatter(self, objs, broadcast=False):
            t = time.perf_counter()
            out = self.inner.scatter(objs, broadcast)
            if not broadcast:
                timed["scatter_s"] = time.perf_counter() - t
                timed["data_bytes"] = ex.traffic["bytes_scattered"]
                last["t"], last["traffic"], last["cpu"] = time.perf_counter(), dict(ex.traffic), _cpu(ex)
            return out

        def map(self, *a, **k):
            return self.inner.map(*a, **k)

    timed = {}
    fit = P.fit_videos_mapreduce(data, Timed(ex), chunk_size=chunk_size, max_em_rounds=rounds, tol=0.0,
                                 progress=on_round)
    later = rows[1:] or rows
    return {"label": label, "workers": ex.workers, "rounds": rows, "round1_s": rows[0]["seconds"],
            "later_s": statistics.mean(r["seconds"] for r in later),
            "later_cpu_s": statistics.mean(r["cpu_s"] for r in later),
            "load": statistics.mean(r["load"] for r in rows), "scatter_s": timed.get("scatter_s"),
            "data_bytes": timed.get("data_bytes"), "total_s": time.perf_counter() - t_start,
            "params": {k: v for k, v in fit.values.items()}, "objects": sum(map(len, fit.objects()))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="map-reduce rounds per setting (>= 2)")
    ap.add_argument("--chunk-size", type=int, default=10)
    ap.add_argument("--workers", default="1,2", help="LocalCluster sizes to run (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    videos = parse_videos(P.simulate(args.videos, args.frames, seed=args.seed))
    data = P.data_from_videos(videos)
    n_chunks = len(chunk_videos(args.videos, args.chunk_size))
    dets = int(data["det_mask"].sum())
    print(f"simulated {args.videos} videos x {args.frames} frames, {dets} detections "
          f"({time.perf_counter() - t0:.1f} s); {n_chunks} chunks of {args.chunk_size} videos; "
          f"{os.cpu_count()} CPU cores", flush=True)

    small = P.data_from_videos(parse_videos(P.simulate(4, args.frames, seed=args.seed + 1)))
    results = []
    with InProcessExecutor(measure=True) as ex:
        _warm(ex, small)
        results.append(run_setting("in-process", ex, data, args.rounds, args.chunk_size))
    for n in [int(x) for x in args.workers.split(",") if x.strip()]:
        with make_executor(f"processes:{n}", measure=True) as ex:
            _warm(ex, small)
            results.append(run_setting(f"LocalCluster {n} worker{'s' if n > 1 else ''}", ex, data, args.rounds,
                                       args.chunk_size))

    base = results[0]
    same = all(all(torch.equal(r["params"][k], base["params"][k]) for k in base["params"]) and
               r["objects"] == base["objects"] for r in results[1:])
    later_rounds = [r for r in base["rounds"][1:]]
    print()
    print(f"Map-reduce EM of the projective model, {args.videos} simulated videos x {args.frames} frames, "
          f"{n_chunks} tasks per round ({args.chunk_size} videos each), {args.rounds} rounds per setting; "
          f"same parameters in every setting: {same}")
    print(f"{'setting':<22} {'round 1 s':>10} {'ratio':>6} {'later s/round':>14} {'ratio':>6} "
          f"{'task CPU s/round':>17} {'cores busy':>11} {'load avg':>9} {'scatter s':>10}")
    for r in results:
        print(f"{r['label']:<22} {r['round1_s']:>10.1f} {r['round1_s'] / base['round1_s']:>6.2f} "
              f"{r['later_s']:>14.1f} {r['later_s'] / base['later_s']:>6.2f} {r['later_cpu_s']:>17.1f} "
              f"{r['later_cpu_s'] / r['later_s']:>11.2f} {r['load']:>9.1f} {(r['scatter_s'] or 0.0):>10.1f}")
    print("(task CPU: this process in-process, else the workers' processes summed; cores busy = CPU / wall; load "
          "avg: the machine's 1-minute load during the setting, other jobs included)")
    print()
    mean = lambda k: statistics.mean(x[k] for x in later_rounds)  # noqa: E731
    to_t, back = mean("bytes_to_tasks"), mean("bytes_from_tasks")
    params = mean("bytes_scattered")
    print("bytes per round (pickled, a later round, in-process count; a cluster adds Dask's framing):")
    print(f"  to the tasks:   {to_t / 1e3:10.1f} kB  ({to_t / n_chunks:.0f} B per task: the chunk's structure "
          f"state and a reference to its data)")
    print(f"  parameters:     {params / 1e3:10.1f} kB  (V, sigma_px, marks, field of view; broadcast once a round, "
          f"x workers on a cluster)")
    print(f"  back:           {back / 1e3:10.1f} kB  ({back / n_chunks:.0f} B per task: sufficient statistics, "
          f"field-of-view profile, structure, per-video scores)")
    print(f"  data, scattered once before round 1: {base['data_bytes'] / 1e6:.1f} MB "
          f"({base['data_bytes'] / max(1, to_t + back + params):.0f}x a round's traffic)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "same_params": same,
                       "results": [{k: v for k, v in r.items() if k != "params"} for r in results]}, fh, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
