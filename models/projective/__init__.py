"""M4 ``projective``: the detector model on 2D pixel detections seen through known cameras.

The generative story is in :mod:`.generative`. The package is the model's hooks
(protocol: :mod:`metagen_ppl.engine.registry`) and its structure search:

:mod:`.generative`  ``model`` (the Pyro model), ``initialize``, priors, the data layout, JSON of V
:mod:`.estep`       ``estep``: the batched E-step (equal to the engine's enumeration)
:mod:`.mstep`       ``closed_form_mstep`` (V, pixel noise, marks) and the Gauss-Newton location M-step
:mod:`.occam`       the Laplace (Occam) factor of each object's location
:mod:`.births`      birth proposals: candidates triangulated from unexplained detections
:mod:`.structure`   :class:`ProjectiveSearch`: the continuous phase, deaths, state (for the engine's search)
:mod:`.fit`         :func:`fit_videos` and its :class:`VideoFitResult`
:mod:`.online`      :func:`fit_videos_online`: V learned as the videos arrive (stepwise EM)
:mod:`.mapreduce`   :func:`fit_videos_mapreduce`: map-reduce EM over chunks of videos (any executor, e.g. Dask)
:mod:`.simulate`    ``simulate``, ``simulate_file``: videos in the MetaGen detection format (any camera)
:mod:`.nuts`        :func:`nuts_locations`: NUTS over one video's object locations
:mod:`.comparison`  ``prepare_comparison`` for ``metagen-ppl compare``
"""

from metagen_ppl.models.projective.comparison import COMPARE_BUDGET, COMPARE_SIMULATION, prepare_comparison
from metagen_ppl.models.projective.estep import estep, frame_terms, joint_log_terms, video_log_likelihood
from metagen_ppl.models.projective.fit import VideoFitResult, compact_structure, fit_videos
from metagen_ppl.models.projective.generative import (COMPONENT_SITES, DEFAULTS, IMPOSSIBLE, LOCATION_SITE, LOG_AREA,
                                                      ROOM_BOX, SCORE_EDGES, PixelDetection, assignment_logits,
                                                      category_intensity, data_from_videos, initialize, log_prior,
                                                      model, num_bins, object_pixels, params_from_json,
                                                      params_to_json, pixel_to_ray, prior_params, project,
                                                      score_bins, select_videos)
from metagen_ppl.models.projective.mapreduce import fit_videos_mapreduce
from metagen_ppl.models.projective.mstep import (closed_form_mstep, gauss_newton_locations, location_mstep,
                                                 location_objective, mstep_from_statistics, sufficient_statistics)
from metagen_ppl.models.projective.nuts import nuts_locations
from metagen_ppl.models.projective.online import OnlineVideoResult, fit_videos_online
from metagen_ppl.models.projective.occam import location_hessian, log_occam, object_occam, structure_penalty
from metagen_ppl.models.projective.simulate import simulate, simulate_file
from metagen_ppl.models.projective.structure import MODES, ProjectiveSearch

__all__ = ["COMPARE_BUDGET", "COMPARE_SIMULATION", "prepare_comparison", "estep", "frame_terms", "joint_log_terms",
           "video_log_likelihood", "VideoFitResult", "compact_structure", "fit_videos", "fit_videos_mapreduce",
           "COMPONENT_SITES",
           "DEFAULTS", "IMPOSSIBLE", "LOCATION_SITE", "LOG_AREA", "ROOM_BOX", "SCORE_EDGES", "PixelDetection",
           "assignment_logits", "category_intensity", "data_from_videos", "initialize", "log_prior", "model",
           "num_bins", "object_pixels", "params_from_json", "params_to_json", "pixel_to_ray", "prior_params",
           "project", "score_bins", "select_videos", "closed_form_mstep", "gauss_newton_locations",
           "location_mstep", "location_objective", "mstep_from_statistics", "sufficient_statistics", "nuts_locations",
           "OnlineVideoResult", "fit_videos_online", "location_hessian", "log_occam",
           "object_occam", "structure_penalty", "simulate", "simulate_file", "MODES", "ProjectiveSearch"]
