"""M3 ``detector``: MetaGen's metacognition (misses and hallucinations) learned across scenes.

:mod:`.generative` holds the Pyro model and its hooks; :mod:`.fit` the structure-search fit over
many scenes (:func:`fit_metacognition`).
"""

from metagen_ppl.models.detector.generative import *  # noqa: F401,F403  (the model's hooks)
from metagen_ppl.models.detector.comparison import prepare_comparison  # noqa: F401
