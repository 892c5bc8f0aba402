"""Backends behind one small interface: run(ids, max_iters, tol) -> (logits, iterations).

Backends receive validated inputs only. "onnxruntime" runs on CPU, or on CUDA where onnxruntime-gpu
and a GPU are present (that path is not verified here: this machine has no GPU). "tensorrt" is a
place kept for the TensorRT issue: it always reports itself unavailable for now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .errors import BackendUnavailableError


class Backend(Protocol):
    name: str

    def run(self, ids: np.ndarray, max_iters: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [B, N] -> (logits float32 [B, N, V], iterations int64 [B, N]). Thread-safe."""
        ...


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: Path, providers: list[str] | None = None,
                 session_options: ort.SessionOptions | None = None, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None):
        options = session_options or ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailableError(f"onnxruntime providers {missing} are not available here "
                                          f"(available: {available})")
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as e:
            raise BackendUnavailableError(
                f"onnxruntime ({', '.join(providers)}) has no kernel for an op of this artifact "
                f"({str(e).splitlines()[0][:200]}); a bfloat16 artifact runs on TensorRT, or on a provider "
                f"with bfloat16 kernels") from None
        self.providers = self.session.get_providers()

    def run(self, ids, max_iters, tol):
        logits, iterations = self.session.run(None, {
            "input_ids": ids, "max_iters": np.array(max_iters, dtype=np.int64),
            "tol": np.array(tol, dtype=np.float32)})
        return logits, iterations


def onnxruntime_backend(artifact, **options) -> Backend:
    return OnnxRuntimeBackend(artifact.model_path, **options)


def tensorrt_backend(artifact, **options) -> Backend:
    raise BackendUnavailableError("the tensorrt backend is not built yet (TensorRT issue); "
                                  "use backend='onnxruntime'")


# name -> factory(artifact, **options); "auto" tries them in this order (fastest first)
BACKENDS = {"tensorrt": tensorrt_backend, "onnxruntime": onnxruntime_backend}
