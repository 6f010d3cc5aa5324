"""What every ``metagen-ppl`` command shares: the parser classes, option parsing, output, exit codes."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Optional, Sequence

from metagen_ppl.errors import DataError, ModelError

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
    """Shows ``(default: X)`` where a default exists and the help text does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def parent_parsers() -> dict:
    """The shared option groups: ``common`` (``--debug``), ``model`` (``--model``, ``--option``),
    ``progress`` (``--progress/--no-progress``)."""
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback on errors")
    model_opts = Parser(add_help=False)
    model_opts.add_argument("--model", default="baseline", help="built-in model name or path of a .py model file")
    model_opts.add_argument("--option", "-O", action="append", metavar="KEY=VALUE",
                            help="model keyword option, VALUE parsed as JSON when possible "
                                 "(e.g. -O scale=0.5); repeatable")
    progress = Parser(add_help=False)
    progress.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="progress bars on stderr (default: on when stderr is a terminal)")
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


def progress_enabled(args) -> bool:
    """``--progress/--no-progress``, else on when stderr is a terminal."""
    if getattr(args, "progress", None) is not None:
        return bool(args.progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
