"""Input validation, before anything reaches a backend. Every problem is a ValueError that names the
argument and its allowed range."""

from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
# batch x (longest) seq per call: a bound on what one call may ask a backend to allocate (a (10**7, 1)
# batch of ids passed validation and then failed inside ONNX Runtime, allocating gigabytes)
MAX_TOKENS_PER_CALL = 65536


def _check_budget(batch: int, seq: int, name: str) -> None:
    if batch * seq > MAX_TOKENS_PER_CALL:
        raise ValueError(f"{name} has batch x seq = {batch} x {seq} = {batch * seq} tokens, over the "
                         f"{MAX_TOKENS_PER_CALL} per call (split the batch)")


def _sequence(value, name: str) -> np.ndarray:
    """One 1-D sequence of token ids (int32/int64 array-like) -> int64 [n]."""
    try:
        ids = np.asarray(value)
    except ValueError as e:
        raise ValueError(f"{name} must be integer token ids, got something numpy cannot read ({e})") from None
    if ids.dtype == object or (ids.size and ids.dtype not in (np.int32, np.int64)):
        raise ValueError(f"{name} must be int32 or int64 token ids, got {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {ids.ndim}-D {ids.shape}")
    return ids.astype(np.int64)


def validate_ids(input_ids, vocab_size: int, max_seq_len: int, name: str = "input_ids"
                 ) -> tuple[np.ndarray, np.ndarray, bool]:
    """input_ids: int32/int64 array-like [seq] (a batch of one) or [batch, seq], or a list of 1-D
    sequences of different lengths (a ragged batch, right-padded here).

    Returns (int64 C-contiguous [batch, seq], lengths int64 [batch], whether the input was one 1-D sequence)."""
    if isinstance(input_ids, (list, tuple)) and input_ids and np.ndim(input_ids[0]) == 1:
        _check_budget(len(input_ids), 1, name)
        rows = [_sequence(row, f"{name}[{i}]") for i, row in enumerate(input_ids)]
        one_d = False
    else:
        try:
            ids = np.asarray(input_ids)
        except ValueError as e:
            raise ValueError(f"{name} must be an array of token ids or a list of 1-D sequences ({e})") from None
        if ids.dtype not in (np.int32, np.int64):
            raise ValueError(f"{name} must be int32 or int64, got {ids.dtype}")
        if ids.ndim not in (1, 2):
            raise ValueError(f"{name} must be 1-D [seq] or 2-D [batch, seq], got {ids.ndim}-D {ids.shape}")
        one_d = ids.ndim == 1
        _check_budget(*((1, ids.shape[0]) if one_d else ids.shape), name)
        rows = list(ids.reshape(1, -1) if one_d else ids)
    if not rows:
        raise ValueError(f"{name} batch must be >= 1, got 0")
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    bad = [i for i, n in enumerate(lengths) if not 1 <= n <= max_seq_len]
    if bad:
        raise ValueError(f"{name} seq must be in [1, {max_seq_len}], got {int(lengths[bad[0]])}"
                         + (f" (row {bad[0]})" if len(rows) > 1 else ""))
    _check_budget(len(rows), int(lengths.max()), name)
    ids = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    lo, hi = int(min(r.min() for r in rows)), int(max(r.max() for r in rows))
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} must be in [0, {vocab_size}), got {lo if lo < 0 else hi}")
    return ids, lengths, one_d


def _per_row(value, batch: int, name: str) -> list:
    """A scalar, or one value per row (a sequence of `batch`)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = list(np.asarray(value, dtype=object).reshape(-1)) if not isinstance(value, (list, tuple)) else list(value)
        if len(values) != batch:
            raise ValueError(f"{name} must be one value or one per row ({batch}), got {len(values)}")
        return values
    return [value] * batch


def validate_max_iters(max_iters, cap: int, batch: int = 1) -> np.ndarray:
    """An int in [0, cap], or one per row (numpy integers accepted; bool and float are not) -> int64 [batch]."""
    out = []
    for v in _per_row(max_iters, batch, "max_iters"):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise ValueError(f"max_iters must be an int in [0, {cap}], got {v!r}")
        if not 0 <= int(v) <= cap:
            raise ValueError(f"max_iters must be in [0, {cap}], got {int(v)}")
        out.append(int(v))
    return np.array(out, dtype=np.int64)


def validate_tol(tol, batch: int = 1) -> np.ndarray:
    """A finite real >= 0 that float32 represents, or one per row -> float32 [batch]."""
    out = []
    for v in _per_row(tol, batch, "tol"):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise ValueError(f"tol must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(float(v)) and 0 <= float(v) <= FLOAT32_MAX):
            raise ValueError(f"tol must be a finite number >= 0 that float32 holds (at most {FLOAT32_MAX:.4g}), "
                             f"got {float(v)}")
        out.append(float(v))
    return np.array(out, dtype=np.float32)
