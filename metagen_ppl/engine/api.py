"""One entry point for the three inference methods."""

from __future__ import annotations

from metagen_ppl.engine.em import fit_em
from metagen_ppl.engine.mcmc import fit_mcmc
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.svi import fit_svi
from metagen_ppl.errors import MetagenError

METHODS = ("em", "svi", "svi-map", "svi-normal", "mcmc")


def fit(model, data: dict, num_objects: int, method: str = "em", *, seed: int = 0, **kwargs) -> FitResult:
    """Fit ``model`` to ``data`` by ``method``.

    Parameters
    ----------
    method : {"em", "svi" (= "svi-map"), "svi-normal", "mcmc"}
    kwargs :
        Passed to :func:`metagen_ppl.engine.em.fit_em`, :func:`metagen_ppl.engine.svi.fit_svi`
        or :func:`metagen_ppl.engine.mcmc.fit_mcmc`.
    """
    if method == "em":
        return fit_em(model, data, num_objects, seed=seed, **kwargs)
    if method in ("svi", "svi-map", "svi-normal"):
        guide = "normal" if method == "svi-normal" else kwargs.pop("guide", "delta")
        return fit_svi(model, data, num_objects, guide=guide, seed=seed, **kwargs)
    if method == "mcmc":
        return fit_mcmc(model, data, num_objects, seed=seed, **kwargs)
    raise MetagenError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
