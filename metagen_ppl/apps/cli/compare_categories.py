"""``metagen-ppl compare-categories``: the M2 study of the three EM category strategies, SVI-MAP and MCMC."""

from __future__ import annotations

import sys

from metagen_ppl.apps.category_study import DESCRIPTION, add_arguments
from metagen_ppl.apps.category_study import run as run_study
from metagen_ppl.apps.cli.common import Formatter, prepare_output, report_created


def add_parser(sub, parents: dict):
    """Register ``metagen-ppl compare-categories``."""
    p = sub.add_parser("compare-categories", parents=[parents["common"]], formatter_class=Formatter,
                       help="model M2: compare the three EM category strategies, SVI-MAP and MCMC on simulated "
                            "scenes (tables, CSV and a plot)",
                       description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    created = prepare_output(args.out, directory=True)
    code = run_study(args, command="metagen-ppl " + " ".join(sys.argv[1:]))
    report_created(created)
    return code
