"""M3 ``detector``: MetaGen's metacognition (misses and hallucinations) learned across scenes.

The generative story is in :mod:`.generative`. The package is the model's hooks
(protocol: :mod:`metagen_ppl.engine.registry`):

:mod:`.generative`  ``model`` (the Pyro model), ``initialize``, the priors
:mod:`.estep`       ``estep``: the batched E-step (equal to the engine's enumeration)
:mod:`.mstep`       ``closed_form_mstep``: locations, noise and V from expected counts
:mod:`.structure`   the structure moves and scores (:class:`DetectorSearch`) for the engine's search
:mod:`.fit`         :func:`fit_metacognition`: V across scenes, objects per scene
:mod:`.online`      :func:`fit_metacognition_online`: V learned as the scenes arrive (stepwise EM)
:mod:`.simulate`    ``simulate`` and ``data_from_json`` (the multi-scene JSON format)
:mod:`.comparison`  ``prepare_comparison`` for ``metagen-ppl compare``
"""

from metagen_ppl.models.detector.comparison import COMPARE_BUDGET, COMPARE_SIMULATION, prepare_comparison
from metagen_ppl.models.detector.estep import (component_log_density, estep, frame_terms, joint_log_terms,
                                               scene_log_likelihood)
from metagen_ppl.models.detector.fit import MetacognitionResult, fit_metacognition
from metagen_ppl.models.detector.generative import (COMPONENT_SITES, DEFAULT_BOX, DEFAULTS, IMPOSSIBLE, LOCATION_SITE,
                                                    DetectionLocation, assignment_logits, category_intensity,
                                                    check_structure, check_V, initialize, log_prior, model,
                                                    prior_mean_V, random_detection_per_slot)
from metagen_ppl.models.detector.mstep import closed_form_mstep, mstep_from_statistics, sufficient_statistics
from metagen_ppl.models.detector.online import MetacognitionOnlineResult, fit_metacognition_online
from metagen_ppl.models.detector.simulate import coco_id, data_from_json, simulate
from metagen_ppl.models.detector.structure import (DetectorSearch, active_slots_first, compact_structure,
                                                   structure_log_score, structure_penalty)

__all__ = ["COMPARE_BUDGET", "COMPARE_SIMULATION", "prepare_comparison", "component_log_density", "estep",
           "frame_terms", "joint_log_terms", "scene_log_likelihood", "MetacognitionResult", "fit_metacognition",
           "COMPONENT_SITES", "DEFAULT_BOX", "DEFAULTS", "IMPOSSIBLE", "LOCATION_SITE", "DetectionLocation",
           "assignment_logits", "category_intensity", "check_structure", "check_V", "initialize", "log_prior",
           "model", "prior_mean_V", "random_detection_per_slot", "closed_form_mstep", "mstep_from_statistics",
           "sufficient_statistics", "MetacognitionOnlineResult", "fit_metacognition_online", "coco_id", "data_from_json",
           "simulate", "DetectorSearch", "active_slots_first", "compact_structure", "structure_log_score",
           "structure_penalty"]
