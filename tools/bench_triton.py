"""Load on a real tritonserver serving an artifact through `depthscale-serve triton`'s python-backend model:
N concurrent gRPC clients for a bounded time, each sending one request after another (ragged lengths,
the artifact's default budgets), once per max_batch_size given (1: no dynamic batching).

    python tools/bench_triton.py ARTIFACT [--clients 8] [--seconds 20] [--max-batch-sizes 16,1] [--only load|budgets]

Prints, per configuration: requests completed, throughput (requests/s and tokens/s), p50/p99 latency in
ms, errors, and the server's executions (how many batches ran). The server is the pinned nvidia-pytriton
tritonserver in its venv (depthscale_export.serving.tritonserver), on 127.0.0.1, stopped at the end.

First (in process, no server): a batch of requests with mixed max_iters run as one batch with per-row
budgets against one batch per budget, the choice a serving layer faces (budget_grouping).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

import depthscale_runtime
from depthscale_export.serving.triton import write_repository
from depthscale_export.serving.triton_config import Batching
from depthscale_export.serving.tritonserver import TritonServer, server_env

NAME = "depthscale"


def client_loop(url: str, seed: int, deadline: float, vocab: int, lengths: tuple[int, int], out: dict,
                max_requests: int = 100_000) -> None:
    """Requests one after another until the deadline (or max_requests); latencies (s) and errors into out."""
    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(seed)
    latencies, errors, tokens = [], [], 0
    for _ in range(max_requests):
        if time.monotonic() >= deadline:
            break
        ids = rng.integers(1, vocab, size=(1, int(rng.integers(*lengths))))
        inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64")]
        inputs[0].set_data_from_numpy(ids)
        start = time.perf_counter()
        try:
            client.infer(NAME, inputs, client_timeout=30)
        except Exception as e:                    # counted, not raised: the load test reports errors
            errors.append(str(e)[:200])
            continue
        latencies.append(time.perf_counter() - start)
        tokens += ids.shape[1]
    client.close()
    out.update(latencies=latencies, errors=errors, tokens=tokens)


def run_load(server: TritonServer, clients: int, seconds: float, vocab: int, lengths: tuple[int, int]) -> dict:
    stats_client = grpcclient.InferenceServerClient(server.grpc_url)

    def executions() -> int:
        return int(stats_client.get_inference_statistics(NAME, as_json=True)["model_stats"][0].get("execution_count", 0))

    before = executions()
    results = [dict() for _ in range(clients)]
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(server.grpc_url, i, deadline, vocab, lengths, results[i]))
               for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - start
    latencies = np.array([x for r in results for x in r.get("latencies", [])])
    errors = [e for r in results for e in r.get("errors", [])]
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": int(latencies.size),
            "requests_per_s": round(latencies.size / elapsed, 1),
            "tokens_per_s": round(sum(r.get("tokens", 0) for r in results) / elapsed, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1) if latencies.size else None,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1) if latencies.size else None,
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "executions": executions() - before}


def budget_grouping(artifact: str, rows: int, lengths: tuple[int, int], repeats: int = 15, seed: int = 0) -> dict:
    """In process, no server: `rows` requests with mixed max_iters (2, 4, 8 or the cap) run as one batch with
    per-row budgets (what the python model does) against one batch per budget (what a serving layer would
    do if the graph took one budget per call); medians of interleaved repetitions, ms. Checks both give the
    same outputs."""
    rt = depthscale_runtime.load(artifact, intra_op_threads=1)
    rng = np.random.default_rng(seed)
    cap = rt.artifact.max_iters_cap
    ids = [rng.integers(1, rt.artifact.vocab_size, size=int(rng.integers(*lengths))) for _ in range(rows)]
    budgets = rng.choice(sorted({2, 4, 8, cap}), size=rows)
    groups = {int(b): [i for i in range(rows) if budgets[i] == b] for b in np.unique(budgets)}

    def mixed():
        return rt.run(ids, max_iters=budgets)

    def grouped():
        return {b: rt.run([ids[i] for i in members], max_iters=b) for b, members in groups.items()}

    one, per = mixed(), grouped()
    for b, members in groups.items():
        for j, i in enumerate(members):
            n = len(ids[i])
            assert np.array_equal(one.logits[i, :n], per[b].logits[j, :n]), "per-row budgets changed an output"
    times = {"mixed": [], "grouped": []}
    for r in range(repeats):
        for name in (("mixed", "grouped") if r % 2 == 0 else ("grouped", "mixed")):
            start = time.perf_counter()
            mixed() if name == "mixed" else grouped()
            times[name].append(time.perf_counter() - start)
    return {"rows": rows, "budgets": {b: len(m) for b, m in groups.items()},
            "one_batch_per_row_budgets_ms": round(float(np.median(times["mixed"])) * 1e3, 1),
            "one_batch_per_budget_ms": round(float(np.median(times["grouped"])) * 1e3, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--max-batch-sizes", default="16,1", help="one run per value (1: no dynamic batching)")
    p.add_argument("--lengths", default="4,33", help="request lengths drawn from [LO, HI)")
    p.add_argument("--only", choices=("load", "budgets"), default=None, help="one part only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.only != "load":
        budgets = budget_grouping(args.artifact, 16, tuple(int(x) for x in args.lengths.split(",")))
        print(json.dumps(budgets) if args.json else
              f"16 requests, max_iters {budgets['budgets']}: one batch with per-row budgets "
              f"{budgets['one_batch_per_row_budgets_ms']} ms, one batch per budget {budgets['one_batch_per_budget_ms']} ms")
        if args.only == "budgets":
            return 0
    art = depthscale_runtime.open_artifact(args.artifact)
    lengths = tuple(int(x) for x in args.lengths.split(","))
    env = server_env()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(x) for x in args.max_batch_sizes.split(",")):
            repo = Path(tmp) / f"repo{size}"
            write_repository(args.artifact, repo, NAME, batching=Batching(max_batch_size=size), intra_op_threads=1,
                             generate=False)
            with TritonServer(env, repo, [NAME]) as server:
                rows.append({"max_batch_size": size, **run_load(server, args.clients, args.seconds, art.vocab_size, lengths)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'max_batch':>9} {'requests':>8} {'req/s':>7} {'tokens/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
              f"{'executions':>10}")
        for r in rows:
            print(f"{r['max_batch_size']:9d} {r['requests']:8d} {r['requests_per_s']:7.1f} {r['tokens_per_s']:8.1f} "
                  f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['errors']:6d} {r['executions']:10d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
