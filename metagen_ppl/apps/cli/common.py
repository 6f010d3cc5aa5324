"""What every ``metagen-ppl`` command shares: the parser classes, option parsing, output, exit codes."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import textwrap
from typing import Optional, Sequence

from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.io import check_output_dir, check_output_path
from metagen_ppl.util import auto_threads, check_seed

PROG = "metagen-ppl"
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: ``--option`` keys that have a command-line flag of their own.
RESERVED_OPTIONS = {"data": "--data", "num_objects": "--num-objects", "num_obs": "--num-obs", "seed": "--seed"}


class UsageError(Exception):
    """A command-line syntax error (raised instead of argparse's print-usage-and-exit)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit code 2 (see :func:`main.main`)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` where a default exists and the help text does not already say it; wraps
    each paragraph of a description or epilog to the terminal, keeping indented lines (examples) as written."""

    def _fill_text(self, text, width, indent):
        out = []
        for para in text.split("\n\n"):
            lines = para.split("\n")
            if any(line.startswith((" ", "\t")) for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(line.strip() for line in lines), width,
                                         initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def seed_argument(text: str) -> int:
    """argparse type of ``--seed``: an integer in 0 .. 2**32 - 1."""
    try:
        return check_seed(int(text), "--seed")
    except (ValueError, MetagenError) as e:
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, MetagenError)
                                         else f"--seed must be an integer in 0..{2 ** 32 - 1}, got {text!r}")


def threads_argument(text: str):
    """argparse type of ``--threads``: ``auto``, ``0`` (torch's default: every core) or a positive integer."""
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--threads must be 'auto', 0 (torch's default) or a positive integer, "
                                         f"got {text!r}")
    return n


def resolve_threads(requested, workload: str):
    """The torch thread count of a command: ``auto`` -> by workload (:data:`metagen_ppl.util.AUTO_THREADS`),
    ``0`` -> ``None`` (torch's default), ``n`` -> ``n``."""
    if requested in (None, "auto"):
        return auto_threads(workload)
    return None if requested == 0 else int(requested)


def parent_parsers() -> dict:
    """The shared option groups: ``common`` (``--debug``, ``--threads``), ``model`` (``--model``,
    ``--option``), ``progress`` (``--progress/--no-progress``)."""
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback on errors")
    common.add_argument("--threads", type=threads_argument, default="auto", metavar="N",
                        help="torch intra-op threads: 'auto' (default: by measurement, 1 for the small tensors "
                             "of the point models, SVI and NUTS, 2 for evaluate's batched videos and fit on large "
                             "data), 0 for torch's "
                             "default (every core), or a number")
    model_opts = Parser(add_help=False)
    model_opts.add_argument("--model", default="baseline", help="built-in model name or path of a .py model file")
    model_opts.add_argument("--option", "-O", action="append", metavar="KEY=VALUE",
                            help="model keyword option, VALUE parsed as JSON when possible "
                                 "(e.g. -O scale=0.5); repeatable")
    progress = Parser(add_help=False)
    progress.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="progress on stderr: a bar on a terminal, a line every 15 s or so when stderr "
                               "goes to a log (default: on)")
    return {"common": common, "model": model_opts, "progress": progress}


def say(*parts, file=None) -> None:
    print(*parts, file=file or sys.stdout, flush=True)


def log_stderr(message) -> None:
    say(message, file=sys.stderr)


def one_line(text) -> str:
    return " ".join(str(text).split())


def parse_options(pairs: Optional[Sequence[str]]) -> dict:
    """``["scale=0.5", "weights=[0.5,0.5]"]`` -> ``{"scale": 0.5, "weights": [0.5, 0.5]}`` (JSON when it parses)."""
    out = {}
    for item in pairs or ():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise DataError(f"--option expects key=value (e.g. --option scale=0.5), got {item!r}")
        if key in RESERVED_OPTIONS:
            raise DataError(f"--option {key}=... is not allowed; use {RESERVED_OPTIONS[key]}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


def _keyword_names(fn, skip: int):
    """Keyword parameter names of ``fn`` after the first ``skip`` positional ones; ``None`` if it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names, positional = set(), 0
    for p in params:
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and positional < skip:
            positional += 1
            continue
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    return names


def check_model_options(spec, options: dict, for_simulate: bool = False) -> None:
    """Reject ``--option`` keys the model (or its simulator) does not take, naming the ones it does."""
    if not options:
        return
    allowed = _keyword_names(spec.model, 2)
    if for_simulate and spec.simulate is not None:
        sim = _keyword_names(spec.simulate, 3)
        params = inspect.signature(spec.simulate).parameters.values()
        forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        if sim is None and not forwards:
            allowed = None
        elif forwards:  # simulate(**options) passes the rest to the model
            own = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
            allowed = None if allowed is None else allowed | own
        else:
            allowed = sim
    if allowed is None:
        return
    allowed -= set(RESERVED_OPTIONS)
    for key in options:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ModelError(f"model {spec.name!r} has no option {key!r}; its options are: {known}")


def prepare_output(path, directory: bool = False):
    """Check an ``--out`` destination before any work (a directory, a file in the way, no write
    permission: one-line error, exit 2); returns the missing directory the run will create, for
    :func:`report_created`."""
    if path is None:
        return None
    return (check_output_dir if directory else check_output_path)(path)


def report_created(*missing) -> None:
    """After a successful run: say on stderr which directories the outputs were created in."""
    for m in missing:
        if m and os.path.isdir(m):
            say(f"{PROG}: created directory {m}", file=sys.stderr)


def finish_comparison(summary: dict, created=None) -> int:
    """Print a comparison's table, warnings and files (``compare``, ``demo``); the exit code: 0 when at
    least one method worked, 1 (one line on stderr) when every method failed."""
    say(summary["table"])
    for w in summary["warnings"]:
        say(f"warning: {w}")
    say(f"report: {summary['html']} and {summary['report']}; results: {summary['results_json']}")
    report_created(created)
    failed = {m: s for m, s in summary["status"].items() if s.get("status") != "ok"}
    if summary["status"] and len(failed) == len(summary["status"]):
        method, status = next(iter(failed.items()))
        error = one_line(str(status.get("error")).split("Trace Shapes:")[0])
        say(f"{PROG}: error: every method failed (first: {method}: {error}); see {summary['report']}",
            file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def progress_enabled(args) -> bool:
    """``--progress/--no-progress`` (default on: bars on a terminal, a line now and then in a log)."""
    return True if getattr(args, "progress", None) is None else bool(args.progress)
