"""The two things the bench times, as callables over fixed inputs: eager PyTorch (the packed model the
export gate compares against) and ONNX Runtime through depthscale_runtime (the deployed path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import depthscale_runtime
from depthscale import DepthScaleModel


def seeded_ids(vocab_size: int, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    """int64 [batch, seq], uniform over the vocabulary."""
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, seq), dtype=np.int64)


def forward_feed(ids: np.ndarray, max_iters: int, tol: float) -> dict[str, np.ndarray]:
    """The forward graph's inputs for a bare session: every row full length, one budget for all rows."""
    batch, seq = ids.shape
    return {"input_ids": ids, "lengths": np.full(batch, seq, np.int64), "max_iters": np.full(batch, max_iters, np.int64),
            "tol": np.full(batch, tol, np.float32)}


class EagerRun:
    """model(ids, T, tol) under no_grad with `threads` torch threads; keeps the last output."""

    name = "eager"

    def __init__(self, model: DepthScaleModel, ids: np.ndarray, max_iters: int, tol: float, threads: int):
        self.model, self.ids = model, torch.from_numpy(ids)
        self.max_iters, self.tol, self.threads = max_iters, tol, threads
        self.last = None

    def __call__(self):
        torch.set_num_threads(self.threads)
        with torch.no_grad():
            out = self.model(self.ids, self.max_iters, self.tol)
        self.last = (out.logits.numpy(), out.iterations.numpy())
        return self.last


class OrtRun:
    """depthscale_runtime.Runtime.run(ids, T, tol) (or a bare session for a bench-only .onnx file);
    keeps the last output."""

    name = "onnxruntime"

    def __init__(self, runner, ids: np.ndarray, max_iters: int, tol: float):
        self.runner, self.ids, self.max_iters, self.tol = runner, ids, max_iters, tol
        self.last = None

    def __call__(self):
        if isinstance(self.runner, ort.InferenceSession):
            self.last = tuple(self.runner.run(None, forward_feed(self.ids, self.max_iters, self.tol)))
        else:
            out = self.runner.run(self.ids, self.max_iters, self.tol)
            self.last = (out.logits, out.iterations)
        return self.last


def runtime(artifact_dir: Path, threads: int) -> depthscale_runtime.Runtime:
    """The artifact on ONNX Runtime's CPU provider, `threads` intra-op threads, one inter-op thread."""
    return depthscale_runtime.load(artifact_dir, backend="onnxruntime", providers=["CPUExecutionProvider"],
                                   intra_op_threads=threads, inter_op_threads=1)


def session(onnx_path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    """A bare ONNX Runtime CPU session with the runtime's settings (all graph optimisations)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = profile
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def agreement(eager: tuple, onnx: tuple) -> dict:
    """Logits max abs difference and whether iteration counts are identical."""
    return {"logits_max_abs_diff": float(np.abs(eager[0] - onnx[0]).max()),
            "iterations_equal": bool(np.array_equal(eager[1], onnx[1]))}
