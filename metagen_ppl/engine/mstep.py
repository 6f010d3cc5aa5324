"""The generic M-step: maximise Q + log prior over any continuous sites with a torch optimiser.

It needs nothing from the model but its Pyro function: Q is evaluated by
:meth:`~metagen_ppl.engine.enumeration.EnumeratedModel.q_value` on the
E-step's weights, in the unconstrained space of each site. It is the M-step of
every site a model gives no closed form for.
"""

from __future__ import annotations

from typing import Optional

import torch
from pyro.distributions.transforms import biject_to

from metagen_ppl.engine.enumeration import EnumeratedModel, EStep
from metagen_ppl.errors import MetagenError


def optimizer_mstep(em: EnumeratedModel, values: dict, est: EStep, names, *,
                    optimizer: str = "lbfgs", steps: int = 50, lr: Optional[float] = None) -> dict:
    """Generic M-step: maximise ``Q + log prior`` over ``names`` with a torch optimiser.

    Works in the unconstrained space of each site (``biject_to(support)``). It is
    a generalised M-step: if the optimiser does not improve Q the old values are
    kept, so Q never decreases.
    """
    names = list(names)
    if not names:
        return values
    transforms = {n: biject_to(em.latents[n].constraint) for n in names}
    free = {}
    for n in names:
        u = transforms[n].inv(values[n]).detach().clone()
        free[n] = torch.nan_to_num(u, nan=0.0, posinf=30.0, neginf=-30.0).requires_grad_(True)

    def current():
        v = dict(values)
        v.update({n: transforms[n](free[n]) for n in names})
        return v

    with torch.no_grad():
        q_old = float(em.q_value(values, est))
    norm = max(abs(q_old), 1.0)
    params = list(free.values())
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

        def closure():
            opt.zero_grad()
            loss = -em.q_value(current(), est) / norm
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr or 0.05)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = -em.q_value(current(), est) / norm
                loss.backward()
                opt.step()
    else:
        raise MetagenError(f"unknown optimizer {optimizer!r}; choose 'lbfgs' or 'adam'")
    with torch.no_grad():
        new = {k: v.detach() for k, v in current().items()}
        q_new = float(em.q_value(new, est))
    if not (q_new >= q_old) or not all(torch.isfinite(new[n]).all() for n in names):
        return values  # no improvement: keep the old point (GEM step)
    return new
