"""Shared fixtures of the test suite.

Nothing here changes torch's global default dtype: tests that need exact
arithmetic build float64 tensors explicitly (the engine follows the data's dtype).
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

# The tests use tiny tensors: intra-op threads only add synchronisation cost, and on a
# shared 2-core machine they oversubscribe the CPU (measured 2-4x slower per EM/SVI step).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Each test starts with an empty param store and fixed RNG seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def comparison_script(name: str):
    """The module of ``comparisons/<name>.py`` (the scripts are not a package), loaded from its file."""
    import importlib.util
    import os
    import sys
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "comparisons")
    if folder not in sys.path:          # as `python comparisons/<name>.py` does: the scripts import shared_data
        sys.path.append(folder)
    path = os.path.join(folder, f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def simulated(num_objects, num_obs, seed, *, scale=1.0, weights=None, dtype=torch.float64):
    """``metagen_ppl.models.baseline.simulate`` as tensors: ``(data, truth)``."""
    from metagen_ppl.models import baseline

    sim = baseline.simulate(num_objects, num_obs, seed, scale=scale, weights=weights)
    x = torch.tensor(sim["observations"], dtype=dtype)
    truth = {
        "locs": torch.tensor(sim["truth"]["locs"], dtype=dtype),
        "weights": torch.tensor(sim["truth"]["weights"], dtype=dtype),
        "scale": float(sim["truth"]["scale"]),
        "z": torch.tensor(sim["truth"]["z"], dtype=torch.long),
    }
    return {"x": x}, truth


def match_components(est_locs, true_locs):
    """Hungarian matching of estimated to true locations.

    Returns ``perm`` with ``est_locs[perm[k]]`` matched to ``true_locs[k]`` and
    the per-component Euclidean errors (numpy arrays).
    """
    from scipy.optimize import linear_sum_assignment

    est = np.asarray(est_locs, dtype=float)
    tru = np.asarray(true_locs, dtype=float)
    cost = ((tru[:, None, :] - est[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(tru), dtype=int)
    perm[rows] = cols
    err = np.sqrt(((est[perm] - tru) ** 2).sum(-1))
    return perm, err


@pytest.fixture(scope="session")
def sim_scene():
    """The :func:`simulated` helper, as a fixture (tests need not import conftest)."""
    return simulated


@pytest.fixture(scope="session")
def hungarian():
    """The :func:`match_components` helper, as a fixture."""
    return match_components


@pytest.fixture(scope="session")
def well_separated():
    """A small, well-separated float64 scene (K=3, N=150) with its truth."""
    return simulated(3, 150, seed=1, weights=[1 / 3, 1 / 3, 1 / 3])
