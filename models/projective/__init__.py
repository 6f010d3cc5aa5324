"""M4 ``projective``: the detector model on 2D pixel detections seen through known cameras.

:mod:`.generative` holds the Pyro model, its hooks and the structure-search fit over many videos.
"""

from metagen_ppl.models.projective.generative import *  # noqa: F401,F403  (the model's hooks)
