"""Runtime: a verified artifact plus a backend, with input validation. Thread-safe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .artifact import Artifact, open_artifact
from .backends import BACKENDS, Backend
from .errors import BackendUnavailableError
from .validation import validate_ids, validate_max_iters, validate_tol


@dataclass(frozen=True)
class RunResult:
    logits: np.ndarray       # float32 [batch, seq, vocab] ([seq, vocab] for 1-D input_ids)
    iterations: np.ndarray   # int64 [batch, seq] ([seq] for 1-D input_ids): each token's exit iteration


class Runtime:
    """Runs one artifact. Create with depthscale_runtime.load(). One Runtime serves concurrent callers:
    it holds no per-call state, and ONNX Runtime sessions are safe to run from many threads."""

    def __init__(self, artifact: Artifact, backend: Backend):
        self.artifact, self._backend = artifact, backend
        defaults = artifact.manifest["defaults"]
        self.default_max_iters, self.default_tol = int(defaults["max_iters"]), float(defaults["tol"])

    @property
    def backend(self) -> str:
        """Which backend runs: "onnxruntime" or "tensorrt"."""
        return self._backend.name

    @property
    def providers(self) -> list[str]:
        return list(getattr(self._backend, "providers", []))

    @property
    def config(self) -> dict:
        return self.artifact.config

    def run(self, input_ids, max_iters: int | None = None, tol: float | None = None) -> RunResult:
        """input_ids int32/int64 [seq] or [batch, seq]; max_iters in [0, cap] (default from the
        config); tol finite >= 0 (default from the config). Raises ValueError on bad input."""
        ids, one_d = validate_ids(input_ids, self.artifact.vocab_size, self.artifact.max_seq_len)
        t = validate_max_iters(self.default_max_iters if max_iters is None else max_iters,
                               self.artifact.max_iters_cap)
        tol = validate_tol(self.default_tol if tol is None else tol)
        logits, iterations = self._backend.run(ids, t, tol)
        if one_d:
            logits, iterations = logits[0], iterations[0]
        return RunResult(logits=logits, iterations=iterations)


def load(artifact_dir, backend: str = "auto", allow_failed: bool = False, **options) -> Runtime:
    """Verify the artifact (ArtifactError subclasses on failure) and start a backend.

    backend: "auto" (the fastest available: TensorRT where it works, else ONNX Runtime), "onnxruntime"
    or "tensorrt". options go to the backend: for onnxruntime, providers, session_options,
    intra_op_threads, inter_op_threads.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    artifact = open_artifact(artifact_dir, allow_failed=allow_failed)
    names = list(BACKENDS) if backend == "auto" else [backend]
    for name in names:
        try:
            return Runtime(artifact, BACKENDS[name](artifact, **options))
        except BackendUnavailableError:
            if name == names[-1]:
                raise
