"""Scenes: observations, true and estimated object locations in 3D projections; scenes seen from above;
the frames of a video with detections and projected objects."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from metagen_ppl.apps.plots import base
from metagen_ppl.domain.camera import project, visible
from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.scenes import SceneSet
from metagen_ppl.io import atomic_savefig


def plot_scene_arrays(path, observations=None, truth=None, estimates=None, draws=None, title: str = "scene",
                      projections=base.PROJECTIONS, axis_names: str = "xyz", extra=None, *,
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
    estimates = {k: base.points(v) for k, v in (estimates or {}).items()}
    draws = {k: base.points(v) for k, v in (draws or {}).items()}
    extra = {k: base.points(v) for k, v in (extra or {}).items()}
    x, t = base.points(observations), base.points(truth)
    arrays = [a for a in [x, t, *estimates.values(), *draws.values(), *extra.values()] if a is not None]
    if not arrays:
        return None
    dim = max(a.shape[1] for a in arrays)
    projections = [(int(i), int(j)) for i, j in projections if max(int(i), int(j)) < dim]
    if not projections:
        return None
    names = list(axis_names) if not isinstance(axis_names, str) else list(axis_names)
    names += [f"dim {d}" for d in range(len(names), dim)]

    styles = base.styles([k for k, v in estimates.items() if v is not None])
    draw_styles = {}
    cyc = base.styles([k for k, v in {**estimates, **draws}.items() if v is not None])
    for k in draws:
        owner = max((e for e in styles if k.startswith(e)), key=len, default=None)
        draw_styles[k] = styles[owner] if owner is not None else cyc[k]
    rng = np.random.default_rng(0)
    for k, v in draws.items():
        if v is not None and len(v) > max_draw_points:
            draws[k] = v[np.sort(rng.choice(len(v), max_draw_points, replace=False))]

    from matplotlib.lines import Line2D

    fig = base.figure(figsize=(5 * len(projections), 5))
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
    base.save(fig, path)
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
    for res in base.valid_results(results):
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
              "circles: truth, x: inferred", title_fontsize=8)
    ax.set_title(title or f"scene {scenes.paths[index]}")
    if fig is not None:
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=110)


_VIDEO_COLORS = ["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange"]


def category_colors(n: int) -> list:
    """``n`` distinct matplotlib colours: the five of the shared data's categories first, then ``tab20``'s
    (and beyond 25 categories, evenly spaced hues)."""
    if n <= len(_VIDEO_COLORS):
        return _VIDEO_COLORS[:n]
    from matplotlib import colormaps

    extra = [colormaps["tab20"](i) for i in (1, 3, 5, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 0, 2, 4, 6, 8)]
    out = _VIDEO_COLORS + extra
    if n > len(out):
        hsv = colormaps["hsv"]
        out += [hsv(i / (n - len(out))) for i in range(n - len(out))]
    return out[:n]


def plot_video(path, video, objects, *, resp=None, title=None, half_fov=None, dpi: int = 100) -> str:
    """Every frame of ``video`` as an image panel: detections (colour = category, size = score,
    hollow where ``resp[t, d, 0] > 0.5``, i.e. called a hallucination), the true objects
    (circles) and the inferred ``objects`` (crosses, ``[(category, [x, y, z])]``) projected with
    the video's camera (``video.camera``; DESIGN.md; the metric's projection), in its image size, with
    the video's category names.

    Sized to be read in a report: a constrained layout keeps the title, the frame labels and the
    legend (below the frames) apart; text is at least 10 pt; written at ``dpi``."""
    from matplotlib.colors import to_rgba_array
    from matplotlib.lines import Line2D

    T = video.num_frames
    ncol = min(5, max(T, 1))
    nrow = max(1, int(math.ceil(T / ncol)))
    fig = base.figure(figsize=(2.9 * ncol + 0.4, 2.95 * nrow + 1.6))
    fig.get_layout_engine().set(h_pad=0.06, w_pad=0.04, hspace=0.04, wspace=0.03)
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).reshape(-1)

    camera = video.camera
    names = list(video.category_names)
    colors = category_colors(len(names))
    rgba = to_rgba_array(colors, alpha=0.85)                  # the detections' colours (alpha 0.85)

    def proj(pos):
        if len(pos) == 0:
            return np.zeros((T, 0, 2)), np.zeros((T, 0), dtype=bool)
        p, d = project(torch.as_tensor(pos, dtype=video.cams.dtype).unsqueeze(0), video.cams.unsqueeze(1),
                       video.looks.unsqueeze(1), camera)
        return p.numpy(), visible(p, d, camera).numpy()

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
        ax.set_xlim(0, camera.width)
        ax.set_ylim(camera.height, 0)
        ax.set_aspect("equal")
        # one collection per kind of mark and frame (not one per mark): the same picture, drawn faster
        det = video.detections[t]
        if len(det):
            cats = [int(c) for c in det.categories.tolist()]
            edge = rgba[cats]
            face = edge.copy()
            if resp is not None:                                          # hollow: called a hallucination
                face[np.asarray(resp[t, :len(det), 0], dtype=float) > 0.5] = 0.0
            xy = np.asarray(det.centers, dtype=float)
            ax.scatter(xy[:, 0], xy[:, 1], s=20 + 90 * np.asarray(det.scores, dtype=float), facecolors=face,
                       edgecolors=edge, linewidths=1.2)
        seen = [k for k in range(len(tc)) if tv[t, k]]
        if seen:
            ax.scatter(tp[t, seen, 0], tp[t, seen, 1], s=300, facecolors="none",
                       edgecolors=[colors[tc[k]] for k in seen], linewidths=2.0)
        seen = [k for k in range(len(ic)) if iv[t, k]]
        if seen:
            ax.scatter(ip[t, seen, 0], ip[t, seen, 1], s=140, marker="x", color=[colors[ic[k]] for k in seen],
                       linewidths=2.4)
        ax.set_title(f"frame {t}", fontsize=10, pad=3)
    handles = [Line2D([], [], ls="none", marker="o", ms=8, color=colors[c], label=n) for c, n in enumerate(names)]
    handles += [Line2D([], [], ls="none", marker="o", ms=14, mfc="none", mec="0.3", mew=2.0, label="truth"),
                Line2D([], [], ls="none", marker="x", ms=10, color="0.3", mew=2.4, label="inferred")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 9), fontsize=10, frameon=False,
               title="dots: detections (colour = category, size = score, hollow = called a hallucination); "
                     "circles: true objects; x: inferred objects", title_fontsize=10)
    fig.suptitle(title or f"video {video.path}", fontsize=13)
    base.save(fig, path, dpi=dpi, tight=False)    # the constrained layout keeps everything inside: one draw
    return path
