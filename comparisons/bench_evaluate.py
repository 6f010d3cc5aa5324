"""Where the time of the default ``metagen-ppl evaluate`` goes, stage by stage (issue 13).

For each shared detection file (``data_labelled_retinanet.json``, ``data_labelled_faster_rcnn.json``)
the default command ::

    metagen-ppl evaluate --data FILE --out DIR

runs ``--repeats`` times (round-robin over files and checkouts: the machine is shared, the median
is kept) as a fresh process, exactly what the ``metagen-ppl`` console script runs
(``python -c "from metagen_ppl.apps.cli.main import main; main()"``), so its wall time includes
interpreter start and imports; the stages come from its ``metrics.json["timings"]``. The same
command then runs in this process (``main([...])``: imports already paid) for the in-process
wall time and stages. The table has one column per file (and per checkout with ``--before``):

``startup``          process wall time minus the run's own ``wall_time_s`` (interpreter, imports,
                     argument parsing, exit)
``load``             reading the file and building the tensors (``load_s``; older versions: in other)
``EM fit``           our structure search (``em_fit_s``)
``lesioned``         the lesioned model's search (``lesioned_fit_s``)
``ground-truth V``   the EM with the objects fixed at the truth (``ground_truth_V_s``)
``wait for worker``  main process idle, waiting for the second process's fits (``worker_wait_s``)
``metrics``          scores of ours, the lesioned model and the detector baselines (``score_s`` +
                     ``metrics_s``)
``plots``            the video PNGs (``plots_s``)
``writing``          the JSON outputs and the completion marker (``write_s``)
``other``            the run's wall time minus the stages above that ran in the main process
``total (process)``  the whole command, as a user waits for it
``total (in-process)`` the same command run in this process (no interpreter start, warm imports)

Stages marked ``||`` ran in the second process, at the same time as the main one (the fits while ours
is fitted; the plots, when they are drawn there, while the main process scores): they are not part of
the sum (``|``: in some of the runs). The split scores of every run are compared across repeats and checkouts; a difference is
printed (and is a failure of the speed work: it must not change any number).

Examples::

    python comparisons/bench_evaluate.py                                  # both files, 1 repeat
    python comparisons/bench_evaluate.py --repeats 3
    git worktree add /tmp/before 12f02c6
    python comparisons/bench_evaluate.py --before /tmp/before --repeats 3 # side by side
    python comparisons/bench_evaluate.py --threads 1 --extra "--jobs 1"   # other settings

``--before PATH`` is a source checkout of another commit (its ``metagen_ppl/`` and ``models/``): it
runs from a folder of links to them on ``PYTHONPATH`` (so that ``metagen_ppl.models`` is that
checkout's ``models/``, not the installed one's); this checkout runs the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIRS = ["/work/shared/data/metagen2021", os.path.join(ROOT, "..", "shared", "data", "metagen2021")]
FILES = {"retinanet": "data_labelled_retinanet.json", "faster_rcnn": "data_labelled_faster_rcnn.json"}
ENTRY = "import sys; from metagen_ppl.apps.cli.main import main; sys.exit(main())"
CHECK = "import os, sys, metagen_ppl, metagen_ppl.models as m; print(os.path.realpath(metagen_ppl.__file__)); " \
        "print(os.path.realpath(m.__file__))"

#: (label, timings keys summed, ran in the main process unless the run was parallel)
STAGES = [
    ("load", ("load_s",)),
    ("EM fit", ("em_fit_s",)),
    ("lesioned", ("lesioned_fit_s",)),
    ("ground-truth V", ("ground_truth_V_s",)),
    ("wait for worker", ("worker_wait_s",)),
    ("metrics", ("score_s", "metrics_s")),
    ("plots", ("plots_s",)),
    ("writing", ("write_s",)),
]
PARALLEL_STAGES = ("lesioned", "ground-truth V")


def source_tree(checkout: str, scratch: str) -> str:
    """A folder whose ``metagen_ppl`` is ``checkout/metagen_ppl`` with ``models`` -> ``checkout/models``
    (the installed layout), for ``PYTHONPATH``."""
    checkout = os.path.abspath(checkout)
    pkg = os.path.join(checkout, "metagen_ppl")
    if not os.path.isfile(os.path.join(pkg, "__init__.py")) or not os.path.isdir(os.path.join(checkout, "models")):
        raise SystemExit(f"{checkout} is not a source checkout of metagen_ppl (no metagen_ppl/ and models/)")
    tree = tempfile.mkdtemp(prefix="src-", dir=scratch)
    os.mkdir(os.path.join(tree, "metagen_ppl"))
    for name in os.listdir(pkg):
        if name != "__pycache__":
            os.symlink(os.path.join(pkg, name), os.path.join(tree, "metagen_ppl", name))
    os.symlink(os.path.join(checkout, "models"), os.path.join(tree, "metagen_ppl", "models"))
    return tree


def _env(tree: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_tree(tree: str, checkout: str) -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], env=_env(tree), cwd=tree, capture_output=True, text=True,
                         check=True)
    where = out.stdout.split()
    for path, sub in zip(where, ("metagen_ppl", "models")):
        if not path.startswith(os.path.realpath(os.path.join(checkout, sub))):
            raise SystemExit(f"the run would import {path}, not {checkout}'s {sub}/")


def command(data: str, out: str, threads, extra: str) -> list:
    args = ["evaluate", "--data", data, "--out", out, "--no-progress"]
    if threads is not None:
        args += ["--threads", str(threads)]
    return args + shlex.split(extra)


def run_process(tree: str, args: list, timeout: float) -> dict:
    out = args[args.index("--out") + 1]
    shutil.rmtree(out, ignore_errors=True)
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    # run in the tree's folder: ``python -c`` puts the working directory first on sys.path
    p = subprocess.run([sys.executable, "-c", ENTRY] + args, env=_env(tree), cwd=tree, capture_output=True, text=True,
                       timeout=timeout)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited with {p.returncode}: {p.stderr.strip()[-600:]}")
    m = json.load(open(os.path.join(out, "metrics.json")))
    return {"wall": wall, "cpu": cpu, "timings": m["timings"], "scores": scores_of(m)}


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (and theirs: the second process)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_in_process(args: list) -> dict:
    from metagen_ppl.apps.cli.main import main

    out = args[args.index("--out") + 1]
    shutil.rmtree(out, ignore_errors=True)
    buf_out, buf_err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(args)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"in-process {' '.join(args)} exited with {code}: {buf_err.getvalue().strip()[-600:]}")
    m = json.load(open(os.path.join(out, "metrics.json")))
    return {"wall": wall, "timings": m["timings"], "scores": scores_of(m)}


def scores_of(metrics: dict) -> dict:
    """``{"ours A": 0.757, ...}``: every split score of every metric, rounded as evaluate prints them."""
    out = {}
    for split in ("A", "B", "all"):
        for metric, row in metrics.get("splits", {}).get(split, {}).items():
            for method, v in row.items():
                out[f"{metric} {method} {split}"] = None if v is None else round(v, 3)
    return out


def stage_values(runs: list) -> dict:
    """Median seconds per stage over ``runs`` (``None`` where the version does not report it)."""
    out = {}
    for label, keys in STAGES:
        vals = [sum(r["timings"][k] for k in keys if k in r["timings"]) for r in runs
                if any(k in r["timings"] for k in keys)]
        out[label] = statistics.median(vals) if vals else None
    parallel = runs[0]["timings"].get("jobs", 1) > 1
    main_sum = [sum(r["timings"].get(k, 0.0) for label, keys in STAGES for k in keys
                    if label not in elsewhere(r)) for r in runs]
    out["other"] = statistics.median(r["timings"]["wall_time_s"] - s for r, s in zip(runs, main_sum))
    out["parallel"] = parallel
    # a stage is marked when it ran in the second process in every run ("|" in some of them)
    out["mark"] = {label: (" ||" if all(label in elsewhere(r) for r in runs) else
                           " | " if any(label in elsewhere(r) for r in runs) else "   ") for label, _ in STAGES}
    out["mark"]["other"] = "   "
    return out


def elsewhere(run: dict) -> tuple:
    """The stages of ``run`` that ran in the second process (at the same time as the main process)."""
    t = run["timings"]
    if t.get("jobs", 1) < 2:
        return ()
    return PARALLEL_STAGES + (("plots",) if t.get("plots_in") == "second process" else ())


def fmt(x) -> str:
    return "      -" if x is None else f"{x:7.2f}"


def table(columns: dict) -> str:
    """``columns``: ``{name: {"process": [runs], "in_process": [runs]}}`` -> the printed table."""
    names = list(columns)
    width = max(12, *(len(n) for n in names))
    per = {n: stage_values(c["process"]) for n, c in columns.items()}

    def median(n, what, key):
        runs = columns[n][what]
        return statistics.median(key(r) for r in runs) if runs else None

    def row(label, cells):
        return f"{label:<22}" + "".join(f" {c:>{width}}" for c in cells)

    head = row("stage (median s)", names)
    lines = [head, "-" * len(head)]
    lines.append(row("startup (imports)", [fmt(median(n, "process", lambda r: r["wall"] - r["timings"]["wall_time_s"]))
                                            + "   " for n in names]))
    for label, _ in STAGES + [("other", ())]:
        lines.append(row(label, [fmt(per[n][label]) + (per[n]["mark"][label] if per[n][label] is not None else "   ")
                                 for n in names]))
    lines.append("-" * len(head))
    lines.append(row("total (process)", [fmt(median(n, "process", lambda r: r["wall"])) + "   " for n in names]))
    lines.append(row("total (in-process)", [fmt(median(n, "in_process", lambda r: r["wall"])) + "   "
                                            for n in names]))
    lines.append(row("cpu (process, all)", [fmt(median(n, "process", lambda r: r["cpu"])) + "   " for n in names]))
    lines.append(row("processes, threads", [f"{columns[n]['process'][0]['timings'].get('jobs', 1)}, "
                                            f"{columns[n]['process'][0]['timings'].get('threads', '-')}   "
                                            for n in names]))
    lines.append(row("repeats", [f"{len(columns[n]['process'])}   " for n in names]))
    if any(per[n]["parallel"] for n in names):
        lines.append("|| ran in the second process, at the same time as the main one (not part of the sum); "
                     "| in some runs")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=next((d for d in DATA_DIRS if os.path.isfile(
        os.path.join(d, FILES["retinanet"]))), None), help="folder of the MetaGen detection files")
    p.add_argument("--files", default="retinanet,faster_rcnn", help="comma-separated: " + ", ".join(FILES))
    p.add_argument("--repeats", type=int, default=1, help="runs of each command (median kept)")
    p.add_argument("--before", metavar="PATH", help="a source checkout of another commit, run side by side")
    p.add_argument("--threads", default=None, help="--threads of the command (default: not given, i.e. auto)")
    p.add_argument("--extra", default="", help="more options of the command, e.g. '--jobs 1'")
    p.add_argument("--extra-before", default=None,
                   help="options for the --before checkout (default: --extra when it is empty, else none)")
    p.add_argument("--no-in-process", action="store_true", help="skip the in-process runs")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    args = p.parse_args(argv)
    if args.data_dir is None:
        raise SystemExit("no MetaGen data found (../shared/data/metagen2021/); give --data-dir")
    files = [f.strip() for f in args.files.split(",") if f.strip()]
    for f in files:
        if f not in FILES:
            raise SystemExit(f"unknown file {f!r}; choose from {', '.join(FILES)}")
    scratch = tempfile.mkdtemp(prefix="bench-evaluate-")
    try:
        checkouts = {"after": ROOT}
        if args.before:
            checkouts = {"before": os.path.abspath(args.before), "after": ROOT}
        trees = {}
        for name, path in checkouts.items():
            trees[name] = source_tree(path, scratch)
            check_tree(trees[name], path)
        sys.path.insert(0, trees["after"])   # the in-process runs import this checkout too
        extra = {"after": args.extra, "before": args.extra_before if args.extra_before is not None else ""}
        columns = {}
        for f in files:
            for name in checkouts:
                columns[f"{f} {name}" if args.before else f] = {"process": [], "in_process": []}
        print(f"evaluate on {', '.join(files)}; {args.repeats} repeat(s); threads {args.threads or 'auto'}; "
              f"cpus {os.cpu_count()}; checkouts: " + ", ".join(f"{n}={p}" for n, p in checkouts.items()),
              flush=True)
        for rep in range(args.repeats):
            for f in files:
                for name in checkouts:
                    col = f"{f} {name}" if args.before else f
                    out = os.path.join(scratch, f"out-{name}-{f}")
                    cmd = command(os.path.join(args.data_dir, FILES[f]), out, args.threads, extra[name])
                    r = run_process(trees[name], cmd, args.timeout)
                    columns[col]["process"].append(r)
                    print(f"  [{rep + 1}/{args.repeats}] {col}: {r['wall']:.1f} s (process)", flush=True)
                    if name == "after" and not args.no_in_process:
                        r = run_in_process(cmd)
                        columns[col]["in_process"].append(r)
                        print(f"  [{rep + 1}/{args.repeats}] {col}: {r['wall']:.1f} s (in-process)", flush=True)
        print()
        print(table(columns))
        # every number must be the same in every run of every checkout
        print()
        for f in files:
            runs = [(c, r) for c, col in columns.items() if c.split()[0] == f
                    for r in col["process"] + col["in_process"]]
            ref_col, ref = runs[0]
            diffs = [(c, k, ref["scores"][k], r["scores"].get(k)) for c, r in runs for k in ref["scores"]
                     if r["scores"].get(k) != ref["scores"][k]]
            main_rows = {k: v for k, v in ref["scores"].items() if k.startswith("jaccard")}
            print(f"{f}: " + ", ".join(f"{k.split(' ', 1)[1]} {v:.3f}" for k, v in main_rows.items()
                                       if v is not None))
            if diffs:
                print(f"  SCORES DIFFER from {ref_col}: " + "; ".join(f"{c}: {k} {a} -> {b}" for c, k, a, b in diffs))
            else:
                print(f"  the same in all {len(runs)} runs")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
