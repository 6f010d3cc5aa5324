"""Learning a detector's metacognition across scenes: EM with a structure search (model M3).

:func:`fit_metacognition` fits :mod:`metagen_ppl.models.detector` to many scenes at once.
Its unknowns are

* ``V = (r, h)``: per-category detection rates and hallucination rates, shared
  by all scenes (plus the location noise ``sigma``, learned unless given);
* per scene, the *structure* -- how many objects and their categories -- and
  the objects' locations.

Algorithm (deterministic; every step batched over scenes, no Python loop over
scenes or detections)::

    start: no objects, V at its prior mean (learn, lesioned) or as given (fixed)
    repeat (rounds):
        births:  per scene and category, propose an object at the densest cluster of
                 detections that the current objects leave to clutter (mean shift
                 on the clutter responsibilities); refine its location by three
                 local EM steps; keep the best candidate of each scene if it raises
                 the scene's penalised log marginal likelihood; repeat
        EM:      E-step (the engine's enumeration over all scenes in one traced call,
                 or the direct batched E-step), closed-form MAP M-step
                 (metagen_ppl.models.detector.closed_form_mstep: locations, sigma, and V from
                 expected counts pooled over scenes), until the relative change of
                 the log joint is below tol
        deaths:  per scene, remove the object whose removal raises the penalised
                 score most, if any; repeat; EM again if anything was removed
    until a round neither adds nor removes an object.

The penalised score (:func:`metagen_ppl.models.detector.structure_log_score`) is the log
likelihood plus the model's own priors on the structure -- MetaGen's geometric
count prior (p = 0.9), the uniform category prior, the uniform location prior --
and a Laplace (Occam) factor for each object's location. Nothing else decides
whether an object exists.

Categories: without a confusion matrix an object explains only detections of
its own category, so ``argmax_c Q`` is degenerate (it always keeps the current
category); each birth proposes one candidate per category and the penalised
marginal likelihood picks among them, and a wrong object is removed by a death.

Modes: ``learn`` (V learned, MAP with its Gamma priors), ``fixed`` (V given,
e.g. learned on other scenes), ``lesioned`` (V fixed at its prior mean:
MetaGen's ablation). The continuous phase is EM by default (``inner="em"``);
``inner="svi"`` replaces it by SVI-MAP (``TraceEnum_ELBO`` + ``AutoDelta``,
:func:`metagen_ppl.engine.svi.fit_svi`) on the same Pyro model, with the same
structure moves. EM's log joint never decreases within an EM phase (recorded
in the trace; the structure moves change the parameter space between phases).

Long runs: with ``checkpoint=PATH`` (command line: ``--out FILE`` checkpoints to
``FILE.checkpoint.json``) the search state is written atomically after every round;
``resume=True`` (``--resume``) continues from the last finished round to exactly the
result of an uninterrupted run (:mod:`metagen_ppl.engine.checkpoint`).

Also here: object-level scores against ground truth (:func:`object_metrics`),
the raw-detections baseline (:func:`raw_detection_objects`), V errors, a scene
plot, and a small command line (``python -m metagen_ppl.models.detector.fit``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.scenes import load_scenes, parse_V, SceneSet, V_to_json
from metagen_ppl.engine.checkpoint import Checkpoint, hash_tensors, interrupted, rng_state, set_rng_state
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.registry import load_model
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.engine.validate import check_options
from metagen_ppl.errors import DataError, MetagenError
from metagen_ppl.io import atomic_write_json
from metagen_ppl.models.detector import generative as detector_model

__all__ = ["MODES", "INNER", "MetacognitionResult", "fit_metacognition"]

MODES = ("learn", "fixed", "lesioned")
INNER = ("em", "svi")
ESTEPS = ("engine", "direct")


# --------------------------------------------------------------------------- result
@dataclasses.dataclass
class MetacognitionResult:
    """What :func:`fit_metacognition` returns.

    Attributes
    ----------
    mode, inner : str
    V : dict
        ``{"rates": (C,), "hallucination": (C,), "scale": ()}`` tensors (the
        learned, given or prior-mean metacognition, and the location noise).
    scenes : list of dict
        Per scene ``{"path", "objects": [{"category_name", "position": [x, y, z]}]}``.
    trace : list of dict
        One entry per EM iteration (or SVI phase / structure step): ``iteration``,
        ``round``, ``phase`` (``"init"``, ``"em"``, ``"svi"``, ``"birth"``, ``"death"``),
        ``log_likelihood``, ``log_joint``, ``score`` (penalised, summed over scenes),
        ``num_objects``, ``rates``, ``hallucination``, ``scale``.
    log_likelihood, log_joint, score : float
        At the returned estimate.
    n_iter : int
        EM iterations (SVI steps with ``inner="svi"``), all rounds.
    n_rounds : int
    converged : bool
        The last round changed no object and its EM phase met ``tol``.
    wall_time_s : float
    params : dict of tensors
        ``locs`` (S, K, 3), ``cats`` (S, K), ``active`` (S, K), ``rates``, ``hallucination``, ``scale``.
    responsibilities : (S, T, D, K + 1) tensor
        Posterior of each detection's assignment (0 = hallucination, k = slot k).
    info : dict
    """

    mode: str
    inner: str
    V: dict
    scenes: list
    trace: list
    log_likelihood: float
    log_joint: float
    score: float
    n_iter: int
    n_rounds: int
    converged: bool
    wall_time_s: float
    params: dict
    responsibilities: Optional[torch.Tensor] = None
    info: dict = dataclasses.field(default_factory=dict)

    def V_json(self) -> dict:
        """``{"detection_rate": {name: r}, "hallucination_rate": {name: h}, "scale": sigma}``."""
        return V_to_json(self.V)

    def to_dict(self) -> dict:
        return {"model": "detector", "mode": self.mode, "inner": self.inner, "V": self.V_json(),
                "scenes": self.scenes, "trace": self.trace,
                "log_likelihood": _finite(self.log_likelihood), "log_joint": _finite(self.log_joint),
                "score": _finite(self.score), "n_iter": int(self.n_iter), "n_rounds": int(self.n_rounds),
                "converged": bool(self.converged), "wall_time_s": float(self.wall_time_s),
                "info": self.info}

    def to_json(self, path) -> None:
        """Write :meth:`to_dict` atomically."""
        atomic_write_json(path, self.to_dict())


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _scene_objects(paths, locs, cats, active) -> list:
    out = []
    for s, path in enumerate(paths):
        objs = [{"category_name": CATEGORIES[int(cats[s, k])],
                 "position": [float(v) for v in locs[s, k].tolist()]}
                for k in range(active.shape[1]) if bool(active[s, k])]
        out.append({"path": path, "objects": objs})
    return out


# --------------------------------------------------------------------------- fitting
class _Fit:
    """State and steps of one structure-search EM run (see the module docstring)."""

    def __init__(self, scenes: SceneSet, *, mode, V, K, inner, estep, scale, options, seed, tol, max_iter,
                 svi_steps, svi_lr):
        self.M = detector_model
        self.scenes = scenes
        self.data = scenes.data()
        self.dtype = self.data["positions"].dtype
        S = len(scenes)
        self.S, self.K = S, int(K)
        self.C = int(options.get("num_categories", len(CATEGORIES)))
        self.mode, self.inner, self.estep_kind = mode, inner, estep
        self.seed, self.tol, self.max_iter = seed, tol, max_iter
        self.svi_steps, self.svi_lr = svi_steps, svi_lr
        self.hyper = dict(options)
        self.hyper["num_categories"] = self.C
        lo, hi = self.data["box"][0], self.data["box"][1]
        self.cats = torch.zeros(S, self.K, dtype=torch.long)
        self.active = torch.zeros(S, self.K, dtype=torch.bool)
        self.values = {"locs": ((lo + hi) / 2).expand(S, self.K, 3).clone()}
        self.fixed = {}
        prior = self.M.prior_mean_V(dtype=self.dtype, **self.hyper)
        if mode == "learn":
            self.values.update(prior)
        elif mode == "lesioned":
            self.fixed.update(prior)
        else:
            self.fixed.update({k: V[k] for k in ("rates", "hallucination")})
            if scale is None and V.get("scale") is not None:
                scale = float(V["scale"])
        if scale is not None:
            if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
                raise DataError(f"scale must be a positive number, got {scale!r}")
            self.fixed["scale"] = torch.tensor(float(scale), dtype=self.dtype)
        else:
            a = float(self.M._opt(self.hyper, "scale_prior_shape"))
            b = float(self.M._opt(self.hyper, "scale_prior_rate"))
            self.values["scale"] = torch.tensor(math.sqrt(b / max(a - 1.0, 0.5)), dtype=self.dtype)
        self.trace = []
        self.n_iter = 0
        self.round = 0
        self.svi_elbo = []
        self._em = None

    # ----------------------------------------------------------------- helpers
    def options(self, cats=None, active=None) -> dict:
        o = dict(self.hyper)
        o.update(self.fixed)
        o["cats"] = self.cats if cats is None else cats
        o["active"] = self.active if active is None else active
        return o

    def full_values(self) -> dict:
        v = dict(self.values)
        v.update(self.fixed)
        return v

    def direct(self, data=None, values=None, cats=None, active=None):
        """Per-scene log likelihood, responsibilities and penalised score (the direct E-step)."""
        data = self.data if data is None else data
        values = self.full_values() if values is None else values
        cats = self.cats if cats is None else cats
        active = self.active if active is None else active
        ll, resp = self.M.scene_log_likelihood(data, values, cats, active, num_categories=self.C)
        score = self.M.structure_log_score(data, values, cats, active, ll, resp, num_categories=self.C,
                                           count_prior_p=self.hyper.get("count_prior_p"))
        return ll, resp, score

    def estep(self):
        """``(log_likelihood, log_joint, responsibilities)`` at the current state."""
        if self.estep_kind == "engine":
            key = (self.cats.clone(), self.active.clone())
            if self._em is None or not (torch.equal(key[0], self._em[0][0]) and torch.equal(key[1], self._em[0][1])):
                # the structure is an option of the model: rebuild when it changes
                self._em = (key, EnumeratedModel(self.M.model, self.data, self.K, self.options(*key)))
            est = self._em[1].estep({k: v for k, v in self.values.items()})
            resp = est.marginals["z"].reshape(self.S, *self.data["positions"].shape[1:3], self.K + 1)
            resp = resp * self.data["det_mask"].unsqueeze(-1).to(resp.dtype)
            return est.log_likelihood, est.log_joint, resp
        ll, resp, _ = self.direct()
        lp = self.M.log_prior(self.data, self.full_values(), **self.options())
        return float(ll.sum()), float(ll.sum() + lp), resp

    def record(self, phase, log_likelihood, log_joint, score=None):
        if score is None:
            score = float(self.direct()[2].sum())
        v = self.full_values()
        self.trace.append({
            "iteration": self.n_iter, "round": self.round, "phase": phase,
            "log_likelihood": float(log_likelihood), "log_joint": float(log_joint), "score": float(score),
            "num_objects": int(self.active.sum()),
            "rates": [float(x) for x in v["rates"].tolist()],
            "hallucination": [float(x) for x in v["hallucination"].tolist()],
            "scale": float(v["scale"])})

    # ----------------------------------------------------------------- continuous phases
    def em_phase(self):
        ll, lj, resp = self.estep()
        converged = False
        for _ in range(self.max_iter):
            upd = self.M.closed_form_mstep(self.data, {"z": resp}, self.full_values(), self.K,
                                           **self.options())
            self.values.update({k: v for k, v in upd.items() if k in self.values})
            prev = lj
            ll, lj, resp = self.estep()
            self.n_iter += 1
            self.record("em", ll, lj)
            if abs(lj - prev) <= self.tol * max(abs(lj), 1.0):
                converged = True
                break
        return converged

    def svi_phase(self):

        spec = load_model(self.M)
        init = {k: v for k, v in self.values.items()}
        res = fit_svi(spec, self.data, self.K, guide="delta", num_steps=self.svi_steps, lr=self.svi_lr,
                      seed=self.seed + 7919 * self.round, init=init, options=self.options())
        self.values.update({k: v.detach().to(self.dtype) for k, v in res.params.items() if k in self.values})
        lo, hi = self.data["box"][0], self.data["box"][1]
        width = hi - lo
        self.values["locs"] = torch.maximum(torch.minimum(self.values["locs"], hi - 1e-9 * width),
                                            lo + 1e-9 * width)
        self.n_iter += self.svi_steps
        self.svi_elbo.extend(res.trace)
        ll, lj, _ = self.estep()
        self.record("svi", ll, lj)
        return bool(res.converged)

    def continuous(self):
        return self.em_phase() if self.inner == "em" else self.svi_phase()

    # ----------------------------------------------------------------- structure moves
    def _pieces(self):
        """Joint log terms, their logsumexp, responsibilities, log likelihood and score per scene."""
        M = self.M
        values = self.full_values()
        joint, lam = M.joint_log_terms(self.data, values, self.cats, self.active, num_categories=self.C)
        mask = self.data["det_mask"]
        zero = torch.zeros((), dtype=self.dtype)
        lse = torch.where(mask, joint.logsumexp(-1), zero)
        resp = torch.where(mask.unsqueeze(-1), (joint - lse.unsqueeze(-1)).exp(), zero)
        ll = lse.sum((-1, -2)) + M.frame_terms(self.data, lam)
        score = ll + self.penalty(resp[..., 1:].sum((1, 2)), self.active, values["scale"])
        return values, joint, lam, lse, resp, ll, score

    def penalty(self, n_k, active, scale):
        _, _, log_vol = self.M._box(self.data)
        return self.M.structure_penalty(n_k, active, scale, log_vol, num_categories=self.C,
                                        count_prior_p=self.hyper.get("count_prior_p"))

    def birth_step(self) -> int:
        """Propose one object per scene and category; keep each scene's best if its score rises.

        Adding a component leaves the others' terms unchanged, so a candidate's
        effect is ``lse_new = logaddexp(lse, log r_c + log N(x; m, sigma^2 I))`` on
        the detections of its category and ``-F_s r_c`` on the frames: all
        ``C x S`` candidates are scored in one tensor pass.
        """
        S, K, C = self.S, self.K, self.C
        free_any = ~self.active.all(-1)
        if not bool(free_any.any()):
            return 0
        free = (~self.active).to(torch.int8).argmax(-1)                    # first free slot (S,)
        values, joint, lam, lse, resp, ll, cur = self._pieces()
        sigma = values["scale"]
        zero = torch.zeros((), dtype=self.dtype)
        x = self.data["positions"].reshape(S, -1, 3)
        o = self.data["categories"].reshape(S, -1)
        valid = self.data["det_mask"].reshape(S, -1)
        u = resp[..., 0].reshape(S, -1) * valid                          # clutter responsibility
        own = torch.nn.functional.one_hot(o, C).bool() & valid.unsqueeze(-1)   # (S, N, C)
        weights = own.to(self.dtype) * u.unsqueeze(-1)
        kern = torch.exp(-0.5 * torch.cdist(x, x).pow(2) / sigma ** 2)   # (S, N, N)
        dens = torch.where(own, kern @ weights, torch.full((), -1.0, dtype=self.dtype))
        ok = dens.max(1).values > 1e-6                                    # (S, C): a seed exists
        seed = dens.argmax(1)                                            # (S, C)
        m = torch.gather(x, 1, seed.unsqueeze(-1).expand(S, C, 3))       # (S, C, 3)
        w_c = weights.transpose(1, 2)                                    # (S, C, N)
        for _ in range(5):                                               # mean shift on clutter mass
            w = w_c * torch.exp(-0.5 * torch.cdist(m, x).pow(2) / sigma ** 2)
            tot = w.sum(-1, keepdim=True)
            m = torch.where(tot > 1e-12, (w @ x) / tot.clamp_min(1e-12), m)
        lo, hi = self.data["box"][0], self.data["box"][1]
        width = hi - lo
        m = torch.maximum(torch.minimum(m, hi - 1e-9 * width), lo + 1e-9 * width)
        log_r = torch.log(values["rates"])                               # (C,)
        own_c = own.permute(2, 0, 1)                                     # (C, S, N)
        lse_f = lse.reshape(S, -1)
        const = -3 * torch.log(sigma) - 1.5 * math.log(2 * math.pi)
        for it in range(4):                                              # local EM on the candidate
            d2 = torch.cdist(m, x).pow(2).transpose(0, 1)                # (C, S, N)
            cand = torch.where(own_c, log_r[:, None, None] - 0.5 * d2 / sigma ** 2 + const,
                               torch.full((), -math.inf, dtype=self.dtype))
            lse_new = torch.logaddexp(lse_f.unsqueeze(0), cand)
            g = torch.where(own_c, (cand - lse_new).exp(), zero)         # (C, S, N)
            n_c = g.sum(-1)                                              # (C, S)
            if it == 3:
                break
            new = torch.einsum("csn,snx->csx", g, x) / n_c.clamp_min(1e-12).unsqueeze(-1)
            new = torch.maximum(torch.minimum(new, hi - 1e-9 * width), lo + 1e-9 * width)
            m = torch.where((n_c > 1e-12).unsqueeze(-1), new, m.transpose(0, 1)).transpose(0, 1)
        frames = self.data["frame_mask"].sum(-1).to(self.dtype)          # (S,)
        ll_new = ll + torch.where(valid, lse_new - lse_f, zero).sum(-1) - values["rates"][:, None] * frames
        shrink = torch.where(valid, (lse_f - lse_new).exp(), zero)        # (C, S, N)
        n_old = torch.einsum("snk,csn->csk", resp[..., 1:].reshape(S, -1, K), shrink)   # (C, S, K)
        rows = torch.arange(S)
        n_new = n_old.clone()
        n_new[:, rows, free] = n_c
        active = self.active.unsqueeze(0).repeat(C, 1, 1)
        active[:, rows, free] = True
        score = ll_new + self.penalty(n_new, active, sigma)
        gain = score - cur.unsqueeze(0)
        gain = torch.where(ok.T & free_any.unsqueeze(0), gain, torch.full((), -math.inf, dtype=self.dtype))
        best = gain.argmax(0)                                            # (S,)
        accept = gain[best, rows] > 1e-9
        if not bool(accept.any()):
            return 0
        s_acc, k_acc, c_acc = rows[accept], free[accept], best[accept]
        self.cats[s_acc, k_acc] = c_acc
        self.active[s_acc, k_acc] = True
        new_locs = self.values["locs"].clone()
        new_locs[s_acc, k_acc] = m[s_acc, c_acc]
        self.values["locs"] = new_locs
        return int(accept.sum())

    def death_step(self) -> int:
        """Remove, per scene, the object whose removal raises the penalised score most (if any)."""
        S, K = self.S, self.K
        if not bool(self.active.any()):
            return 0
        values, joint, lam, lse, resp, ll, cur = self._pieces()
        zero = torch.zeros((), dtype=self.dtype)
        mask = self.data["det_mask"]
        drop = torch.eye(K + 1, dtype=torch.bool)[1:]                    # (K, J): component k+1
        jk = torch.where(drop[:, None, None, None, :], torch.full((), -math.inf, dtype=self.dtype),
                         joint.unsqueeze(0))                             # (K, S, T, D, J)
        lse_k = torch.where(mask, jk.logsumexp(-1), zero)               # (K, S, T, D)
        resp_k = torch.where(mask.unsqueeze(-1), (jk - lse_k.unsqueeze(-1)).exp(), zero)
        r_k = values["rates"][self.cats].T                               # (K, S)
        frames = self.data["frame_mask"].sum(-1).to(self.dtype)
        ll_k = ll + (lse_k - lse.unsqueeze(0)).sum((-1, -2)) + r_k * frames
        active = self.active.unsqueeze(0).repeat(K, 1, 1)
        active[torch.arange(K), :, torch.arange(K)] = False
        score = ll_k + self.penalty(resp_k[..., 1:].sum((2, 3)), active, values["scale"])
        gain = score - cur.unsqueeze(0)
        gain = torch.where(self.active.T, gain, torch.full((), -math.inf, dtype=self.dtype))
        best = gain.argmax(0)
        rows = torch.arange(S)
        accept = gain[best, rows] > 1e-9
        if not bool(accept.any()):
            return 0
        self.active[rows[accept], best[accept]] = False
        return int(accept.sum())

    def moves(self, step) -> int:
        total = 0
        for _ in range(self.K):
            n = step()
            total += n
            if n == 0:
                break
        return total

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything that changes during the search (the rest follows from data and settings)."""
        return {"values": dict(self.values), "cats": self.cats, "active": self.active, "trace": self.trace,
                "n_iter": self.n_iter, "round": self.round, "svi_elbo": [float(e) for e in self.svi_elbo]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (bit-identical tensors)."""
        self.values = {k: v.to(self.dtype) for k, v in state["values"].items()}
        self.cats = state["cats"].to(torch.long)
        self.active = state["active"].to(torch.bool)
        self.trace = list(state["trace"])
        self.n_iter = int(state["n_iter"])
        self.round = int(state["round"])
        self.svi_elbo = list(state["svi_elbo"])
        self._em = None


def _as_scenes(scenes, dtype) -> SceneSet:
    if isinstance(scenes, SceneSet):
        return scenes
    return load_scenes(scenes, dtype=dtype)


def fit_metacognition(scenes, *, mode: str = "learn", V: Optional[dict] = None, seed: int = 0,
                      max_iter: int = 100, tol: float = 1e-7, max_rounds: int = 20, max_objects: int = 8,
                      inner: str = "em", estep: str = "engine", scale: Optional[float] = None,
                      svi_steps: int = 200, svi_lr: float = 0.02, options: Optional[dict] = None,
                      progress: bool = False, out=None, checkpoint=None, resume: bool = False,
                      dtype=torch.float64) -> MetacognitionResult:
    """Fit the detector model M3 to many scenes: V, and per scene the objects.

    Parameters
    ----------
    scenes : SceneSet, path of a multi-scene JSON file, or the parsed JSON list
    mode : {"learn", "fixed", "lesioned"}
        Learn ``V`` across the scenes; use the given ``V``; or fix ``V`` at its
        prior mean (MetaGen's lesioned model).
    V : dict, optional
        For ``mode="fixed"``: ``{"rates", "hallucination"}`` (tensors/lists of C)
        or the JSON form ``{"detection_rate": {...}, "hallucination_rate": {...}}``
        (e.g. ``result.V`` or ``result.V_json()`` of a fit on other scenes); its
        ``"scale"``, if present, fixes ``sigma`` unless ``scale`` is given.
    seed : int
        Seeds SVI (the EM run is deterministic).
    max_iter : int
        EM iterations per continuous phase.
    tol : float
        A continuous phase stops when ``|L_t - L_{t-1}| <= tol * max(|L_t|, 1)`` (L = log joint).
    max_rounds : int
        Rounds of births / EM / deaths.
    max_objects : int
        ``K``, object slots per scene.
    inner : {"em", "svi"}
        Continuous phase: closed-form EM, or SVI-MAP on the same Pyro model.
    estep : {"engine", "direct"}
        E-step by the generic engine (Pyro enumeration, one traced call for all
        scenes) or by the model's direct batched formula (same numbers, faster).
    scale : float, optional
        Fix the location noise ``sigma``; learned (MAP) when ``None``.
    svi_steps, svi_lr : SVI budget per continuous phase (``inner="svi"``).
    options : dict, optional
        Hyperparameters of :mod:`metagen_ppl.models.detector` (``rate_prior_shape``, ...,
        ``count_prior_p``, ``num_categories``).
    progress : bool
        A progress bar over rounds.
    out : path, optional
        Write the result JSON there after every round (and at the end), atomically: a kill
        leaves the previous complete file, never a half-written one.
    checkpoint : path, optional
        Checkpoint file (:mod:`metagen_ppl.engine.checkpoint`), rewritten atomically after the
        initial E-step (round 0) and after every structure-search round: the search state
        (locations, V, structure, trace, counters, RNG state), the round number, and a
        fingerprint of the data and the settings. It is kept after the fit (marked done).
    resume : bool
        Continue from ``checkpoint`` (start afresh if it does not exist yet): the fit goes on
        after the last finished round and ends with exactly the result of an uninterrupted
        run (``wall_time_s`` counts both runs; ``info["resumed_from_round"]`` says where it
        went on). A finished checkpoint returns its result at once; one that stopped at
        ``max_rounds`` continues when ``max_rounds`` is raised.

    Returns
    -------
    MetacognitionResult

    Raises
    ------
    metagen_ppl.engine.checkpoint.CheckpointError
        ``resume`` with a checkpoint written for other data or other settings (the message
        names what differs: delete the file or run without ``resume``).
    metagen_ppl.engine.checkpoint.FitInterrupted
        On Ctrl-C (a :class:`KeyboardInterrupt`): the last checkpoint is intact; the
        exception says which round it holds.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise MetagenError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if inner not in INNER:
        raise MetagenError(f"unknown inner {inner!r}; choose 'em' or 'svi'")
    if estep not in ESTEPS:
        raise MetagenError(f"unknown estep {estep!r}; choose 'engine' or 'direct'")
    for name, val, lo_ in (("max_iter", max_iter, 1), ("max_rounds", max_rounds, 1),
                           ("max_objects", max_objects, 1), ("svi_steps", svi_steps, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo_:
            raise MetagenError(f"{name} must be an integer >= {lo_}, got {val!r}")
    for name, val, lo_ in (("tol", tol, 0.0), ("svi_lr", svi_lr, None)):
        if (isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val)
                or (val < lo_ if lo_ is not None else val <= 0)):
            raise MetagenError(f"{name} must be a finite number {'>= 0' if lo_ is not None else '> 0'}, "
                               f"got {val!r}")
    options = dict(options or {})

    check_options(options)
    C = int(options.get("num_categories", len(CATEGORIES)))
    sc = _as_scenes(scenes, dtype)
    if int(sc.categories.max()) >= C:
        raise DataError(f"the data has category index {int(sc.categories.max())} but num_categories = {C}")
    if mode == "fixed":
        if V is None:
            raise MetagenError("mode='fixed' needs V (e.g. the V learned on other scenes)")
        if "detection_rate" in V or "hallucination_rate" in V:
            V = parse_V(V, "V", C, dtype)
        else:
            V = dict(detector_model.check_V(V, C, dtype), **({"scale": V["scale"]} if V.get("scale") is not None else {}))
    elif V is not None:
        raise MetagenError(f"V is only used with mode='fixed' (mode is {mode!r})")
    fit = _Fit(sc, mode=mode, V=V, K=max_objects, inner=inner, estep=estep, scale=scale, options=options,
               seed=seed, tol=tol, max_iter=max_iter, svi_steps=svi_steps, svi_lr=svi_lr)
    if resume and checkpoint is None:
        raise MetagenError("resume=True needs checkpoint=PATH (the file a previous run wrote)")
    ck = None
    if checkpoint is not None:
        ck = Checkpoint(checkpoint, "metacognition", hash_tensors({"data": fit.data, "paths": list(sc.paths)}),
                        _fit_settings(fit, V, scale, dtype))
    state = ck.load() if (ck is not None and resume) else None
    births_total = deaths_total = 0
    converged = done = False
    elapsed0 = 0.0
    start = 1
    if state is None:
        ll, lj, _ = fit.estep()
        fit.record("init", ll, lj)
        if ck is not None:
            _save(ck, fit, 0, False, False, False, 0, 0, time.perf_counter() - t0)
    else:
        st = state["state"]
        fit.load_state_dict(st["fit"])
        births_total, deaths_total = int(st["births"]), int(st["deaths"])
        converged, done = bool(st["converged"]), bool(st["finished"])
        elapsed0 = float(st["elapsed_s"])
        set_rng_state(st["rng"])
        start = state["round"] + 1
        if not done and state["round"] > max_rounds:
            raise ck._refuse(f"holds round {state['round']}, beyond max_rounds = {max_rounds}: raise max_rounds "
                             f"to at least {state['round']}")
        done = done or state["round"] >= max_rounds
        fit.round = state["round"]
    pbar = None
    if progress and not done:
        from tqdm.auto import tqdm

        pbar = tqdm(total=max_rounds, initial=start - 1, desc=f"metacognition ({mode})", leave=False)
    try:
        for rnd in (range(start, max_rounds + 1) if not done else ()):
            fit.round = rnd
            births = fit.moves(fit.birth_step)
            if births:
                ll, lj, _ = fit.estep()
                fit.record("birth", ll, lj)
            phase_ok = fit.continuous()
            deaths = fit.moves(fit.death_step)
            if deaths:
                ll, lj, _ = fit.estep()
                fit.record("death", ll, lj)
                phase_ok = fit.continuous()
            births_total += births
            deaths_total += deaths
            done = births == 0 and deaths == 0
            converged = done and bool(phase_ok)
            if ck is not None:
                _save(ck, fit, rnd, done or rnd == max_rounds, done, converged, births_total, deaths_total,
                      elapsed0 + time.perf_counter() - t0)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(objects=int(fit.active.sum()), births=births, deaths=deaths)
            if out is not None and not done:
                _result(fit, t0, False, rnd, births_total, deaths_total, elapsed0).to_json(out)
            if done:
                break
    except KeyboardInterrupt as e:
        raise interrupted(e, ck) from e
    finally:
        if pbar is not None:
            pbar.close()
    res = _result(fit, t0, converged, fit.round, births_total, deaths_total, elapsed0)
    if state is not None:
        res.info["resumed_from_round"] = state["round"]
    if out is not None:
        res.to_json(out)
    return res


def _fit_settings(fit: _Fit, V, scale, dtype) -> dict:
    """The settings a checkpoint of ``fit`` is valid for (``max_rounds`` is not one: it may be raised)."""
    out = {"mode": fit.mode, "inner": fit.inner, "estep": fit.estep_kind, "max_objects": fit.K, "tol": fit.tol,
           "max_iter": fit.max_iter, "scale": scale, "options": {k: v for k, v in fit.hyper.items()},
           "dtype": str(dtype).replace("torch.", "")}
    if fit.inner == "svi":
        out.update(seed=fit.seed, svi_steps=fit.svi_steps, svi_lr=fit.svi_lr)
    if V is not None:
        out["V"] = {k: V[k] for k in ("rates", "hallucination", "scale") if V.get(k) is not None}
    return out


def _save(ck, fit: _Fit, rnd, done, finished, converged, births, deaths, elapsed) -> None:
    """Checkpoint after round ``rnd``: ``finished`` = the search stopped by itself (no move), ``done``
    = finished or ``max_rounds`` reached."""
    ck.save(rnd, {"fit": fit.state_dict(), "births": births, "deaths": deaths, "converged": converged,
                  "finished": finished,
                  "elapsed_s": elapsed, "rng": rng_state()}, done=done,
            extra={"num_objects": int(fit.active.sum()), "n_iter": fit.n_iter})


def _result(fit: _Fit, t0, converged, n_rounds, births, deaths, elapsed0=0.0) -> MetacognitionResult:
    ll, lj, resp = fit.estep()
    score = float(fit.direct()[2].sum())
    v = fit.full_values()
    V = {"rates": v["rates"].detach().clone(), "hallucination": v["hallucination"].detach().clone(),
         "scale": v["scale"].detach().clone()}
    params = {"locs": v["locs"].detach().clone(), "cats": fit.cats.clone(), "active": fit.active.clone(), **V}
    info = {"births": births, "deaths": deaths, "num_scenes": fit.S, "max_objects": fit.K,
            "estep": fit.estep_kind, "fixed": sorted(k for k in fit.fixed)}
    if fit.svi_elbo:
        info["svi_elbo"] = [float(e) for e in fit.svi_elbo]
    return MetacognitionResult(
        mode=fit.mode, inner=fit.inner, V=V,
        scenes=_scene_objects(fit.scenes.paths, v["locs"], fit.cats, fit.active), trace=list(fit.trace),
        log_likelihood=float(ll), log_joint=float(lj), score=score, n_iter=fit.n_iter, n_rounds=n_rounds,
        converged=converged, wall_time_s=elapsed0 + time.perf_counter() - t0, params=params,
        responsibilities=resp.detach(), info=info)
