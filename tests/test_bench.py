"""depthscale-bench --quick as a subprocess: it runs, writes every figure issue 5 asks for, and the figures
that do not depend on timing hold (parity at every latency point, size, early exit). Timings themselves
are never asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, str(ROOT / "tools" / "bench.py")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    proc = subprocess.run([*BENCH, "--quick", "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), proc.stderr


def test_writes_json_markdown_and_plots(quick):
    out, results, stderr = quick
    assert sorted(p.name for p in out.iterdir()) == ["depth.png", "early_exit.png", "latency.png", "results.json",
                                                     "results.md", "sequence.png"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for heading in ("## Targets", "## a. Latency", "## b. Depth", "## c. Sequence", "## d. Size", "## e. Loop against unrolled",
                    "## f. Early exit", "## g. The machine's limit"):
        assert heading in md
    assert "target bits per packed BitLinear weight" in stderr


def test_latency_rows_cover_both_models_threads_and_axes(quick):
    _, results, _ = quick
    plan, rows = results["plan"], results["latency"]
    measured = [r for r in rows if "skipped" not in r]
    assert {r["model"] for r in measured} == {"reference", "demo"}
    assert {r["threads"] for r in measured} == set(plan["threads"])
    assert {r["batch"] for r in measured} == set(plan["batches"])
    assert {r["seq"] for r in measured} == set(plan["seqs"])
    assert {r["max_iters"] for r in measured} == set(plan["iters"])
    for r in measured:
        assert r["eager_median_s"] > 0 and r["ort_median_s"] > 0
        assert r["eager_over_ort"] == pytest.approx(r["eager_median_s"] / r["ort_median_s"])
        # the same inputs through both: identical exit iterations, logits within the export tolerance
        assert r["iterations_equal"] and r["logits_max_abs_diff"] <= 1e-4, r


def test_depth_sequence_unrolled_and_machine_limit_sections(quick):
    _, results, _ = quick
    depth = results["depth"]
    assert {(r["backend"], r["max_iters"]) for r in depth["rows"]} == {
        (b, t) for b in ("eager", "onnxruntime") for t in results["plan"]["depth_iters"]}
    assert all(r["peak_rss_mib"] >= r["rss_after_load_mib"] > 0 for r in depth["rows"])
    assert not any(r["torch_imported"] for r in depth["rows"] if r["backend"] == "onnxruntime")
    assert depth["eager_peak_ratio"] > 0 and depth["onnxruntime_peak_ratio"] > 0
    seq = results["sequence"]
    assert [r["seq"] for r in seq["rows"]] == list(results["plan"]["seq_sweep"])
    assert isinstance(seq["window_slope"], float) and isinstance(seq["full_slope"], float)
    unrolled = results["unrolled"]
    assert unrolled["same_outputs"]                      # unrolled at T steps == the Loop at max_iters T
    assert unrolled["unrolled"]["nodes"] > unrolled["loop"]["nodes"]
    for key in ("onnx_bytes", "session_create_median_s", "latency_median_s"):
        assert unrolled[f"unrolled_over_loop_{key}"] > 0
    limit = results["machine_limit"]
    for p in limit["peak_by_threads"].values():
        assert len(p["products"]) == len(results["plan"]["products"])
        assert p["int8_ops_per_s"] == max(r["int8_ops_per_s"] for r in p["products"]) > 0
        assert p["fp32_ops_per_s"] == max(r["fp32_ops_per_s"] for r in p["products"]) > 0
    assert limit["model"]["bitlinear_ops"] > 0 and limit["model"]["matmulinteger_fraction_of_int8_peak"] > 0
    assert "MatMulInteger" in limit["model"]["time_by_op_s"]


def test_size_figures(quick):
    _, results, _ = quick
    size = results["size"]
    caps = size["onnx_bytes_by_cap"]
    assert len(caps) == 2
    assert size["onnx_bytes_ratio_largest_over_smallest_cap"] == pytest.approx(1.0, abs=0.01)   # one Loop: T is free
    assert size["bits_per_weight"] <= 2.1 and size["weight_dtypes"] == ["uint8"]
    assert size["artifact_over_checkpoint"] < 1


def test_early_exit_and_targets(quick):
    _, results, _ = quick
    rows = results["early_exit"]["rows"]
    assert [r["tol"] for r in rows] == list(results["plan"]["early_exit_tols"])
    assert rows[0]["tol"] == 0 and rows[0]["mean_exit_iteration"] == results["early_exit"]["max_iters"]
    iters = [r["mean_exit_iteration"] for r in rows]
    assert iters == sorted(iters, reverse=True) and iters[-1] < iters[0]     # a looser tol exits earlier
    assert rows[0]["accuracy"] == 1.0                                         # the demo at full depth
    targets = results["targets"]
    assert [t["target"] for t in targets] == ["ORT speed-up over eager", "sequence slope, window attention",
                                              "ORT peak RSS ratio across T", "bits per packed BitLinear weight"]
    assert all(isinstance(t["figure"], float) and isinstance(t["met"], bool) for t in targets)


def test_refuses_an_existing_output_without_force(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = subprocess.run([*BENCH, "--quick", "-o", str(tmp_path / "taken")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "exists" in proc.stderr and "Traceback" not in proc.stderr
