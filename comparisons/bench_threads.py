"""Wall time of metagen-ppl commands by torch thread count, and of the README's ``fit`` examples.

Two tables, each command run in a fresh process (``python -m metagen_ppl.apps.cli``):

1. ``threads``: typical workloads with ``--threads 1``, ``2`` and ``0`` (torch's default), each
   ``--repeats`` times round-robin (the machine is shared: the median is kept), and the ratio
   to one thread. This is the measurement behind ``metagen_ppl.util.AUTO_THREADS``.
2. ``readme``: the README's ``fit`` examples exactly as printed (default ``--threads auto``); with
   ``--before PATH`` (a source checkout of an earlier version, run from a folder of links to its
   ``metagen_ppl/`` and ``models/`` on ``PYTHONPATH``, as bench_evaluate.py does) also the same
   commands on that version, for a before/after table.

Examples::

    python comparisons/bench_threads.py                         # both tables
    python comparisons/bench_threads.py --tables threads --repeats 3
    python comparisons/bench_threads.py --tables readme --before /tmp/old   # before/after
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = next((d for d in (os.path.join(ROOT, "..", "shared", "data", "metagen2021"), "/work/shared/data/metagen2021")
                 if os.path.isfile(os.path.join(d, "data_labelled_retinanet.json"))), None)

#: (label, workload kind, command after ``metagen-ppl``); {tmp} is a scratch folder with data.json, scenes.json.
THREAD_CASES = [
    ("fit em, N=600", "small", "fit --data {tmp}/data.json --num-objects 4"),
    ("fit em, N=100000", "small", "fit --data {tmp}/big.json --num-objects 10 --num-inits 1"),
    ("fit svi-map 300 steps, N=600", "small", "fit --method svi --data {tmp}/data.json --num-objects 4 --num-steps 300"),
    ("fit mcmc 1 chain 50+50, N=600", "small",
     "fit --method mcmc --data {tmp}/data.json --num-objects 4 --num-samples 50 --warmup 50 --num-chains 1"),
    ("metacognition fit, 50 scenes", "small", "metacognition fit --data {tmp}/scenes.json"),
    ("evaluate RetinaNet (EM only)", "batched",
     "evaluate --data {data}/data_labelled_retinanet.json --out {tmp}/eval --no-lesioned --no-ground-truth-V "
     "--plots 0 --no-checkpoint --no-progress"),
]

#: The README's fit examples, as printed (run in {tmp}, where data.json and cat.json exist).
README_FITS = [
    "fit --model baseline --method em   --data data.json --num-objects 4 --seed 0 --out em.json",
    "fit --model baseline --method svi  --data data.json --num-objects 4 --num-steps 1000 --out svi.json",
    "fit --model baseline --method svi-normal --data data.json --out svi_normal.json",
    "fit --model baseline --method mcmc --data data.json --num-objects 4 --num-samples 300 --warmup 200 "
    "--num-chains 2 --out mcmc.json",
    "fit --data data.json --option scale=1.0 --option loc_prior_scale=20 --out em_fixed_scale.json",
    "fit --model categorical --method em --categories mstep --data cat.json --out cat_mstep.json",
    "fit --model categorical --method em --categories sample --num-category-samples 32 --data cat.json "
    "--out cat_sample.json",
    "fit --model categorical --method em --categories enumerate --data cat.json --out cat_enum.json",
]


def _run(cmd: str, cwd: str, python_path=None, module="metagen_ppl.apps.cli", timeout=1800) -> float:
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = python_path
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", module] + shlex.split(cmd), cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd!r} exited with {p.returncode}: {p.stderr.strip()[-400:]}")
    return wall


def _prepare(tmp: str) -> None:
    for cmd in ("simulate --model baseline --num-objects 4 --num-obs 600 --seed 0 --out data.json",
                "simulate --model baseline --num-objects 10 --num-obs 100000 --seed 0 --out big.json",
                "simulate --model categorical --num-objects 3 --num-obs 300 --seed 2 --out cat.json",
                "metacognition simulate --num-scenes 50 --num-frames 20 --seed 0 --out scenes.json"):
        _run(cmd, tmp)


def thread_table(tmp: str, repeats: int) -> list:
    rows = []
    for label, kind, cmd in THREAD_CASES:
        if "{data}" in cmd and DATA_DIR is None:
            print(f"  {label}: skipped (no shared data)", flush=True)
            continue
        cmd = cmd.format(tmp=tmp, data=DATA_DIR)
        times = {t: [] for t in (1, 2, 0)}
        for _ in range(repeats):
            for t in times:           # round-robin: a change of machine load hits every setting alike
                times[t].append(_run(f"{cmd} --threads {t}", tmp))
        med = {t: statistics.median(v) for t, v in times.items()}
        rows.append({"workload": label, "kind": kind, "t1_s": med[1], "t2_s": med[2], "default_s": med[0],
                     "t2_over_t1": med[2] / med[1], "default_over_t1": med[0] / med[1]})
        print(f"  {label}: 1 thread {med[1]:.1f} s, 2 threads {med[2]:.1f} s, torch default {med[0]:.1f} s", flush=True)
    return rows


def before_tree(before: str, tmp: str) -> tuple:
    """``(PYTHONPATH, CLI module)`` that run the checkout ``before``: a folder of links to its
    ``metagen_ppl/`` with ``models`` -> its ``models/`` (the installed layout, as bench_evaluate.py
    builds it; a plain ``PYTHONPATH=before`` would still import the installed ``metagen_ppl.models``),
    checked to import from ``before``; the CLI module is ``metagen_ppl.apps.cli`` or, in versions
    before the apps layer, ``metagen_ppl.cli``."""
    spec = importlib.util.spec_from_file_location("bench_evaluate", os.path.join(os.path.dirname(__file__),
                                                                                 "bench_evaluate.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tree = bench.source_tree(before, tmp)
    bench.check_tree(tree, before)
    new_cli = os.path.isfile(os.path.join(before, "metagen_ppl", "apps", "cli", "__main__.py"))
    return tree, ("metagen_ppl.apps.cli" if new_cli else "metagen_ppl.cli")


def readme_table(tmp: str, before) -> list:
    rows = []
    if before:
        before_path, before_module = before_tree(before, tmp)
    for cmd in README_FITS:
        row = {"command": "metagen-ppl " + " ".join(cmd.split()), "after_s": _run(cmd, tmp)}
        if before:
            row["before_s"] = _run(cmd, tmp, python_path=before_path, module=before_module)
        rows.append(row)
        print(f"  {row['command']}: " + (f"before {row['before_s']:.1f} s, " if before else "")
              + f"after {row['after_s']:.1f} s", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default="threads,readme", help="threads, readme or both (comma-separated)")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting of the threads table (median kept)")
    p.add_argument("--before", default=None, metavar="PATH",
                   help="a source checkout of an earlier version: the readme table gets its times too")
    p.add_argument("--out", default=os.path.join(ROOT, "comparisons", "out", "bench_threads.json"))
    args = p.parse_args(argv)
    tables = {t.strip() for t in args.tables.split(",")}
    result = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        _prepare(tmp)
        if "threads" in tables:
            print("threads (median wall time of the whole command, s):", flush=True)
            result["threads"] = thread_table(tmp, args.repeats)
        if "readme" in tables:
            print("README fit examples (wall time of the whole command, s):", flush=True)
            result["readme"] = readme_table(tmp, args.before)
    print()
    if "threads" in result:
        print("| workload | kind | 1 thread (s) | 2 threads (s) | torch default (s) | 2 / 1 | default / 1 |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in result["threads"]:
            print(f"| {r['workload']} | {r['kind']} | {r['t1_s']:.1f} | {r['t2_s']:.1f} | {r['default_s']:.1f} | "
                  f"{r['t2_over_t1']:.2f} | {r['default_over_t1']:.2f} |")
    if "readme" in result:
        print()
        print("| README command | before (s) | after (s) |" if args.before else "| README command | after (s) |")
        print("|---|---:|---:|" if args.before else "|---|---:|")
        for r in result["readme"]:
            print(f"| `{r['command']}` | " + (f"{r['before_s']:.1f} | " if args.before else "") + f"{r['after_s']:.1f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
