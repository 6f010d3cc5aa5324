"""Where the comparison scripts find the shared MetaGen detection files (``../shared/data/metagen2021``).

Imported by the scripts of this folder (``python comparisons/<script>.py`` puts the folder on
``sys.path``; the tests' ``comparison_script`` does the same).
"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The places looked at, in order: next to the checkout, then the shared folder of this workplace.
CANDIDATES = (os.path.join(ROOT, "..", "shared", "data", "metagen2021"), "/work/shared/data/metagen2021")


def default_data_dir() -> str:
    """The first of :data:`CANDIDATES` holding ``data_labelled_retinanet.json`` (else the first one, so that
    the scripts' "not found" errors name the documented place)."""
    for d in CANDIDATES:
        if os.path.isfile(os.path.join(d, "data_labelled_retinanet.json")):
            return d
    return CANDIDATES[0]
