"""The ``metagen-ppl`` entry point: one parser, one module per command, one error policy.

Every command has ``--help``. Bad input (a missing or malformed file, NaN in
the data, an unknown model, K < 1, ...) ends with one line
``metagen-ppl: error: <message>`` on stderr and exit code 2; ``--debug``
(before or after the command name) also prints the traceback. Ctrl-C exits with
130 after one line saying what was kept; a bug exits with 1.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Optional, Sequence

from metagen_ppl import __version__
from metagen_ppl.apps.cli import (compare, compare_categories, convert_coco, demo, evaluate, fit, metacognition,
                                  simulate)
from metagen_ppl.apps.cli.common import (EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, Formatter, Parser,
                                         resolve_threads,
                                         UsageError, one_line, parent_parsers, say)
from metagen_ppl.errors import DataError, MetagenError
from metagen_ppl.util import torch_threads

#: The commands, in ``--help`` order: each module has ``add_parser(subparsers, parents)``.
COMMANDS = (simulate, fit, demo, compare, metacognition, evaluate, convert_coco, compare_categories)


def build_parser() -> Parser:
    parents = parent_parsers()
    parser = Parser(prog=PROG, formatter_class=Formatter,
                    description="Invert MetaGen-style perception models with EM, SVI and MCMC on Pyro.",
                    epilog="examples:\n"
                           "  metagen-ppl simulate --num-objects 4 --num-obs 600 --seed 0 --out data.json\n"
                           "  metagen-ppl fit --method em --data data.json --out fit.json\n"
                           "  metagen-ppl demo --out metagen-demo\n"
                           "run 'metagen-ppl COMMAND --help' for the options of a command")
    parser.add_argument("--debug", action="store_true", default=False, help="print the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    #: each command's own parser, by name (to name it in usage errors)
    parser.commands = {p.prog.split()[1]: p for p in (command.add_parser(sub, parents) for command in COMMANDS)}
    return parser


def _error_message(e: BaseException, args) -> str:
    if isinstance(e, OSError) and not isinstance(e, MetagenError):
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        return f"cannot access{where}: {e.strerror or e}"
    msg = str(e).split("Trace Shapes:")[0]  # Pyro appends the trace's shapes to errors
    source = getattr(args, "data", None)
    if isinstance(e, DataError) and "data['" in msg and isinstance(source, str) and source not in msg:
        msg = f"{source}: {msg}"  # a check of the loaded tensors: name the file they came from
    return msg


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted, 1 internal error)."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the command whose options these are not
            parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as e:
        say(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else EXIT_OK

    def showwarning(message, category, filename, lineno, file=None, line=None):
        say(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = showwarning
        # the libraries' plans (deprecations, future changes) are not the user's to act on
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            with torch_threads(resolve_threads(getattr(args, "threads", "auto"), getattr(args, "workload", "small"))):
                return int(args.func(args) or EXIT_OK)
        except (MetagenError, OSError) as e:
            if debug:
                traceback.print_exc()
            say(f"{PROG}: error: {one_line(_error_message(e, args))}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt as e:
            detail = getattr(e, "detail", None)  # FitInterrupted says what was kept and how to resume
            say(f"{PROG}: {one_line(detail) if detail else 'interrupted'}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:  # a bug (ours or in a user's model file)
            if debug:
                traceback.print_exc()
            hint = "" if debug else " (run with --debug for the traceback)"
            say(f"{PROG}: internal error: {type(e).__name__}: {one_line(e)}{hint}", file=sys.stderr)
            return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
