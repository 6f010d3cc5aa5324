"""Exceptions raised for bad input and unsupported models.

Every error a user can provoke with bad data, options or model code is a
subclass of :class:`MetagenError` (itself a :class:`ValueError`), so callers can
catch one type and the CLI can print a one-line message and exit with code 2.
"""


class MetagenError(ValueError):
    """Base class of every user-facing error of metagen_ppl."""


class DataError(MetagenError):
    """The data (a file, a tensor, a JSON field) is malformed or out of range."""


class ModelError(MetagenError):
    """A model cannot be found, or cannot be run by the requested engine."""
