"""Ray Serve and Ray Data over an artifact, on a real local 2-node Ray cluster: outputs identical to
depthscale_runtime's.

Ray's servers bind every interface, so the cluster runs inside network and PID namespaces this test
creates (unshare: only loopback exists there, and every process of the cluster dies with the
namespace's first process). Token authentication is on, with a token made for this test; HOME points
into the test's directory, so nothing Ray writes outlives it.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DRIVER = Path(__file__).with_name("serving_ray_driver.py")
TIMEOUT_S = 300


def test_ray_serve_and_data_on_a_two_node_cluster(demo_artifact, tmp_path):
    temp = tempfile.mkdtemp(prefix="dsray-", dir="/tmp")      # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "HOME": str(tmp_path),
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    report = tmp_path / "report.json"
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
           'ip link set lo up && exec "$0" "$@"', sys.executable, str(DRIVER), str(demo_artifact), str(report), temp]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)            # unshare: its namespace's processes die with it
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, output[-5000:]
    got = json.loads(report.read_text())
    print(f"ray test: {elapsed:.1f} s; {got}")
    assert got["nodes"] == 2
    assert got["serve_ok"] == got["serve_equal"] == 32
    assert max(got["serve_batch_sizes"]) > 1                 # @serve.batch ran requests together
    status, body = got["serve_bad_input"]
    assert status == 400 and body["error"].startswith("input_ids must be in [0, ")
    assert got["data_rows"] == got["data_equal"] == 300 and got["data_ids"]
