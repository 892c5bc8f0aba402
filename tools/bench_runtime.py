"""Runtime overhead and memory: depthscale_runtime.Runtime.run against a bare onnxruntime session on
the same artifact and inputs, interleaved call by call (alternating which goes first), plus RSS after 100 and after 10,000 calls.

    python tools/bench_runtime.py ARTIFACT [--calls 10000] [--seq 8] [--iters 4]

Prints medians in µs and the overhead (runtime - bare), measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort

import depthscale_runtime


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--seq", type=int, default=8)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    rt = depthscale_runtime.load(args.artifact, intra_op_threads=args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    bare = ort.InferenceSession(str(rt.artifact.model_path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(1, min(3, rt.config["vocab_size"]), (1, args.seq)).astype(np.int64)
    feed = {"input_ids": ids, "lengths": np.array([args.seq], np.int64), "max_iters": np.array([args.iters], np.int64),
            "tol": np.array([0.0], np.float32)}
    for _ in range(20):                                          # warm up both
        bare.run(None, feed)
        rt.run(ids, args.iters, 0.0)
    t_bare, t_rt, rss = [], [], {}
    calls = [(lambda: bare.run(None, feed), t_bare), (lambda: rt.run(ids, args.iters, 0.0), t_rt)]
    for i in range(1, args.calls + 1):
        for call, times in (calls if i % 2 else calls[::-1]):   # alternate which goes first
            t0 = time.perf_counter_ns()
            call()
            times.append(time.perf_counter_ns() - t0)
        if i in (100, args.calls):
            rss[i] = rss_mib()
    med_bare, med_rt = statistics.median(t_bare) / 1e3, statistics.median(t_rt) / 1e3
    result = {"calls": args.calls, "seq": args.seq, "max_iters": args.iters, "threads": args.threads,
              "bare_ort_median_us": round(med_bare, 1), "runtime_median_us": round(med_rt, 1),
              "overhead_us": round(med_rt - med_bare, 1), "ratio": round(med_rt / med_bare, 4),
              "rss_mib_after_100": round(rss[100], 1), f"rss_mib_after_{args.calls}": round(rss[args.calls], 1)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
