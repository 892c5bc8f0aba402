"""The parity gate: eager PyTorch against ONNX Runtime (CPU) on seeded inputs.

Running is kept apart from comparing (Polygraphy's model): an EagerRunner and Polygraphy's
OnnxrtRunner produce RunResults, Polygraphy's Comparator compares them, and we add what a recurrent
model needs on top: exact iteration counts, top-1 agreement, the smallest tolerances that would have
passed, and a per-iteration check of the hidden state that shows where drift starts.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from depthscale import DepthScaleConfig, DepthScaleModel

from ..graph.passes import emulate_half, expose_loop_state
from ..graph.weights import in_memory


@dataclass(frozen=True)
class Sample:
    batch: int
    seq: int
    max_iters: int
    tol: float

    def feed(self, config: DepthScaleConfig, seed: int) -> OrderedDict:
        """The forward graph's inputs: seeded ids (seeded_ids), every row full length, this budget."""
        ids = seeded_ids(config, self.batch, self.seq, seed)
        return OrderedDict(input_ids=ids, **budget_feed(self.batch, self.seq, self.max_iters, self.tol))


def seeded_ids(config: DepthScaleConfig, batch: int, seq: int, seed: int) -> np.ndarray:
    """int64 [batch, seq]: uniform over the vocabulary; for a model with a CharTokenizer, BOS (id 0) first
    and then its characters' ids, as the model sees text."""
    rng = np.random.default_rng(seed)
    if config.tokenizer:
        ids = rng.integers(1, len(config.tokenizer) + 1, (batch, seq), dtype=np.int64)
        ids[:, 0] = 0
        return ids
    return rng.integers(0, config.vocab_size, (batch, seq), dtype=np.int64)


def budget_feed(batch: int, lengths, max_iters: int, tol: float) -> dict[str, np.ndarray]:
    """lengths int64 [batch] (an int: every row), max_iters int64 [batch], tol float32 [batch]."""
    return {"lengths": np.broadcast_to(np.asarray(lengths, dtype=np.int64), (batch,)).copy(),
            "max_iters": np.full(batch, max_iters, dtype=np.int64), "tol": np.full(batch, tol, dtype=np.float32)}


@dataclass(frozen=True)
class Tolerances:
    atol: float = 1e-4           # logits: |ort - eager| <= atol + rtol * |eager|, element-wise
    rtol: float = 1e-3
    state_atol: float = 1e-4     # per-iteration hidden-state check: first iteration above this "diverges"


# per precision. The gate runs a half-precision graph with every op rounded to its dtype, as eager does
# (graph.passes.emulate_half); it then agrees with eager to the bit in the recurrence, and the logits to
# about one unit in the last place of the dtype (the head's matmul sums in another order)
DEFAULT_TOLERANCES = {"fp32": Tolerances(),
                      "fp16": Tolerances(atol=1e-3, rtol=2e-3, state_atol=4e-3),
                      "bf16": Tolerances(atol=1e-2, rtol=1.6e-2, state_atol=3e-2)}


def make_samples(shapes: list[tuple[int, int]], iters: list[int], tols: list[float]) -> list[Sample]:
    return [Sample(b, n, t, tol) for (b, n), t, tol in itertools.product(shapes, iters, tols)]


class EagerRunner(BaseRunner):
    """Polygraphy runner over an eager DepthScaleModel on CPU."""

    def __init__(self, model: DepthScaleModel, name: str = "eager-pytorch"):
        super().__init__(name=name)
        self.model = model

    def activate_impl(self):
        self.model.eval()

    def get_input_metadata_impl(self):
        return (TensorMetadata().add("input_ids", np.int64, ("batch", "seq")).add("lengths", np.int64, ("batch",))
                .add("max_iters", np.int64, ("batch",)).add("tol", np.float32, ("batch",)))

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model(torch.from_numpy(feed_dict["input_ids"]), torch.from_numpy(feed_dict["max_iters"]),
                             torch.from_numpy(feed_dict["tol"]), torch.from_numpy(feed_dict["lengths"]))
        self.inference_time = time.perf_counter() - start
        return OrderedDict(logits=out.logits.float().numpy(), iterations=out.iterations.numpy())

    def deactivate_impl(self):
        pass


def _errors(ort_out: np.ndarray, eager_out: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ort_out.astype(np.float64) - eager_out.astype(np.float64))
    rel = diff / np.maximum(np.abs(eager_out.astype(np.float64)), 1e-12)
    return (float(diff.max()) if diff.size else 0.0, float(rel.max()) if rel.size else 0.0)


def compare_samples(model: DepthScaleModel, target, samples: list[Sample], tol: Tolerances,
                    seed: int = 0) -> dict:
    """Run every sample through eager and the target, an ONNX file (run by ONNX Runtime on CPU) or any
    Polygraphy runner (a TensorRT engine's, say); compare. Returns the report's "samples" section."""
    feeds = [s.feed(model.config, seed + i) for i, s in enumerate(samples)]
    backend = target if isinstance(target, BaseRunner) else OnnxrtRunner(SessionFromOnnx(str(target), providers=["cpu"]))
    runners = [EagerRunner(model), backend]
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), np.errstate(divide="ignore", invalid="ignore"):
        results = Comparator.run(runners, data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(
            atol={"logits": tol.atol, "iterations": 0}, rtol={"logits": tol.rtol, "iterations": 0},
            check_shapes=True))
    polygraphy_passed = bool(accuracy)
    (eager_name, eager_runs), (ort_name, ort_runs) = results.items()
    rows = []
    for sample, e, o in zip(samples, eager_runs, ort_runs):
        abs_err, rel_err = _errors(o["logits"], e["logits"])
        same_iters = bool(np.array_equal(o["iterations"], e["iterations"]))
        within = bool(np.all(np.abs(o["logits"] - e["logits"]) <= tol.atol + tol.rtol * np.abs(e["logits"])))
        rows.append({
            **asdict(sample),
            "logits_max_abs_err": abs_err, "logits_max_rel_err": rel_err,
            "iterations_max_abs_err": int(np.abs(o["iterations"] - e["iterations"]).max()) if e["iterations"].size else 0,
            "iterations_equal": same_iters,
            "iterations_mean": float(e["iterations"].mean()),
            "early_exit": bool((e["iterations"] < sample.max_iters).any()),
            "top1_agreement": float((o["logits"].argmax(-1) == e["logits"].argmax(-1)).mean()),
            "passed": same_iters and within,
        })
    return {"runners": [eager_name, ort_name], "polygraphy_passed": polygraphy_passed, "rows": rows}


def per_iteration_check(model: DepthScaleModel, onnx_path: str, sample: Sample, tol: Tolerances,
                        seed: int = 0) -> dict:
    """Hidden state s_t after each iteration t = 1..T, eager against ORT (ORT run with max_iters = t)."""
    debug = in_memory(ir.load(onnx_path))
    expose_loop_state(debug)
    sess = ort.InferenceSession(ir.to_proto(debug).SerializeToString(), providers=["CPUExecutionProvider"])
    feed = sample.feed(model.config, seed)
    ids = torch.from_numpy(feed["input_ids"])
    errors, first = [], None
    with torch.no_grad():
        state = model.init(ids, sample.max_iters, sample.tol)
        for t in range(1, sample.max_iters + 1):
            state = model.step(state)
            feed["max_iters"] = np.full(sample.batch, t, dtype=np.int64)
            s_ort = sess.run(["state"], feed)[0]
            err = float(np.abs(s_ort.astype(np.float32) - state.s.float().numpy()).max()) if s_ort.size else 0.0
            errors.append(err)
            if first is None and err > tol.state_atol:
                first = t
    return {**asdict(sample), "state_max_abs_err": errors, "first_diverging_iteration": first}


def run_gate(model: DepthScaleModel, onnx_path: str, samples: list[Sample], tol: Tolerances, seed: int = 0) -> dict:
    """compare_samples, then the per-iteration check on the first failing sample (or, when all pass,
    the one with the most iterations and tokens). Returns rows, per_iteration and a summary.

    A half-precision graph is checked through graph.passes.emulate_half (per-op rounding, as eager);
    the summary's "ort_graph" says so."""
    if model.precision == "fp32":
        return _gate(model, onnx_path, samples, tol, seed, "the artifact's model.onnx")
    onnx_model = in_memory(ir.load(onnx_path))
    ops = emulate_half(onnx_model)
    with tempfile.TemporaryDirectory(prefix="depthscale-half-") as tmp:
        path = str(Path(tmp) / "model.half-emulated.onnx")
        ir.save(onnx_model, path)
        gate = _gate(model, path, samples, tol, seed,
                     f"the artifact's model.onnx with its {ops} half-precision ops computed in float32 and "
                     f"rounded after each, as eager PyTorch does")
    gate["summary"]["native_onnxruntime"] = (
        {"ran": False, "why": "ONNX Runtime's CPU provider has no bfloat16 kernels"} if model.precision == "bf16"
        else native_agreement(compare_samples(model, onnx_path, samples, tol, seed)["rows"]))
    return gate


def native_agreement(rows: list[dict]) -> dict:
    """How the artifact itself, run as is by ONNX Runtime (which computes chains of float16 ops in
    float32 and rounds only where a kernel needs float16), agrees with eager: reported, not gated."""
    return {"ran": True, "samples": len(rows),
            "samples_within_tolerances": sum(r["passed"] for r in rows),
            "iterations_equal_fraction": sum(r["iterations_equal"] for r in rows) / len(rows),
            "iterations_max_abs_err": max(r["iterations_max_abs_err"] for r in rows),
            "logits_max_abs_err": max(r["logits_max_abs_err"] for r in rows),
            "top1_agreement_min": min(r["top1_agreement"] for r in rows)}


def _gate(model, onnx_path: str, samples: list[Sample], tol: Tolerances, seed: int, ort_graph: str) -> dict:
    comparison = compare_samples(model, onnx_path, samples, tol, seed)
    rows = comparison["rows"]
    failing = [s for s, r in zip(samples, rows) if not r["passed"]]
    probe = failing[0] if failing else max(samples, key=lambda s: (s.max_iters, s.batch * s.seq))
    iteration = per_iteration_check(model, onnx_path, probe, tol, seed + samples.index(probe))
    summary = {
        "passed": not failing,
        "samples": len(rows), "samples_failed": len(failing),
        "logits_max_abs_err": max(r["logits_max_abs_err"] for r in rows),
        "logits_max_rel_err": max(r["logits_max_rel_err"] for r in rows),
        "iterations_equal": all(r["iterations_equal"] for r in rows),
        "top1_agreement_min": min(r["top1_agreement"] for r in rows),
        "first_diverging_iteration": iteration["first_diverging_iteration"],
        # the smallest tolerances that would have passed: atol alone (rtol 0), or rtol alone (atol 0)
        "would_pass_with": {"atol": max(r["logits_max_abs_err"] for r in rows),
                            "rtol": max(r["logits_max_rel_err"] for r in rows)},
        "tolerances": asdict(tol),
        "ort_graph": ort_graph,
    }
    return {"summary": summary, "samples": rows, "per_iteration": iteration,
            "polygraphy_passed": comparison["polygraphy_passed"]}
