"""Checks of data tensors and sizes, with errors that say what to fix."""

from __future__ import annotations

import numbers

import torch

from .errors import DataError


def check_data(data: dict) -> None:
    """Validate a model's data dict: tensors, finite values, ``x`` of shape (N, D)."""
    if not isinstance(data, dict) or not data:
        raise DataError("data must be a non-empty dict of tensors, e.g. {'x': tensor of shape (N, 3)}")
    for key, value in data.items():
        if not torch.is_tensor(value):
            continue
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).nonzero()[0].tolist()
            raise DataError(f"data[{key!r}] contains NaN or inf (first at index {bad}); "
                            "remove or impute those entries")
    x = data.get("x")
    if x is not None:
        if not torch.is_tensor(x) or x.dim() != 2:
            raise DataError(f"data['x'] must be a tensor of shape (N, D), got shape "
                            f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if x.shape[0] == 0:
            raise DataError("data['x'] has no observations (N = 0); a scene needs at least one detection")
        if not x.is_floating_point():
            raise DataError("data['x'] must be a floating-point tensor")


def check_num_objects(num_objects, data: dict) -> None:
    """``1 <= K <= N``."""
    if isinstance(num_objects, bool) or not isinstance(num_objects, numbers.Integral):
        raise DataError(f"num_objects must be an integer, got {num_objects!r}")
    if num_objects < 1:
        raise DataError(f"num_objects must be at least 1, got {num_objects}")
    x = data.get("x")
    if torch.is_tensor(x) and num_objects > x.shape[0]:
        raise DataError(f"num_objects = {num_objects} exceeds the number of observations "
                        f"N = {x.shape[0]}; use K <= N")
