"""Initialisation of object locations (better than random points)."""

from __future__ import annotations

import torch


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator):
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with greedy local trials.

    Parameters
    ----------
    x : (N, D) tensor
    k : int
    generator : torch.Generator

    Returns
    -------
    centres : (k, D) tensor, rows of ``x``
    sqdist : (N,) squared distance of each point to its nearest centre
    """
    n = x.shape[0]
    n_trials = 2 + int(torch.log(torch.tensor(float(k))).item())
    first = torch.randint(n, (1,), generator=generator).item()
    centres = [x[first]]
    sqdist = ((x - x[first]) ** 2).sum(-1)
    for _ in range(1, k):
        total = sqdist.sum()
        if total <= 0:  # all points coincide with centres: any point will do
            idx = torch.randint(n, (n_trials,), generator=generator)
        else:
            idx = torch.multinomial(sqdist / total, n_trials, replacement=True, generator=generator)
        cand = ((x.unsqueeze(0) - x[idx].unsqueeze(1)) ** 2).sum(-1)  # (trials, N)
        cand = torch.minimum(cand, sqdist)
        best = cand.sum(-1).argmin()
        centres.append(x[idx[best]])
        sqdist = cand[best]
    return torch.stack(centres), sqdist
