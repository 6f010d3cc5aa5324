"""Compare the three EM category strategies of M2 with SVI-MAP and MCMC on simulated scenes.

The study itself is :mod:`metagen_ppl.apps.category_study` (also ``metagen-ppl
compare-categories``); this script runs it from a source checkout::

    python comparisons/categories.py --quick    # a few minutes
    python comparisons/categories.py            # the full design (long)
"""

from __future__ import annotations

import argparse
import sys

from metagen_ppl.apps.category_study import DESCRIPTION, add_arguments, run
from metagen_ppl.util import torch_threads


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=DESCRIPTION))
    argv = sys.argv[1:] if argv is None else list(argv)
    with torch_threads(1):   # every worker (and a single process) on one thread: the fastest here
        return run(parser.parse_args(argv), command="python comparisons/categories.py " + " ".join(argv))


if __name__ == "__main__":
    sys.exit(main())
