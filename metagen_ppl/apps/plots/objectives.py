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
    fit one panel. The right panel zooms, in x and y, on the last ``zoom_frac``
    of the run (of the longest EM/SVI trace, on a linear x axis), with dotted
    lines at each final value; a trace that ended before that window (EM usually
    converges in a few iterations) is drawn across it at its final value, so the
    reader sees whether the methods reach the same level. EM's traces are drawn
    dashed, with markers and on top of the others, so they stay visible where
    SVI-MAP reaches the same values. Higher is better on both panels; a trace labelled as a
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
        Fraction of the run (its end) shown in the zoom panel.

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

    # the zoom window: the last zoom_frac of the run (of the longest optimisation trace; draws only if
    # there is nothing else), x and y
    runs = [c for c in curves if not c[4]] or curves
    x_end = int(max(c[2][-1] for c in runs))
    x0 = max(1, min(x_end, int(np.floor(x_end * (1.0 - zoom_frac))) + 1))

    fig = base.figure(figsize=(13, 5.2))
    ax_all, ax_zoom = fig.subplots(1, 2)
    lows, highs, zvals, ended = [], [], [], []
    for method, label, x, y, is_draws in curves:
        st = styles[method]
        finite = np.isfinite(y)
        last = y[finite][-1]
        em_like = method.startswith("em") and not is_draws
        if is_draws:
            kw = dict(color=st["color"], lw=0.8, alpha=0.55, label=label, zorder=2)
        else:
            # EM on top, dashed, with markers: it stays visible where SVI-MAP reaches the same values
            kw = dict(color=st["color"], lw=2.0 if em_like else 1.5, ls="--" if em_like else "-", label=label,
                      zorder=5 if em_like else 3, ms=5 if em_like else 4)
            if em_like or len(y) <= 60:
                kw.update(marker=st["marker"], markevery=None if len(y) <= 60 else 0.04)
        for ax in (ax_all, ax_zoom):
            ax.plot(x, y, **kw)
            kw["label"] = None
        # full panel: skip the first 5 % of long traces when setting the y range
        vis = y[len(y) // 20:] if len(y) > 20 else y
        vis = vis[np.isfinite(vis)]
        lows.append(vis.min() if vis.size else last)
        highs.append(y[finite].max())
        # zoom panel: the values inside the window; a trace that ended before it: its final value, drawn across
        inside = y[(x >= x0) & finite]
        if inside.size:
            zvals.append(inside)
            if not is_draws:
                ax_zoom.axhline(last, color=st["color"], ls=":", lw=1, zorder=1)
        elif not is_draws:
            zvals.append(np.asarray([last]))
            ended.append(f"{method} after {len(y)} values")
            ax_zoom.axhline(last, color=st["color"], ls="--" if em_like else "-.", lw=2.0, zorder=4 if em_like else 3)
            ax_zoom.plot([x0], [last], ls="none", marker=st["marker"], color=st["color"], ms=7, zorder=6,
                         clip_on=False)
    lo, hi = min(lows), max(highs)
    clipped = any(np.nanmin(c[3]) < lo for c in curves)
    pad = 0.04 * (hi - lo) + 1e-9 * max(1.0, abs(hi))
    ax_all.set_ylim(lo - pad, hi + pad)
    z = np.concatenate(zvals)
    lo, hi = float(z.min()), float(z.max())
    pad = 0.08 * (hi - lo) + 1e-7 * max(1.0, abs(hi))
    ax_zoom.set_ylim(lo - pad, hi + pad)
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    ax_all.set_xscale("log")
    ax_all.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_all.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_all.xaxis.set_minor_formatter(NullFormatter())
    ax_all.set_xlabel("iteration (EM) / step (SVI) / draw (MCMC), 1 = first value (log scale)")
    span = max(x_end - x0, 1)
    ax_zoom.set_xlim(x0 - 0.02 * span, x_end + 0.02 * span)
    ax_zoom.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_zoom.set_xlabel("iteration / step / draw (linear scale)")
    for ax in (ax_all, ax_zoom):
        ax.grid(alpha=0.3, which="both")
    ax_all.set_ylabel("objective (log joint / ELBO; higher is better)")
    ax_all.set_title("all values" + (" (y clipped: the first 5 % of long traces start lower)" if clipped else ""),
                     fontsize=10)
    ax_zoom.set_title(f"zoom: the last {zoom_frac:.0%} of the run, values {x0} to {x_end} (dotted: final values)"
                      + (f"\nended earlier, drawn at its final value: {', '.join(ended)}" if ended else ""),
                      fontsize=10)
    fig.legend(loc="outside lower center", ncols=min(3, len(curves)), fontsize=9, framealpha=0.85)
    fig.suptitle(title)
    base.save(fig, path)
    return path
