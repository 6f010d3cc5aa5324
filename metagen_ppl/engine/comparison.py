"""What a model hands to a comparison of inference methods on one problem.

``metagen-ppl compare`` (:mod:`metagen_ppl.apps.compare`) fits one model with
every method. A model whose structure EM searches first (the number and
categories of objects) defines a hook ``prepare_comparison(obj, ...)`` that
returns a :class:`ComparisonSetup`: the data, the fixed structure (as model
options), how to score an estimate and draw it. It lives in the engine so that
models can return it without importing an application.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import torch

@dataclasses.dataclass
class ComparisonSetup:
    """What every method of a comparison fits, and how its answers are scored and drawn.

    Attributes
    ----------
    data : dict of str -> tensor
        The model's data.
    num_objects : int
        ``K`` (object slots).
    options : dict
        Model keyword options (for structured models: the structure found by EM's search).
    truth : dict, optional
        The simulated truth, if known.
    accuracy : callable ``FitResult -> dict``, optional
        Accuracy measures of an estimate against the truth (``{"location error": 0.1, ...}``).
    score : callable ``FitResult -> dict``, optional
        The report's ``log_likelihood`` and ``log_joint`` of an estimate, computed the same way
        for every method (default: each result's own ``log_likelihood`` and ``log_joint``,
        which already agree when every method sums the same discrete sites out).
    score_of : dict of str -> str
        What ``score`` computes, for the report's column definitions
        (``{"log_likelihood": "log p(x, o | theta), c and z summed out"}``).
    definitions : dict of str -> str
        Definitions of the set-up's own accuracy columns (the report knows the built-in ones).
    scene : callable ``FitResult -> (M, 3) array``, optional
        The object locations of an estimate to draw in the scene plot.
    scene_observations, scene_truth, scene_extra : arrays, optional
        The observations (P, 3), true locations (T, 3) and extra points (e.g.
        camera positions) of the scene plot.
    assignment_site : str
        The enumerated site whose posterior is compared across methods.
    assignment_mask : bool tensor, optional
        Which leading entries of the assignment posterior are real (padding excluded).
    category_strategies : tuple of str
        EM category strategies to run (models with per-object category sites).
    init : dict, optional
        Starting values shared by every method (default: each method's own start).
    mcmc_init_chains : {"first", "all"}
        Whether ``init`` starts only MCMC's first chain or every chain (see
        :func:`metagen_ppl.engine.mcmc.fit_mcmc`).
    notes : list of str
        Lines for the report (e.g. how the structure was found).
    extra_rows : list of dict
        Rows added to the table (e.g. the structure search itself).

    A model module sets its budget defaults with ``COMPARE_BUDGET = {field of Budget: value}``
    and its default simulation with ``COMPARE_SIMULATION = {"args": (...), "kwargs": {...}}``.
    """

    data: dict
    num_objects: int
    options: dict = dataclasses.field(default_factory=dict)
    truth: Optional[dict] = None
    accuracy: Optional[Callable] = None
    score: Optional[Callable] = None
    score_of: dict = dataclasses.field(default_factory=dict)
    definitions: dict = dataclasses.field(default_factory=dict)
    scene: Optional[Callable] = None
    scene_observations: Optional[np.ndarray] = None
    scene_truth: Optional[np.ndarray] = None
    scene_extra: Optional[dict] = None
    assignment_site: str = "z"
    assignment_mask: Optional[torch.Tensor] = None
    category_strategies: tuple = ()
    init: Optional[dict] = None
    mcmc_init_chains: str = "first"
    notes: list = dataclasses.field(default_factory=list)
    extra_rows: list = dataclasses.field(default_factory=list)
