"""Runtime: a verified artifact plus a backend, with input validation. Thread-safe."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .artifact import Artifact, open_artifact
from .backends import BACKENDS, Backend
from .errors import BackendUnavailableError, DecodingUnavailableError
from .generate import GenerationResult, GenerationStep, Sampler, Sampling, collect, stream
from .validation import validate_ids, validate_max_iters, validate_tol


@dataclass(frozen=True)
class RunResult:
    logits: np.ndarray       # float32 [batch, seq, vocab] ([seq, vocab] for 1-D input_ids)
    iterations: np.ndarray   # int64 [batch, seq] ([seq] for 1-D input_ids): each token's exit iteration
    lengths: np.ndarray      # int64 [batch] ([] for 1-D input_ids): real tokens per row; past them, zeros


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

    def _budgets(self, batch: int, max_iters, tol) -> tuple[np.ndarray, np.ndarray]:
        return (validate_max_iters(self.default_max_iters if max_iters is None else max_iters,
                                   self.artifact.max_iters_cap, batch),
                validate_tol(self.default_tol if tol is None else tol, batch))

    def run(self, input_ids, max_iters=None, tol=None) -> RunResult:
        """input_ids int32/int64 [seq] or [batch, seq], or a list of 1-D sequences of different lengths;
        max_iters in [0, cap] and tol finite >= 0, each one value or one per row (default from the
        config). Raises ValueError on bad input."""
        ids, lengths, one_d = validate_ids(input_ids, self.artifact.vocab_size, self.artifact.max_seq_len)
        max_iters, tol = self._budgets(len(ids), max_iters, tol)
        logits, iterations = self._backend.run(ids, lengths, max_iters, tol)
        padding = np.arange(ids.shape[1])[None, :] >= lengths[:, None]
        if padding.any():
            logits, iterations = np.where(padding[..., None], 0, logits), np.where(padding, 0, iterations)
        if one_d:
            return RunResult(logits=logits[0], iterations=iterations[0], lengths=lengths[0])
        return RunResult(logits=logits, iterations=iterations, lengths=lengths)

    def stream(self, prompt_ids, max_new_tokens: int, **options) -> Iterator[GenerationStep]:
        """Generate up to max_new_tokens after each prompt, yielding one GenerationStep per new token as
        soon as it is chosen. prompt_ids: one 1-D sequence or a list of them (ragged); each prompt plus
        max_new_tokens must fit max_seq_len. Options: max_iters and tol as run() (fixed for the whole
        generation); temperature (0, the default, is greedy; else sampling) with optional top_k and
        top_p, seeded by seed; stop_ids (a row ends after one of them, which is kept). Raises ValueError
        on bad input (at the call, before generating), DecodingUnavailableError when the artifact or
        backend cannot decode incrementally."""
        return self._generation(prompt_ids, max_new_tokens, **options)[0]

    def generate(self, prompt_ids, max_new_tokens: int, **options) -> GenerationResult:
        """stream(), collected: tokens int64 [B, max_new_tokens] (-1 after a row's end), iterations
        int64 [B, max_new_tokens], lengths [B]. B is 1 for one 1-D prompt."""
        steps, batch = self._generation(prompt_ids, max_new_tokens, **options)
        return collect(steps, batch, max_new_tokens)

    def _generation(self, prompt_ids, max_new_tokens, max_iters=None, tol=None, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None, stop_ids=()
                    ) -> tuple[Iterator[GenerationStep], int]:
        decoder = self._decoder()
        ids, lengths, _ = validate_ids(prompt_ids, self.artifact.vocab_size, self.artifact.max_seq_len, "prompt_ids")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        longest = int(lengths.max())
        if longest + max_new_tokens > self.artifact.max_seq_len:
            raise ValueError(f"prompt_ids plus max_new_tokens must fit max_seq_len ({self.artifact.max_seq_len} "
                             f"tokens): the longest prompt has {longest}, max_new_tokens is {max_new_tokens}")
        sampling = Sampling(temperature, top_k, top_p, seed)
        sampling.check(self.artifact.vocab_size)
        stops = set()
        for s in stop_ids:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s < self.artifact.vocab_size:
                raise ValueError(f"stop_ids must be token ids in [0, {self.artifact.vocab_size}), got {s!r}")
            stops.add(int(s))
        max_iters, tol = self._budgets(len(ids), max_iters, tol)
        return stream(decoder, ids, lengths, max_iters, tol, int(max_new_tokens), Sampler(sampling), stops,
                      int(self.config["reason_tokens"])), len(ids)

    def _decoder(self):
        if not self.artifact.decodes:
            raise DecodingUnavailableError(f"{self.artifact.path} has no prefill/decode graphs (its export says: "
                                           f"{self.artifact.manifest['decode'].get('why')})")
        if not hasattr(self._backend, "decode"):
            raise DecodingUnavailableError(f"the {self.backend} backend runs the whole-sequence graph only; "
                                           f"load with backend='onnxruntime' to generate")
        return self._backend


def load(artifact_dir, backend: str = "auto", allow_failed: bool = False, verify=None, **options) -> Runtime:
    """Verify the artifact (ArtifactError subclasses on failure) and start a backend.

    verify: a public key (PEM path): refuse the artifact (SignatureError) unless it is signed with the
    matching private key and holds exactly the signed files, unchanged (docs/artifact.md, "Signing").

    backend: "auto" (the fastest available: TensorRT where it works, else ONNX Runtime), "onnxruntime"
    or "tensorrt". options go to the backend: for onnxruntime, providers, session_options,
    intra_op_threads, inter_op_threads.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    artifact = open_artifact(artifact_dir, allow_failed=allow_failed, verify=verify)
    names = list(BACKENDS) if backend == "auto" else [backend]
    for name in names:
        try:
            return Runtime(artifact, BACKENDS[name](artifact, **options))
        except BackendUnavailableError:
            if name == names[-1]:
                raise
