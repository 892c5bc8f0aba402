"""g. The machine's limit: the int8 and float32 matrix-product throughput ONNX Runtime reaches here on
large products (one square, and the model's own shapes at 4096 tokens; the best counts), and the
model's achieved throughput as a fraction of it (from an ORT profile)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from depthscale.bitlinear import PackedBitLinear

from .runners import forward_feed, seeded_ids, session
from .timing import interleaved


def _product_model(kind: str, k: int, n: int) -> onnx.ModelProto:
    """X [m, k] times a constant W [k, n]: MatMulInteger (uint8 x int8, zero point 128, the model's
    form) or float32 MatMul."""
    rng = np.random.default_rng(0)
    if kind == "int8":
        w = numpy_helper.from_array(rng.integers(-1, 2, (k, n)).astype(np.int8), "W")
        zp = numpy_helper.from_array(np.array(128, np.uint8), "zp")
        node = helper.make_node("MatMulInteger", ["X", "W", "zp"], ["Y"])
        graph = helper.make_graph([node], "int8", [helper.make_tensor_value_info("X", TensorProto.UINT8, None)],
                                  [helper.make_tensor_value_info("Y", TensorProto.INT32, None)], [w, zp])
    else:
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        node = helper.make_node("MatMul", ["X", "W"], ["Y"])
        graph = helper.make_graph([node], "fp32", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def peak_throughput(products: tuple[tuple[int, int, int], ...], threads: int, workdir: Path, plan) -> dict:
    """ops/s (2·m·k·n per product, from the fastest of the repetitions) of ORT's int8 and float32
    products X [m, k] · W [k, n], for each (m, k, n); the machine's limit is the best of them."""
    out = {"products": []}
    for m, k, n in products:
        row = {"m": m, "k": k, "n": n}
        for kind in ("int8", "fp32"):
            path = workdir / f"product-{kind}-{m}x{k}x{n}.onnx"
            onnx.save(_product_model(kind, k, n), str(path))
            sess = session(path, threads)
            rng = np.random.default_rng(1)
            x = (rng.integers(0, 256, (m, k)).astype(np.uint8) if kind == "int8"
                 else rng.standard_normal((m, k)).astype(np.float32))
            t = interleaved({kind: lambda: sess.run(None, {"X": x})}, reps=max(5, plan.reps), warmup=2)[kind]
            row[f"{kind}_ops_per_s"] = 2 * m * k * n / t["min_s"]      # a limit: the fastest repetition
        out["products"].append(row)
    for kind in ("int8", "fp32"):
        out[f"{kind}_ops_per_s"] = max(r[f"{kind}_ops_per_s"] for r in out["products"])
    return out


def bitlinear_ops(model, batch: int, seq: int, T: int) -> int:
    """Integer multiply-adds x2 of every BitLinear in one forward at T iterations (tol 0)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, PackedBitLinear):
            repeats = T if name.startswith(("core.", "inject")) else 1
            total += 2 * module.in_features * module.out_features * repeats
    return total * batch * seq


def profile(onnx_path: Path, vocab_size: int, batch: int, seq: int, T: int) -> dict:
    """A profiled ORT run (1 thread, after one warm-up run): its time and the time per op type (nodes
    inside the Loop included; the Loop's and If's own entries, which contain them, are left out)."""
    sess = session(onnx_path, 1, profile=True)
    feed = forward_feed(seeded_ids(vocab_size, batch, seq), T, 0.0)
    for _ in range(2):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    last = max((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    by_op: Counter = Counter()
    for e in events:
        if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and last["ts"] <= e["ts"] <= last["ts"] + last["dur"]
                and e["args"].get("op_name") not in ("Loop", "If")):
            by_op[e["args"]["op_name"]] += e["dur"]
    return {"run_s": last["dur"] / 1e6, "kernel_s": sum(by_op.values()) / 1e6,
            "by_op_s": {op: us / 1e6 for op, us in by_op.most_common()}}


def run(model, artifact: Path, plan, workdir: Path, log) -> dict:
    """model: the packed eager model behind `artifact` (for counting its BitLinear work)."""
    peaks = {threads: peak_throughput(plan.products, threads, workdir, plan) for threads in plan.threads}
    for threads, p in peaks.items():
        log(f"machine limit {threads}t: int8 {p['int8_ops_per_s'] / 1e9:.0f} GOPS, "
            f"fp32 {p['fp32_ops_per_s'] / 1e9:.0f} GFLOPS")
    batch, seq, T = plan.anchor
    prof = profile(artifact / "model.onnx", model.config.vocab_size, batch, seq, T)
    ops = bitlinear_ops(model, batch, seq, T)
    mmi = prof["by_op_s"].get("MatMulInteger", float("nan"))
    peak1 = peaks[1]["int8_ops_per_s"]
    result = {"products": [list(p) for p in plan.products], "peak_by_threads": {str(t): p for t, p in peaks.items()},
              "model": {"batch": batch, "seq": seq, "max_iters": T, "threads": 1, "bitlinear_ops": ops,
                        "profiled_run_s": prof["run_s"], "matmulinteger_s": mmi,
                        "matmulinteger_ops_per_s": ops / mmi,
                        "matmulinteger_fraction_of_int8_peak": ops / mmi / peak1,
                        "end_to_end_bitlinear_ops_per_s": ops / prof["run_s"],
                        "end_to_end_fraction_of_int8_peak": ops / prof["run_s"] / peak1,
                        "time_by_op_s": prof["by_op_s"],
                        "time_share_by_op": {op: s / prof["kernel_s"] for op, s in prof["by_op_s"].items()}}}
    log(f"machine limit: the model's BitLinear products run at {result['model']['matmulinteger_fraction_of_int8_peak']:.0%} "
        f"of the int8 peak inside MatMulInteger, {result['model']['end_to_end_fraction_of_int8_peak']:.0%} end to end")
    return result
