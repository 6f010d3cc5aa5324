"""Label alignment: Hungarian matching of objects (mixture components).

Mixtures are invariant to relabelling the objects, so estimates are compared
to the truth, and MCMC draws to each other, only after the labels are matched
by the Hungarian algorithm on squared distances between locations. Objects may
be per scene (locations ``(S, K, D)``: each scene matched on its own) and a
per-object site may hold entries of other components too (a ``(K + 1,)``
weight vector with a clutter weight): :func:`align_samples` takes which entries
belong to the objects (:mod:`metagen_ppl.engine.components` finds them).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from metagen_ppl.util import linear_assignment

from metagen_ppl.errors import ModelError


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
    return linear_assignment(cost)


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
                  reference=None, n_rounds: int = 3, *, entries: Optional[dict] = None, batch_dims: int = 0):
    """Undo label switching in draws of shape ``(chains, draws, ...)``.

    Each draw is permuted to match ``reference`` (default: the first chain's
    final draw, then refined to the posterior mean of the aligned draws for
    ``n_rounds`` rounds), permuting all ``component_sites`` together.

    Parameters
    ----------
    component_sites : dict name -> int
        Object dimension of each per-object site, within one draw (the location site's too;
        absent: 0).
    location_site : str
        The site whose entries are matched (squared distances; every dimension after the
        object dimension, and the batch-free dimensions before it, are features).
    entries : dict name -> LongTensor (L,), optional
        The entry of each site that belongs to location entry ``j`` (default ``arange(L)``): a
        ``(K + 1,)`` weight vector whose entry 0 is a clutter weight has ``1 + arange(K)``; its other
        entries stay in place.
    batch_dims : int
        Leading dimensions of a draw with their own labelling (e.g. 1 for per-scene locations
        ``(S, K, D)``: each scene is aligned on its own). 0: one permutation per draw.

    Returns
    -------
    aligned : dict, same shapes as ``samples``
    n_switched : int, number of draws whose labels were changed in the last round

    Raises
    ------
    ModelError
        If a site's shape does not fit the declared object dimension (checked before any work).
    """
    if location_site not in samples:
        return samples, 0
    entries = dict(entries or {})
    locs = samples[location_site].detach()
    chains, draws = locs.shape[:2]
    ldim = component_sites.get(location_site, 0) % max(1, locs.dim() - 2)
    if batch_dims > ldim:
        raise ModelError(f"batch_dims = {batch_dims} but the object dimension of {location_site!r} is {ldim}")
    B = tuple(locs.shape[2:2 + batch_dims])
    L = int(locs.shape[2 + ldim])
    plan = {}
    for name, dim in component_sites.items():
        if name not in samples:
            continue
        v = samples[name]
        d = dim % max(1, v.dim() - 2)
        e = entries.get(name)
        e = torch.arange(L) if e is None else torch.as_tensor(e, dtype=torch.long)
        size = v.shape[2 + d] if v.dim() > 2 + d else None
        if size is None or len(e) != L or int(e.max()) >= size or tuple(v.shape[2:2 + batch_dims]) != B \
                or d < batch_dims:
            raise ModelError(f"site {name!r} of shape {tuple(v.shape[2:])} per draw cannot be permuted with the "
                             f"{L} objects of {location_site!r} (object dim {d}, batch {B})")
        plan[name] = (d, e)
    feats = locs.movedim(2 + ldim, 2 + batch_dims).reshape(chains, draws, *B, L, -1).double()
    if reference is None:
        ref = feats[0, -1]
    else:
        ref = torch.as_tensor(reference, dtype=torch.float64).movedim(ldim, batch_dims).reshape(*B, L, -1)
    nb = math.prod(B)
    flat = feats.reshape(chains * draws, nb, L, -1)
    identity = np.arange(L)
    perms = np.tile(identity, (chains * draws, nb, 1))
    for _ in range(max(1, n_rounds)):
        r = ref.reshape(nb, L, -1)
        cost = ((flat[:, :, :, None, :] - r[None, :, None, :, :]) ** 2).sum(-1).numpy()
        for a in range(cost.shape[0]):
            for b in range(nb):
                rows, cols = linear_assignment(cost[a, b])
                perms[a, b, cols] = rows
        p = torch.as_tensor(perms)
        aligned = flat.gather(2, p[..., None].expand(flat.shape))
        new_ref = aligned.mean(0).reshape(ref.shape)
        if torch.allclose(new_ref, ref):
            break
        ref = new_ref
    n_switched = int((perms != identity).any(axis=(1, 2)).sum())
    P = torch.as_tensor(perms).reshape(chains, draws, *B, L)
    out = dict(samples)
    for name, (d, e) in plan.items():
        out[name] = _permuted(samples[name], d, e, P, batch_dims)
    return out, n_switched


def _permuted(value: torch.Tensor, dim: int, entries: torch.Tensor, P: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """``value`` (chains, draws, ...) with entries ``entries[j]`` along ``dim`` replaced by ``entries[P[..., j]]``."""
    size = value.shape[2 + dim]
    full = torch.arange(size).expand(*P.shape[:-1], size).clone()
    full[..., entries] = entries[P]
    between = dim - batch_dims
    trailing = value.dim() - 3 - dim
    idx = full.reshape(*P.shape[:-1], *([1] * between), size, *([1] * trailing)).expand(value.shape)
    return value.gather(2 + dim, idx)


def _as_locations(value) -> Optional[torch.Tensor]:
    try:
        t = torch.as_tensor(np.asarray(value, dtype=float), dtype=torch.float64)
    except (TypeError, ValueError):
        return None
    return t


def truth_location_error(est, truth) -> tuple:
    """``(error, reason)``: the mean distance between matched estimated and true locations, per scene.

    ``est`` is ``(K, D)`` or, per scene, ``(S, K, D)`` (any leading dimensions); ``truth`` the same
    leading dimensions with any number of true objects (a per-scene list may be ragged:
    ``[(K_1, D), (K_2, D), ...]``). Each scene is matched on its own (Hungarian) and the error is the mean
    over every matched pair. ``error`` is ``None`` and ``reason`` says why when the two do not fit.
    """
    e = est.detach().double() if torch.is_tensor(est) else _as_locations(est)
    if e is None or e.dim() < 2:
        return None, f"the estimate has shape {tuple(e.shape) if e is not None else '?'}, not (..., K, D)"
    D = e.shape[-1]
    scenes = e.reshape(-1, e.shape[-2], D)
    batch = tuple(e.shape[:-2])
    t = _as_locations(truth)
    if t is not None and t.dim() >= 2:
        if t.shape[-1] != D:
            return None, f"the true locations have {t.shape[-1]} coordinates, the estimate {D}"
        if tuple(t.shape[:-2]) != batch:
            if not batch:
                return None, (f"the truth holds locations of shape {tuple(t.shape)} (several scenes?) but the "
                              f"estimate one set of shape {tuple(e.shape)}")
            return None, (f"the estimate has one set of locations per scene {tuple(e.shape)} but the truth has shape "
                          f"{tuple(t.shape)}; give the truth per scene, shape {batch + ('K', D)}")
        true_sets = list(t.reshape(-1, t.shape[-2], D))
    elif isinstance(truth, (list, tuple)) and batch and len(truth) == math.prod(batch) and len(batch) == 1:
        true_sets = [_as_locations(s) for s in truth]
        if any(s is None or (s.numel() and (s.dim() != 2 or s.shape[-1] != D)) for s in true_sets):
            return None, f"the per-scene truth is not a list of (K_s, {D}) location lists"
        true_sets = [s.reshape(-1, D) for s in true_sets]
    else:
        return None, "the true locations are not a (K, D) array of numbers"
    dists = []
    for a, b in zip(scenes, true_sets):
        rows, cols = match(a, b)
        if len(rows):
            dists.append(np.linalg.norm(_np(a)[rows] - _np(b)[cols], axis=-1))
    if not dists:
        return None, "no true or no estimated objects to match"
    return float(np.concatenate(dists).mean()), None
