"""M2 ``categorical``: objects with categories, a detector confusion matrix, three EM category strategies.

:mod:`.generative` holds the Pyro model and its hooks; :mod:`.strategies` the three EM strategies
for the categories (sampled conditioning, exact enumeration, discrete M-step) and SVI/MCMC on M2.
"""

from metagen_ppl.models.categorical.generative import *  # noqa: F401,F403  (the model's hooks)
