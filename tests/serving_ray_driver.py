"""Driver for test_serving_ray, run inside the namespaces the test creates: a local 2-node Ray cluster,
the Serve deployment with 2 replicas queried over HTTP on 127.0.0.1, and the Ray Data UDF; every
output compared with depthscale_runtime's run on the same input. Writes a JSON report.

    python serving_ray_driver.py ARTIFACT REPORT TEMP_DIR
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from depthscale_bench.ray_load import load, local_cluster, post, serve_artifact  # noqa: E402

REQUESTS, CLIENTS, DATA_ROWS = 32, 8, 300


def same(result, logits, iterations) -> bool:
    got_logits = np.asarray(result["logits"], dtype=np.float32)
    return (got_logits.shape == logits.shape and np.array_equal(got_logits, logits)
            and np.array_equal(np.asarray(result["iterations"], dtype=np.int64), iterations))


def main(artifact: str, report_path: str, temp: str) -> None:
    import depthscale_runtime
    rt = depthscale_runtime.load(artifact, backend="onnxruntime")
    vocab, cap = rt.artifact.vocab_size, rt.artifact.max_iters_cap
    rng = np.random.default_rng(0)
    report, t0 = {}, time.monotonic()
    try:
        with local_cluster(temp) as ray:
            from ray import serve

            from depthscale_export.serving.ray_data import DepthScalePredictor
            report["nodes"] = sum(n["Alive"] for n in ray.nodes())
            report["cluster_s"] = time.monotonic() - t0

            # Ray Serve: 2 replicas, concurrent requests of different lengths and budgets
            serve_artifact(artifact, replicas=2)
            report["deploy_s"] = time.monotonic() - t0
            bodies = [{"input_ids": rng.integers(0, vocab, int(n)).tolist(), "max_iters": int(m), "tol": t}
                      for n, m, t in zip(rng.integers(1, 200, REQUESTS), rng.integers(0, cap + 1, REQUESTS),
                                         rng.choice([0.0, 0.003, 0.01, 0.05], REQUESTS))]
            for body in bodies[::4]:
                del body["tol"]                             # the artifact's default
            with ThreadPoolExecutor(CLIENTS) as pool:
                answers = list(pool.map(post, bodies))
            report["serve_ok"] = sum(status == 200 for status, _ in answers)
            refs = [rt.run(b["input_ids"], max_iters=b["max_iters"], tol=b.get("tol")) for b in bodies]
            report["serve_equal"] = sum(status == 200 and same(result, ref.logits, ref.iterations)
                                        for (status, result), ref in zip(answers, refs))
            report["serve_batch_sizes"] = sorted({r.get("batch_size", 0) for _, r in answers})
            report["serve_bad_input"] = [post(body) for body in (
                {"input_ids": [0, vocab], "max_iters": 1}, {"input_ids": [0, 1], "max_iters": cap + 1},
                {"input_ids": [0, 1], "temperature": 1}, {"input_ids": []}, [0, 1])]
            report["serve_s"] = time.monotonic() - t0
            # a replica killed under load (the bench's run, short): no request lost
            report["fault"] = load(artifact, clients=4, seconds=4, kill_at=1)
            report["fault_s"] = time.monotonic() - t0
            serve.shutdown()

            # Ray Data: a few hundred rows through the UDF on 2 actors
            items = [{"id": i, "input_ids": rng.integers(0, vocab, int(n)).tolist(), "max_iters": int(m), "tol": float(t)}
                     for i, (n, m, t) in enumerate(zip(rng.integers(1, 120, DATA_ROWS),
                                                       rng.integers(0, cap + 1, DATA_ROWS),
                                                       rng.choice([0.0, 0.003, 0.01], DATA_ROWS)))]
            rows = ray.data.from_items(items).map_batches(
                DepthScalePredictor, fn_constructor_kwargs={"artifact": artifact, "logits": True, "intra_op_threads": 1},
                batch_size=50, concurrency=2, batch_format="numpy").take_all()
            ref = rt.run([it["input_ids"] for it in items], max_iters=[it["max_iters"] for it in items],
                         tol=[it["tol"] for it in items])
            report["data_rows"] = len(rows)
            report["data_equal"] = 0
            for row in rows:
                i, n = int(row["id"]), len(items[int(row["id"])]["input_ids"])
                report["data_equal"] += bool(same(row, ref.logits[i, :n], ref.iterations[i, :n])
                                             and np.array_equal(row["predictions"], ref.logits[i, :n].argmax(-1)))
            report["data_ids"] = sorted(int(row["id"]) for row in rows) == list(range(DATA_ROWS))
            report["data_s"] = time.monotonic() - t0
    finally:
        report["total_s"] = time.monotonic() - t0
        Path(report_path).write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
