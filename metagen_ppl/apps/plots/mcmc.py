"""MCMC diagnostics through arviz: trace, rank and forest plots with the point estimates marked."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from metagen_ppl.apps.plots import base
from metagen_ppl.engine.align import permutation_to, permute_sites
from metagen_ppl.engine.registry import load_model


class _Skip(Exception):
    """A plot that does not apply (not an error)."""


def plot_mcmc_trace(path, result, var_names=None):
    """``arviz.plot_trace`` of ``result.to_inference_data()`` (posterior densities and chains)."""
    import arviz as az

    with base.pyplot_closing():
        idata = result.to_inference_data()
        if var_names is None:
            var_names = [v for v in idata.posterior.data_vars]
        axes = az.plot_trace(idata, var_names=var_names, compact=True, show=False,
                             figsize=(12, 2.8 * len(var_names)), backend_kwargs={"layout": "constrained"})
        fig = np.asarray(axes).ravel()[0].figure
        fig.suptitle(f"{result.method} posterior draws ({result.model}): densities per chain (left), "
                     "traces (right)")
        base.save(fig, path)
    return path


def _allocate(sizes: dict, cap: int) -> dict:
    """Scalars shown per site: at most ``cap`` in all, smallest sites first, the rest shared fairly."""
    take = {v: 0 for v in sizes}
    remaining = int(cap)
    order = sorted(sizes, key=lambda v: sizes[v])
    for i, v in enumerate(order):
        if remaining <= 0:
            break
        share = max(1, remaining // (len(order) - i))
        take[v] = min(sizes[v], share)
        remaining -= take[v]
    return take


def _aligned_point(params, ref, component_sites, location_site):
    """``params`` with its component sites permuted to match ``ref`` (Hungarian on the locations)."""
    p = {k: torch.as_tensor(v).detach() for k, v in params.items()}
    if not component_sites or not location_site or location_site not in p or location_site not in ref:
        return p, False
    a, b = p[location_site].double(), torch.as_tensor(ref[location_site]).detach().double()
    if a.shape != b.shape or a.dim() != 2:
        return p, False
    try:
        perm = permutation_to(a, b)
        if any(name in p and p[name].shape[dim] != len(perm) for name, dim in component_sites.items()):
            return p, False
        return permute_sites(p, perm, component_sites), True
    except Exception:  # alignment is a nicety: keep the estimate as it is
        return p, False


def plot_mcmc_diagnostics(prefix, mcmc_result, point_results=(), var_names=None, max_scalars: int = 12, *,
                          align: bool = True, component_sites=None, location_site=None,
                          hdi_prob: float = 0.94, kinds=("trace", "rank", "forest")) -> dict:
    """arviz trace, rank and forest plots of posterior draws, with point estimates marked.

    The draws come from ``mcmc_result.to_inference_data()`` (any result with
    ``samples`` ``(chains, draws, ...)``: MCMC, or AutoNormal's guide draws). Each
    site is flattened (row-major) and at most ``max_scalars`` scalar entries are
    shown over all sites: scalar and small sites first, the rest shared fairly,
    the first entries of each big site (``locs`` ``(K, 3)`` or ``(S, K, 3)``)
    kept; the figure titles say which entries are shown. Entries are labelled
    ``site[i,j]``.

    The point estimates ``r.params[site]`` of ``point_results`` (EM, SVI, ...)
    are drawn one colour per method: a vertical line on each density and a
    horizontal line on each trace (an overlay like arviz's ``lines=``, but with
    a colour per method and a legend), and one marker per method on the forest
    plot (with a legend). With ``align`` the estimates' object labels are first
    matched to the posterior mean's by the Hungarian algorithm (the draws are
    label-aligned, but each fit labels the objects in its own order);
    ``component_sites`` / ``location_site`` default to the model's
    (``load_model(mcmc_result.model)``); alignment is skipped when unavailable.

    Parameters
    ----------
    prefix : str
        Files are written to ``f"{prefix}_trace.png"``, ``f"{prefix}_rank.png"``
        and ``f"{prefix}_forest.png"``.
    mcmc_result : FitResult or None
    point_results : iterable of FitResult
        ``None`` entries, results without ``params``, and sites whose size
        differs from the draws' are skipped.
    var_names : list of str, optional
        Sites to show (default: every site with draws).
    max_scalars : int
        At most this many scalar entries in each figure (>= 1).
    align : bool
    component_sites : dict of str -> int, optional
    location_site : str, optional
    hdi_prob : float
        Interval of the forest plot.
    kinds : iterable of {"trace", "rank", "forest"}
        The plots to draw (the others are ``None``); a 12-scalar trace plot
        takes a few seconds.

    Returns
    -------
    dict
        ``{"trace": path or None, "rank": path or None, "forest": path or None}``;
        all ``None`` when ``mcmc_result`` is missing or has no draws. The rank
        plot needs two chains: a single chain is split into its two halves (as
        split R-hat does), and with fewer than 4 draws the rank plot is ``None``.
        A plot that arviz fails to draw is ``None`` with a ``RuntimeWarning``.
    """
    if max_scalars < 1:
        raise ValueError("max_scalars must be at least 1")
    paths = {"trace": None, "rank": None, "forest": None}
    kinds = set(kinds)
    if kinds - set(paths):
        raise ValueError(f"unknown plot kinds {sorted(kinds - set(paths))}; choose from {sorted(paths)}")
    if mcmc_result is None or not mcmc_result.samples:
        return paths
    import arviz as az

    idata = mcmc_result.to_inference_data()
    post = idata.posterior
    names = [v for v in (var_names if var_names is not None else list(post.data_vars)) if v in post.data_vars]
    if not names:
        return paths
    n_chains, n_draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    shapes = {v: tuple(post[v].shape[2:]) for v in names}
    sizes = {v: int(np.prod(shapes[v], dtype=int)) for v in names}
    take = _allocate(sizes, max_scalars)
    names = [v for v in names if take[v] > 0 and sizes[v] > 0]

    flat, coords, dims, entries, shown = {}, {}, {}, [], []
    for v in names:
        arr = np.asarray(post[v].values, dtype=float)
        if not shapes[v]:
            flat[v] = arr
            entries.append((v, None, 0))
            shown.append(v)
            continue
        n = take[v]
        dim = f"{v}_entry"
        labels = [base.entry_label(i, shapes[v]) for i in range(n)]
        flat[v] = arr.reshape(n_chains, n_draws, -1)[..., :n]
        coords[dim], dims[v] = labels, [dim]
        entries.extend((v, lab, i) for i, lab in enumerate(labels))
        shape_txt = "x".join(str(s) for s in shapes[v])
        shown.append(f"{v} (all {sizes[v]})" if n == sizes[v] else
                     f"{v}[{labels[0]}]..{v}[{labels[-1]}] (first {n} of {sizes[v]}, shape {shape_txt})")
    stats = {}
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        stats["diverging"] = np.asarray(idata.sample_stats["diverging"].values, dtype=bool)
    flat_idata = az.from_dict(posterior=flat, coords=coords, dims=dims, sample_stats=stats or None)
    shown_txt = "shown: " + "; ".join(shown)
    head = f"{mcmc_result.method} draws ({mcmc_result.model}), {n_chains} chain(s) x {n_draws}"

    # point estimates, one row per entry
    model_cs, model_loc = component_sites, location_site
    if align and (model_cs is None or model_loc is None):
        try:
            spec = load_model(mcmc_result.model)
            model_cs = spec.component_sites if model_cs is None else model_cs
            model_loc = spec.location_site if model_loc is None else model_loc
        except Exception:  # a model that cannot be loaded here: no alignment
            pass
    ref = {k: v.mean(dim=(0, 1)) if torch.is_tensor(v) else np.asarray(v).mean(axis=(0, 1))
           for k, v in mcmc_result.samples.items()}
    points, any_aligned = [], False  # (method, {(v, i): value})
    point_list = [r for r in base.valid_results(point_results) if r is not mcmc_result and r.params]
    for r in point_list:
        params = {k: torch.as_tensor(v).detach() for k, v in r.params.items()}
        if align:
            params, did = _aligned_point(params, ref, model_cs, model_loc)
            any_aligned |= did
        vals = {}
        for v in names:
            if v in params and params[v].numel() == sizes[v]:
                f = params[v].double().reshape(-1).numpy()
                for (ev, _, i) in (e for e in entries if e[0] == v):
                    vals[(ev, i)] = float(f[i])
        if vals:
            points.append((r.method, vals))
    styles = base.styles([m for m, _ in points])
    marks = ("; lines/markers: point estimates" + (" (objects matched to the posterior mean)" if any_aligned else "")
             if points else "")

    from matplotlib.lines import Line2D

    def handles():
        return [Line2D([], [], color=styles[m]["color"], marker=styles[m]["marker"], ls="--", label=m)
                for m, _ in points]

    def attempt(kind, fn):
        if kind not in kinds:
            return
        try:
            with base.pyplot_closing(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(f"{prefix}_{kind}.png")
            paths[kind] = f"{prefix}_{kind}.png"
        except _Skip:
            pass
        except Exception as e:
            warnings.warn(f"plot_mcmc_diagnostics: the {kind} plot failed ({type(e).__name__}: {e})",
                          RuntimeWarning, stacklevel=3)

    def trace(path):
        rows = len(entries)
        greys = [str(g) for g in np.linspace(0.15, 0.6, max(n_chains, 1)).round(2)]
        axes = az.plot_trace(flat_idata, var_names=names, compact=False, show=False, chain_prop={"color": greys},
                             figsize=(12, 1.75 * rows + 1.4), backend_kwargs={"layout": "constrained"})
        axes = np.asarray(axes).reshape(-1, 2)
        fig = axes[0, 0].figure
        if axes.shape[0] == rows:
            for row, (v, _, i) in enumerate(entries):
                for m, vals in points:
                    if (v, i) in vals:
                        st = styles[m]
                        axes[row, 0].axvline(vals[(v, i)], color=st["color"], ls="--", lw=1.4)
                        axes[row, 1].axhline(vals[(v, i)], color=st["color"], ls="--", lw=1.4)
            if points:
                axes[0, 1].legend(handles=handles(), loc="upper right", fontsize=8, framealpha=0.85,
                                  title="point estimates", title_fontsize=8)
        fig.suptitle(f"{head}: densities per chain (left), traces (right), chains in grey{marks}\n{shown_txt}",
                     fontsize=10)
        base.save(fig, path, tight=False)

    def rank(path):
        data, note = flat_idata, ""
        if n_chains < 2:
            half = n_draws // 2
            if half < 2:
                raise _Skip
            split = {v: a[:, :2 * half].reshape((2, half) + a.shape[2:]) for v, a in flat.items()}
            data = az.from_dict(posterior=split, coords=coords, dims=dims)
            note = " (1 chain: ranks of its first and second halves, as in split R-hat)"
        n = len(entries)
        cols = min(3, n)
        nrows = -(-n // cols)
        axes = az.plot_rank(data, var_names=names, show=False, figsize=(4.2 * cols, 2.6 * nrows + 1.0),
                            backend_kwargs={"layout": "constrained"})
        fig = np.asarray(axes).ravel()[0].figure
        for ax in list(fig.axes):
            if not ax.axison:
                fig.delaxes(ax)
        fig.suptitle(f"{head}: rank plots{note} (uniform bars = chains agree)\n{shown_txt}", fontsize=10)
        base.save(fig, path, tight=False)

    def forest(path):
        axes = az.plot_forest(flat_idata, var_names=names, combined=False, hdi_prob=hdi_prob, ess=True, colors="0.4",
                              r_hat=n_chains >= 2, show=False,
                              figsize=(11, 0.32 * len(entries) * max(1, min(n_chains, 4)) + 1.8))
        ax = np.asarray(axes).ravel()[0]
        fig = ax.figure
        ticks = np.asarray(ax.get_yticks(), dtype=float)
        texts = [t.get_text() for t in ax.get_yticklabels()]
        order = np.argsort(-ticks)  # arviz draws the first entry at the top
        ok = len(ticks) == len(entries)
        if ok:
            for (v, lab, _), k in zip(entries, order):
                full = v if lab is None else f"{v}[{lab}]"
                if texts[k] not in (full, f"[{lab}]", v):
                    ok = False
                    break
        if points and ok:
            for m, vals in points:
                xs = [vals[(v, i)] for (v, _, i) in entries if (v, i) in vals]
                ys = [ticks[k] for (v, _, i), k in zip(entries, order) if (v, i) in vals]
                st = styles[m]
                ax.scatter(xs, ys, marker=st["marker"], s=55, color=st["color"], edgecolors="black",
                           linewidths=0.5, zorder=5, label=m)
            ax.legend(loc="best", fontsize=8, framealpha=0.85, title="point estimates", title_fontsize=8)
        elif points:
            warnings.warn("plot_mcmc_diagnostics: forest rows could not be matched to the entries; "
                          "point estimates not marked", RuntimeWarning, stacklevel=2)
        fig.suptitle(f"{head}: {hdi_prob:.0%} HDI per chain (thin) and interquartile range (thick){marks}\n"
                     f"{shown_txt}", fontsize=10)
        base.save(fig, path)

    attempt("trace", trace)
    attempt("rank", rank)
    attempt("forest", forest)
    return paths
