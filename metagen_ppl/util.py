"""Small shared helpers: seeding, progress bars, numbers."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm


@contextlib.contextmanager
def seeded(seed):
    """Run a block with torch, numpy and Python RNGs seeded, restoring their state after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(int(seed))
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextlib.contextmanager
def progress_bar(total, desc: str, enabled: bool, **kwargs):
    """A tqdm bar on stderr while the block runs (``None`` when not ``enabled``), closed afterwards."""
    if not enabled:
        yield None
        return
    bar = tqdm(total=total, desc=desc, leave=False, **kwargs)
    try:
        yield bar
    finally:
        bar.close()


def to_float(x):
    """A Python float from a tensor or number."""
    return float(x.detach()) if torch.is_tensor(x) else float(x)
