"""Reading and writing the JSON exchange format, atomically and with clear errors.

Data file (written by ``metagen-ppl simulate``, read by ``metagen-ppl fit``)::

    {
      "observations": [[x, y, z], ...],      # required: N rows of equal length (or per scene:
                                             #   [[[x, y, z], ...], ...], S scenes of M rows -> (S, M, D))
      "categories":   [int, ...],            # optional: observed category o_n >= 0
      "num_objects":  K,                      # optional: default K for `fit`
      "model":        "baseline",             # optional, informative
      "truth":        {"locs": [[x, y, z], ...], ...}   # optional ground truth
    }

:func:`data_from_json` turns such an object into a model's ``data`` dict
(``{"x": (N, D) tensor, "o": (N,) long tensor}``; ``D`` as the model's ``DATA_DIM`` says,
3 for the built-in point models, any for a model file without it); a model module may replace
that conversion with its own ``data_from_json(obj, dtype)`` hook (see
:mod:`metagen_ppl.engine.registry`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import Optional

import numpy as np
import torch

from metagen_ppl.errors import DataError, MetagenError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "load_json", "data_from_json", "save_data",
           "to_jsonable", "check_output_path", "check_output_dir", "file_mode"]


# --------------------------------------------------------------------------- writing
def file_mode() -> int:
    """The mode a new file gets under the process's umask (``0o666 & ~umask``, e.g. 0o644)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path):
    """Context manager yielding a temporary path that replaces ``path`` on success.

    Write the file to the yielded path (any writer: text, ``fig.savefig``,
    ``idata.to_netcdf``); on leaving the block it replaces ``path`` with
    :func:`os.replace`, so a reader never sees a half-written file and an
    interrupted write (an exception, Ctrl-C) leaves the old file intact and
    removes the temporary one. Missing parent directories are created. The file gets the
    mode of a newly created file (:func:`file_mode`: the umask is respected), not the
    private mode of a temporary file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"cannot write {path!r}: it is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"cannot write {path!r}: cannot create directory {directory!r}, "
                        "a file is in the way") from None
    except OSError as e:
        raise DataError(f"cannot write {path!r}: cannot create directory {directory!r}: "
                        f"{e.strerror or e}") from None
    name, ext = os.path.splitext(os.path.basename(path))
    # the temporary name keeps the extension: writers that pick a format by it still work
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=f".tmp{ext}")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def _check_writable_under(path: str, what: str, parent: Optional[str] = None) -> Optional[str]:
    # ``what``: "write" (a file) or "create output directory"
    """The nearest existing ancestor of ``parent`` (default: ``path``'s directory) must be a directory
    we can create files in; returns the first directory that does not exist yet (``None``: all exist)."""
    parent = os.path.dirname(os.path.abspath(path)) if parent is None else os.path.abspath(parent)
    missing = None
    while not os.path.exists(parent):
        missing = parent
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DataError(f"cannot {what} {path!r}: a file is in the way ({parent!r} is not a directory)")
    try:  # the real test (permissions, read-only file systems, quotas): create and drop a file there
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise DataError(f"cannot {what} {path!r}: cannot create files in {parent!r} "
                        f"({e.strerror or e}); choose another --out") from None
    return missing


def check_output_path(path) -> Optional[str]:
    """Fail early (before a long run) if ``path`` cannot become a file: it is a directory, a file
    stands where one of its parent directories should be, or the directory that would hold it is
    not writable. Creates nothing; returns the first missing parent directory (``None``: it exists),
    which the write will create."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"cannot write {path!r}: it is a directory; give a file name")
    return _check_writable_under(path, "write")


def check_output_dir(path) -> Optional[str]:
    """Fail early if ``path`` cannot become an output directory (an existing file, or no writable
    ancestor); returns the first missing directory (``None``: ``path`` exists), which the run will create."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"output directory {path!r} exists and is not a directory; give a directory")
    if os.path.isdir(path):
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise DataError(f"cannot write into output directory {path!r} ({e.strerror or e}); choose another "
                            "--out") from None
        return None
    missing = _check_writable_under(path, "create output directory", parent=path)
    return missing or os.path.abspath(path)


def to_jsonable(obj):
    """Tensors and arrays to nested lists, numpy scalars to Python numbers, NaN/inf to ``None``."""
    if torch.is_tensor(obj):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path, obj, indent: Optional[int] = 1) -> None:
    """Serialise ``obj`` (tensors allowed, see :func:`to_jsonable`) and write it atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent) + "\n")


def save_data(path, obj) -> None:
    """Write a data set in the exchange format (e.g. the output of a model's ``simulate``)."""
    if not isinstance(obj, dict) or "observations" not in obj:
        raise DataError("a data set must be a dict with an 'observations' list")
    atomic_write_json(path, obj)


# --------------------------------------------------------------------------- reading
def load_json(path):
    """Parse a JSON file; :class:`DataError` naming the file (and line/column) if it cannot be read."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise DataError(f"a JSON file name (str or os.PathLike) is needed, got {type(path).__name__}") from None
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise DataError(f"cannot read file {path!r}: it does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path!r} is a directory, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"file {path!r} is not UTF-8 text (byte {e.start}); expected JSON") from None
    except OSError as e:
        raise DataError(f"cannot read file {path!r}: {e.strerror or e}") from None
    if not text.strip():
        raise DataError(f"file {path!r} is empty{' (only whitespace)' if text else ''}; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"file {path!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise DataError(f"file {path!r} is nested too deeply to parse") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_observations(obs, source: Optional[str], dim: Optional[int]) -> list:
    at = f"{source}: " if source else ""
    if not isinstance(obs, list) or not obs:
        what = "an empty list" if isinstance(obs, list) else type(obs).__name__
        raise DataError(f"{at}'observations' must be a non-empty list of [x, y, z] rows, got {what}")
    width = None
    for i, row in enumerate(obs):
        if not isinstance(row, list) or not row:
            raise DataError(f"{at}observation row {i} must be a non-empty list of numbers, got {row!r:.60}")
        if width is None:
            width = len(row)
            if dim is not None and width != dim:
                raise DataError(f"{at}observation rows must have {dim} coordinates, "
                                f"row 0 has {width}")
        elif len(row) != width:
            raise DataError(f"{at}observation row {i} has {len(row)} coordinates, "
                            f"row 0 has {width}; all rows must have the same length")
        for j, v in enumerate(row):
            if not _is_number(v):
                raise DataError(f"{at}observation row {i} column {j} is not a number: {v!r:.40}")
            try:
                finite = math.isfinite(v)
            except OverflowError:  # an integer beyond the float range
                finite, v = False, float("inf") if v > 0 else float("-inf")
            if not finite:
                raise DataError(f"{at}observation row {i} contains {v} (column {j}); "
                                "values must be finite: remove or impute that row")
    return obs


def check_categories(cats, n: int, source: Optional[str]) -> list:
    at = f"{source}: " if source else ""
    if not isinstance(cats, list):
        raise DataError(f"{at}'categories' must be a list of integers, got {type(cats).__name__}")
    if len(cats) != n:
        raise DataError(f"{at}'categories' has {len(cats)} entries but there are {n} observations; "
                        "give one category per observation")
    for i, c in enumerate(cats):
        if isinstance(c, bool) or not isinstance(c, int):
            raise DataError(f"{at}category {i} must be a non-negative integer, got {c!r:.40}")
        if c < 0:
            raise DataError(f"{at}category {i} is {c}; categories must be non-negative integers")
    return cats


#: ``dim`` of :func:`data_from_json` when not given: the model's ``DATA_DIM`` (``spec.data_dim``; ``None``: any),
#: 3 without a model.
FROM_MODEL = "from-model"


def data_from_json(obj, spec=None, dtype=torch.float64, source: str = "<data>", dim=FROM_MODEL) -> dict:
    """Convert a parsed data file to a model's ``data`` dict.

    Parameters
    ----------
    obj : dict
        Parsed JSON in the exchange format (see the module docstring).
    spec : ModelSpec, optional
        If it has a ``data_from_json`` hook, that hook does the conversion.
    dtype : torch.dtype
        Floating-point precision of ``x``.
    source : str
        Name used in error messages (usually the file path).
    dim : int or None
        Required number of coordinates per observation; ``None`` accepts any, as
        long as all rows agree. Default: the model's ``DATA_DIM`` (``spec.data_dim``:
        3 for the built-in point models, any for a model file that does not set it),
        3 without ``spec``.

    Returns
    -------
    dict
        ``{"x": (N, D) tensor of dtype}``, plus ``"o": (N,) long tensor`` when
        the file has ``categories``. Observations given per scene
        (``[[[x, y, z], ...], [[x, y, z], ...]]``, every scene with the same number of
        rows) give ``x`` of shape ``(S, M, D)`` (and ``o`` of ``(S, M)`` from per-scene categories).

    Raises
    ------
    DataError
        On a missing field, ragged or non-numeric rows, NaN/inf (naming the
        row), or categories of the wrong length or sign.
    """
    hook = getattr(spec, "data_from_json", None) if spec is not None else None
    if not isinstance(obj, dict) and hook is None:
        hint = ""
        if isinstance(obj, list) and obj and isinstance(obj[0], dict) and "views" in obj[0]:
            hint = ("; this is a list of videos/scenes: fit MetaGen detector files with 'metagen-ppl "
                    "evaluate' and 3D multi-scene files with 'metagen-ppl metacognition fit'")
        raise DataError(f"{source}: a data file must hold a JSON object with an 'observations' list, "
                        f"got {type(obj).__name__}{hint}")
    if hook is not None:
        try:
            data = hook(obj, dtype)
        except MetagenError as e:
            raise DataError(f"{source}: {e}") from e
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DataError(f"{source}: model {spec.name!r} could not read this data file: "
                            f"{type(e).__name__}: {e}") from e
        if not isinstance(data, dict):
            raise DataError(f"{source}: model {spec.name!r}'s data_from_json returned "
                            f"{type(data).__name__}, not a dict of tensors")
        return data
    if "observations" not in obj:
        raise DataError(f"{source}: no 'observations' field; a data file looks like "
                        '{"observations": [[x, y, z], ...]}')
    if dim == FROM_MODEL:
        dim = getattr(spec, "data_dim", None) if spec is not None else 3
    obs = obj["observations"]
    cats = obj.get("categories")
    if isinstance(obs, list) and obs and isinstance(obs[0], list) and obs[0] and isinstance(obs[0][0], list):
        return _scenes_from_json(obs, cats, dtype, source, dim)
    obs = check_observations(obs, source, dim)
    data = {"x": torch.tensor(obs, dtype=dtype)}
    if cats is not None:
        data["o"] = torch.tensor(check_categories(cats, len(obs), source), dtype=torch.long)
    return data


def _scenes_from_json(scenes: list, cats, dtype, source: Optional[str], dim: Optional[int]) -> dict:
    """Observations given per scene: ``x`` of shape ``(S, M, D)`` (every scene with ``M`` rows of ``D``)."""
    at = f"{source}: " if source else ""
    rows, width = [], None
    for s, scene in enumerate(scenes):
        where = f"{source}: scene {s}" if source else f"scene {s}"
        if not isinstance(scene, list) or not scene or not isinstance(scene[0], list):
            raise DataError(f"{at}'observations' mixes scenes (lists of rows) and other entries: scene {s} is "
                            f"{scene!r:.60}")
        check_observations(scene, where, dim if width is None else width)
        width = len(scene[0])
        if len(scene) != len(scenes[0]):
            raise DataError(f"{at}scene {s} has {len(scene)} observations, scene 0 has {len(scenes[0])}; every "
                            "scene of a per-scene 'observations' list needs the same number (or write a "
                            "data_from_json hook that pads and masks)")
        rows.append(scene)
    data = {"x": torch.tensor(rows, dtype=dtype)}
    if cats is not None:
        if not isinstance(cats, list) or len(cats) != len(scenes):
            raise DataError(f"{at}'categories' must give one list per scene ({len(scenes)} scenes)")
        data["o"] = torch.tensor([check_categories(c, len(scenes[0]), f"{source}: scene {s}" if source else
                                                   f"scene {s}") for s, c in enumerate(cats)], dtype=torch.long)
    return data


def num_objects_from_json(obj, source: str = "<data>") -> Optional[int]:
    """The file's ``num_objects`` (validated), or ``None`` if absent."""
    if not isinstance(obj, dict) or obj.get("num_objects") is None:
        return None
    k = obj["num_objects"]
    if isinstance(k, bool) or not isinstance(k, int):
        raise DataError(f"{source}: 'num_objects' must be an integer, got {k!r:.40}")
    if k < 1:
        raise DataError(f"{source}: 'num_objects' must be at least 1, got {k}")
    return k

def atomic_savefig(fig, path, **kwargs) -> None:
    """``fig.savefig(path)`` atomically (:func:`metagen_ppl.io.atomic_path`; the format follows
    ``path``'s extension)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
