"""depthscale-bench: measure everything side by side in one run and write results.json, results.md and
PNG plots into OUT (atomically: OUT appears complete or not at all).

    python tools/bench.py                 # the full plan, under 20 minutes on 2 cores
    python tools/bench.py --quick         # the same sections on small shapes, under 2 minutes

Exit codes: 0 measured (missed targets are reported in the results, not by the exit code), 2 bad usage.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime
import torch

import depthscale
from depthscale import DepthScaleModel, demo_checkpoint
from depthscale.atomic_dir import staging_dir

from . import depth, early_exit, latency, machine_limit, report, sequence, size, unrolled
from .models import Workspace, demo_model, random_model
from .plan import PLANS


def machine() -> str:
    name = platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def run(plan, out: Path, command: str, log) -> dict:
    """Every section of the plan; returns the results dict (also written into out)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="depthscale-bench-") as tmp:
        ws = Workspace(Path(tmp), log)
        ref = random_model(plan.reference)
        ref_ckpt = ws.checkpoint("reference", ref)
        cap = max(plan.size_caps[1], *plan.iters)
        ref_art = ws.artifact("reference", ref_ckpt, cap)
        ref_small = ws.artifact(f"reference-cap{plan.size_caps[0]}", ref_ckpt, plan.size_caps[0])
        full = DepthScaleModel(ref.config.replace(window=ref.config.max_seq_len)).eval()
        full.load_state_dict(ref.state_dict())
        full_art = ws.artifact("reference-full-attention", ws.checkpoint("reference-full-attention", full),
                               plan.seq_iters)
        loop_onnx = ws.graph("reference-loop", ref, plan.unroll_steps, unroll=False)
        unrolled_onnx = ws.graph("reference-unrolled", ref, plan.unroll_steps, unroll=True)
        demo = demo_model()
        demo_art = ws.artifact("demo", demo_checkpoint(), max(*plan.iters, demo.config.max_iters))
        ref_packed, demo_packed = copy.deepcopy(ref).packed(), copy.deepcopy(demo).packed()

        results = {"plan": dataclasses.asdict(plan),
                   "models": {"reference": {"config": ref.config.to_dict(), "parameters": ref.num_parameters(),
                                            "weights": "random, seed 0"},
                              "demo": {"config": demo.config.to_dict(), "parameters": demo.num_parameters(),
                                       "weights": "trained (depthscale/data/demo.pt)"}},
                   "exports": {e.name: {"seconds": e.seconds} for e in (ref_art, ref_small, full_art, loop_onnx,
                                                                         unrolled_onnx, demo_art)}}
        results["size"] = size.run({plan.size_caps[0]: ref_small.path, cap: ref_art.path}, ref_ckpt)
        results["machine_limit"] = machine_limit.run(ref_packed, ref_art.path, plan, Path(tmp), log)
        results["latency"] = latency.run([("reference", ref_packed, ref_art.path), ("demo", demo_packed, demo_art.path)],
                                         plan, log)
        results["depth"] = depth.run(ref_ckpt, ref_art.path, plan, log)
        results["sequence"] = sequence.run(ref_art.path, full_art.path, ref.config.vocab_size, plan, log)
        results["unrolled"] = unrolled.run(loop_onnx, unrolled_onnx, plan.unroll_steps, ref.config.vocab_size, plan, log)
        results["early_exit"] = early_exit.run(demo_art.path, demo.config, plan, log)
    results["targets"] = report.targets(results)
    results["meta"] = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "seconds": time.perf_counter() - start, "command": command,
                       "versions": {"depthscale": depthscale.__version__, "torch": torch.__version__,
                                    "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}}
    with staging_dir(out, replace=True) as tmp_out:
        report.write(results, tmp_out)
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="depthscale-bench", description=__doc__.split("\n\n")[0],
                                epilog="exit codes: 0 measured, 2 bad usage")
    p.add_argument("--quick", action="store_true", help="small shapes, one repetition: a smoke run in < 2 min")
    p.add_argument("-o", "--out", default="bench-results", help="output directory (default bench-results)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--grid", choices=("axes", "full"), default="axes",
                   help="latency points: each of batch/seq/T varied around the anchor (default), or every combination")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"depthscale-bench: error: {out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    plan = dataclasses.replace(PLANS["quick" if args.quick else "full"], grid=args.grid)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench {time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    results = run(plan, out, " ".join(["python tools/bench.py", shlex.join(argv)]).strip(), log)
    for t in results["targets"]:
        fig = "n/a" if t["figure"] is None else f"{t['figure']:.3f}"
        log(f"target {t['target']} ({t['where']}): {fig}, goal {t['goal']}: {'met' if t['met'] else 'MISSED'}")
    log(f"wrote {out}/results.json, results.md and plots")
    return 0
