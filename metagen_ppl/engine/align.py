"""Label alignment: Hungarian matching of objects (mixture components).

Mixtures are invariant to relabelling the objects, so estimates are compared
to the truth, and MCMC draws to each other, only after the labels are matched
by the Hungarian algorithm on squared distances between locations.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=float)


def match(est_locs, ref_locs):
    """Pairs ``(i_est, j_ref)`` minimising the summed squared distance.

    Parameters
    ----------
    est_locs : (K1, D), ref_locs : (K2, D)

    Returns
    -------
    rows, cols : int arrays of length ``min(K1, K2)``; ``est[rows[i]]`` matches ``ref[cols[i]]``.
    """
    a, b = _np(est_locs), _np(ref_locs)
    if a.size == 0 or b.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return linear_sum_assignment(cost)


def location_error(est_locs, true_locs) -> float:
    """Mean Euclidean distance between matched estimated and true locations."""
    rows, cols = match(est_locs, true_locs)
    if len(rows) == 0:
        return float("nan")
    a, b = _np(est_locs), _np(true_locs)
    return float(np.linalg.norm(a[rows] - b[cols], axis=-1).mean())


def permutation_to(est_locs, ref_locs) -> torch.Tensor:
    """Permutation ``p`` (K,) with ``est[p]`` aligned to ``ref`` (equal K)."""
    rows, cols = match(est_locs, ref_locs)
    perm = np.empty(len(cols), dtype=np.int64)
    perm[cols] = rows
    return torch.as_tensor(perm)


def permute_sites(values: dict, perm: torch.Tensor, component_sites: dict) -> dict:
    """Apply a component permutation to every site indexed by object."""
    out = dict(values)
    for name, dim in component_sites.items():
        if name in out:
            out[name] = out[name].index_select(dim, perm)
    return out


def align_samples(samples: dict, component_sites: dict, location_site: str = "locs",
                  reference=None, n_rounds: int = 3):
    """Undo label switching in draws of shape ``(chains, draws, ...)``.

    Each draw is permuted to match ``reference`` (default: the first chain's
    final draw, then refined to the posterior mean of the aligned draws for
    ``n_rounds`` rounds), permuting all ``component_sites`` together.

    Returns
    -------
    aligned : dict, same shapes as ``samples``
    n_switched : int, number of draws whose labels were changed in the last round
    """
    if location_site not in samples:
        return samples, 0
    locs = samples[location_site]
    chains, draws = locs.shape[:2]
    ref = locs[0, -1] if reference is None else torch.as_tensor(reference, dtype=locs.dtype)
    aligned = samples
    n_switched = 0
    for _ in range(max(1, n_rounds)):
        out = {k: v.clone() for k, v in samples.items()}
        n_switched = 0
        identity = torch.arange(locs.shape[2])
        for c in range(chains):
            for d in range(draws):
                perm = permutation_to(locs[c, d], ref)
                if not torch.equal(perm, identity):
                    n_switched += 1
                    for name, dim in component_sites.items():
                        if name in out:
                            # site dims after (chain, draw): dim counts within one draw
                            out[name][c, d] = samples[name][c, d].index_select(dim, perm)
        aligned = out
        new_ref = aligned[location_site].mean(dim=(0, 1))
        if torch.allclose(new_ref, ref):
            break
        ref = new_ref
    return aligned, n_switched
