"""NUTS over the object locations of one video, the assignments summed out exactly."""

from __future__ import annotations

import time

import pyro
import torch
from pyro.infer import MCMC, NUTS

from metagen_ppl.errors import DataError
from metagen_ppl.models.projective.estep import video_log_likelihood
from metagen_ppl.models.projective.generative import box_bounds
from metagen_ppl.models.projective.noise import pixel_noise_of


def nuts_locations(data, values, cats, active, *, num_samples=100, warmup_steps=100, seed=0, max_tree_depth=6,
                   init_locs=None, **options):
    """NUTS over the object locations of ONE video (V = 1), the assignments summed out exactly.

    The potential is ``-log p(x | mu, V) - log p(mu)`` of :func:`model` (the
    direct E-step's log marginal likelihood, equal to the engine's), in the
    unconstrained space ``mu = lo + (hi - lo) sigmoid(z)`` (with its log
    Jacobian); V, ``sigma_px``, marks and the field of view stay at ``values``.
    Uses :class:`pyro.infer.NUTS` with ``potential_fn``: Pyro's sampler on the
    model's exact marginal likelihood without re-tracing the model at every
    leapfrog step.

    Returns
    -------
    dict: ``samples`` (num_samples, K_active, 3), ``mean`` (K_active, 3), ``divergences``,
    ``accept_prob``, ``wall_time_s``.
    """
    if data["cams"].shape[0] != 1:
        raise DataError("nuts_locations samples one video at a time (V = 1)")
    t0 = time.perf_counter()
    noise = pixel_noise_of(options)
    lo, hi, _ = box_bounds(data)
    idx = active[0].nonzero().reshape(-1)
    n = len(idx)
    base = dict(values)
    start = (values["locs"] if init_locs is None else init_locs)[0, idx]
    if n == 0:
        return {"samples": torch.zeros(num_samples, 0, 3, dtype=lo.dtype), "mean": torch.zeros(0, 3, dtype=lo.dtype),
                "divergences": 0, "accept_prob": float("nan"), "wall_time_s": 0.0}

    def to_locs(z):
        s = torch.sigmoid(z)
        full = base["locs"][0].clone()
        full = full.index_put((idx,), lo + (hi - lo) * s)
        return full.unsqueeze(0), (torch.log(hi - lo) + torch.log(s) + torch.log1p(-s)).sum()

    def potential(params):
        locs, logdet = to_locs(params["z"])
        ll, _ = video_log_likelihood(data, dict(base, locs=locs), cats, active, noise=noise)
        return -(ll.sum() + logdet)

    u = ((start - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
    z0 = torch.log(u) - torch.log1p(-u)
    pyro.set_rng_seed(int(seed))
    kernel = NUTS(potential_fn=potential, max_tree_depth=max_tree_depth, target_accept_prob=0.8)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, initial_params={"z": z0},
                disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples()["z"]
    samples = lo + (hi - lo) * torch.sigmoid(z)
    diag = mcmc.diagnostics()
    div = diag.get("divergences", {})
    ndiv = sum(len(v) for v in div.values()) if isinstance(div, dict) else 0
    acc = diag.get("acceptance rate", {})
    acc = float(next(iter(acc.values()))) if isinstance(acc, dict) and acc else float("nan")
    return {"samples": samples, "mean": samples.mean(0), "divergences": int(ndiv), "accept_prob": acc,
            "wall_time_s": time.perf_counter() - t0}
