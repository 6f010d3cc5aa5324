"""Objective traces: EM's log joint per iteration and SVI's ELBO per step, on one plot."""

from __future__ import annotations


import numpy as np

from metagen_ppl.apps.plots import base


def plot_traces(path, results, title: str = "objective traces"):
    """One panel per result: its per-iteration ``trace`` (EM log joint, SVI ELBO or loss, ...).

    Results with an empty trace are skipped.
    """
    from matplotlib.ticker import MaxNLocator

    results = [r for r in base.valid_results(results) if r.trace]
    styles = base.styles([r.method for r in results])
    fig = base.figure(figsize=(5.5 * max(len(results), 1), 4))
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
    base.save(fig, path)
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
    for res in base.valid_results(results):
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
    styles = base.styles([c[0] for c in curves])

    fig = base.figure(figsize=(13, 4.8))
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
    base.save(fig, path)
    return path
