"""The decoding parity gate: prefill, then decode one token at a time through ONNX Runtime, against
eager PyTorch's whole-sequence pass over the same tokens.

A DecodeSample is a ragged batch: row b has a prompt of max(1, prompt - b) real tokens, then `new` more
fed one per decode step. Every position's exit iteration must equal the whole-sequence pass's and its
logits be within the tolerances. For the first failing sample, the first failing decode step is re-run
from eager's own cache with the hidden state exposed, one iteration budget at a time, to name the first
diverging iteration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from depthscale import DepthScaleModel
from depthscale.decode import DecodeCache, decode, prefill
from depthscale_runtime.generate import pad_global_kv

from ..gate.parity import Sample, Tolerances, budget_feed, per_iteration_check, seeded_ids
from ..graph.passes import emulate_half, expose_loop_state
from ..graph.weights import in_memory
from .graphs import CACHE_NAMES, PAST_NAMES


@dataclass(frozen=True)
class DecodeSample:
    batch: int
    prompt: int            # real tokens of row 0's prompt; row b has max(1, prompt - b)
    new: int               # tokens decoded one at a time after each prompt
    max_iters: int
    tol: float

    def lengths(self) -> np.ndarray:
        return np.array([max(1, self.prompt - b) for b in range(self.batch)], dtype=np.int64)


def make_decode_samples(shapes: list[tuple[int, int, int]], iters: list[int], tols: list[float]) -> list[DecodeSample]:
    return [DecodeSample(b, p, k, t, tol) for b, p, k in shapes for t in iters for tol in tols]


def cpu_session(model) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a model file (its external data beside it) or serialised bytes."""
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])


class OrtDecoder:
    """A prefill and a decode graph in ONNX Runtime sessions. Caches as numpy arrays."""

    def __init__(self, prefill_session: ort.InferenceSession | None, decode_session: ort.InferenceSession):
        self.prefill_session, self.decode_session = prefill_session, decode_session

    def prefill(self, ids, budgets: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        logits, iterations, *caches = self.prefill_session.run(None, {"input_ids": ids, **budgets})
        return logits, iterations, dict(zip(CACHE_NAMES, caches))

    def decode(self, ids, budgets: dict, caches: dict, outputs=None) -> list[np.ndarray]:
        feed = {"input_ids": ids, **budgets, **{past: caches[name] for past, name in zip(PAST_NAMES, CACHE_NAMES)}}
        return self.decode_session.run(outputs, feed)


def _within(got: np.ndarray, expected: np.ndarray, tol: Tolerances) -> bool:
    return bool(np.all(np.abs(got - expected) <= tol.atol + tol.rtol * np.abs(expected)))


def run_sample(model: DepthScaleModel, decoder: OrtDecoder, sample: DecodeSample, tol: Tolerances,
               seed: int) -> dict:
    """One ragged batch through ONNX Runtime's prefill and decode steps against eager's whole pass."""
    cfg = model.config
    B, R = sample.batch, cfg.reason_tokens
    ids = seeded_ids(cfg, B, sample.prompt + sample.new, seed)
    lengths = sample.lengths()
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.full((B,), sample.max_iters), torch.full((B,), sample.tol),
                    torch.from_numpy(lengths + sample.new))
    ref_logits, ref_iters = ref.logits.float().numpy(), ref.iterations.numpy()
    logits, iterations, caches = decoder.prefill(ids[:, :sample.prompt], budget_feed(B, lengths, sample.max_iters,
                                                                                      sample.tol))
    got_l = [logits[b, :lengths[b]] for b in range(B)]
    got_i = [iterations[b, :lengths[b]] for b in range(B)]
    capacity = (sample.prompt + sample.new) * (1 + R)
    caches["global_kv"] = pad_global_kv(caches["global_kv"], capacity)
    failing = []
    prefill_ok = all(np.array_equal(got_i[b], ref_iters[b, :lengths[b]]) and
                     _within(got_l[b], ref_logits[b, :lengths[b]], tol) for b in range(B))
    for step in range(sample.new):
        at = lengths + step
        tokens = ids[np.arange(B), at][:, None]
        step_logits, step_iters, *new_caches = decoder.decode(tokens, budget_feed(B, at, sample.max_iters, sample.tol),
                                                              caches)
        caches = dict(zip(CACHE_NAMES, new_caches))
        expected_l, expected_i = ref_logits[np.arange(B), at][:, None], ref_iters[np.arange(B), at][:, None]
        if not (np.array_equal(step_iters, expected_i) and _within(step_logits, expected_l, tol)):
            failing.append(step)
        for b in range(B):
            got_l[b] = np.concatenate([got_l[b], step_logits[b]])
            got_i[b] = np.concatenate([got_i[b], step_iters[b]])
    expected_l = np.concatenate([ref_logits[b, :lengths[b] + sample.new] for b in range(B)])
    expected_i = np.concatenate([ref_iters[b, :lengths[b] + sample.new] for b in range(B)])
    all_l, all_i = np.concatenate(got_l), np.concatenate(got_i)
    err = np.abs(all_l.astype(np.float64) - expected_l)
    return {**asdict(sample), "prompt_lengths": lengths.tolist(),
            "logits_max_abs_err": float(err.max()),
            "iterations_equal": bool(np.array_equal(all_i, expected_i)),
            "iterations_mean": float(expected_i.mean()),
            "top1_agreement": float((all_l.argmax(-1) == expected_l.argmax(-1)).mean()),
            "prefill_passed": prefill_ok, "first_failing_step": failing[0] if failing else None,
            "passed": prefill_ok and not failing}


def localize(model: DepthScaleModel, artifact, sample: DecodeSample, row: dict, tol: Tolerances, seed: int) -> dict:
    """Where the first failing sample starts to diverge: the prefill (per-iteration check of prefill.onnx),
    or decode step k, re-run from eager's cache after step k - 1 in both eager and ONNX Runtime with each
    iteration budget t = 1..T, comparing the hidden state after iteration t."""
    if not row["prefill_passed"]:
        check = per_iteration_check(model, str(artifact / "prefill.onnx"),
                                    Sample(sample.batch, sample.prompt, sample.max_iters, sample.tol), tol, seed)
        return {"decode_step": None, "where": "prefill", "first_diverging_iteration": check["first_diverging_iteration"],
                "state_max_abs_err": check["state_max_abs_err"]}
    step = row["first_failing_step"]
    B = sample.batch
    ids = seeded_ids(model.config, B, sample.prompt + sample.new, seed)
    lengths = sample.lengths()
    with torch.no_grad():
        _, cache = prefill(model, torch.from_numpy(ids[:, :sample.prompt]), torch.from_numpy(lengths),
                           sample.max_iters, sample.tol,
                           capacity=(sample.prompt + sample.new) * (1 + model.config.reason_tokens))
        for k in range(step):
            _, cache = decode(model, cache, torch.from_numpy(ids[np.arange(B), lengths + k][:, None]))
    debug = in_memory(ir.load(str(artifact / "decode.onnx")))
    if model.precision != "fp32":
        emulate_half(debug)
    expose_loop_state(debug)
    decoder = OrtDecoder(None, cpu_session(ir.to_proto(debug).SerializeToString()))
    tokens = ids[np.arange(B), lengths + step][:, None]
    caches = {name: getattr(cache, attr).numpy() for name, attr in
              zip(CACHE_NAMES, ("prelude", "core", "global_kv"))}
    errors, first = [], None
    for t in range(1, sample.max_iters + 1):
        with torch.no_grad():
            budget = replace(cache, max_iters=cache.max_iters.clamp(max=t))
            _, _, state = decode(model, budget, torch.from_numpy(tokens), return_state=True)
        (s_ort,) = decoder.decode(tokens, budget_feed(B, lengths + step, t, sample.tol), caches, ["state"])
        errors.append(float(np.abs(s_ort.astype(np.float32) - state.s.float().numpy()).max()))
        if first is None and errors[-1] > tol.state_atol:
            first = t
    return {"decode_step": step, "where": f"decode step {step}", "first_diverging_iteration": first,
            "state_max_abs_err": errors}


def _graph_session(artifact, name: str, precision: str) -> ort.InferenceSession:
    """The artifact's graph; a float16 one with every op rounded to float16, as eager computes
    (graph.passes.emulate_half: ONNX Runtime runs chains of float16 ops in float32)."""
    if precision == "fp32":
        return cpu_session(artifact / name)
    graph = in_memory(ir.load(str(artifact / name)))
    emulate_half(graph)
    return cpu_session(ir.to_proto(graph).SerializeToString())


def run_decode_gate(model: DepthScaleModel, artifact, samples: list[DecodeSample], tol: Tolerances,
                    seed: int = 0) -> dict:
    """Every sample through the artifact's prefill.onnx and decode.onnx; the localisation of the first
    failing one. Returns {"summary", "samples", "localization"}."""
    decoder = OrtDecoder(_graph_session(artifact, "prefill.onnx", model.precision),
                         _graph_session(artifact, "decode.onnx", model.precision))
    rows = [run_sample(model, decoder, s, tol, seed + 1000 + i) for i, s in enumerate(samples)]
    failing = [i for i, r in enumerate(rows) if not r["passed"]]
    where = (localize(model, artifact, samples[failing[0]], rows[failing[0]], tol, seed + 1000 + failing[0])
             if failing else None)
    summary = {"passed": not failing, "samples": len(rows), "samples_failed": len(failing),
               "tokens_decoded": sum(s.batch * s.new for s in samples),
               "logits_max_abs_err": max(r["logits_max_abs_err"] for r in rows),
               "iterations_equal": all(r["iterations_equal"] for r in rows),
               "top1_agreement_min": min(r["top1_agreement"] for r in rows),
               "first_diverging": None if where is None else
               {"where": where["where"], "decode_step": where["decode_step"],
                "iteration": where["first_diverging_iteration"]}}
    return {"summary": summary, "samples": rows, "localization": where}
