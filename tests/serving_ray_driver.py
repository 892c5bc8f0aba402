"""Driver for test_serving_ray (run inside the network and PID namespaces the test creates): a local
2-node Ray cluster, the Serve deployment with 2 replicas queried over HTTP on 127.0.0.1, and the Ray
Data UDF; every output compared with depthscale_runtime's run on the same input. Writes a JSON report.

    python serving_ray_driver.py ARTIFACT REPORT TEMP_DIR
"""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

GCS_PORT, HTTP_PORT = 6380, 8471
REQUESTS, CLIENTS, DATA_ROWS = 32, 8, 300


def ray_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], check=True, timeout=180,
                   stdout=subprocess.DEVNULL)


def post(body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}/depthscale", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=3", "--disable-usage-stats"]
    try:
        ray_cli("start", "--head", f"--port={GCS_PORT}", f"--temp-dir={temp}", "--include-dashboard=false", *common)
        ray_cli("start", f"--address=127.0.0.1:{GCS_PORT}", *common)
        import ray
        from ray import serve

        from depthscale_export.serving.ray_data import DepthScalePredictor
        from depthscale_export.serving.ray_serve import app
        ray.init(address=f"127.0.0.1:{GCS_PORT}", logging_level="ERROR", log_to_driver=False)
        report["nodes"] = sum(n["Alive"] for n in ray.nodes())
        report["cluster_s"] = time.monotonic() - t0

        # Ray Serve: 2 replicas, concurrent requests of different lengths and budgets
        serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT, "location": "HeadOnly"})
        serve.run(app(artifact, num_replicas=2, intra_op_threads=1), name="depthscale", route_prefix="/depthscale")
        report["deploy_s"] = time.monotonic() - t0
        bodies = [{"input_ids": rng.integers(0, vocab, int(n)).tolist(), "max_iters": int(m), "tol": t}
                  for n, m, t in zip(rng.integers(1, 200, REQUESTS), rng.integers(0, cap + 1, REQUESTS),
                                     rng.choice([0.0, 0.003, 0.01, 0.05], REQUESTS))]
        for body in bodies[::4]:
            del body["tol"]                                 # the artifact's default
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(post, bodies))
        report["serve_ok"] = sum(status == 200 for status, _ in answers)
        report["serve_equal"] = sum(
            status == 200 and same(result, (ref := rt.run(b["input_ids"], max_iters=b["max_iters"], tol=b.get("tol"))).logits,
                                   ref.iterations)
            for (status, result), b in zip(answers, bodies))
        report["serve_batch_sizes"] = sorted({r.get("batch_size", 0) for _, r in answers})
        report["serve_bad_input"] = post({"input_ids": [0, vocab], "max_iters": 1})
        report["serve_s"] = time.monotonic() - t0
        serve.delete("depthscale")

        # Ray Data: a few hundred rows through the UDF on 2 actors
        items = [{"id": i, "input_ids": rng.integers(0, vocab, int(n)).tolist(), "max_iters": int(m), "tol": float(t)}
                 for i, (n, m, t) in enumerate(zip(rng.integers(1, 120, DATA_ROWS), rng.integers(0, cap + 1, DATA_ROWS),
                                                   rng.choice([0.0, 0.003, 0.01], DATA_ROWS)))]
        rows = ray.data.from_items(items).map_batches(
            DepthScalePredictor, fn_constructor_kwargs={"artifact": artifact, "logits": True, "intra_op_threads": 1},
            batch_size=50, concurrency=2, batch_format="numpy").take_all()
        ref = rt.run([it["input_ids"] for it in items], max_iters=[it["max_iters"] for it in items],
                     tol=[it["tol"] for it in items])
        report["data_rows"] = len(rows)
        report["data_equal"] = sum(
            same(row, ref.logits[row["id"], :len(items[row["id"]]["input_ids"])],
                 ref.iterations[row["id"], :len(items[row["id"]]["input_ids"])])
            and np.array_equal(row["predictions"], ref.logits[row["id"], :len(items[row["id"]]["input_ids"])].argmax(-1))
            for row in rows)
        report["data_ids"] = sorted(int(row["id"]) for row in rows) == list(range(DATA_ROWS))
        report["data_s"] = time.monotonic() - t0
        serve.shutdown()
        ray.shutdown()
    finally:
        ray_cli("stop", "--force")
        with open(report_path, "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
