"""Built-in model variants of metagen_ppl, installed as ``metagen_ppl.models``.

Each variant is a module (or a small package) that follows the model protocol of
:mod:`metagen_ppl.engine.registry`: a Pyro ``model(data, num_objects, **options)``
and optional hooks. Built-in variants are registered by name as entry points of the
group ``metagen_ppl.models`` (``pyproject.toml``); a user's variant is a ``.py`` file
passed by path.
"""
