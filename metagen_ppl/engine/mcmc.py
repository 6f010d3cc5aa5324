"""MCMC baseline: NUTS over the continuous sites, the discrete sites enumerated out.

Pyro's NUTS marginalises parallel-enumerated sites exactly in its potential
energy, so the sampler sees only ``locs``, ``weights``, ``scale`` (and the like).
Chains run one after another (2-core machines; deterministic), each from its
own k-means++-style start. Draws are label-aligned by Hungarian matching
before summaries, R-hat and ESS: the per-object sites are the model's
``COMPONENT_SITES``, else read from its trace
(:mod:`metagen_ppl.engine.components`; per-scene objects are aligned per scene,
a clutter weight stays in place). Their shapes are checked before any sampling;
where the labels cannot be aligned a RuntimeWarning says what to declare and the
draws are left as sampled.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Optional

import torch
from pyro.infer import MCMC, NUTS, config_enumerate
from pyro.infer.autoguide import init_to_value

from metagen_ppl.engine.align import align_samples
from metagen_ppl.engine.components import component_structure
from metagen_ppl.engine.em import LIKELIHOOD_OF
from metagen_ppl.engine.setup import bind, initial_values
from metagen_ppl.errors import MetagenError, ModelError
from metagen_ppl.engine.registry import load_model
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.validate import degeneracy_warnings
from metagen_ppl.util import check_seed, seeded, stderr_is_terminal


def fit_mcmc(model, data: dict, num_objects: int, *, num_samples: int = 300, warmup_steps: int = 200,
             num_chains: int = 2, seed: int = 0, target_accept_prob: float = 0.8,
             max_tree_depth: int = 8, max_assignment_draws: int = 50, jit_compile: bool = False,
             init: Optional[dict] = None, init_chains: str = "first", dtype=None,
             progress: bool = False, options: Optional[dict] = None) -> FitResult:
    """Sample ``p(theta | x)`` with NUTS, discrete sites summed out.

    Parameters
    ----------
    num_samples, warmup_steps : int
        Per chain.
    num_chains : int
        Run sequentially; chain ``c`` starts from the initialisation of EM restart ``c``.
    jit_compile : bool
        Compile the potential energy with the PyTorch JIT (2-3x faster on the
        mixtures here; only for models whose control flow does not depend on values).
    init : dict, optional
        Starting values of some sites.
    init_chains : {"first", "all"}
        ``"first"``: ``init`` starts the first chain only, the others start from
        EM's restart initialisations (dispersed starts, so R-hat can see
        multimodality); ``"all"``: every chain starts from ``init`` for the sites it
        names (e.g. the object locations of a structure search), the other sites
        from that chain's own initialisation (R-hat then measures mixing within one mode).
    max_assignment_draws : int
        Draws (spread over the chains) at which the E-step is run to average the
        posterior assignment probabilities.
    dtype : None, "float32", "float64" or torch.dtype
        Precision, as in :func:`~metagen_ppl.engine.em.fit_em` (``None``: the data's dtype).

    Returns
    -------
    FitResult with ``samples`` ``(chains, draws, ...)`` (label-aligned; ``info["label_alignment"]`` says
    how, ``info["label_switched_draws"]`` how many draws were relabelled: 0 when none could be), ``params`` the
    posterior mean, ``trace`` the log joint of every draw, ``converged`` = max R-hat <= 1.01.
    """
    if num_samples < 1 or warmup_steps < 0 or num_chains < 1:
        raise MetagenError("num_samples and num_chains must be >= 1 and warmup_steps >= 0")
    if init_chains not in ("first", "all"):
        raise MetagenError(f"unknown init_chains {init_chains!r}; choose 'first' or 'all'")
    if isinstance(max_tree_depth, bool) or not isinstance(max_tree_depth, int) or max_tree_depth < 1:
        raise MetagenError(f"max_tree_depth must be an integer >= 1, got {max_tree_depth!r}")
    if not (isinstance(target_accept_prob, (int, float)) and 0.0 < target_accept_prob < 1.0):
        raise MetagenError(f"target_accept_prob must be in (0, 1), got {target_accept_prob!r}")
    seed = check_seed(seed)
    spec = load_model(model)
    t0 = time.perf_counter()
    em, num_objects, dtype = bind(spec, data, num_objects, options, dtype)
    data, options = em.data, em.options
    if em.param_latents:
        raise ModelError(f"NUTS needs every continuous unknown to be a pyro.sample site with a prior; "
                         f"the model has pyro.param sites {em.param_latents}")
    enum_model = config_enumerate(spec.model, default="parallel")
    starts = [initial_values(spec, em, torch.Generator().manual_seed(int(seed) * 1_000_003 + c), dtype,
                             init if (c == 0 or init_chains == "all") else None) for c in range(num_chains)]
    # which sites to align, checked before any sampling
    comps = component_structure(spec, em)
    alignment = comps.alignment() if num_objects > 1 else None
    if comps.note:
        warnings.warn(f"MCMC: {comps.note}", RuntimeWarning, stacklevel=2)
    if comps.problem and num_objects > 1:
        warnings.warn(f"MCMC: the labels of the draws cannot be aligned, so they are left as sampled (posterior "
                      f"means and R-hat of per-object sites mix objects): {comps.problem}", RuntimeWarning,
                      stacklevel=2)
    chains, divergences = [], []
    for c in range(num_chains):
        start = starts[c]
        kernel = NUTS(enum_model, max_plate_nesting=em.max_plate_nesting, target_accept_prob=target_accept_prob,
                      max_tree_depth=max_tree_depth, init_strategy=init_to_value(values=start),
                      jit_compile=jit_compile, ignore_jit_warnings=True)
        # Pyro's own bar on a terminal; in a log, one line per chain that took a while
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1,
                    disable_progbar=not (progress and stderr_is_terminal()))
        t_chain = time.perf_counter()
        with seeded(int(seed) * 7919 + c):
            mcmc.run(data, num_objects, **options)
        if progress and not stderr_is_terminal() and time.perf_counter() - t_chain > 15.0:
            print(f"NUTS {spec.name}: chain {c + 1}/{num_chains} done ({warmup_steps} + {num_samples} draws, "
                  f"{time.perf_counter() - t_chain:.0f} s)", file=sys.stderr, flush=True)
        chains.append({k: v.detach() for k, v in mcmc.get_samples().items() if k in em.sample_latents})
        # the sampler's own record (mcmc.diagnostics() also computes R-hat, which needs >= 4 draws)
        divergences.append(sum(len(d.get("divergences", ())) for d in getattr(mcmc, "_diagnostics", [{}])))
    samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
    n_switched = 0
    if alignment is not None:
        samples, n_switched = align_samples(samples, **alignment)
    params = {k: v.mean(dim=(0, 1)) for k, v in samples.items()}
    est = em.estep(params)
    # Per-draw log joint and pointwise log likelihood; assignment posteriors averaged over a subset.
    obs = em.data_site
    total = num_chains * num_samples
    stride = max(1, total // max(1, max_assignment_draws))
    log_joint_draws = torch.empty(num_chains, num_samples, dtype=torch.float64)
    pointwise_rows, marg_sum, n_marg = [], {}, 0
    for c in range(num_chains):
        row = []
        for d in range(num_samples):
            v = {k: s[c, d] for k, s in samples.items()}
            idx = c * num_samples + d
            need = idx % stride == 0
            e = em.estep(v, need_weights=need)
            log_joint_draws[c, d] = e.log_joint
            if need:
                n_marg += 1
                for k, m in e.marginals.items():
                    marg_sum[k] = marg_sum.get(k, 0) + m
            if obs is not None:
                row.append(em.pointwise_log_likelihood(v, obs))
        pointwise_rows.append(row)
    pointwise = None
    if obs is not None and all(r is not None for row in pointwise_rows for r in row):
        pointwise = torch.stack([torch.stack(row) for row in pointwise_rows])
    posteriors = {k: m / n_marg for k, m in marg_sum.items()}
    rhat = _max_rhat(samples) if num_chains > 1 else float("nan")  # R-hat needs >= 2 chains
    converged = bool(rhat <= 1.01) if rhat == rhat else False
    if sum(divergences):
        warnings.warn(f"NUTS had {sum(divergences)} divergent transitions; raise target_accept_prob "
                      "or check the model's scales", RuntimeWarning, stacklevel=2)
    for msg in degeneracy_warnings(em.data, em.data_site, params, comps.location_site or spec.location_site,
                                   num_objects):
        warnings.warn("MCMC: " + msg, RuntimeWarning, stacklevel=2)
    return FitResult(
        model=spec.name, method="mcmc", params=params,
        log_likelihood=est.log_likelihood, log_joint=est.log_joint,
        trace=log_joint_draws.reshape(-1).tolist(), trace_label="log joint per draw",
        n_iter=total, converged=converged, wall_time_s=time.perf_counter() - t0,
        posteriors=posteriors, map_assignments={k: v.argmax(-1) for k, v in posteriors.items()},
        samples=samples, pointwise_log_likelihood=pointwise,
        observed={k: v for k, v in data.items() if torch.is_tensor(v)},
        info={"log_likelihood_of": LIKELIHOOD_OF + " at the posterior mean", "dtype": str(dtype).replace("torch.", ""),
              "num_chains": num_chains,
              "num_samples": num_samples, "warmup_steps": warmup_steps,
              "divergences": divergences, "label_switched_draws": n_switched, "max_rhat": rhat,
              "label_alignment": comps.describe(),
              "log_joint_draws": log_joint_draws.tolist()},
    )


def _max_rhat(samples: dict) -> float:
    import arviz as az
    import numpy as np

    data = {k: v.detach().cpu().numpy() for k, v in samples.items()}
    r = az.rhat(az.convert_to_dataset(data))
    vals = [np.nanmax(np.asarray(r[k])) for k in r.data_vars]
    return float(np.nanmax(vals)) if vals else float("nan")
