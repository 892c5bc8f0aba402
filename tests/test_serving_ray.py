"""Ray Serve and Ray Data over an artifact, on a real local 2-node Ray cluster: outputs identical to
depthscale_runtime's.

Ray's servers bind every interface, so the cluster runs inside network and PID namespaces this test
creates (unshare: only loopback exists there, and every process of the cluster dies with the
namespace). Token authentication is on, with a token made for this test; HOME points into a
directory the test removes, so nothing Ray writes outlives it.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from depthscale_bench.ray_load import cluster_env, run_namespaced  # noqa: E402

DRIVER = Path(__file__).with_name("serving_ray_driver.py")
TIMEOUT_S = 300


def test_ray_serve_and_data_on_a_two_node_cluster(demo_artifact):
    temp = tempfile.mkdtemp(prefix="dsray-", dir="/tmp")      # short: Ray's socket paths must fit 107 bytes
    report = Path(temp) / "report.json"
    start = time.monotonic()
    try:
        code, output = run_namespaced([sys.executable, str(DRIVER), str(demo_artifact), str(report), temp],
                                      cluster_env(temp), TIMEOUT_S)
        got = json.loads(report.read_text()) if report.exists() else {}
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    print(f"ray: {time.monotonic() - start:.1f} s; {got}")
    assert code == 0, output[-5000:]
    assert got["nodes"] == 2
    assert got["serve_ok"] == got["serve_equal"] == 32
    assert max(got["serve_batch_sizes"]) > 1                 # @serve.batch ran requests together
    expected = ["input_ids must be in [0, ", "max_iters must be in [0, ", "unknown field(s): temperature",
                "input_ids seq must be in [1, ", 'the body must be a JSON object with "input_ids"']
    for (status, body), start in zip(got["serve_bad_input"], expected, strict=True):
        assert status == 400 and body["error"].startswith(start), body
    fault = got["fault"]
    assert fault["requests"] > 0 and fault["lost"] == 0 and fault["unfinished_threads"] == 0
    assert fault["ok"] + fault["ok_after_retry"] + fault["error"] == fault["requests"]
    assert fault["killed"]["replica"] not in fault["killed"]["replicas_after"]     # killed, and replaced
    assert len(fault["killed"]["replicas_after"]) == 2
    assert got["data_rows"] == got["data_equal"] == 300 and got["data_ids"]
