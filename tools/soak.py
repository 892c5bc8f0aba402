"""Soak: many Runtime.run() calls on one artifact, printing the process's resident memory as it goes.

    python tools/soak.py ARTIFACT [--calls 20000] [--warmup 1000] [--json]

The calls cycle through four inputs (batches of 1 to 3 rows, a ragged batch, different budgets), so after
the warm-up ONNX Runtime has seen every shape. Prints RSS (MiB, from /proc/self/statm: Linux) after the
warm-up and at each tenth of the run; --json prints {"rss_mib": {call: MiB}, "growth_mib": after the
warm-up to the end, "calls_per_s"}. docs/design.md, "Resource bounds", states the bound the tests hold.
Exit codes: 0 ran, 2 bad usage or an artifact that does not load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import depthscale_runtime as dr


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(artifact, calls: int, warmup: int) -> dict:
    """Run `calls` calls (one thread each way in ONNX Runtime); RSS after `warmup` calls and at each tenth."""
    rt = dr.load(artifact, backend="onnxruntime", intra_op_threads=1, inter_op_threads=1)
    rng = np.random.default_rng(0)
    v, n = rt.artifact.vocab_size, min(16, rt.artifact.max_seq_len)
    inputs = [(rng.integers(0, v, (b, s)), t, tol) for b, s, t, tol in
              [(1, min(5, n), 16, 0.003), (2, min(9, n), 4, 0.0), (3, n, 16, 0.003)]]
    inputs.append(([rng.integers(0, v, min(3, n)), rng.integers(0, v, min(7, n))], 8, 0.01))
    rss, start = {}, time.perf_counter()
    for i in range(1, calls + 1):
        ids, max_iters, tol = inputs[i % len(inputs)]
        rt.run(ids, max_iters=min(max_iters, rt.artifact.max_iters_cap), tol=tol)
        if i == warmup or i % max(1, calls // 10) == 0:
            rss[i] = round(rss_mib(), 2)
    return {"calls": calls, "warmup": warmup, "rss_mib": rss, "growth_mib": round(rss[calls] - rss[warmup], 2),
            "calls_per_s": round(calls / (time.perf_counter() - start), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.warmup <= args.calls:
        p.error(f"--warmup must be in [1, --calls], got {args.warmup}")
    try:
        report = soak(args.artifact, args.calls, args.warmup)
    except (dr.ArtifactError, dr.BackendUnavailableError) as e:
        print(f"soak: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report))
    else:
        print(" ".join(f"{k}:{v:.1f}" for k, v in report["rss_mib"].items()) +
              f" MiB | growth after warm-up {report['growth_mib']:.2f} MiB | {report['calls_per_s']:.0f} calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
