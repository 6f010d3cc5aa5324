"""Checkpoints of long fits: atomic, fingerprinted, exact.

A checkpoint is one JSON file, rewritten atomically (:func:`metagen_ppl.io.atomic_write_text`:
a temporary file in the same directory, then :func:`os.replace`) after every finished
unit of work -- a round of the structure search
(:func:`metagen_ppl.engine.structure.search_structure`), or a unit an application keeps
(a finished fit, SVI or MCMC run of ``metagen-ppl evaluate``). A kill at any moment leaves either the previous checkpoint or
the new one, never a half-written file. Layout::

    {"format": "metagen-ppl checkpoint", "version": 2,
     "kind": "metacognition" | "projective" | "evaluate-unit" | ...,
     "fingerprint": {"data": "<sha256 of the data tensors>", "settings": {name: value, ...}},
     "round": n,            # the last finished round (0: only the initial state)
     "done": bool,          # the fit (unit) is finished: resuming returns it as it is
     "state": {...}}        # everything needed to continue exactly (see the writers)

Tensors are stored as ``{"__tensor__": dtype, "shape": [...], "b64": <raw little-endian
bytes>}``, so that a resumed run continues from bit-identical numbers (the fits are
deterministic: interrupted + resumed = uninterrupted, exactly). Tuples and numpy arrays
(the RNG states) are tagged the same way.

A checkpoint is used only for the data and settings it was written for: resuming with
another data file or other settings raises :class:`CheckpointError` naming what differs
and how to fix it (delete the file, or run without ``--resume`` / with ``resume=False``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from typing import Optional

import numpy as np
import torch

from metagen_ppl.errors import MetagenError
from metagen_ppl.io import atomic_write_text

__all__ = ["FORMAT", "VERSION", "CheckpointError", "FitInterrupted", "Checkpoint", "encode", "decode",
           "hash_tensors", "hash_file", "rng_state", "set_rng_state"]

FORMAT = "metagen-ppl checkpoint"
VERSION = 2


class CheckpointError(MetagenError):
    """A checkpoint cannot be used: written for other data or settings, another kind of fit, or unreadable.

    Attributes
    ----------
    path : str
        The checkpoint file.
    why : str
        What is wrong with it (e.g. ``"was written for other settings (tol = ...)"``).
    """

    def __init__(self, message: str, path: Optional[str] = None, why: Optional[str] = None):
        super().__init__(message)
        self.path = path
        self.why = why


class FitInterrupted(KeyboardInterrupt):
    """A fit was interrupted (Ctrl-C); its last checkpoint is intact.

    A subclass of :class:`KeyboardInterrupt`, so code that catches Ctrl-C still does.

    Attributes
    ----------
    checkpoint : str or None
        The checkpoint file (``None``: the run had none, nothing can be resumed).
    round : int or None
        The last round saved in it (``None``: nothing saved yet).
    detail : str
        One line saying what was kept and how to resume.
    """

    def __init__(self, checkpoint: Optional[str], round: Optional[int], detail: Optional[str] = None):
        self.checkpoint = checkpoint
        self.round = round
        if detail is None:
            if checkpoint is None:
                detail = ("interrupted; no checkpoint was written (give --out or --checkpoint to be able to "
                          "resume)")
            elif round is None:
                detail = "interrupted before the first checkpoint; rerun the same command to start again"
            else:
                detail = (f"interrupted; rerun with --resume to continue from the end of round {round} "
                          f"(checkpoint {checkpoint})")
        self.detail = detail
        super().__init__(detail)

    def __str__(self) -> str:
        return self.detail


def interrupted(e: KeyboardInterrupt, ck) -> "FitInterrupted":
    """The :class:`FitInterrupted` to raise for Ctrl-C ``e`` during a fit checkpointed by ``ck``
    (``None``: no checkpoint); ``e`` itself if it already is one."""
    if isinstance(e, FitInterrupted):
        return e
    return FitInterrupted(None if ck is None else ck.path, None if ck is None else ck.saved_round)


# --------------------------------------------------------------------------- encoding
def _tensor_json(t: torch.Tensor) -> dict:
    t = t.detach().cpu().contiguous()
    arr = t.numpy()
    return {"__tensor__": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
            "b64": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()).decode("ascii")}


def _array_json(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"__ndarray__": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def encode(obj):
    """JSON-ready form of ``obj`` (nested dicts, lists, tuples, tensors, arrays, numbers), exact.

    Floats that are not finite are written as ``{"__float__": "nan" | "inf" | "-inf"}``, so the
    file is strict JSON.
    """
    if torch.is_tensor(obj):
        return _tensor_json(obj)
    if isinstance(obj, np.ndarray):
        return _array_json(obj)
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def decode(obj):
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        dtype = getattr(torch, obj["__tensor__"])
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype.newbyteorder("<")
        arr = np.frombuffer(base64.b64decode(obj["b64"]), dtype=np_dtype).reshape(obj["shape"])
        return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
    if "__ndarray__" in obj:
        arr = np.frombuffer(base64.b64decode(obj["b64"]), dtype=np.dtype(obj["__ndarray__"]))
        return arr.reshape(obj["shape"]).copy()
    if "__tuple__" in obj:
        return tuple(decode(v) for v in obj["__tuple__"])
    if "__float__" in obj:
        return float(obj["__float__"])
    return {k: decode(v) for k, v in obj.items()}


# --------------------------------------------------------------------------- fingerprints
def hash_tensors(obj) -> str:
    """SHA-256 (hex) of a tensor, or of a (nested) dict / list of tensors and plain values.

    Covers every tensor's dtype, shape and bytes and every key, so two data sets hash
    alike only when they are identical.
    """
    h = hashlib.sha256()

    def feed(x):
        if torch.is_tensor(x):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(f"A{x.dtype}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                h.update(repr(str(k)).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def hash_file(path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _settings_json(settings: dict) -> dict:
    """Settings as plain JSON values (small tensors as lists, large ones as their hash)."""
    def conv(v):
        if torch.is_tensor(v) or isinstance(v, np.ndarray):
            t = torch.as_tensor(v)
            if t.numel() <= 32:
                return [conv(x) for x in t.reshape(-1).tolist()] if t.dim() else conv(t.item())
            return "sha256:" + hash_tensors(t)[:16]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (np.floating, np.integer, np.bool_)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return repr(v)

    return json.loads(json.dumps(conv(settings)))


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """The global RNG states of torch, numpy and :mod:`random` (:func:`pyro.util.get_rng_state`)."""
    import pyro.util

    return pyro.util.get_rng_state()


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (after an :func:`encode` / :func:`decode` round trip)."""
    import random

    torch.set_rng_state(state["torch"])
    r = state["random"]
    random.setstate((r[0], tuple(r[1]), r[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), int(n[2]), int(n[3]), float(n[4])))


# --------------------------------------------------------------------------- the file
class Checkpoint:
    """One checkpoint file of one kind of fit, for one data set and one set of settings.

    Parameters
    ----------
    path : str
        The JSON file (its directory is created on the first save).
    kind : str
        What wrote it (``"metacognition"``, ``"projective"``, ...): a file of another kind is refused.
    data_hash : str
        :func:`hash_tensors` of the data (or :func:`hash_file` of the data file).
    settings : dict
        Every setting the result depends on (numbers, strings, small tensors); a checkpoint
        written with other values is refused, naming the ones that differ.
    """

    def __init__(self, path, kind: str, data_hash: str, settings: dict):
        self.path = os.fspath(path)
        self.kind = kind
        self.fingerprint = {"data": data_hash, "settings": _settings_json(settings)}
        self.saved_round: Optional[int] = None

    def refuse(self, why: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.path!r} {why}; to start afresh delete that file (or run without --resume / "
            "with resume=False, which overwrites it), or resume with the data and settings it was written for",
            self.path, why)

    def mismatch(self, fingerprint: dict) -> Optional[str]:
        """What differs between the stored ``fingerprint`` and this run's (``None``: nothing)."""
        if not isinstance(fingerprint, dict):
            return "has no fingerprint"
        diffs = []
        if fingerprint.get("data") != self.fingerprint["data"]:
            old, new = str(fingerprint.get("data"))[:12], self.fingerprint["data"][:12]
            diffs.append(f"other data (data hash {old}... in the checkpoint, {new}... now)")
        old_s, new_s = fingerprint.get("settings") or {}, self.fingerprint["settings"]
        changed = [f"{k} = {_short(old_s.get(k, '(unset)'))} in the checkpoint but {_short(new_s.get(k, '(unset)'))} "
                   "now" for k in sorted(set(old_s) | set(new_s)) if old_s.get(k) != new_s.get(k)]
        if changed:
            diffs.append("other settings (" + "; ".join(changed) + ")")
        return " and ".join(diffs) if diffs else None

    def load(self) -> Optional[dict]:
        """The stored ``{"round", "done", "state", ...}``; ``None`` if the file does not exist.

        Raises
        ------
        CheckpointError
            Unreadable file, another kind of checkpoint, or other data / settings.
        """
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self.refuse(f"cannot be read ({e.strerror or e})") from None
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise self.refuse("is not valid JSON (not a checkpoint, or damaged outside metagen-ppl)") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise self.refuse("is not a metagen-ppl checkpoint")
        if obj.get("version") != VERSION:
            raise self.refuse(f"has format version {obj.get('version')!r}, this metagen-ppl reads version "
                               f"{VERSION}")
        if obj.get("kind") != self.kind:
            raise self.refuse(f"belongs to a {obj.get('kind')!r} run, not to this {self.kind!r} run")
        why = self.mismatch(obj.get("fingerprint"))
        if why is not None:
            raise self.refuse(f"was written for {why}")
        try:
            out = {"round": int(obj["round"]), "done": bool(obj["done"]), "state": decode(obj["state"])}
        except (KeyError, TypeError, ValueError) as e:
            raise self.refuse(f"is incomplete ({type(e).__name__}: {e})") from None
        out["extra"] = obj.get("extra", {})
        self.saved_round = out["round"]
        return out

    def save(self, round: int, state: dict, done: bool = False, extra: Optional[dict] = None) -> None:
        """Write the checkpoint atomically (the previous one stays intact until the new one is complete)."""
        obj = {"format": FORMAT, "version": VERSION, "kind": self.kind, "fingerprint": self.fingerprint,
               "round": int(round), "done": bool(done), "extra": extra or {}, "state": encode(state)}
        atomic_write_text(self.path, json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n")
        self.saved_round = int(round)
