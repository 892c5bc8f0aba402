"""Backends behind one small interface: run(ids, lengths, max_iters, tol) -> (logits, iterations); the
ones that decode incrementally also prefill() and decode().

Backends receive validated inputs only. "onnxruntime" runs on CPU, or on CUDA where onnxruntime-gpu
and a GPU are present (that path is not verified here: this machine has no GPU). "tensorrt" runs the
artifact's plan for the local GPU and an installed flavor (full TensorRT or TensorRT-RTX), and says
plainly what it expected and found when there is none (not verified here beyond those refusals: no GPU).
"""

from __future__ import annotations

import importlib.util
import subprocess
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from . import cuda_driver
from .errors import BackendUnavailableError, InvalidGraphError
from .onnx_proto import inline_external
from .tensorrt_rtx import import_tensorrt_rtx, tensorrt_rtx_missing


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
        _check_version(artifact)
        self.options = session_options or ort.SessionOptions()
        if intra_op_threads is not None:
            self.options.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            self.options.inter_op_num_threads = inter_op_threads
        # ONNX Runtime 1.21-1.23 take no files in memory: there, each graph gets its external data inlined
        self._inline = not hasattr(self.options, "add_external_initializers_from_files_in_memory")
        external = {name: data for role in artifact.graphs for name, data in artifact.external_files(role).items()}
        if external and not self._inline:
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
            graph = self.artifact.graph_bytes(role)
            if self._inline:
                graph = inline_external(graph, self.artifact.files)
            return ort.InferenceSession(graph, self.options, providers=self._providers)
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


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as "1.21.1" or "1.25.0.dev20260417008"."""
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()]
    return tuple(parts + [0] * (3 - len(parts)))


def _check_version(artifact) -> None:
    """BackendUnavailableError where the installed ONNX Runtime is older than the artifact's
    runtime.onnxruntime_min."""
    needed = artifact.manifest.get("runtime", {}).get("onnxruntime_min")
    if needed is not None and _release(ort.__version__) < _release(needed):
        raise BackendUnavailableError(f"{artifact.path} needs onnxruntime >= {needed} (its manifest's "
                                      f"runtime.onnxruntime_min); this one is {ort.__version__}")


def onnxruntime_backend(artifact, **options) -> Backend:
    return OnnxRuntimeBackend(artifact, **options)


class TensorRTBackend:
    """One TensorRT or TensorRT-RTX plan (`trt`: the flavor's module), run through the TensorRT API with
    device buffers from the CUDA driver (cuda_driver: no torch, no Polygraphy). One call at a time (a
    lock), as an execution context is not shared between threads.

    NOT VERIFIED HERE: this workplace has no GPU; only the refusals run here."""

    name = "tensorrt"

    def __init__(self, trt, plan: bytes, name: str, providers: list[str]):
        cuda_driver.use_primary_context()
        self.trt, self.providers = trt, providers
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendUnavailableError(f"{providers[0]} could not load {name} (see its log above)")
        self._context = self._engine.create_execution_context()
        self._stream = cuda_driver.create_stream()
        self._lock = threading.Lock()

    def run(self, ids, lengths, max_iters, tol):
        feeds = _feed(ids, lengths, max_iters, tol)
        engine, context, trt = self._engine, self._context, self.trt
        with self._lock:
            buffers, outputs = [], {}
            for name, value in feeds.items():
                host = np.ascontiguousarray(value, dtype=trt.nptype(engine.get_tensor_dtype(name)))
                context.set_input_shape(name, host.shape)
                buffers.append(cuda_driver.DeviceBuffer(host.nbytes))
                buffers[-1].upload(host, self._stream)
                context.set_tensor_address(name, buffers[-1].ptr.value)
            for name in ("logits", "iterations"):
                outputs[name] = np.empty(tuple(context.get_tensor_shape(name)),
                                         dtype=trt.nptype(engine.get_tensor_dtype(name)))
                buffers.append(cuda_driver.DeviceBuffer(outputs[name].nbytes))
                context.set_tensor_address(name, buffers[-1].ptr.value)
            if not context.execute_async_v3(self._stream):
                raise RuntimeError(f"{self.providers[0]} failed to run the plan")
            for buffer, host in zip(buffers[len(feeds):], outputs.values()):
                buffer.download(host, self._stream)
            cuda_driver.synchronize(self._stream)
        return outputs["logits"], outputs["iterations"].astype(np.int64)


def _expected_dirs(sm: str) -> list[tuple[str, str]]:
    """(flavor, engines/ directory) of a plan this machine can run, for each flavor installed here, full
    TensorRT first: sm<XY>-trt<version> (built for this GPU), rtx<version> (built for several targets)."""
    found = []
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt
        found.append(("tensorrt", f"engines/{sm}-trt{tensorrt.__version__}"))
    if tensorrt_rtx_missing() is None:
        found.append(("tensorrt-rtx", f"engines/rtx{import_tensorrt_rtx().__version__}"))
    return found


def local_compute_capability() -> str:
    """"sm<major><minor>" of this machine's GPU (nvidia-smi), or BackendUnavailableError."""
    try:
        cap = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        raise BackendUnavailableError("no NVIDIA GPU here for the tensorrt backend (nvidia-smi did not report one)") from None
    return f"sm{cap.replace('.', '')}"


def tensorrt_backend(artifact, **options) -> Backend:
    """The artifact's plan for this GPU and an installed flavor (see _expected_dirs; a TensorRT-RTX plan
    must list this GPU among its targets). For TensorRT-RTX plans the plugins' creators are registered
    first (depthscale_runtime.rtx_plugins; the plan holds their PTX) and providers says so."""
    section = artifact.manifest.get("tensorrt", {})
    main = [e for e in section.get("engines", []) if e.get("graph", "model.onnx") == "model.onnx"]
    found = sorted({e["dir"] for e in main})
    if not found:
        why = "; ".join(f"{k}: {v}" for k, v in section.get("skipped", {}).items()) or section.get("why", "nothing")
        raise BackendUnavailableError(f"{artifact.path} has no TensorRT engines (its export says: {why}); "
                                      f"use backend='onnxruntime'")
    if importlib.util.find_spec("tensorrt") is None and tensorrt_rtx_missing() is not None:
        raise BackendUnavailableError(f"neither tensorrt nor tensorrt_rtx is installed here; this artifact's engines "
                                      f"are {', '.join(found)}")
    try:
        sm = local_compute_capability()
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"{e}; this artifact's engines are {', '.join(found)}") from None
    expected_dirs = _expected_dirs(sm)
    for flavor, expected in expected_dirs:
        if any(e["dir"] == expected and sm in e.get("targets", [sm]) for e in main):
            if flavor == "tensorrt":
                import tensorrt as trt
                return TensorRTBackend(trt, artifact.file(f"{expected}/model.plan"), f"{expected}/model.plan", ["TensorRT"])
            from . import rtx_plugins
            registered = rtx_plugins.register()
            return TensorRTBackend(rtx_plugins.trt, artifact.file(f"{expected}/model.plan"), f"{expected}/model.plan",
                                   ["TensorRT-RTX", f"plugins registered by depthscale_runtime: {', '.join(registered)}"])
    expected = ", ".join(f"{d} (for {sm})" for _, d in expected_dirs)
    raise BackendUnavailableError(f"{artifact.path} has no engine for this machine: expected {expected}, found "
                                  f"{', '.join(found)} (rebuild with depthscale-export, --rtx-targets {sm})")


# name -> factory(artifact, **options); "auto" tries them in this order (fastest first)
BACKENDS = {"tensorrt": tensorrt_backend, "onnxruntime": onnxruntime_backend}
