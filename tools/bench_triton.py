"""Load on a real tritonserver serving an artifact through `depthscale-serve triton`'s python-backend model:
N concurrent gRPC clients for a bounded time, each sending one request after another (ragged lengths,
the artifact's default budgets), once per max_batch_size given (1: no dynamic batching).

    python tools/bench_triton.py ARTIFACT [--clients 8] [--seconds 20] [--max-batch-sizes 16,1] [--fault]
                                 [--only load|budgets]

Prints, per configuration: requests, throughput (requests/s and tokens/s), p50/p99 latency in ms (of
requests that succeeded at once), errors (requests whose first try failed), how many of those succeeded
on a retry and how many failed every try, and the server's executions (how many batches ran). With
--fault, a further run kills the model's python backend stub (SIGKILL) halfway through; the model then
stays "ready" but fails every request until it is reloaded, which a watchdog does (see watchdog()). The server is the pinned nvidia-pytriton
tritonserver in its venv (depthscale_export.serving.tritonserver), on 127.0.0.1, stopped at the end.

First (in process, no server): a batch of requests with mixed max_iters run as one batch with per-row
budgets against one batch per budget, the choice a serving layer faces (budget_grouping).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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


RETRIES, BACKOFF_S = 4, 0.5          # waits 0.5, 1, 2, 4 s: longer than the backend takes to restart a stub


def client_loop(url: str, seed: int, deadline: float, vocab: int, lengths: tuple[int, int], out: dict,
                max_requests: int = 100_000) -> None:
    """Requests one after another until the deadline (or max_requests). A failed request is retried up to
    RETRIES times, waiting BACKOFF_S, then twice as long each time; into out: latencies (s) of the requests that succeeded at once, how
    many succeeded on a retry, and the errors of those that failed every try (none is dropped)."""
    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(seed)
    latencies, retried, failed, first_errors, tokens = [], 0, [], [], 0
    for _ in range(max_requests):
        if time.monotonic() >= deadline:
            break
        ids = rng.integers(1, vocab, size=(1, int(rng.integers(*lengths))))
        inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64")]
        inputs[0].set_data_from_numpy(ids)
        for attempt in range(1 + RETRIES):
            start = time.perf_counter()
            try:
                client.infer(NAME, inputs, client_timeout=30)
            except Exception as e:                # counted, not raised: the load test reports errors
                error = str(e).splitlines()[0][:200]
                if attempt == 0:
                    first_errors.append(error)
                if attempt == RETRIES:
                    failed.append(error)
                if attempt < RETRIES:
                    time.sleep(BACKOFF_S * 2 ** attempt)
                continue
            if attempt == 0:
                latencies.append(time.perf_counter() - start)
            else:
                retried += 1
            tokens += ids.shape[1]
            break
    client.close()
    out.update(latencies=latencies, retried=retried, failed=failed, first_errors=first_errors, tokens=tokens)


def stub_pids(server: TritonServer) -> list[int]:
    """The pids of the server's python backend stubs running the model NAME (its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server.process.pid and "triton_python_backend_stub" in cmdline and f"/{NAME}/1/model.py" in cmdline:
            pids.append(int(entry.name))
    return pids


def watchdog(client, since: float, deadline: float, period_s: float = 0.5) -> float | None:
    """What a deployment's health check must do here: readiness stays true after a stub dies, so probe
    with a one-token inference every period_s until the deadline; on an error, reload the model
    (explicit model control) and return the seconds from `since` to the first probe that succeeds."""
    probe = grpcclient.InferInput("input_ids", [1, 1], "INT64")
    probe.set_data_from_numpy(np.zeros((1, 1), dtype=np.int64))
    failing = False
    while time.monotonic() < deadline:
        try:
            client.infer(NAME, [probe], client_timeout=30)
            if failing:
                return round(time.monotonic() - since, 2)
        except Exception:                         # the model's error: reload it
            failing = True
            client.load_model(NAME)
        time.sleep(period_s)
    return None


def run_load(server: TritonServer, clients: int, seconds: float, vocab: int, lengths: tuple[int, int],
             kill_at_s: float | None = None) -> dict:
    """`clients` client_loops for `seconds`; with kill_at_s, the model's stub is killed (SIGKILL) then."""
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
    killed, recovered_s = [], None
    if kill_at_s is not None:
        time.sleep(kill_at_s)
        killed = stub_pids(server)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        recovered_s = watchdog(stats_client, time.monotonic(), deadline)
    for t in threads:
        t.join(seconds + 60 + (RETRIES + 1) * 30)
    elapsed = time.perf_counter() - start
    latencies = np.array([x for r in results for x in r.get("latencies", [])])
    failed = [e for r in results for e in r.get("failed", [])]
    first = [e for r in results for e in r.get("first_errors", [])]
    retried = sum(r.get("retried", 0) for r in results)
    row = {"clients": clients, "seconds": round(elapsed, 2), "requests": int(latencies.size) + retried + len(failed),
           "requests_per_s": round((latencies.size + retried) / elapsed, 1),
           "tokens_per_s": round(sum(r.get("tokens", 0) for r in results) / elapsed, 1),
           "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1) if latencies.size else None,
           "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1) if latencies.size else None,
           "errors": len(first), "succeeded_on_retry": retried, "failed": len(failed),
           "first_error": first[0] if first else None,
           "executions": None if kill_at_s is not None else executions() - before}    # a reload resets them
    if kill_at_s is not None:
        row.update(killed_stub_pids=killed, recovered_after_s=recovered_s)
    return row


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
    p.add_argument("--fault", action="store_true",
                   help="also a run (first max_batch_size) whose model stub is killed halfway (SIGKILL)")
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
        sizes = [int(x) for x in args.max_batch_sizes.split(",")]
        for size in sizes:
            repo = Path(tmp) / f"repo{size}"
            write_repository(args.artifact, repo, NAME, batching=Batching(max_batch_size=size), intra_op_threads=1,
                             generate=False)
            with TritonServer(env, repo, [NAME]) as server:
                rows.append({"max_batch_size": size, **run_load(server, args.clients, args.seconds, art.vocab_size, lengths)})
                if args.fault and size == sizes[0]:
                    rows.append({"max_batch_size": size, "fault": "stub killed", **run_load(
                        server, args.clients, args.seconds, art.vocab_size, lengths, kill_at_s=args.seconds / 2)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'max_batch':>9} {'fault':>11} {'requests':>8} {'req/s':>7} {'tokens/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'errors':>6} {'retried ok':>10} {'failed':>6} {'executions':>10}")
        for r in rows:
            print(f"{r['max_batch_size']:9d} {r.get('fault', '-'):>11} {r['requests']:8d} {r['requests_per_s']:7.1f} "
                  f"{r['tokens_per_s']:8.1f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['errors']:6d} "
                  f"{r['succeeded_on_retry']:10d} {r['failed']:6d} {str(r['executions']):>10}"
                  + (f"  recovered after {r['recovered_after_s']} s" if "fault" in r else ""))
        for r in rows:
            if r["first_error"]:
                print(f"first error ({r['max_batch_size']}, {r.get('fault', 'no fault')}): {r['first_error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
