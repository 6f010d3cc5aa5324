"""Plots of scenes, objective traces, assignments and MCMC diagnostics, each written to a PNG file.

Every function writes one PNG (or, for :func:`plot_mcmc_diagnostics`, three)
and returns its path. They accept empty or partial lists of results (a method
that failed is simply absent) and draw what they can; a function with nothing
to draw writes nothing and returns ``None``.

The scene, objective and assignment plots use matplotlib's object-oriented API
(no pyplot state, no display needed). The MCMC plots go through arviz, which
uses pyplot; outside an interactive session the non-interactive Agg backend is
selected, and every figure arviz opens is closed again before returning.

Methods are told apart by colour and marker: the built-in method names have
fixed styles, and any other name gets a distinct style from a cycle.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from metagen_ppl.domain.camera import IMAGE_SIZE, project, visible
from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.scenes import SceneSet
from metagen_ppl.engine.align import permutation_to, permute_sites
from metagen_ppl.engine.registry import load_model
from metagen_ppl.io import atomic_path, atomic_savefig

__all__ = ["plot_scene", "plot_scene_arrays", "plot_traces", "plot_objectives", "plot_mcmc_trace",
           "plot_mcmc_diagnostics", "plot_assignments"]

_METHOD_STYLE = {
    "em": dict(marker="o", color="tab:blue"),
    "em-mstep": dict(marker="o", color="tab:blue"),
    "em-enumerate": dict(marker="v", color="tab:cyan"),
    "em-sample": dict(marker="p", color="navy"),
    "svi-map": dict(marker="s", color="tab:orange"),
    "svi-normal": dict(marker="D", color="tab:purple"),
    "mcmc": dict(marker="^", color="tab:green"),
}
# Styles for other method names: no black (truth) and no grey (observations).
_CYCLE = [
    dict(marker="P", color="tab:red"), dict(marker="X", color="tab:brown"),
    dict(marker="*", color="tab:pink"), dict(marker="h", color="tab:olive"),
    dict(marker="<", color="darkgoldenrod"), dict(marker=">", color="teal"),
    dict(marker="d", color="crimson"), dict(marker="8", color="slateblue"),
    dict(marker="H", color="darkorange"), dict(marker="v", color="darkgreen"),
]
_ASSIGNED: dict = {}  # unknown method name -> cycle index (same style in every figure of a process)
_PROJECTIONS = ((0, 1), (0, 2), (1, 2))
_AXIS = "xyz"


def _styles(names) -> dict:
    """``{name: {"color", "marker"}}``, distinct within ``names``.

    Built-in method names keep their fixed style; other names (or a built-in
    whose style is already taken in this figure) get the next free cycle style.
    """
    names = list(dict.fromkeys(names))
    out, used = {}, set()
    for name in names:
        st = _METHOD_STYLE.get(name)
        if st is not None and (st["color"], st["marker"]) not in used:
            out[name] = dict(st)
            used.add((st["color"], st["marker"]))
    for name in names:
        if name in out:
            continue
        idx = _ASSIGNED.get(name)
        if idx is None or (_CYCLE[idx % len(_CYCLE)]["color"], _CYCLE[idx % len(_CYCLE)]["marker"]) in used:
            idx = next((i for i in range(len(_CYCLE))
                        if (_CYCLE[i]["color"], _CYCLE[i]["marker"]) not in used), len(used))
            _ASSIGNED.setdefault(name, idx)
        st = dict(_CYCLE[idx % len(_CYCLE)])
        out[name] = st
        used.add((st["color"], st["marker"]))
    return out


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


def _save(fig, path, tight: bool = True):
    """Write ``fig`` as a PNG; ``tight=False`` skips the bounding-box pass (an extra draw),
    for big figures whose constrained layout already keeps everything inside."""
    with atomic_path(path) as tmp:  # a killed run never leaves a truncated PNG
        fig.savefig(tmp, format="png", dpi=110, **({"bbox_inches": "tight"} if tight else {}))


@contextlib.contextmanager
def _pyplot():
    """pyplot (Agg unless pyplot was already imported); closes every figure opened inside."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        yield plt
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def _valid(results):
    return [r for r in (results or ()) if r is not None]


# --------------------------------------------------------------------------- scenes
def _points(a, dim=None):
    """``a`` as finite rows ``(P, D)`` (all leading dims flattened), or ``None`` if empty."""
    a = _np(a)
    if a is None or a.size == 0 or a.ndim == 0:
        return None
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
    if dim is not None and a.shape[1] != dim:
        return None
    a = a[np.isfinite(a).all(axis=1)]
    return a if len(a) else None


def plot_scene_arrays(path, observations=None, truth=None, estimates=None, draws=None, title: str = "scene",
                      projections=_PROJECTIONS, axis_names: str = "xyz", extra=None, *,
                      max_draw_points: int = 20000):
    """Points in 2D projections of a D-dimensional space (x-y, x-z, y-z by default), from arrays.

    For any model whose locations are not a ``(K, 3)`` ``params["locs"]`` site:
    the caller extracts the arrays. Every array may have extra leading dimensions
    (e.g. ``(S, K, 3)`` or ``(chains, draws, K, 3)``): they are flattened into
    points; rows with non-finite entries are dropped.

    Parameters
    ----------
    path : str
        Output PNG.
    observations : (N, D) array or tensor, optional
        A grey cloud.
    truth : (K, D), optional
        Black crosses.
    estimates : dict of str -> (M, D), optional
        One hollow marker style per label (method names get their method's style).
    draws : dict of str -> (P, D), optional
        Faint clouds (e.g. MCMC draws of the locations), at most
        ``max_draw_points`` points each (a fixed random subset). A label that
        starts with an estimate's label (``"mcmc draws"``) takes that estimate's colour.
    title : str
    projections : sequence of (i, j)
        Coordinate pairs, one panel each; pairs beyond the data's dimension are skipped.
    axis_names : str or sequence of str
        Names of the coordinates, for the axis labels.
    extra : dict of str -> (P, D), optional
        Small black triangles (one triangle orientation per label), e.g. camera positions.

    Returns
    -------
    str or None
        ``path``, or ``None`` (nothing written) when no array has points.
    """
    estimates = {k: _points(v) for k, v in (estimates or {}).items()}
    draws = {k: _points(v) for k, v in (draws or {}).items()}
    extra = {k: _points(v) for k, v in (extra or {}).items()}
    x, t = _points(observations), _points(truth)
    arrays = [a for a in [x, t, *estimates.values(), *draws.values(), *extra.values()] if a is not None]
    if not arrays:
        return None
    dim = max(a.shape[1] for a in arrays)
    projections = [(int(i), int(j)) for i, j in projections if max(int(i), int(j)) < dim]
    if not projections:
        return None
    names = list(axis_names) if not isinstance(axis_names, str) else list(axis_names)
    names += [f"dim {d}" for d in range(len(names), dim)]

    styles = _styles([k for k, v in estimates.items() if v is not None])
    draw_styles = {}
    cyc = _styles([k for k, v in {**estimates, **draws}.items() if v is not None])
    for k in draws:
        owner = max((e for e in styles if k.startswith(e)), key=len, default=None)
        draw_styles[k] = styles[owner] if owner is not None else cyc[k]
    rng = np.random.default_rng(0)
    for k, v in draws.items():
        if v is not None and len(v) > max_draw_points:
            draws[k] = v[np.sort(rng.choice(len(v), max_draw_points, replace=False))]

    from matplotlib.lines import Line2D

    fig = _figure(figsize=(5 * len(projections), 5))
    axes = np.atleast_1d(fig.subplots(1, len(projections)))
    tri = ["^", "v", "<", ">", "1", "2"]
    for ax, (i, j) in zip(axes, projections):
        if x is not None and x.shape[1] > max(i, j):
            ax.scatter(x[:, i], x[:, j], s=4, c="0.6", alpha=0.5, linewidths=0, label="observations")
        for k, d in draws.items():
            if d is not None and d.shape[1] > max(i, j):
                ax.scatter(d[:, i], d[:, j], s=2, color=draw_styles[k]["color"], linewidths=0,
                           alpha=float(np.clip(60.0 / len(d), 0.08, 0.5)))
        for k, e in estimates.items():
            if e is not None and e.shape[1] > max(i, j):
                st = styles[k]
                ax.scatter(e[:, i], e[:, j], s=70, facecolors="none", edgecolors=st["color"], marker=st["marker"],
                           linewidths=1.8, label=k)
        for n, (k, e) in enumerate(extra.items()):
            if e is not None and e.shape[1] > max(i, j):
                ax.scatter(e[:, i], e[:, j], s=18, c="black", marker=tri[n % len(tri)], linewidths=0.8, label=k)
        if t is not None and t.shape[1] > max(i, j):
            ax.scatter(t[:, i], t[:, j], s=110, c="black", marker="x", linewidths=2.2, label="truth")
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for k, d in draws.items():
        if d is not None:
            handles.append(Line2D([], [], ls="none", marker="o", ms=5, alpha=0.35, color=draw_styles[k]["color"]))
            labels.append(k if "draw" in k else f"{k} draws")
    if handles:
        axes[0].legend(handles, labels, loc="best", fontsize=8, framealpha=0.8)
    fig.suptitle(title)
    _save(fig, path)
    return path


def plot_scene(path, observations, true_locs=None, results=(), location_site: str = "locs",
               title: str = "scene"):
    """Observations and object locations in the three 2D projections (x-y, x-z, y-z).

    A thin wrapper of :func:`plot_scene_arrays` for results whose locations are
    ``params[location_site]``.

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
    location_site : str
    title : str

    Returns
    -------
    str or None
        ``path``; ``None`` when there is nothing to draw.
    """
    estimates, draws = {}, {}
    for res in _valid(results):
        label = res.method
        n = 2
        while label in estimates or label in draws:
            label = f"{res.method} #{n}"
            n += 1
        if res.samples and location_site in res.samples:
            draws[label] = res.samples[location_site]
        if res.params.get(location_site) is not None:
            estimates[label] = res.params[location_site]
    return plot_scene_arrays(path, observations=observations, truth=true_locs, estimates=estimates, draws=draws,
                             title=title)


# --------------------------------------------------------------------------- objective traces
def plot_traces(path, results, title: str = "objective traces"):
    """One panel per result: its per-iteration ``trace`` (EM log joint, SVI ELBO or loss, ...).

    Results with an empty trace are skipped.
    """
    from matplotlib.ticker import MaxNLocator

    results = [r for r in _valid(results) if r.trace]
    styles = _styles([r.method for r in results])
    fig = _figure(figsize=(5.5 * max(len(results), 1), 4))
    axes = np.atleast_1d(fig.subplots(1, max(len(results), 1)))
    for ax, res in zip(axes, results):
        y = np.asarray([np.nan if v is None else float(v) for v in res.trace])
        style = styles[res.method]
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


def _objective(res):
    """``(y, label)``: the trace as floats (None -> nan), oriented so that higher is better."""
    y = np.asarray([np.nan if v is None else float(v) for v in res.trace], dtype=float)
    label = res.trace_label or "objective"
    low = label.lower()
    if "loss" in low and "elbo" not in low:  # a loss trace (-ELBO): flip it
        y, label = -y, f"-({label})"
    return y, label


def _draw_chains(res, n):
    """Number of chains when ``res.trace`` is one value per draw of several chains (MCMC), else 0."""
    info = res.info or {}
    c, s = info.get("num_chains"), info.get("num_samples")
    if c and s and int(c) * int(s) == n:
        return int(c)
    return 0


def plot_objectives(path, results, title: str = "objectives: EM log joint per iteration, SVI ELBO per step", *,
                    include_draws: bool = True, zoom_frac: float = 0.5):
    """Every result's objective trace on one axes, iterations on a log scale, plus a zoom on the end.

    EM's trace (the log joint ``log p(x, theta)`` per iteration, the starting
    point first) and SVI's (the ELBO per step, i.e. minus Pyro's loss; with
    AutoDelta it is the log joint too) have different lengths and start at
    different levels; on a log-scaled x axis (x = 1 for the first value) both
    fit one panel, and the right panel zooms on the last ``zoom_frac`` of each
    trace (with dotted lines at each final value) so the reader sees whether they
    reach the same level. Higher is better on both panels; a trace labelled as a
    loss (not an ELBO) is negated. Results with draws (MCMC: ``trace`` is the
    log joint of each draw) are drawn one faint line per chain against the draw
    index when ``include_draws``.

    Parameters
    ----------
    path : str
        Output PNG.
    results : iterable of FitResult
        Missing entries (``None``) and results with an empty trace are skipped.
    title : str
    include_draws : bool
    zoom_frac : float
        Fraction of each trace (its end) shown in the zoom panel.

    Returns
    -------
    str or None
        ``path``, or ``None`` when no result has a finite trace value.
    """
    curves = []  # (method, legend label or None, x, y, is_draws)
    for res in _valid(results):
        if not res.trace:
            continue
        y, label = _objective(res)
        if not np.isfinite(y).any():
            continue
        chains = _draw_chains(res, len(y))
        if chains:
            if not include_draws:
                continue
            per = y.reshape(chains, -1)
            lab = (f"{res.method}: {label}, {chains} chain{'s' if chains > 1 else ''} "
                   f"(mean {np.nanmean(y):.6g})")
            for c in range(chains):
                curves.append((res.method, lab if c == 0 else None, np.arange(1, per.shape[1] + 1), per[c], True))
        else:
            last = y[np.isfinite(y)][-1]
            curves.append((res.method, f"{res.method}: {label} (final {last:.6g})", np.arange(1, len(y) + 1), y,
                           False))
    if not curves:
        return None
    styles = _styles([c[0] for c in curves])

    fig = _figure(figsize=(13, 4.8))
    ax_all, ax_zoom = fig.subplots(1, 2)
    lows, highs = [], []
    zlo, zhi, zx = [], [], []
    for method, label, x, y, is_draws in curves:
        st = styles[method]
        finite = np.isfinite(y)
        last = y[finite][-1]
        if is_draws:
            kw = dict(color=st["color"], lw=0.8, alpha=0.55, label=label)
        else:
            kw = dict(color=st["color"], lw=1.5, label=label, marker=st["marker"] if len(y) <= 60 else None, ms=4)
        for ax in (ax_all, ax_zoom):
            ax.plot(x, y, **kw)
            kw["label"] = None
        # full panel: skip the first 5 % of long traces when setting the y range
        vis = y[len(y) // 20:] if len(y) > 20 else y
        vis = vis[np.isfinite(vis)]
        lows.append(vis.min() if vis.size else last)
        highs.append(y[finite].max())
        # zoom panel: the last zoom_frac of the trace (at least its last value)
        start = min(len(y) - 1, int(np.floor(len(y) * (1.0 - zoom_frac)))) if len(y) > 2 else 0
        tail = y[start:][np.isfinite(y[start:])]
        tail = tail if tail.size else np.asarray([last])
        zlo.append(tail.min())
        zhi.append(tail.max())
        zx.append(x[start])
        if not is_draws:
            ax_zoom.axhline(last, color=st["color"], ls=":", lw=1)
    lo, hi = min(lows), max(highs)
    clipped = any(np.nanmin(c[3]) < lo for c in curves)
    pad = 0.04 * (hi - lo) + 1e-9 * max(1.0, abs(hi))
    ax_all.set_ylim(lo - pad, hi + pad)
    lo, hi = min(zlo), max(zhi)
    pad = 0.08 * (hi - lo) + 1e-7 * max(1.0, abs(hi))
    ax_zoom.set_ylim(lo - pad, hi + pad)
    ax_zoom.set_xlim(left=max(1.0, min(zx)) / 1.15, right=max(c[2][-1] for c in curves) * 1.15)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in (ax_all, ax_zoom):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("iteration (EM) / step (SVI) / draw (MCMC), 1 = first value (log scale)")
        ax.grid(alpha=0.3, which="both")
    ax_all.set_ylabel("objective (log joint / ELBO; higher is better)")
    ax_all.set_title("all values" + (" (y clipped: the first 5 % of long traces start lower)" if clipped else ""),
                     fontsize=10)
    ax_zoom.set_title(f"zoom: last {zoom_frac:.0%} of each trace (dotted: final values)", fontsize=10)
    fig.legend(loc="outside lower center", ncols=min(3, len(curves)), fontsize=8, framealpha=0.85)
    fig.suptitle(title)
    _save(fig, path)
    return path


# --------------------------------------------------------------------------- MCMC
def plot_mcmc_trace(path, result, var_names=None):
    """``arviz.plot_trace`` of ``result.to_inference_data()`` (posterior densities and chains)."""
    import arviz as az

    with _pyplot():
        idata = result.to_inference_data()
        if var_names is None:
            var_names = [v for v in idata.posterior.data_vars]
        axes = az.plot_trace(idata, var_names=var_names, compact=True, show=False,
                             figsize=(12, 2.8 * len(var_names)), backend_kwargs={"layout": "constrained"})
        fig = np.asarray(axes).ravel()[0].figure
        fig.suptitle(f"{result.method} posterior draws ({result.model}): densities per chain (left), "
                     "traces (right)")
        _save(fig, path)
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


def _entry_label(i, shape):
    return ",".join(str(int(j)) for j in np.unravel_index(i, shape))


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
        labels = [_entry_label(i, shapes[v]) for i in range(n)]
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
    point_list = [r for r in _valid(point_results) if r is not mcmc_result and r.params]
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
    styles = _styles([m for m, _ in points])
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
            with _pyplot(), warnings.catch_warnings():
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
        _save(fig, path, tight=False)

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
        _save(fig, path, tight=False)

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
        _save(fig, path)

    attempt("trace", trace)
    attempt("rank", rank)
    attempt("forest", forest)
    return paths


class _Skip(Exception):
    """A plot that does not apply (not an error)."""


# --------------------------------------------------------------------------- assignments
def plot_assignments(path, results, site: str = "z", num_obs: int = 20, seed: int = 0, observations_index=None, *,
                     mask=None, align: bool = True, location_site: str = "locs", annotate=None,
                     component_labels=None, title=None):
    """Posterior assignment probabilities ``P(site_n = k)``: one heatmap (observations x components) per method.

    Every result with ``posteriors[site]`` of shape ``(..., K)`` gets a panel
    (EM's exact E-step marginals; MCMC's are averaged over draws). All leading
    dimensions are flattened into observations (row ``n`` of
    ``posterior.reshape(-1, K)``), so multi-scene posteriors such as
    ``(S, T, D, K + 1)`` work too; ``mask`` (boolean, the leading shape; True =
    a real observation) excludes padded entries. The same ``num_obs`` rows,
    drawn at random without replacement (fixed by ``seed``), are shown for
    every method with the same leading shape. Rows are labelled by their index
    (a tuple for several leading dims); cells hold the probability when the
    grid is small.

    With ``align``, each panel's columns are permuted to match the first result
    that has ``params[location_site]`` of shape ``(K, D)`` (Hungarian matching of
    the locations), since every fit labels the objects in its own order; panels
    without such locations (or with a different number of columns) keep their order.

    Parameters
    ----------
    path : str
        Output PNG.
    results : iterable of FitResult
        ``None`` entries and results without ``posteriors[site]`` are skipped.
    site : str
        Enumerated site.
    num_obs : int
        Rows shown per panel (fewer if there are fewer observations).
    seed : int
    observations_index : sequence of int, optional
        Rows to show instead of a random sample (indices into the flattened,
        unmasked rows; out-of-range or masked ones are dropped).
    mask : bool array, optional
        Leading shape of the posteriors; results whose leading shape differs
        are skipped with a warning.
    align : bool
    location_site : str
    annotate : bool, optional
        Write the probabilities in the cells (default: when rows x columns <= 300).
    component_labels : sequence of str, optional
        Column names (default ``0 .. K-1``), e.g. ending with ``"missed"`` for a K + 1-th column;
        used for panels with that many columns.
    title : str, optional

    Returns
    -------
    str or None
        ``path``, or ``None`` when no result has ``posteriors[site]`` (or no row is left).
    """
    mask_arr = None if mask is None else np.asarray(_np(mask) if torch.is_tensor(mask) else mask).astype(bool)
    panels = []  # (method, probs (rows, K), row labels, note, n_valid)
    ref_locs, ref_method = None, None
    samples_cache = {}
    for res in _valid(results):
        post = (res.posteriors or {}).get(site)
        if post is None:
            continue
        p = _np(post)
        if p.ndim < 2 or p.shape[-1] == 0:
            continue
        lead, k = p.shape[:-1], p.shape[-1]
        n_total = int(np.prod(lead))
        valid = np.ones(n_total, dtype=bool)
        if mask_arr is not None:
            if tuple(mask_arr.shape) != tuple(lead):
                warnings.warn(f"plot_assignments: {res.method}'s {site} posterior has leading shape {tuple(lead)}, "
                              f"the mask {tuple(mask_arr.shape)}; skipped", RuntimeWarning, stacklevel=2)
                continue
            valid = mask_arr.reshape(-1)
        key = tuple(lead)
        if key not in samples_cache:
            if observations_index is not None:
                idx = np.asarray(observations_index, dtype=int).reshape(-1)
                idx = idx[(idx >= 0) & (idx < n_total)]
                idx = idx[valid[idx]]
            else:
                pool = np.flatnonzero(valid)
                rng = np.random.default_rng(seed)
                idx = np.sort(rng.choice(pool, size=min(int(num_obs), len(pool)), replace=False))
            samples_cache[key] = idx
        idx = samples_cache[key]
        if len(idx) == 0:
            continue
        rows = p.reshape(n_total, k)[idx]
        labels = [str(int(i)) if len(lead) == 1 else "(" + _entry_label(i, lead) + ")" for i in idx]
        note = " (mean over draws)" if (res.info or {}).get("num_chains") else ""  # MCMC's averaged E-steps
        locs = (res.params or {}).get(location_site)
        locs = None if locs is None else torch.as_tensor(locs).detach().double()
        if align and locs is not None and locs.dim() == 2 and locs.shape[0] == k:
            if ref_locs is None:
                ref_locs, ref_method = locs, res.method
            elif locs.shape == ref_locs.shape:
                try:
                    perm = permutation_to(locs, ref_locs).numpy()
                    if not np.array_equal(perm, np.arange(k)):
                        rows = rows[:, perm]
                    note += f"; columns matched to {ref_method}"
                except Exception:
                    pass
        panels.append((res.method, rows, labels, note, int(valid.sum())))
    if not panels:
        return None

    n_rows = max(len(p[2]) for p in panels)
    widths = [max(2.8, 1.3 + 0.55 * p[1].shape[1]) for p in panels]
    fig = _figure(figsize=(sum(widths) + 1.2, 0.3 * n_rows + 2.0))
    axes = np.atleast_1d(fig.subplots(1, len(panels), width_ratios=widths))
    im = None
    for ax, (method, rows, labels, note, n_valid) in zip(axes, panels):
        im = ax.imshow(rows, aspect="auto", vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
        ax.set_xticks(np.arange(rows.shape[1]))
        if component_labels is not None and len(component_labels) == rows.shape[1]:
            ax.set_xticklabels([str(c) for c in component_labels], rotation=45 if rows.shape[1] > 6 else 0)
        ax.set_yticks(np.arange(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("component k")
        ax.set_title(f"{method}{note}", fontsize=9)
        if annotate if annotate is not None else rows.size <= 300:
            for (r, c), val in np.ndenumerate(rows):
                ax.text(c, r, f"{val:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if val > 0.6 else "black")
    axes[0].set_ylabel("observation n")
    fig.colorbar(im, ax=list(axes), shrink=0.9, label=f"P({site}_n = k)")
    shown = ("given rows" if observations_index is not None
             else f"random rows (seed {seed})")
    fig.suptitle(title or f"posterior assignment probabilities P({site}_n = k): {n_rows} of "
                          f"{max(p[4] for p in panels)} observations, {shown}", fontsize=10)
    _save(fig, path)
    return path


# --------------------------------------------------------------------------- plot
def plot_scene_topview(path, scenes: SceneSet, index: int, *, inferred: Optional[Sequence] = None,
               responsibilities: Optional[torch.Tensor] = None, title: Optional[str] = None, ax=None) -> None:
    """Top view (x, z) of one scene: detections (coloured by category; hollow where the
    fit calls them hallucinations), true objects (large circles) and inferred objects (crosses).

    Writes a PNG to ``path``; with ``ax`` given, draws on that matplotlib axis instead
    (``path`` is ignored).
    """
    from matplotlib.figure import Figure

    colors = ["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange"]
    fig = None
    if ax is None:
        fig = Figure(figsize=(6.4, 6.0))
        ax = fig.add_subplot(1, 1, 1)
    m = scenes.det_mask[index]
    pos = scenes.positions[index][m].double().numpy()
    cat = scenes.categories[index][m].numpy()
    hall = None
    if responsibilities is not None:
        hall = responsibilities[index][m][:, 0].double().numpy() > 0.5
    for c, name in enumerate(CATEGORIES):
        sel = cat == c
        if hall is None:
            ax.scatter(pos[sel, 0], pos[sel, 2], s=10, color=colors[c], alpha=0.6)
        else:
            ax.scatter(pos[sel & ~hall, 0], pos[sel & ~hall, 2], s=10, color=colors[c], alpha=0.7)
            ax.scatter(pos[sel & hall, 0], pos[sel & hall, 2], s=14, facecolors="none",
                       edgecolors=colors[c], alpha=0.6, linewidths=0.8)
        ax.scatter([], [], s=30, color=colors[c], label=name)
    if scenes.truth is not None:
        t = scenes.truth[index]
        for c, p in zip(t["categories"].tolist(), t["positions"].double().numpy()):
            ax.scatter([p[0]], [p[2]], s=300, facecolors="none", edgecolors=colors[c], linewidths=2.0)
    if inferred is not None:
        for o in inferred[index]["objects"]:
            c = CATEGORIES.index(o["category_name"])
            ax.scatter([o["position"][0]], [o["position"][2]], s=140, marker="x", color=colors[c], linewidths=2.5)
    box = scenes.box.double().numpy()
    ax.set_xlim(box[0, 0], box[1, 0])
    ax.set_ylim(box[0, 2], box[1, 2])
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, title="dots: detections\n(hollow: hallucination)\n"
              "circles: truth, x: inferred", title_fontsize=7)
    ax.set_title(title or f"scene {scenes.paths[index]}")
    if fig is not None:
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=110)


# --------------------------------------------------------------------------- videos (evaluate)
_VIDEO_COLORS = ["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange"]


def plot_video(path, video, objects, *, resp=None, title=None, half_fov=None) -> str:
    """Every frame of ``video`` as an image panel: detections (colour = category, size = score,
    hollow where ``resp[t, d, 0] > 0.5``, i.e. called a hallucination), the true objects
    (circles) and the inferred ``objects`` (crosses, ``[(category, [x, y, z])]``) projected with
    the data's camera (DESIGN.md; the metric's projection)."""
    from matplotlib.figure import Figure

    T = video.num_frames
    ncol = min(5, T)
    nrow = int(math.ceil(T / ncol))
    fig = Figure(figsize=(2.6 * ncol, 2.7 * nrow + 0.6))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).reshape(-1)

    def proj(pos):
        if len(pos) == 0:
            return np.zeros((T, 0, 2)), np.zeros((T, 0), dtype=bool)
        p, d = project(torch.as_tensor(pos, dtype=video.cams.dtype).unsqueeze(0), video.cams.unsqueeze(1),
                       video.looks.unsqueeze(1))
        return p.numpy(), visible(p, d).numpy()

    tp, tv = proj(video.gt_positions.tolist() if video.has_ground_truth else [])
    tc = video.gt_categories.tolist() if video.has_ground_truth else []
    ip, iv = proj([p for _, p in objects])
    ic = [c for c, _ in objects]
    for t in range(len(axes)):
        ax = axes[t]
        ax.set_xticks([])
        ax.set_yticks([])
        if t >= T:
            ax.axis("off")
            continue
        ax.set_xlim(0, IMAGE_SIZE)
        ax.set_ylim(IMAGE_SIZE, 0)
        ax.set_aspect("equal")
        det = video.detections[t]
        for i in range(len(det)):
            c = int(det.categories[i])
            x, y = det.centers[i].tolist()
            s = 15 + 80 * float(det.scores[i])
            hall = resp is not None and float(resp[t, i, 0]) > 0.5
            ax.scatter([x], [y], s=s, facecolors="none" if hall else _VIDEO_COLORS[c], edgecolors=_VIDEO_COLORS[c],
                       linewidths=1.0, alpha=0.85)
        for k, c in enumerate(tc):
            if tv[t, k]:
                ax.scatter([tp[t, k, 0]], [tp[t, k, 1]], s=260, facecolors="none", edgecolors=_VIDEO_COLORS[c],
                           linewidths=2.0)
        for k, c in enumerate(ic):
            if iv[t, k]:
                ax.scatter([ip[t, k, 0]], [ip[t, k, 1]], s=120, marker="x", color=_VIDEO_COLORS[c], linewidths=2.2)
        ax.set_title(f"frame {t}", fontsize=8)
    handles = [fig.axes[0].scatter([], [], s=40, color=_VIDEO_COLORS[c], label=n) for c, n in enumerate(CATEGORIES)]
    top = 1.0 - 0.75 / fig.get_figheight()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, top + 0.005), ncol=5, fontsize=8,
               frameon=False, title="dots: detections (size = score; hollow = called hallucination); "
                                    "circles: truth; x: inferred", title_fontsize=8)
    fig.suptitle(title or f"video {video.path}", y=0.998, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, top - 0.2 / fig.get_figheight()))
    atomic_savefig(fig, path, dpi=72)
    return path
