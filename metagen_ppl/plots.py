"""Plots of scenes, objective traces and MCMC diagnostics, each written to a PNG file.

The scene and trace plots use matplotlib's object-oriented API (no pyplot
state, no display needed). :func:`plot_mcmc_trace` goes through
``arviz.plot_trace``, which uses pyplot; outside an interactive session the
non-interactive Agg backend is selected.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

__all__ = ["plot_scene", "plot_traces", "plot_mcmc_trace"]

_METHOD_STYLE = {
    "em": dict(marker="o", color="tab:blue"),
    "svi-map": dict(marker="s", color="tab:orange"),
    "svi-normal": dict(marker="D", color="tab:purple"),
    "mcmc": dict(marker="^", color="tab:green"),
}
_PROJECTIONS = [(0, 1), (0, 2), (1, 2)]
_AXIS = "xyz"


def _np(x):
    if x is None:
        return None
    if torch.is_tensor(x):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _figure(**kw):
    kw.setdefault("layout", "constrained")
    from matplotlib.figure import Figure

    return Figure(**kw)


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_scene(path, observations, true_locs=None, results=(), location_site: str = "locs",
               title: str = "scene"):
    """Observations and object locations in the three 2D projections (x-y, x-z, y-z).

    Parameters
    ----------
    path : str
        Output PNG.
    observations : (N, 3) tensor or array
    true_locs : (K, 3), optional
        Ground truth, drawn as black crosses.
    results : iterable of FitResult
        Each method's estimate ``params[location_site]`` with its own marker;
        results carrying posterior draws (MCMC) also show them as a faint cloud.
    """
    x = _np(observations)
    fig = _figure(figsize=(15, 5))
    axes = fig.subplots(1, 3)
    for ax, (i, j) in zip(axes, _PROJECTIONS):
        ax.scatter(x[:, i], x[:, j], s=4, c="0.6", alpha=0.5, linewidths=0, label="observations")
        for res in results:
            style = _METHOD_STYLE.get(res.method, dict(marker="P", color="tab:red"))
            if res.samples and location_site in res.samples:
                draws = _np(res.samples[location_site]).reshape(-1, x.shape[1])
                ax.scatter(draws[:, i], draws[:, j], s=2, color=style["color"], alpha=0.08, linewidths=0)
            locs = res.params.get(location_site)
            if locs is None:
                continue
            locs = _np(locs)
            ax.scatter(locs[:, i], locs[:, j], s=70, facecolors="none", edgecolors=style["color"],
                       marker=style["marker"], linewidths=1.8, label=res.method)
        if true_locs is not None:
            t = _np(true_locs)
            ax.scatter(t[:, i], t[:, j], s=110, c="black", marker="x", linewidths=2.2, label="truth")
        ax.set_xlabel(_AXIS[i])
        ax.set_ylabel(_AXIS[j])
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8, framealpha=0.8)
    fig.suptitle(title)
    _save(fig, path)
    return path


def plot_traces(path, results, title: str = "objective traces"):
    """One panel per result: its per-iteration ``trace`` (EM log joint, SVI ELBO or loss, ...).

    Results with an empty trace are skipped.
    """
    from matplotlib.ticker import MaxNLocator

    results = [r for r in results if r.trace]
    fig = _figure(figsize=(5.5 * max(len(results), 1), 4))
    axes = np.atleast_1d(fig.subplots(1, max(len(results), 1)))
    for ax, res in zip(axes, results):
        y = np.asarray([np.nan if v is None else float(v) for v in res.trace])
        style = _METHOD_STYLE.get(res.method, dict(color="tab:red"))
        ax.plot(np.arange(len(y)), y, color=style["color"], lw=1.2, marker="." if len(y) < 60 else None)
        ax.set_xlabel("iteration" if res.method == "em" else "step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(res.trace_label or "objective")
        ax.set_title(f"{res.method}: {len(y)} values")
        finite = y[np.isfinite(y)]
        if finite.size > 20 and res.method != "em":
            # SVI traces start far from their plateau: zoom on the last 90 %.
            tail = finite[len(finite) // 10:]
            lo, hi = float(tail.min()), float(tail.max())
            pad = 0.05 * (hi - lo) + 1e-9
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(f"{res.method}: {len(y)} values (y zoomed to the last 90 %)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)
    return path


def plot_mcmc_trace(path, result, var_names=None):
    """``arviz.plot_trace`` of ``result.to_inference_data()`` (posterior densities and chains)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import arviz as az
    import matplotlib.pyplot as plt

    idata = result.to_inference_data()
    if var_names is None:
        var_names = [v for v in idata.posterior.data_vars]
    axes = az.plot_trace(idata, var_names=var_names, compact=True, show=False,
                         figsize=(12, 2.8 * len(var_names)), backend_kwargs={"layout": "constrained"})
    fig = np.asarray(axes).ravel()[0].figure
    fig.suptitle(f"{result.method} posterior draws ({result.model}): densities per chain (left), "
                 "traces (right)")
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
    return path
