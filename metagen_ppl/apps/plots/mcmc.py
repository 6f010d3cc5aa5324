"""MCMC diagnostics: arviz trace and rank plots, and a forest plot on per-scalar standardised scales with
ESS and R-hat panels, the point estimates marked on each."""

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


def _chain_offsets(n_chains: int):
    """Vertical offsets of the chains' sub-rows around a row (at most 4 chains drawn separately)."""
    shown = n_chains if n_chains <= 4 else 1
    step = 0.6 / shown
    return (np.arange(shown) - (shown - 1) / 2.0) * step


def _rhat(draws):
    """Rank-normalised split R-hat of one scalar's ``(chains, draws)`` (arviz), and whether it compares
    two halves of a single chain; ``nan`` when there are too few draws."""
    import arviz as az

    draws = np.asarray(draws, dtype=float)
    halves = False
    if draws.shape[0] < 2:
        half = draws.shape[1] // 2
        if half < 4:
            return float("nan"), True
        draws, halves = draws[:, :2 * half].reshape(2, half), True
    if draws.shape[1] < 4 or not np.isfinite(draws).all():
        return float("nan"), halves
    return float(az.rhat(draws)), halves


def _forest(path, entries, flat, points, styles, n_chains, hdi_prob, title):
    """Forest plot with one row per scalar, each on its own standardised scale, plus ESS and R-hat panels.

    Every scalar's draws are centred on their posterior mean and divided by their posterior sd (all chains
    pooled), so each row's interval spans the same part of the x axis whatever the parameter's scale; the
    row label gives the mean and sd in the parameter's units, and the point estimates are marked on the
    same standardised scale (those beyond the axis drawn at its edge with their value written beside).
    The ESS panel shows bulk (filled) and tail (hollow) ESS with a reference at 100 per chain; the R-hat
    panel the rank-normalised split R-hat of each scalar (arviz) with references at 1 and 1.01 (one chain:
    its two halves compared, said in the panel title; too few draws: said instead of markers).
    """
    import arviz as az

    n = len(entries)
    draws = [np.asarray(flat[v] if lab is None else flat[v][..., i], dtype=float) for v, lab, i in entries]
    pooled = [d.reshape(-1) for d in draws]
    mu = np.array([np.nanmean(d) if np.isfinite(d).any() else 0.0 for d in pooled])
    sd = np.array([np.nanstd(d, ddof=1) if np.isfinite(d).sum() > 1 else 0.0 for d in pooled])
    scale = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    offsets = _chain_offsets(n_chains)
    per_chain = len(offsets) == n_chains
    greys = [str(g) for g in np.linspace(0.1, 0.55, len(offsets)).round(2)]

    row_h = 0.34 + 0.12 * len(offsets)
    fig = base.figure(figsize=(12.5, max(3.6, n * row_h + 2.6)))
    ax, ax_ess, ax_rhat = fig.subplots(1, 3, sharey=True, width_ratios=[6.0, 2.4, 2.4])
    ys = np.arange(n)[::-1].astype(float)  # the first entry at the top
    extent = 0.0
    for r, (d, y) in enumerate(zip(draws, ys)):
        z = (d - mu[r]) / scale[r]
        groups = [z[c] for c in range(z.shape[0])] if per_chain else [z.reshape(-1)]
        for g, off, grey in zip(groups, offsets, greys):
            g = g[np.isfinite(g)]
            if g.size == 0:
                continue
            lo, hi = (az.hdi(g, hdi_prob=hdi_prob) if g.size >= 3 else (g.min(), g.max()))
            q25, med, q75 = np.percentile(g, [25, 50, 75])
            (line,) = ax.plot([lo, hi], [y + off, y + off], color=grey, lw=1.4, solid_capstyle="butt", zorder=2)
            line.set_gid("hdi")
            ax.plot([q25, q75], [y + off, y + off], color=grey, lw=4.5, solid_capstyle="butt", zorder=2)
            ax.plot([med], [y + off], "o", color="white", mec=grey, ms=4.5, zorder=3)
            extent = max(extent, abs(lo), abs(hi))
    lim = max(2.5, 1.12 * extent)
    zpts = {m: {(v, i): (vals[(v, i)] - mu[r]) / scale[r] for r, (v, _, i) in enumerate(entries) if (v, i) in vals}
            for m, vals in points}
    far = max((abs(z) for zs in zpts.values() for z in zs.values() if np.isfinite(z)), default=0.0)
    lim = min(max(lim, 1.08 * far), max(lim, 6.0))
    ax.axvline(0.0, color="0.5", lw=0.8, ls=":", zorder=1)
    for j, (m, _) in enumerate(points):
        st = styles[m]
        xs, yv, outside = [], [], []
        for r, (v, _, i) in enumerate(entries):
            z = zpts[m].get((v, i))
            if z is None or not np.isfinite(z):
                continue
            if abs(z) > lim:
                outside.append((r, z))
                z = np.sign(z) * lim
            xs.append(z)
            yv.append(ys[r])
        ax.scatter(xs, yv, marker=st["marker"], s=70, facecolors="none", edgecolors=st["color"], linewidths=1.8,
                   zorder=5 + j, label=m)
        for r, z in outside:
            ax.annotate(f"{m}: {z:+.3g} sd", (np.sign(z) * lim, ys[r]), xytext=(-4 if z > 0 else 4, 7 + 9 * j),
                        textcoords="offset points", ha="right" if z > 0 else "left", fontsize=8, color=st["color"])
    ax.set_xlim(-lim, lim)
    labels = []
    for r, (v, lab, _) in enumerate(entries):
        full = v if lab is None else f"{v}[{lab}]"
        labels.append(f"{full}  ({mu[r]:.4g} \u00b1 {sd[r]:.2g})" if sd[r] > 0 else f"{full}  ({mu[r]:.4g}, sd 0)")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("(value - posterior mean) / posterior sd")
    ax.set_title(f"{hdi_prob:.0%} HDI, interquartile range, median\n" + (
        ("1 chain" if n_chains < 2 else f"{n_chains} chains, top to bottom") if per_chain else
        f"all {n_chains} chains pooled"), fontsize=10)
    ax.grid(axis="x", alpha=0.3)

    # ESS (bulk, tail), pooled over chains
    total = int(draws[0].size) if draws else 0
    bulk = np.array([float(az.ess(d)) if d.shape[1] >= 4 and np.isfinite(d).all() else np.nan for d in draws])
    tail = np.array([float(az.ess(d, method="tail")) if d.shape[1] >= 4 and np.isfinite(d).all() else np.nan
                     for d in draws])
    ref = 100 * max(n_chains, 1)
    ax_ess.scatter(bulk, ys, s=30, color="0.25", zorder=3).set_gid("ess_bulk")
    ax_ess.scatter(tail, ys, s=30, facecolors="none", edgecolors="0.25", linewidths=1.2, zorder=3).set_gid("ess_tail")
    ax_ess.axvline(ref, color="tab:red", ls="--", lw=1)
    ax_ess.annotate(f"{ref}", (ref, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=8, color="tab:red")
    top = np.nanmax(np.concatenate([bulk, tail, [ref, total]]))
    ax_ess.set_xlim(0, 1.08 * top)
    ax_ess.set_xlabel(f"ESS of {total} draws\n(red: 100 per chain)" if total else "ESS")
    ax_ess.set_title("ESS\nbulk (filled), tail (hollow)", fontsize=10)
    ax_ess.grid(axis="x", alpha=0.3)
    ax_ess.tick_params(axis="y", left=False)

    # R-hat
    rh = [_rhat(d) for d in draws]
    rhat = np.array([v for v, _ in rh])
    halves = any(h for _, h in rh)
    ok = np.isfinite(rhat)
    if ok.any():
        bad = ok & (rhat > 1.01)
        ax_rhat.scatter(rhat[ok], ys[ok], s=34, c=np.where(bad[ok], "tab:red", "0.25"), zorder=3).set_gid("rhat")
        ax_rhat.axvline(1.0, color="0.5", lw=0.8)
        ax_rhat.axvline(1.01, color="tab:red", ls="--", lw=1)
        ax_rhat.annotate("1.01", (1.01, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                         textcoords="offset points", fontsize=8, color="tab:red")
        hi = max(1.04, float(np.nanmax(rhat)) + 0.01)
        lo = min(0.995, float(np.nanmin(rhat)) - 0.005)
        ax_rhat.set_xlim(lo, hi)
        ax_rhat.set_xlabel("R-hat\n(red: > 1.01)")
        ax_rhat.set_title("rank-normalised split R-hat\n" + ("1 chain: its two halves" if halves else
                          f"{n_chains} chains"), fontsize=10)
        ax_rhat.grid(axis="x", alpha=0.3)
    else:
        ax_rhat.set_xticks([])
        ax_rhat.set_title("R-hat\n", fontsize=10)
        ax_rhat.text(0.5, 0.5, ("R-hat not computed:\n1 chain of %d draws\n(needs 2 chains, or 8 draws)"
                                % (draws[0].shape[1] if draws else 0)) if n_chains < 2 else
                     "R-hat not computed:\ntoo few draws", transform=ax_rhat.transAxes, ha="center", va="center",
                     fontsize=9, wrap=True)
    ax_rhat.tick_params(axis="y", left=False)
    if points:
        fig.legend(loc="outside lower center", ncols=min(len(points), 6), fontsize=9, title="point estimates",
                   title_fontsize=9, framealpha=0.85)
    fig.suptitle(title, fontsize=10)
    base.save(fig, path)


def plot_mcmc_diagnostics(prefix, mcmc_result, point_results=(), var_names=None, max_scalars: int = 12, *,
                          align: bool = True, component_sites=None, location_site=None,
                          hdi_prob: float = 0.94, kinds=("trace", "rank", "forest")) -> dict:
    """Trace, rank and forest plots of posterior draws, with point estimates marked.

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
    a colour per method and a legend), and one hollow marker per method on the
    forest plot (with a legend). With ``align`` the estimates' object labels are first
    matched to the posterior mean's by the Hungarian algorithm (the draws are
    label-aligned, but each fit labels the objects in its own order);
    ``component_sites`` / ``location_site`` default to the model's
    (``load_model(mcmc_result.model)``); alignment is skipped when unavailable.

    The forest plot has one row per scalar on its own standardised scale
    (``(value - posterior mean) / posterior sd``, chains pooled for the mean and
    sd; the row label gives both in the parameter's units), so every interval is
    visible whatever the parameters' scales: per chain (up to 4; more are
    pooled) the ``hdi_prob`` HDI (thin), the interquartile range (thick) and the
    median. The point estimates are marked on the same scale; one beyond the
    axis (at most 6 sd, or the intervals' extent) sits at its edge with its
    distance in sd written beside it. Beside it, bulk (filled) and tail
    (hollow) ESS with a reference at 100 per chain, and arviz's rank-normalised
    split R-hat of each scalar with references at 1 and 1.01 (red markers above
    1.01); with one chain the R-hat compares its two halves (the panel title says
    so), and with fewer than 8 draws the panel says that R-hat was not computed.

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
    used = (mcmc_result.info or {}).get("label_alignment") or {}   # the sites the draws were aligned by
    if align and used.get("component_sites") and used.get("location_site") and not used.get("batch_shape"):
        model_cs = dict(used["component_sites"]) if model_cs is None else model_cs
        model_loc = used["location_site"] if model_loc is None else model_loc
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
        est = ("; markers: point estimates" + (" (objects matched to the posterior mean)" if any_aligned else "")
               if points else "")
        _forest(path, entries, flat, points, styles, n_chains, hdi_prob,
                title=f"{head}: {hdi_prob:.0%} HDI (thin), interquartile range (thick) and median (dot) "
                      f"of each chain\nx standardised per scalar: (value - posterior mean) / posterior sd, "
                      f"mean \u00b1 sd in the row labels{est}\n{shown_txt}")

    attempt("trace", trace)
    attempt("rank", rank)
    attempt("forest", forest)
    return paths
