"""Input validation, before anything reaches a backend. Every problem is a ValueError that names the
argument and its allowed range."""

from __future__ import annotations

import math
import numbers

import numpy as np


def validate_ids(input_ids, vocab_size: int, max_seq_len: int) -> tuple[np.ndarray, bool]:
    """input_ids: int32/int64 array-like, [seq] (a batch of one) or [batch, seq].
    Returns (int64 C-contiguous [batch, seq], whether the input was 1-D)."""
    ids = np.asarray(input_ids)
    if ids.dtype not in (np.int32, np.int64):
        raise ValueError(f"input_ids must be int32 or int64, got {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise ValueError(f"input_ids must be 1-D [seq] or 2-D [batch, seq], got {ids.ndim}-D {ids.shape}")
    one_d = ids.ndim == 1
    ids = np.ascontiguousarray(ids.reshape(1, -1) if one_d else ids, dtype=np.int64)
    batch, seq = ids.shape
    if batch < 1:
        raise ValueError(f"input_ids batch must be >= 1, got {batch}")
    if not 1 <= seq <= max_seq_len:
        raise ValueError(f"input_ids seq must be in [1, {max_seq_len}], got {seq}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids must be in [0, {vocab_size}), got {bad}")
    return ids, one_d


def validate_max_iters(max_iters, cap: int) -> int:
    """An int in [0, cap] (numpy integers accepted; bool and float are not)."""
    if isinstance(max_iters, (bool, np.bool_)) or not isinstance(max_iters, numbers.Integral):
        raise ValueError(f"max_iters must be an int in [0, {cap}], got {max_iters!r}")
    if not 0 <= int(max_iters) <= cap:
        raise ValueError(f"max_iters must be in [0, {cap}], got {int(max_iters)}")
    return int(max_iters)


def validate_tol(tol) -> float:
    """A finite real >= 0."""
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not (math.isfinite(float(tol)) and float(tol) >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {float(tol)}")
    return float(tol)
