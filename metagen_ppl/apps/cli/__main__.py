"""``python -m metagen_ppl.apps.cli``: the ``metagen-ppl`` command."""

import sys

from metagen_ppl.apps.cli.main import main

sys.exit(main())
