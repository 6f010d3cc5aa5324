"""One result type for EM, SVI and MCMC (and structure searches), with JSON and arviz conversions."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from metagen_ppl.io import atomic_write_text


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _jsonable(x):
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return _np(x).tolist()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _has_none(v) -> bool:
    if v is None:
        return True
    if isinstance(v, (list, tuple)):
        return any(_has_none(x) for x in v)
    return False


@dataclass
class FitResult:
    """What every inference method returns.

    Attributes
    ----------
    model, method : str
        Model name and method (``"em"``, ``"svi-map"``, ``"svi-normal"``, ``"mcmc"``).
    params : dict of str -> tensor
        Point estimate of every continuous unknown (EM/SVI-MAP: the mode;
        AutoNormal: the guide's median; MCMC: the posterior mean after label alignment).
    log_likelihood : float
        ``log p(observed | params)``: the log probability of *every* observed site of
        the model (the points ``x``, and also e.g. observed categories, a Poisson count
        of detections, a ``pyro.factor``), with the discrete latent sites summed out;
        computed by the same exact enumeration for every method.
        ``info["log_likelihood_of"]`` labels it and, for EM, ``info["log_likelihood_by_site"]``
        splits it by observed site.
    log_joint : float
        ``log p(observed | params) + log p(params)``.
    trace : list of float
        Per-iteration objective: EM's log joint, SVI's ELBO, MCMC's log joint per draw.
    trace_label : str
    n_iter : int
        EM iterations, SVI steps, or MCMC draws (all chains).
    converged : bool
    wall_time_s : float
    posteriors : dict of str -> tensor
        Posterior marginals of enumerated sites, e.g. ``"z"``: ``(N, K)``.
    map_assignments : dict of str -> tensor
        ``argmax`` of each posterior marginal.
    samples : dict of str -> tensor, optional
        Posterior draws ``(chains, draws, ...)`` (MCMC, AutoNormal).
    pointwise_log_likelihood : tensor, optional
        ``(chains, draws, N)`` log p(x_n | draw), where observations are conditionally independent.
    info : dict
        Method-specific extras (restart objectives, sampler statistics, ...).
    """

    model: str
    method: str
    params: dict
    log_likelihood: float
    log_joint: float
    trace: list
    trace_label: str
    n_iter: int
    converged: bool
    wall_time_s: float
    posteriors: dict = field(default_factory=dict)
    map_assignments: dict = field(default_factory=dict)
    samples: Optional[dict] = None
    pointwise_log_likelihood: Optional[torch.Tensor] = None
    observed: Optional[dict] = None
    info: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ JSON
    def to_dict(self, include_posteriors: bool = False) -> dict:
        out = {
            "model": self.model,
            "method": self.method,
            "params": _jsonable(self.params),
            "log_likelihood": _jsonable(float(self.log_likelihood)),
            "log_joint": _jsonable(float(self.log_joint)),
            "trace": _jsonable([float(t) for t in self.trace]),
            "trace_label": self.trace_label,
            "n_iter": int(self.n_iter),
            "converged": bool(self.converged),
            "wall_time_s": float(self.wall_time_s),
            "map_assignments": _jsonable(self.map_assignments),
            "info": _jsonable(self.info),
        }
        if include_posteriors:
            out["posteriors"] = _jsonable(self.posteriors)
        return out

    def to_json(self, path=None, include_posteriors: bool = False) -> str:
        """Serialise; write atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(include_posteriors), indent=1)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, obj: dict) -> "FitResult":
        """Rebuild a result from :meth:`to_dict` output (``samples`` and the pointwise
        log likelihood are not in the JSON; they live in the InferenceData file)."""

        def tensor(v):
            t = torch.as_tensor(np.asarray(v, dtype=float) if _has_none(v) else v)
            return t.double() if t.is_floating_point() else t

        def num(v):
            return float("nan") if v is None else float(v)

        return cls(
            model=obj["model"], method=obj["method"],
            params={k: tensor(v) for k, v in (obj.get("params") or {}).items()},
            log_likelihood=num(obj.get("log_likelihood")), log_joint=num(obj.get("log_joint")),
            trace=[num(t) for t in obj.get("trace") or []], trace_label=obj.get("trace_label", ""),
            n_iter=int(obj.get("n_iter", 0)), converged=bool(obj.get("converged", False)),
            wall_time_s=num(obj.get("wall_time_s")),
            posteriors={k: tensor(v) for k, v in (obj.get("posteriors") or {}).items()},
            map_assignments={k: torch.as_tensor(v) for k, v in (obj.get("map_assignments") or {}).items()},
            info=dict(obj.get("info") or {}))

    # ------------------------------------------------------------------ arviz
    def to_inference_data(self):
        """Convert to :class:`arviz.InferenceData` (built with ``az.from_dict``).

        Point estimates (EM, SVI-MAP) become one chain of one draw; draws
        (MCMC, AutoNormal) keep their ``(chain, draw)`` layout. The
        ``log_likelihood`` group holds ``log p(x_n | theta)`` with the discrete
        sites summed out, where it exists.
        """
        import arviz as az

        if self.samples:
            posterior = {k: _np(v) for k, v in self.samples.items()}
        else:
            posterior = {k: _np(v)[None, None] for k, v in self.params.items()}
        kwargs = dict(posterior=posterior)
        if self.pointwise_log_likelihood is not None:
            kwargs["log_likelihood"] = {"x": _np(self.pointwise_log_likelihood)}
        if self.observed:
            kwargs["observed_data"] = {k: _np(v) for k, v in self.observed.items()}
        stats = {}
        if self.method == "mcmc" and "log_joint_draws" in self.info:
            stats["lp"] = np.asarray(self.info["log_joint_draws"])
        if "diverging" in self.info:
            stats["diverging"] = np.asarray(self.info["diverging"], dtype=bool)
        if stats:
            kwargs["sample_stats"] = stats
        dims = {}
        if self.pointwise_log_likelihood is not None:
            dims["x"] = ["obs"]
        idata = az.from_dict(**kwargs, dims=dims or None)
        idata.posterior.attrs.update(
            method=self.method, model=self.model, log_likelihood_at_estimate=float(self.log_likelihood),
            n_iter=int(self.n_iter), converged=int(self.converged), wall_time_s=float(self.wall_time_s))
        return idata


@dataclass
class StructureFitResult(FitResult):
    """A :class:`FitResult` whose structure (the objects of each scene) was searched
    (:func:`metagen_ppl.engine.structure.search_structure`).

    Extra attributes
    ----------------
    scenes : list of dict
        Per scene what the model reports, e.g. ``{"path", "objects": [{"category_name", "position"}]}``.
    history : list of dict
        One entry per continuous-phase iteration or structure step: ``iteration``, ``round``,
        ``phase`` (``"init"``, ``"em"``, ``"svi"``, ``"birth"``, ``"death"``), ``log_likelihood``,
        ``log_joint``, ``score``, ``num_objects`` and what the model adds. ``trace`` holds the
        log joint of every entry.
    n_rounds : int
        Structure-search rounds run.
    score : float
        The penalised objective of the search (log likelihood plus the structure's prior and
        Occam factors), summed over scenes.
    """

    scenes: list = field(default_factory=list)
    history: list = field(default_factory=list)
    n_rounds: int = 0
    score: float = float("nan")

    def to_dict(self, include_posteriors: bool = False) -> dict:
        out = super().to_dict(include_posteriors)
        out.update(scenes=_jsonable(self.scenes), history=_jsonable(self.history), n_rounds=int(self.n_rounds),
                   score=_jsonable(float(self.score)))
        return out
