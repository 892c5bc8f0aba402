"""Backends behind one small interface: run(ids, lengths, max_iters, tol) -> (logits, iterations); the
ones that decode incrementally also prefill() and decode().

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

from .errors import BackendUnavailableError, InvalidGraphError


class Backend(Protocol):
    name: str

    def run(self, ids: np.ndarray, lengths: np.ndarray, max_iters: np.ndarray, tol: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [B, N], lengths int64 [B], max_iters int64 [B], tol float32 [B] -> (logits float32
        [B, N, V], iterations int64 [B, N]). Thread-safe."""
        ...


class Decoder(Protocol):
    """A backend that also runs the prefill and decode graphs (incremental decoding)."""

    def prefill(self, ids, lengths, max_iters, tol) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """As run(), plus the caches [prelude_kv, core_kv, global_kv] (docs/artifact.md)."""
        ...

    def decode(self, ids, lengths, max_iters, tol, caches) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """ids int64 [B, new] after `lengths` cached real tokens per row -> (logits [B, new, V],
        iterations [B, new], the caches updated)."""
        ...


def _feed(ids, lengths, max_iters, tol) -> dict[str, np.ndarray]:
    return {"input_ids": ids, "lengths": lengths, "max_iters": max_iters, "tol": tol}


class OnnxRuntimeBackend:
    """The artifact's graphs in ONNX Runtime sessions, created from the verified bytes the loader read
    (external data handed over from memory too: ONNX Runtime reads nothing from disk). The prefill and
    decode sessions are created on first use."""

    name = "onnxruntime"

    def __init__(self, artifact, providers: list[str] | None = None,
                 session_options: ort.SessionOptions | None = None, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None):
        self.options = session_options or ort.SessionOptions()
        if intra_op_threads is not None:
            self.options.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            self.options.inter_op_num_threads = inter_op_threads
        external = {name: data for role in artifact.graphs for name, data in artifact.external_files(role).items()}
        if external:
            self.options.add_external_initializers_from_files_in_memory(
                list(external), list(external.values()), [len(d) for d in external.values()])
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailableError(f"onnxruntime providers {missing} are not available here "
                                          f"(available: {available})")
        self.artifact, self._providers = artifact, providers
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self.session = self._session("model")
        self.providers = self.session.get_providers()

    def _session(self, role: str) -> ort.InferenceSession:
        with self._lock:
            if role not in self._sessions:
                self._sessions[role] = self._create(role)
            return self._sessions[role]

    def _create(self, role: str) -> ort.InferenceSession:
        name = self.artifact.manifest["graphs"][role]["file"]
        try:
            return ort.InferenceSession(self.artifact.graph_bytes(role), self.options, providers=self._providers)
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as e:
            raise BackendUnavailableError(
                f"onnxruntime ({', '.join(self._providers)}) has no kernel for an op of this artifact "
                f"({str(e).splitlines()[0][:200]}); a bfloat16 artifact runs on TensorRT, or on a provider "
                f"with bfloat16 kernels") from None
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as e:
            raise InvalidGraphError(f"{self.artifact.path}: ONNX Runtime refuses {name}: "
                                    f"{str(e).splitlines()[0][:300]}") from None

    def run(self, ids, lengths, max_iters, tol):
        logits, iterations = self.session.run(None, _feed(ids, lengths, max_iters, tol))
        return logits, iterations

    def prefill(self, ids, lengths, max_iters, tol):
        logits, iterations, *caches = self._session("prefill").run(None, _feed(ids, lengths, max_iters, tol))
        return logits, iterations, caches

    def decode(self, ids, lengths, max_iters, tol, caches):
        past = dict(zip(("past_prelude_kv", "past_core_kv", "past_global_kv"), caches))
        logits, iterations, *caches = self._session("decode").run(None, {**_feed(ids, lengths, max_iters, tol), **past})
        return logits, iterations, caches


def onnxruntime_backend(artifact, **options) -> Backend:
    return OnnxRuntimeBackend(artifact, **options)


class TensorRTBackend:
    """The artifact's TensorRT plan for this machine's GPU and TensorRT version, run by Polygraphy's
    TrtRunner (device buffers; CUDA through TensorRT and Polygraphy, no torch). One call at a time (a
    lock), as an execution context is not shared between threads.

    NOT VERIFIED HERE: this workplace has neither TensorRT nor a GPU; only the refusals run here."""

    name = "tensorrt"

    def __init__(self, plan: bytes):
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        self.runner = TrtRunner(EngineFromBytes(plan))
        self.runner.activate()
        self.providers = ["TensorRT"]
        self._lock = threading.Lock()

    def run(self, ids, lengths, max_iters, tol):
        with self._lock:
            out = self.runner.infer(_feed(ids, lengths, max_iters, tol))
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
    return TensorRTBackend(artifact.file(f"{expected}/model.plan"))


# name -> factory(artifact, **options); "auto" tries them in this order (fastest first)
BACKENDS = {"tensorrt": tensorrt_backend, "onnxruntime": onnxruntime_backend}
