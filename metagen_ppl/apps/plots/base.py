"""What every plot of :mod:`metagen_ppl.apps.plots` shares: method styles, figures, saving, pyplot hygiene."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch

from metagen_ppl.io import atomic_path

METHOD_STYLE = {
    "em": dict(marker="o", color="tab:blue"),
    "em-mstep": dict(marker="o", color="tab:blue"),
    "em-enumerate": dict(marker="v", color="tab:cyan"),
    "em-sample": dict(marker="p", color="navy"),
    "svi-map": dict(marker="s", color="tab:orange"),
    "svi-normal": dict(marker="D", color="tab:purple"),
    "mcmc": dict(marker="^", color="tab:green"),
}


STYLE_CYCLE = [
    dict(marker="P", color="tab:red"), dict(marker="X", color="tab:brown"),
    dict(marker="*", color="tab:pink"), dict(marker="h", color="tab:olive"),
    dict(marker="<", color="darkgoldenrod"), dict(marker=">", color="teal"),
    dict(marker="d", color="crimson"), dict(marker="8", color="slateblue"),
    dict(marker="H", color="darkorange"), dict(marker="v", color="darkgreen"),
]


_ASSIGNED: dict = {}  # unknown method name -> cycle index (same style in every figure of a process)


PROJECTIONS = ((0, 1), (0, 2), (1, 2))


AXIS = "xyz"


def styles(names) -> dict:
    """``{name: {"color", "marker"}}``, distinct within ``names``.

    Built-in method names keep their fixed style; other names (or a built-in
    whose style is already taken in this figure) get the next free cycle style.
    """
    names = list(dict.fromkeys(names))
    out, used = {}, set()
    for name in names:
        st = METHOD_STYLE.get(name)
        if st is not None and (st["color"], st["marker"]) not in used:
            out[name] = dict(st)
            used.add((st["color"], st["marker"]))
    for name in names:
        if name in out:
            continue
        idx = _ASSIGNED.get(name)
        if idx is None or (STYLE_CYCLE[idx % len(STYLE_CYCLE)]["color"], STYLE_CYCLE[idx % len(STYLE_CYCLE)]["marker"]) in used:
            idx = next((i for i in range(len(STYLE_CYCLE))
                        if (STYLE_CYCLE[i]["color"], STYLE_CYCLE[i]["marker"]) not in used), len(used))
            _ASSIGNED.setdefault(name, idx)
        st = dict(STYLE_CYCLE[idx % len(STYLE_CYCLE)])
        out[name] = st
        used.add((st["color"], st["marker"]))
    return out


def as_numpy(x):
    if x is None:
        return None
    if torch.is_tensor(x):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def figure(**kw):
    kw.setdefault("layout", "constrained")
    from matplotlib.figure import Figure

    return Figure(**kw)


def save(fig, path, tight: bool = True, dpi: int = 110):
    """Write ``fig`` as a PNG at ``dpi``; ``tight=False`` skips the bounding-box pass (an extra draw),
    for big figures whose constrained layout already keeps everything inside."""
    with atomic_path(path) as tmp:  # a killed run never leaves a truncated PNG
        fig.savefig(tmp, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))


@contextlib.contextmanager
def pyplot_closing():
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


def valid_results(results):
    return [r for r in (results or ()) if r is not None]


def points(a, dim=None):
    """``a`` as finite rows ``(P, D)`` (all leading dims flattened), or ``None`` if empty."""
    a = as_numpy(a)
    if a is None or a.size == 0 or a.ndim == 0:
        return None
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
    if dim is not None and a.shape[1] != dim:
        return None
    a = a[np.isfinite(a).all(axis=1)]
    return a if len(a) else None


def entry_label(i, shape):
    return ",".join(str(int(j)) for j in np.unravel_index(i, shape))
