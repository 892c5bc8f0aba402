"""Ray Serve under load, and with a replica killed mid-load (README "Serving").

    python tools/bench_ray.py ARTIFACT [--clients 8] [--seconds 20] [--kill-at 10] [-o OUT.json]

Ray's servers bind every interface, so this runs itself again inside network and PID namespaces
(unshare, as root: only loopback exists there, and the cluster's processes die with the namespace): a
local 2-node cluster with token authentication, the deployment with 2 replicas, and `clients` threads
sending requests of random lengths and budgets back to back for `seconds`. At `kill_at` seconds one
replica is killed (ray.kill; 0: none). A request that gets no answer or a 5xx is retried (at most
RETRIES times); each request ends as ok, ok after retries, a clear error (an HTTP status and its
message) or lost (no answer at all: none expected). Exit codes: 0 measured, 1 the run failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

GCS_PORT, HTTP_PORT = 6380, 8471
RETRIES = 3
REQUEST_TIMEOUT_S = 60.0
REPLACE_WAIT_S = 60.0
ROUTE = "/depthscale"


def namespaced(cmd: list[str]) -> list[str]:
    """cmd run inside new network and PID namespaces with loopback up (needs root)."""
    return ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
            'ip link set lo up && exec "$0" "$@"', *cmd]


def cluster_env(home: str) -> dict[str, str]:
    """The environment of every process of a test cluster: token auth with a fresh token, HOME in a
    directory the caller removes (so no token file or config outlives it)."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "HOME": home,
            "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


def run_namespaced(cmd: list[str], env: dict, timeout_s: float) -> tuple[int, str]:
    """Run cmd inside the namespaces; (exit code, output). On timeout the namespace is killed (by the
    unshare process's group) and the code is -9."""
    proc = subprocess.Popen(namespaced(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        output = ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, output


def _ray_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], check=True, timeout=180,
                   stdout=subprocess.DEVNULL)


@contextmanager
def local_cluster(temp_dir: str, cpus_per_node: int = 3):
    """A 2-node Ray cluster on 127.0.0.1 (`ray start --head`, then `ray start --address`), this process
    connected as its driver; `ray stop --force` on exit (inside the PID namespace: this cluster only)."""
    import ray
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--disable-usage-stats"]
    try:
        _ray_cli("start", "--head", f"--port={GCS_PORT}", f"--temp-dir={temp_dir}", "--include-dashboard=false", *common)
        _ray_cli("start", f"--address=127.0.0.1:{GCS_PORT}", *common)
        ray.init(address=f"127.0.0.1:{GCS_PORT}", logging_level="ERROR", log_to_driver=False)
        yield ray
    finally:
        ray.shutdown()
        # killed processes are orphans of this process (the namespace's first): it never reaps them, so
        # `ray stop` would wait out its grace period (16 s) on their zombies
        _ray_cli("stop", "--force", "--grace-period=1")


def serve_artifact(artifact: str, replicas: int = 2) -> None:
    """The deployment with `replicas` replicas on http://127.0.0.1:HTTP_PORT/depthscale (proxy on the head only)."""
    from ray import serve

    from depthscale_export.serving.ray_serve import app
    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT, "location": "HeadOnly"})
    serve.run(app(artifact, num_replicas=replicas, intra_op_threads=1), name="depthscale", route_prefix=ROUTE)


def post(body: dict, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of one request. Raises OSError / HTTPException where no answer came."""
    request = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}{ROUTE}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"error": text.strip().splitlines()[0][:200] if text.strip() else e.reason}


def _request(body: dict) -> dict:
    """One request with retries -> {outcome, attempts, latency_s, failures (what each failed attempt
    got), error (the last one, unless it succeeded)}."""
    start, attempts, failures = time.monotonic(), 0, []
    while True:
        attempts += 1
        try:
            status, answer = post(body)
        except (OSError, http.client.HTTPException) as e:
            status, answer = None, {"error": f"{type(e).__name__}: {e}"[:200]}
        if status == 200 and len(answer.get("iterations", ())) == len(body["input_ids"]):
            return {"outcome": "ok" if attempts == 1 else "ok_after_retry", "attempts": attempts,
                    "latency_s": time.monotonic() - start, "failures": failures}
        failures.append(f"{status}: {answer.get('error')}"[:200])
        if (status is not None and status < 500) or attempts > RETRIES:
            return {"outcome": "lost" if status is None else "error", "attempts": attempts,
                    "latency_s": time.monotonic() - start, "failures": failures, "error": failures[-1]}
        time.sleep(0.2 * attempts)


def load(artifact: str, clients: int, seconds: float, kill_at: float) -> dict:
    """The load (and fault) run, inside the cluster: counts, throughput, latency percentiles."""
    import ray

    import depthscale_runtime
    art = depthscale_runtime.open_artifact(artifact)
    results, lock, killed = [], threading.Lock(), {}
    start = time.monotonic()
    deadline = start + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < deadline:
            body = {"input_ids": rng.integers(0, art.vocab_size, int(rng.integers(1, 200))).tolist(),
                    "max_iters": int(rng.integers(0, art.max_iters_cap + 1)), "tol": float(rng.choice([0.0, 0.003, 0.01]))}
            result = _request(body)
            result["done_at_s"] = time.monotonic() - start
            with lock:
                results.append(result)

    def replicas() -> list[str]:
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith("SERVE_REPLICA::"))

    def kill() -> None:
        time.sleep(kill_at)
        names = replicas()
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        killed.update(replica=names[0], at_s=round(time.monotonic() - start, 2), replicas_before=names)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if kill_at > 0:
        threads.append(threading.Thread(target=kill))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + REQUEST_TIMEOUT_S * (RETRIES + 1) + 30)
    elapsed = time.monotonic() - start
    if killed:              # wait (at most REPLACE_WAIT_S) for Serve to replace the killed replica
        while True:
            now = replicas()
            if (killed["replica"] not in now and len(now) == len(killed["replicas_before"])
                    or time.monotonic() - start > seconds + REPLACE_WAIT_S):
                break
            time.sleep(0.5)
        killed.update(replicas_after=now, replaced_by_s=round(time.monotonic() - start, 2))
    per_second = np.bincount([int(r["done_at_s"]) for r in results if r["outcome"].startswith("ok")],
                             minlength=int(seconds) + 1)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("ok", "ok_after_retry", "error", "lost")}
    latencies = np.array([r["latency_s"] for r in results if r["outcome"].startswith("ok")])
    return {"clients": clients, "seconds": seconds, "elapsed_s": round(elapsed, 2), "requests": len(results), **counts,
            "throughput_rps": round((counts["ok"] + counts["ok_after_retry"]) / elapsed, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1) if latencies.size else None,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1) if latencies.size else None,
            "ok_per_second": per_second.tolist(), "killed": killed, "errors": sorted({r["error"] for r in results if "error" in r})[:10],
            "retry_causes": sorted({f for r in results for f in r["failures"]})[:10],
            "unfinished_threads": sum(t.is_alive() for t in threads)}


def inside(args) -> int:
    with local_cluster(args.temp):
        serve_artifact(args.artifact)
        report = load(args.artifact, args.clients, args.seconds, args.kill_at)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_ray", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--kill-at", type=float, default=0.0, help="kill one replica after this many seconds (0: none)")
    p.add_argument("-o", "--out", default="ray_load.json")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--temp", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 3600 or not 0 <= args.kill_at < args.seconds:
        p.error("need 1 <= --clients <= 256, 0 < --seconds <= 3600, 0 <= --kill-at < --seconds")
    if args.inside:
        return inside(args)
    temp = tempfile.mkdtemp(prefix="dsray-", dir="/tmp")         # short: Ray's socket paths
    try:
        out = Path(temp) / "report.json"
        cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "bench_ray.py"), str(Path(args.artifact).resolve()),
               "--clients", str(args.clients), "--seconds", str(args.seconds), "--kill-at", str(args.kill_at),
               "-o", str(out), "--inside", "--temp", temp]
        code, output = run_namespaced(cmd, cluster_env(temp), args.seconds + 600)
        if code != 0 or not out.exists():
            print(f"bench_ray: the run failed (exit {code}):\n{output[-3000:]}", file=sys.stderr)
            return 1
        report = json.loads(out.read_text())
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report))
        return 0
    finally:
        shutil.rmtree(temp, ignore_errors=True)
