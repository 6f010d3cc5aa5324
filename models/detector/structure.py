"""The structure search of M3: which objects each scene holds, scored by a penalised marginal likelihood.

:class:`DetectorSearch` is M3's side of the engine's search
(:func:`metagen_ppl.engine.structure.search_structure`): birth proposals (per
scene and category, a candidate at the densest cluster of detections the
current objects leave to clutter, refined by local EM), death proposals (each
object), their gains of the penalised score, and the continuous phase (the
engine's EM loop :func:`~metagen_ppl.engine.em.run_em` with the model's
closed-form M-step and its batched or the engine's enumeration E-step, or
SVI-MAP). The penalised score of a structure is

    log p(x | mu*, c, V) + log Geom(K_s; p) + K_s log(1/C)
        + sum_k [ log(1/vol) + min(0, 3/2 log(2 pi sigma^2 / n_k) + log vol) ]

(:func:`structure_log_score`; the count prior is MetaGen's geometric prior with
p = 0.9, ``n_k`` the expected detections of object ``k``): no hand-set threshold
decides whether an object exists.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from metagen_ppl.domain.metagen_data import CATEGORIES
from metagen_ppl.domain.scenes import SceneSet
from metagen_ppl.engine.checkpoint import hash_tensors
from metagen_ppl.engine.em import EMSteps, run_em
from metagen_ppl.engine.enumeration import EnumeratedModel, EStep
from metagen_ppl.engine.registry import load_model
from metagen_ppl.engine.structure import Moves, StructureSearch
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.errors import DataError
from metagen_ppl.models.detector import generative
from metagen_ppl.models.detector.estep import (detection_posterior, estep, frame_terms, joint_log_terms,
                                               parameter_values, scene_log_likelihood)
from metagen_ppl.models.detector.generative import DEFAULTS, box_bounds, hyperparameter, prior_mean_V
from metagen_ppl.models.detector.mstep import closed_form_mstep


def structure_penalty(n_k, active, scale, log_volume, *, num_categories=len(CATEGORIES), count_prior_p=None):
    """Structure prior plus Occam factors of a structure, per scene (``(..., S)``).

    ``log Geom(K_s; p) + sum_{active k} [-log C - log vol + min(0, 3/2 log(2 pi sigma^2 / n_k) + log vol)]``
    with ``n_k`` (``(..., S, K)``) the expected detections of each object.
    """
    p = float(count_prior_p if count_prior_p is not None else DEFAULTS["count_prior_p"])
    k_s = active.sum(-1).to(n_k.dtype)
    log_count = math.log(p) + k_s * math.log1p(-p)
    occam = (1.5 * torch.log(2 * math.pi * scale ** 2 / n_k.clamp_min(1e-12)) + log_volume).clamp(max=0.0)
    per_obj = -math.log(num_categories) - log_volume + occam
    return log_count + torch.where(active, per_obj, torch.zeros((), dtype=n_k.dtype)).sum(-1)


def structure_log_score(data, params, cats, active, loglik, resp, *, num_categories=len(CATEGORIES),
                        count_prior_p=None, **options):
    """Per-scene penalised log marginal likelihood of a structure (see the module docstring).

    Parameters
    ----------
    loglik, resp : from :func:`scene_log_likelihood` at ``params``.

    Returns
    -------
    (S,) tensor: ``loglik + log Geom(K_s) + K_s log(1/C) + sum_k [log(1/vol) + Occam_k]``.
    """
    pos = data["positions"]
    _, _, scale, _ = parameter_values(params, options, pos.dtype)
    active = torch.as_tensor(active, dtype=torch.bool)
    _, _, log_vol = box_bounds(data)
    n_k = resp[..., 1:].sum((1, 2))
    return loglik + structure_penalty(n_k, active, scale, log_vol, num_categories=num_categories,
                                      count_prior_p=count_prior_p)


def active_slots_first(active) -> torch.Tensor:
    """Slot order ``(S, K')`` putting each scene's active slots first (stable), ``K' = max(1, most objects
    in a scene)``: gather a structure's tensors with it to drop the slots no scene uses."""
    K = max(1, int(active.sum(-1).max()))
    return torch.argsort((~active).to(torch.int8), dim=-1, stable=True)[:, :K]


def compact_structure(params):
    """Active slots first and ``K`` = the largest object count: ``(K, cats, active, locs)``."""
    act = params["active"]
    order = active_slots_first(act)
    K = order.shape[1]
    cats = torch.gather(params["cats"], 1, order)
    active = torch.gather(act, 1, order)
    locs = torch.gather(params["locs"], 1, order.unsqueeze(-1).expand(-1, -1, 3))
    return K, cats, active, locs


class _Steps(EMSteps):
    """The hooks of M3's EM phase: the model's E-step (batched, or the engine's enumeration) and its
    closed-form M-step, with the structure of the search fixed."""

    def __init__(self, search: "DetectorSearch"):
        self.search = search

    def estep(self, values):
        return self.search.estep(values)

    def mstep(self, values, est, iteration):
        s = self.search
        upd = closed_form_mstep(s.data, est.marginals, dict(values, **s.fixed), s.K, **s.options())
        return dict(values, **{k: v for k, v in upd.items() if k in values}), False


class DetectorSearch(StructureSearch):
    """M3 fitted to many scenes: the state of the structure search and its moves (see the module docstring).

    State: ``values`` (the learned sites: ``locs`` (S, K, 3), and ``rates``, ``hallucination``,
    ``scale`` unless fixed), ``fixed`` (the given ones), ``cats`` (S, K), ``active`` (S, K),
    ``history``, ``n_iter``, ``svi_elbo``.
    """

    kind = "metacognition"

    def __init__(self, scenes: SceneSet, *, mode, V, K, inner, estep, scale, options, seed, tol, max_iter,
                 svi_steps, svi_lr):
        self.scenes = scenes
        self.data = scenes.data()
        self.dtype = self.data["positions"].dtype
        S = len(scenes)
        self.S, self.K = S, int(K)
        self.num_scenes, self.max_objects = S, self.K
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
        prior = prior_mean_V(dtype=self.dtype, **self.hyper)
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
            a = float(hyperparameter(self.hyper, "scale_prior_shape"))
            b = float(hyperparameter(self.hyper, "scale_prior_rate"))
            self.values["scale"] = torch.tensor(math.sqrt(b / max(a - 1.0, 0.5)), dtype=self.dtype)
        self.history = []
        self.n_iter = 0
        self.round = 0
        self.svi_elbo = []
        self._em = None
        self._steps = _Steps(self)

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

    def direct(self):
        """Per-scene log likelihood, responsibilities and penalised score at the current state."""
        values = self.full_values()
        ll, resp = scene_log_likelihood(self.data, values, self.cats, self.active, num_categories=self.C)
        score = structure_log_score(self.data, values, self.cats, self.active, ll, resp, num_categories=self.C,
                                    count_prior_p=self.hyper.get("count_prior_p"))
        return ll, resp, score

    def estep(self, values=None) -> EStep:
        """The E-step at ``values`` (default: the current ones) with the current structure: the model's
        batched one (``estep="direct"``) or the engine's Pyro enumeration (``"engine"``)."""
        values = self.values if values is None else values
        if self.estep_kind == "engine":
            key = (self.cats.clone(), self.active.clone())
            if self._em is None or not (torch.equal(key[0], self._em[0][0]) and torch.equal(key[1], self._em[0][1])):
                # the structure is an option of the model: rebuild when it changes
                self._em = (key, EnumeratedModel(generative.model, self.data, self.K, self.options(*key)))
            return self._em[1].estep(dict(values))
        return estep(self.data, values, self.K, **self.options())

    def responsibilities(self, est: EStep) -> torch.Tensor:
        """``(S, T, D, K + 1)`` posterior of each detection's assignment (zero rows for padding)."""
        resp = est.marginals["z"].reshape(self.S, *self.data["positions"].shape[1:3], self.K + 1)
        return resp * self.data["det_mask"].unsqueeze(-1).to(resp.dtype)

    def record(self, phase, est: Optional[EStep] = None) -> None:
        if est is None:
            est = self.estep()
        score = float(self.direct()[2].sum())
        v = self.full_values()
        self.history.append({
            "iteration": self.n_iter, "round": self.round, "phase": phase,
            "log_likelihood": float(est.log_likelihood), "log_joint": float(est.log_joint), "score": score,
            "num_objects": int(self.active.sum()),
            "rates": [float(x) for x in v["rates"].tolist()],
            "hallucination": [float(x) for x in v["hallucination"].tolist()],
            "scale": float(v["scale"])})

    # ----------------------------------------------------------------- continuous phases
    def fit_parameters(self) -> bool:
        return self.em_phase() if self.inner == "em" else self.svi_phase()

    def em_phase(self) -> bool:
        """The engine's EM loop with the structure fixed; one history entry per iteration."""
        def each(it, values, est):
            self.values = values
            self.n_iter += 1
            self.record("em", est)

        run = run_em(self._steps, self.values, tol=self.tol, max_iter=self.max_iter, on_iteration=each)
        self.values = run.values
        return run.converged

    def svi_phase(self) -> bool:
        """SVI-MAP on the same Pyro model with the structure fixed (``inner="svi"``)."""
        spec = dataclasses.replace(load_model(generative), name="detector")
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
        self.record("svi")
        return bool(res.converged)

    # ----------------------------------------------------------------- structure moves
    def _pieces(self):
        """Joint log terms, their logsumexp, responsibilities, log likelihood and score per scene."""
        values = self.full_values()
        joint, lam = joint_log_terms(self.data, values, self.cats, self.active, num_categories=self.C)
        lse, resp = detection_posterior(joint, self.data["det_mask"])
        ll = lse.sum((-1, -2)) + frame_terms(self.data, lam)
        score = ll + self.penalty(resp[..., 1:].sum((1, 2)), self.active, values["scale"])
        return values, joint, lam, lse, resp, ll, score

    def penalty(self, n_k, active, scale):
        _, _, log_vol = box_bounds(self.data)
        return structure_penalty(n_k, active, scale, log_vol, num_categories=self.C,
                                        count_prior_p=self.hyper.get("count_prior_p"))

    def _births(self) -> Optional[Moves]:
        """One candidate object per scene and category, at the densest cluster of detections of that
        category the current objects leave to clutter.

        Adding a component leaves the others' terms unchanged, so a candidate's
        effect is ``lse_new = logaddexp(lse, log r_c + log N(x; m, sigma^2 I))`` on
        the detections of its category and ``-F_s r_c`` on the frames: all
        ``C x S`` candidates are scored in one tensor pass (proposal ``c S + s``).
        """
        S, K, C = self.S, self.K, self.C
        free_any = ~self.active.all(-1)
        if not bool(free_any.any()):
            return None
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
        return Moves(scene=rows.repeat(C), gain=gain.reshape(-1),
                     payload={"category": torch.arange(C).repeat_interleave(S), "slot": free.repeat(C),
                              "location": m.transpose(0, 1).reshape(C * S, 3)})

    def _deaths(self) -> Optional[Moves]:
        """Removing each object (proposal ``k S + s``), with the change of its scene's penalised score."""
        S, K = self.S, self.K
        if not bool(self.active.any()):
            return None
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
        return Moves(scene=torch.arange(S).repeat(K), gain=gain.reshape(-1),
                     payload={"slot": torch.arange(K).repeat_interleave(S)})


    def propose(self, kind: str) -> Optional[Moves]:
        return self._births() if kind == "birth" else self._deaths()

    def apply(self, kind: str, moves: Moves, chosen: torch.Tensor) -> None:
        s, k = moves.scene[chosen], moves.payload["slot"][chosen]
        if kind == "birth":
            self.cats[s, k] = moves.payload["category"][chosen]
            self.active[s, k] = True
            locs = self.values["locs"].clone()
            locs[s, k] = moves.payload["location"][chosen]
            self.values["locs"] = locs
        else:
            self.active[s, k] = False

    # ----------------------------------------------------------------- checkpoints
    def data_fingerprint(self) -> str:
        return hash_tensors({"data": self.data, "paths": list(self.scenes.paths)})

    def settings(self) -> dict:
        """The settings a checkpoint of this search is valid for (``max_rounds`` is not one)."""
        out = {"mode": self.mode, "inner": self.inner, "estep": self.estep_kind, "max_objects": self.K,
               "tol": self.tol, "max_iter": self.max_iter, "options": dict(self.hyper),
               "dtype": str(self.dtype).replace("torch.", ""), "fixed": dict(self.fixed)}
        if self.inner == "svi":
            out.update(seed=self.seed, svi_steps=self.svi_steps, svi_lr=self.svi_lr)
        return out

    def state_dict(self) -> dict:
        return {"values": dict(self.values), "cats": self.cats, "active": self.active, "history": self.history,
                "n_iter": self.n_iter, "svi_elbo": [float(e) for e in self.svi_elbo]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (bit-identical tensors)."""
        self.values = {k: v.to(self.dtype) for k, v in state["values"].items()}
        self.cats = state["cats"].to(torch.long)
        self.active = state["active"].to(torch.bool)
        self.history = list(state["history"])
        self.n_iter = int(state["n_iter"])
        self.svi_elbo = list(state["svi_elbo"])
        self._em = None
