"""Text generation over an artifact's prefill and decode graphs, torch-free: prefill the prompts (a
ragged batch, right-padded), then one decode step per new token, greedy or sampled.

A row ends at a stop id (which is kept) or after max_new_tokens; ended rows leave the batch (their
caches are dropped), so a long row does not make the others pay. Each generated token comes with the
exit iteration of the position whose logits chose it (the last prompt token for the first one).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """temperature 0: greedy (argmax, the lowest id on ties); else softmax(logits / temperature) after
    keeping the top_k largest logits and the smallest set whose probability reaches top_p; seeded."""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def check(self, vocab_size: int) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (math.isfinite(t) and t >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral)
                                       or not 1 <= self.top_k <= vocab_size):
            raise ValueError(f"top_k must be an int in [1, {vocab_size}] or None, got {self.top_k!r}")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, numbers.Real)
                                       or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1] or None, got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
                                      or self.seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")


class Sampler:
    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits float32 [B, V] -> token ids int64 [B]."""
        s = self.sampling
        if s.temperature == 0:
            return logits.argmax(-1).astype(np.int64)
        x = logits.astype(np.float64) / s.temperature
        if s.top_k is not None and s.top_k < x.shape[-1]:
            kth = np.sort(x, axis=-1)[:, -s.top_k][:, None]
            x = np.where(x < kth, -np.inf, x)
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        if s.top_p is not None and s.top_p < 1:
            order = np.argsort(-p, axis=-1, kind="stable")
            sorted_p = np.take_along_axis(p, order, -1)
            keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < s.top_p        # the smallest set reaching top_p
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            p = np.where(keep, p, 0.0)
            p /= p.sum(-1, keepdims=True)
        cdf = np.cumsum(p, -1)
        u = self.rng.random(p.shape[0])[:, None] * cdf[:, -1:]                  # in [0, total): never past the end
        return (cdf <= u).sum(-1).astype(np.int64)                              # the first id whose cdf exceeds u


@dataclass(frozen=True)
class GenerationStep:
    index: int                  # which new token of each row this is (0-based)
    tokens: np.ndarray          # int64 [B]: each row's new token; -1 for a row that had already ended
    iterations: np.ndarray      # int64 [B]: the exit iteration that chose it; 0 for an ended row
    finished: np.ndarray        # bool [B]: rows ended after this step


@dataclass(frozen=True)
class GenerationResult:
    tokens: np.ndarray          # int64 [B, max_new_tokens]: generated ids, -1 after a row's end
    iterations: np.ndarray      # int64 [B, max_new_tokens]: exit iterations, 0 after a row's end
    lengths: np.ndarray         # int64 [B]: tokens generated per row (a stop id included)


def pad_global_kv(global_kv: np.ndarray, positions: int) -> np.ndarray:
    """A prefill's global KV [B, 2, Hkv, n, dh] padded with zeros to the capacity the decode graph is given
    [B, 2, Hkv, positions, dh] (the slots past each row's length are written by later steps, never read before)."""
    return np.pad(global_kv, [(0, 0)] * 3 + [(0, positions - global_kv.shape[3]), (0, 0)])


def stream(decoder, ids: np.ndarray, lengths: np.ndarray, max_iters: np.ndarray, tol: np.ndarray,
           max_new_tokens: int, sampler: Sampler, stop_ids: set[int], reason_tokens: int) -> Iterator[GenerationStep]:
    """Validated inputs (ids int64 [B, N] right-padded, lengths, max_iters, tol [B]) -> one step per new token."""
    B = ids.shape[0]
    logits, iterations, caches = decoder.prefill(ids, lengths, max_iters, tol)
    rows = np.arange(B)
    last, last_iterations = logits[rows, lengths - 1], iterations[rows, lengths - 1]
    capacity = (ids.shape[1] + max_new_tokens) * (1 + reason_tokens)            # positions, every row's fits
    caches[2] = pad_global_kv(caches[2], capacity)
    active, cached = rows, lengths.copy()
    finished = np.zeros(B, dtype=bool)
    for index in range(max_new_tokens):
        new = sampler(last)
        tokens, its = np.full(B, -1, dtype=np.int64), np.zeros(B, dtype=np.int64)
        tokens[active], its[active] = new, last_iterations
        ends = np.isin(new, list(stop_ids)) | (index == max_new_tokens - 1)
        finished[active[ends]] = True
        yield GenerationStep(index, tokens, its, finished.copy())
        if ends.all():
            return
        keep = ~ends
        active, new, cached = active[keep], new[keep], cached[keep]
        if not keep.all():
            caches = [c[keep] for c in caches]
        logits, iterations, caches = decoder.decode(new[:, None], cached, max_iters[active], tol[active], caches)
        cached = cached + 1
        last, last_iterations = logits[:, 0], iterations[:, 0]


def collect(steps: Iterator[GenerationStep], batch: int, max_new_tokens: int) -> GenerationResult:
    tokens = np.full((batch, max_new_tokens), -1, dtype=np.int64)
    iterations = np.zeros((batch, max_new_tokens), dtype=np.int64)
    for step in steps:
        tokens[:, step.index], iterations[:, step.index] = step.tokens, step.iterations
    return GenerationResult(tokens, iterations, (tokens >= 0).sum(-1))
