"""Applications on top of the engine, the domain and the models: the command line
(:mod:`~metagen_ppl.apps.cli`), ``compare``, ``evaluate``, the demo and the plots."""
