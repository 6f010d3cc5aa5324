"""The inference engine: it knows Pyro models, never a particular one.

Enumeration E-step (:mod:`~metagen_ppl.engine.enumeration`), the one EM loop
and its restart driver (:mod:`~metagen_ppl.engine.em`), the structure search
(:mod:`~metagen_ppl.engine.structure`), SVI and MCMC baselines
(:mod:`~metagen_ppl.engine.svi`, :mod:`~metagen_ppl.engine.mcmc`), one result
type (:mod:`~metagen_ppl.engine.result`), checkpoints, label alignment and the
model registry. Nothing here imports a model (``metagen_ppl.models``) or an
application (``metagen_ppl.apps``); a test checks it.
"""
