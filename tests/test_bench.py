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
    assert sorted(p.name for p in out.iterdir()) == ["decode_cache_iters.png", "decode_cache_seq.png", "decode_iterations.png",
                                                     "decode_latency.png", "depth.png", "early_exit.png", "latency.png",
                                                     "results.json", "results.md", "sequence.png"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for heading in ("## Targets", "## a. Latency", "## b. Depth", "## c. Sequence", "## d. Size", "## e. Loop against unrolled",
                    "## f. Early exit", "## g. The machine's limit", "## h. Decode against recomputing"):
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
    e = results["early_exit"]
    (run,) = e["runs"]                                                        # quick: the parity demo, its own length
    rows = run["rows"]
    assert [r["tol"] for r in rows] == list(results["plan"]["early_exit_tols"])
    assert rows[0]["tol"] == 0 and rows[0]["mean_exit_iteration"] == run["max_iters"]
    iters = [r["mean_exit_iteration"] for r in rows]
    assert iters == sorted(iters, reverse=True) and iters[-1] < iters[0]     # a looser tol exits earlier
    assert rows[0]["accuracy"] == 1.0 and rows[0]["agreement_with_full_depth"] == 1.0   # the demo at full depth
    assert all(r["loops_identical"] for r in rows)                            # dense and active-set: the same bits
    for r in rows:
        assert set(r["by_batch"]) == {str(b) for b in results["plan"]["early_exit_batches"]}
        assert all(t["dense_ms"] > 0 and t["active_ms"] > 0 for t in r["by_batch"].values())
    assert e["target"]["agreement"] >= 0.99 and e["target"]["speedup_over_tol0"] > 0
    targets = results["targets"]
    assert [t["target"] for t in targets] == ["ORT speed-up over eager", "sequence slope, window attention",
                                              "ORT peak RSS ratio across T", "bits per packed BitLinear weight",
                                              "decode step speed-up over recomputing", "self-decoder cache bytes across N",
                                              "decode iterations against the whole forward's",
                                              "early-exit speed-up over tol 0", "active-set time at tol 0 over the dense loop's"]
    assert all(isinstance(t["figure"], float) and isinstance(t["met"], bool) for t in targets)


def test_decode_section(quick):
    _, results, _ = quick
    plan, d = results["plan"], results["decode"]
    assert d["max_iters"] == plan["decode_cap"]
    speed = d["speed"]
    assert {(r["batch"], r["seq"]) for r in speed} == {(b, n) for b in plan["decode_batches"] for n in plan["decode_seqs"]}
    for r in speed:
        assert r["decode_steps_timed"] == plan["decode_steps"] and r["recompute_reps"] >= 1
        assert r["ort_decode_step_s"] > 0 and r["eager_decode_step_s"] > 0 and r["ort_recompute_s"] > 0
        assert r["ort_recompute_over_ort_decode"] == pytest.approx(r["ort_recompute_s"] / r["ort_decode_step_s"])
        assert (r["eager_recompute_s"] is None) == (r["batch"] * r["seq"] > plan["decode_eager_recompute_tokens"])
        # exactness, not speed: ORT's decode steps against eager's, and the last against the whole forward
        assert r["decode_iterations_equal"] and r["decode_logits_max_abs_diff"] <= 1e-4, r
        assert r["last_step_vs_recompute_logits_max_abs_diff"] <= 1e-4, r
    cache = d["cache"]
    assert [r["seq"] for r in cache["by_seq"]] == list(plan["decode_cache_seqs"])
    for r in cache["by_seq"]:
        assert r["matches_formula"] and r["self_decoder"] == r["prelude"] + r["core"] > 0
    # the self-decoder's window caches do not grow with N; the global KV does, linearly
    assert len({r["self_decoder"] for r in cache["by_seq"]}) == 1 and cache["self_decoder_ratio"]["value"] == 1.0
    first, last = cache["by_seq"][0], cache["by_seq"][-1]
    assert last["global_kv"] * first["seq"] == first["global_kv"] * last["seq"]
    # the core cache grows with T, linearly; the runtime's prefill holds the same bytes as eager's
    by_iters = cache["by_iters"]
    assert all(r["matches_formula"] for r in by_iters) and cache["ort_equals_eager_by_iters"]
    assert sum("onnxruntime" in r for r in by_iters) >= 2
    assert by_iters[-1]["eager"]["core"] * by_iters[0]["max_iters_cap"] == by_iters[0]["eager"]["core"] * by_iters[-1]["max_iters_cap"]
    # exit means exit: decoding gives every token the whole forward's exit iteration
    its = d["iterations"]
    assert [r["model"] for r in its] == ["reference"] * len(plan["decode_iter_tols"]) + ["demo"]
    for r in its:
        assert r["identical"] and r["relative_difference"] == 0.0, r
    assert its[-1]["early_exit_fraction"] > 0                     # the trained demo exits early


def test_only_runs_the_sections_asked_for(tmp_path):
    proc = subprocess.run([*BENCH, "--quick", "--only", "nonsense", "-o", str(tmp_path / "x")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown section" in proc.stderr and "Traceback" not in proc.stderr


def test_refuses_an_existing_output_without_force(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = subprocess.run([*BENCH, "--quick", "-o", str(tmp_path / "taken")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "exists" in proc.stderr and "Traceback" not in proc.stderr
