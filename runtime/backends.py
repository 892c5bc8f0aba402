"""Backends behind one small interface: run(ids, max_iters, tol) -> (logits, iterations).

Backends receive validated inputs only. "onnxruntime" runs on CPU, or on CUDA where onnxruntime-gpu
and a GPU are present (that path is not verified here: this machine has no GPU). "tensorrt" runs the
artifact's plan for the local GPU and TensorRT version, and says plainly what it expected and found
when there is none (not verified here beyond those refusals: no TensorRT, no GPU).
"""

from __future__ import annotations

import importlib.util
import subprocess
import threading
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


class TensorRTBackend:
    """The artifact's TensorRT plan for this machine's GPU and TensorRT version, run by Polygraphy's
    TrtRunner (device buffers; CUDA through TensorRT and Polygraphy, no torch). One call at a time (a
    lock), as an execution context is not shared between threads.

    NOT VERIFIED HERE: this workplace has neither TensorRT nor a GPU; only the refusals run here."""

    name = "tensorrt"

    def __init__(self, plan: Path):
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        self.runner = TrtRunner(EngineFromBytes(plan.read_bytes()))
        self.runner.activate()
        self.providers = ["TensorRT"]
        self._lock = threading.Lock()

    def run(self, ids, max_iters, tol):
        with self._lock:
            out = self.runner.infer({"input_ids": ids, "max_iters": np.array(max_iters, dtype=np.int64),
                                     "tol": np.array(tol, dtype=np.float32)})
        return np.asarray(out["logits"]), np.asarray(out["iterations"])


def local_engine_dir() -> str:
    """"sm<major><minor>-trt<version>" for this machine (the name export gives its engine directory)."""
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError("tensorrt is not installed here")
    try:
        cap = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        raise BackendUnavailableError("no NVIDIA GPU here (nvidia-smi did not report one)") from None
    import tensorrt as trt
    return f"sm{cap.replace('.', '')}-trt{trt.__version__}"


def tensorrt_backend(artifact, **options) -> Backend:
    section = artifact.manifest.get("tensorrt", {})
    found = [e["dir"] for e in section.get("engines", [])]
    if not found:
        raise BackendUnavailableError(f"{artifact.path} has no TensorRT engines (its export says: "
                                      f"{section.get('why', 'nothing')}); use backend='onnxruntime'")
    try:
        expected = f"engines/{local_engine_dir()}"
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"{e}; this artifact's engines are {', '.join(found)}") from None
    if expected not in found:
        raise BackendUnavailableError(f"{artifact.path} has no engine for this machine: expected {expected}, found "
                                      f"{', '.join(found)} (rebuild with depthscale-export on this machine)")
    return TensorRTBackend(artifact.path / expected / "model.plan")


# name -> factory(artifact, **options); "auto" tries them in this order (fastest first)
BACKENDS = {"tensorrt": tensorrt_backend, "onnxruntime": onnxruntime_backend}
