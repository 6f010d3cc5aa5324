"""Posterior assignment probabilities of the observations, method by method."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from metagen_ppl.apps.plots import base
from metagen_ppl.engine.align import permutation_to


def entropy(probs):
    """Entropy (nats) of each row of ``probs`` ``(N, K)``; rows with a non-finite entry get ``nan``."""
    p = np.asarray(probs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return np.where(np.isfinite(p).all(axis=-1), h, np.nan)


def _ranking_results(items):
    """The results whose entropy ranks the rows: EM's and MCMC's (all of them when there are neither)."""
    ranked = [it for it in items if it[0].method.startswith("em") or it[0].method == "mcmc"]
    return ranked or items


def plot_assignments(path, results, site: str = "z", num_obs: int = 20, seed: int = 0, observations_index=None, *,
                     mask=None, align: bool = True, location_site: str = "locs", annotate=None,
                     component_labels=None, title=None, select: str = "uncertain"):
    """Posterior assignment probabilities ``P(site_n = k)``: one heatmap (observations x components) per method.

    Every result with ``posteriors[site]`` of shape ``(..., K)`` gets a panel
    (EM's exact E-step marginals; MCMC's are averaged over draws). All leading
    dimensions are flattened into observations (row ``n`` of
    ``posterior.reshape(-1, K)``), so multi-scene posteriors such as
    ``(S, T, D, K + 1)`` work too; ``mask`` (boolean, the leading shape; True =
    a real observation) excludes padded entries. The same ``num_obs`` rows are
    shown for every method with the same leading shape: by default the most
    uncertain observations, i.e. those with the highest entropy of
    ``P(site_n = .)`` under EM or MCMC (the larger of the two where both are
    given; every result's when neither is), most uncertain at the top, ties
    broken by index; with ``select="random"`` a random sample without
    replacement fixed by ``seed``, in index order. Rows are labelled by their
    index (a tuple for several leading dims); cells hold the probability when
    the grid is small. The title says how the rows were chosen.

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
        Seed of the random rows (``select="random"``).
    observations_index : sequence of int, optional
        Rows to show instead (indices into the flattened, unmasked rows, in
        this order; out-of-range or masked ones are dropped).
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
    select : {"uncertain", "random"}
        How the rows are chosen when ``observations_index`` is not given.

    Returns
    -------
    str or None
        ``path``, or ``None`` when no result has ``posteriors[site]`` (or no row is left).
    """
    if select not in ("uncertain", "random"):
        raise ValueError(f"select must be 'uncertain' or 'random', not {select!r}")
    mask_arr = None if mask is None else np.asarray(base.as_numpy(mask) if torch.is_tensor(mask) else mask).astype(bool)
    items = []  # (result, probs (n_total, K), leading shape, valid)
    for res in base.valid_results(results):
        post = (res.posteriors or {}).get(site)
        if post is None:
            continue
        p = base.as_numpy(post)
        if p.ndim < 2 or p.shape[-1] == 0:
            continue
        lead, k = tuple(p.shape[:-1]), p.shape[-1]
        n_total = int(np.prod(lead))
        valid = np.ones(n_total, dtype=bool)
        if mask_arr is not None:
            if tuple(mask_arr.shape) != lead:
                warnings.warn(f"plot_assignments: {res.method}'s {site} posterior has leading shape {lead}, "
                              f"the mask {tuple(mask_arr.shape)}; skipped", RuntimeWarning, stacklevel=2)
                continue
            valid = mask_arr.reshape(-1)
        items.append((res, p.reshape(n_total, k), lead, valid))

    rows_of, rankers = {}, {}  # leading shape -> rows shown; -> methods whose entropy ranked them
    for lead in dict.fromkeys(it[2] for it in items):
        group = [it for it in items if it[2] == lead]
        n_total, valid = group[0][1].shape[0], group[0][3]
        if observations_index is not None:
            idx = np.asarray(observations_index, dtype=int).reshape(-1)
            idx = idx[(idx >= 0) & (idx < n_total)]
            idx = idx[valid[idx]]
        elif select == "random":
            pool = np.flatnonzero(valid)
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(pool, size=min(int(num_obs), len(pool)), replace=False))
        else:
            ranking = _ranking_results(group)
            h = np.nanmax(np.stack([entropy(it[1]) for it in ranking]), axis=0) if ranking else np.zeros(n_total)
            h = np.where(np.isfinite(h), h, -np.inf)
            pool = np.flatnonzero(valid)
            idx = pool[np.lexsort((pool, -h[pool]))][:max(int(num_obs), 0)]  # highest entropy first, then index
            rankers[lead] = (list(dict.fromkeys(it[0].method for it in ranking)), h[idx])
        rows_of[lead] = idx

    panels = []  # (method, probs (rows, K), row labels, note, n_valid, leading shape)
    ref_locs, ref_method = None, None
    for res, p, lead, valid in items:
        idx = rows_of[lead]
        if len(idx) == 0:
            continue
        k = p.shape[1]
        rows = p[idx]
        labels = [str(int(i)) if len(lead) == 1 else "(" + base.entry_label(i, lead) + ")" for i in idx]
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
        panels.append((res.method, rows, labels, note, int(valid.sum()), lead))
    if not panels:
        return None

    n_rows = max(len(p[2]) for p in panels)
    widths = [max(2.8, 1.3 + 0.55 * p[1].shape[1]) for p in panels]
    fig = base.figure(figsize=(sum(widths) + 2.0, 0.32 * n_rows + 2.3))
    axes = np.atleast_1d(fig.subplots(1, len(panels), width_ratios=widths))
    im = None
    for ax, (method, rows, labels, note, n_valid, _) in zip(axes, panels):
        im = ax.imshow(rows, aspect="auto", vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
        ax.set_xticks(np.arange(rows.shape[1]))
        if component_labels is not None and len(component_labels) == rows.shape[1]:
            ax.set_xticklabels([str(c) for c in component_labels], rotation=45 if rows.shape[1] > 6 else 0)
        ax.set_yticks(np.arange(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.tick_params(axis="x", labelsize=9)
        ax.set_xlabel("component k")
        ax.set_title(f"{method}{note}".replace("; ", "\n", 1) if len(method + note) > 6 * rows.shape[1] + 8
                     else f"{method}{note}", fontsize=9)
        if annotate if annotate is not None else rows.size <= 300:
            for (r, c), val in np.ndenumerate(rows):
                ax.text(c, r, f"{val:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if val > 0.6 else "black")
    axes[0].set_ylabel("observation n")
    leads = {p[5] for p in panels}
    if len(leads) == 1 and next(iter(leads)) in rankers:  # the entropies that chose the rows, on the right
        h = rankers[next(iter(leads))][1]
        right = axes[-1].twinx()
        right.set_ylim(axes[-1].get_ylim())
        right.set_yticks(np.arange(len(h)))
        right.set_yticklabels([f"{v:.2f}" if v >= 0.01 or v <= 0 else f"{v:.1e}" for v in h], fontsize=8)
        right.set_ylabel("entropy (nats)")
    fig.colorbar(im, ax=list(axes), shrink=0.9, label=f"P({site}_n = k)")
    if observations_index is not None:
        shown = "the given rows"
    elif select == "random":
        shown = f"random rows (seed {seed})"
    else:
        by = sorted({m for ms, _ in rankers.values() for m in ms}, key=lambda m: (m != "em", m))
        shown = (f"the most uncertain (highest entropy under {' or '.join(by)}), most uncertain at the top"
                 if by else "the most uncertain")
    fig.suptitle(title or f"posterior assignment probabilities P({site}_n = k): {n_rows} of "
                          f"{max(p[4] for p in panels)} observations,\n{shown}", fontsize=10)
    base.save(fig, path)
    return path
