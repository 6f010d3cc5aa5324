"""The ``metagen-ppl`` command line: :mod:`.main` (the entry point) and one module per command.

A new command is a module here with ``add_parser(subparsers, parents)`` and a ``run(args)``
that its parser sets as ``func``, listed in :data:`metagen_ppl.apps.cli.main.COMMANDS`.
"""
