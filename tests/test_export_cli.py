"""depthscale-export as a real subprocess: the artifact, the gate, exit codes."""

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys

import onnx
import pytest

import depthscale_runtime as dr
from depthscale import demo_checkpoint
from depthscale_export.graph.ops import BODY_HELPERS

DEMO = str(demo_checkpoint())
CLI = [sys.executable, "-m", "depthscale_export.cli"]


def run_cli(*args, env=None, timeout=600):
    """The CLI as a subprocess, with --no-engines (TensorRT-RTX builds are tests/test_tensorrt_rtx.py's;
    the tests not about the graph's form add --dense-loop: one Loop exports faster);
    env adds variables (a PYTHONPATH given goes in front of the caller's)."""
    args = (*args, "--no-engines") if args and args[0] == DEMO else args
    env = dict(env or {})
    if "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The demo, exported once with the acceptance sample grid."""
    out = tmp_path_factory.mktemp("export") / "demo-onnx"
    proc = run_cli(DEMO, "-o", out, "--shapes", "1x1,1x7,1x257,3x1,3x7,3x257", "--iters", "0,1,4,16",
                   "--tols", "0,0.003", "--json", "-v")
    return out, proc


def test_demo_exports_and_passes(artifact):
    out, proc = artifact
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "passed" and report["artifact"] == str(out)
    for stage in ("load", "export", "functions", "check", "parity", "write"):
        assert f"[depthscale-export] {stage} done in" in proc.stderr
    assert "PASSED" in proc.stderr and "decoding 4/4 samples passed (416 tokens decoded one at a time" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "decode.onnx", "manifest.json", "model.onnx",
                                                      "prefill.onnx", "reports", "weights.bin"]
    assert "tensorrt-rtx engines skipped: not asked for (engines=False)" in proc.stderr


def test_manifest_records_everything_and_hashes_match(artifact):
    out, _ = artifact
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "passed" and m["parity"]["passed"]
    assert set(m["versions"]) >= {"depthscale", "torch", "onnx", "onnxruntime"}
    assert m["opset"] == 18 and m["custom_domain"] == {"domain": "depthscale", "version": 1}
    forward = m["graphs"]["model"]
    assert [i["name"] for i in forward["inputs"]] == ["input_ids", "lengths", "max_iters", "tol"]
    assert forward["inputs"][0]["shape"] == ["batch", "seq"] and forward["outputs"][0]["shape"][:2] == ["batch", "seq"]
    assert [i["shape"] for i in forward["inputs"][1:]] == [["batch"]] * 3
    decode = m["graphs"]["decode"]
    assert [o["name"] for o in decode["outputs"]] == ["logits", "iterations", "prelude_kv", "core_kv", "global_kv"]
    assert decode["inputs"][5]["shape"] == ["batch", 1, 16, 2, 2, 3, 16]     # [B, L_c, T cap, k|v, Hkv, window-1, dh]
    assert decode["inputs"][6]["shape"] == ["batch", 2, 2, "capacity", 16]
    assert m["decode"] == {"available": True} and m["parity"]["decode"]["passed"]
    assert m["max_seq_len"] == 1024 and m["command"].startswith("depthscale-export ")
    readiness = m["tensorrt_readiness"]
    assert readiness["passed"] and set(readiness["graphs"]) == {"model", "prefill", "decode"}
    assert all(len(r["checks"]) == 10 for r in readiness["graphs"].values())
    assert {name for name in m["files"] if not name.startswith("engines/")} == {
        "model.onnx", "prefill.onnx", "decode.onnx", "weights.bin", "config.json", "reports/parity.json"}
    import hashlib
    for name, entry in m["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]


def test_ort_matches_eager_across_the_grid(artifact):
    out, _ = artifact
    report = json.loads((out / "reports" / "parity.json").read_text())
    rows = report["samples"]
    assert {(r["batch"], r["seq"]) for r in rows} == {(b, n) for b in (1, 3) for n in (1, 7, 257)}
    assert {r["max_iters"] for r in rows} == {0, 1, 4, 16} and {r["tol"] for r in rows} == {0.0, 0.003}
    assert all(r["passed"] and r["iterations_equal"] for r in rows)
    assert any(r["early_exit"] for r in rows if r["tol"] > 0)
    assert all(r["top1_agreement"] == 1.0 for r in rows)
    assert all(op["passed"] for op in report["ops"])
    assert all(op["bit_exact"] for op in report["ops"] if "BitLinear" in op["op"])
    assert report["per_iteration"]["first_diverging_iteration"] is None
    s = report["summary"]
    assert s["would_pass_with"]["atol"] == max(r["logits_max_abs_err"] for r in rows)


@pytest.mark.parametrize("graph,attention", [("model", "WindowAttention"), ("prefill", "WindowAttention"),
                                             ("decode", "CachedAttention")])
def test_each_graph_has_its_loops_and_custom_nodes_with_functions(artifact, graph, attention):
    """The whole-pass and prefill graphs: a dense Loop (WindowAttention), then an active-set one
    (CachedAttention over the running tokens' blocks); the decode graph: one dense Loop."""
    out, _ = artifact
    model = onnx.load(out / f"{graph}.onnx")
    loops = [n for n in model.graph.node if n.op_type == "Loop"]
    attentions = [attention, "CachedAttention"] if graph != "decode" else [attention]
    assert len(loops) == len(attentions)
    for loop, loop_attention in zip(loops, attentions):
        body = next(a.g for a in loop.attribute if a.name == "body")
        custom = [n for n in body.node if n.domain == "depthscale"]
        assert {n.op_type for n in custom} == {"BitLinear", "GatedBitLinear", loop_attention}
        for n in custom:
            attrs = {a.name: a.s for a in n.attribute if a.type == onnx.AttributeProto.STRING}
            assert attrs == {"plugin_namespace": b"depthscale", "plugin_version": b"1"}
    helpers = BODY_HELPERS if attention == "WindowAttention" else ("UnpackTernary", "QuantizedProduct", "GatedProduct")
    outside = [n.op_type for n in model.graph.node if n.domain == "depthscale"]   # prelude, coda, then the head
    assert outside[-1] == "ExactLinear" and outside.count("ExactLinear") == 1
    assert set(outside[:-1]) == {"BitLinear", "GatedBitLinear", attention}
    assert {(f.domain, f.name) for f in model.functions} == {   # the ops, and the helpers their bodies call
        ("depthscale", name) for name in ("BitLinear", "GatedBitLinear", *attentions, "ExactLinear", *helpers)}


def test_the_graphs_share_one_copy_of_the_weights(artifact):
    out, _ = artifact
    external = {}
    for graph in ("model", "prefill", "decode"):
        for init in onnx.load(out / f"{graph}.onnx", load_external_data=False).graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                entry = {e.key: e.value for e in init.external_data}
                external.setdefault(init.name, set()).add((entry["location"], entry["offset"], entry["length"]))
    packed = [name for name in external if name.endswith("w_packed")]
    assert packed and all(len(places) == 1 for places in external.values())       # one place per tensor
    assert {loc for places in external.values() for loc, _, _ in places} == {"weights.bin"}
    stored = sum(int(length) for _, _, length in {p for places in external.values() for p in places})
    assert stored <= (out / "weights.bin").stat().st_size < stored + 64 * len(external)


PERTURB = '''
import numpy as np, onnx_ir as ir
def scale_core_gamma(model):
    v = next(v for n, v in model.graph.initializers.items() if "core" in n and n.endswith("ffn.w_out.gamma"))
    v.const_value = ir.tensor(np.asarray(v.const_value.numpy() * 1.5, dtype=np.float32))
'''


def test_planted_mismatch_fails_the_gate_with_exit_1(tmp_path):
    (tmp_path / "perturb.py").write_text(PERTURB)
    out = tmp_path / "bad"
    proc = run_cli(DEMO, "-o", out, "--shapes", "2x9", "--iters", "4", "--tols", "0", "--no-decode",
                   "--dense-loop", "--graph-pass", "perturb:scale_core_gamma", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "FAILED" in proc.stderr and "first diverging iteration: 1" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["parity"]["first_diverging_iteration"] == 1
    assert json.loads(proc.stdout)["status"] == "failed"


PERTURB_DECODE = PERTURB + '''
def scale_core_gamma_in_decode(model):
    if model.graph.name == "decode":
        scale_core_gamma(model)
'''


def test_planted_defect_in_the_decode_graph_fails_and_names_the_step(tmp_path):
    (tmp_path / "perturb.py").write_text(PERTURB_DECODE)
    out = tmp_path / "bad"
    proc = run_cli(DEMO, "-o", out, "--shapes", "1x5", "--iters", "4", "--tols", "0", "--decode-shapes", "2x5+4",
                   "--dense-loop", "--graph-pass", "perturb:scale_core_gamma_in_decode", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "parity 1/1 samples passed" in proc.stderr                      # the forward graph is untouched
    assert "first diverging: decode step 0, iteration 1" in proc.stderr and "FAILED" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["parity"]["decode"]["first_diverging"] == {"where": "decode step 0", "decode_step": 0, "iteration": 1}


def test_failing_graph_pass_exits_3_and_writes_nothing(tmp_path):
    (tmp_path / "broken.py").write_text("def explode(model):\n    raise RuntimeError('boom')\n")
    out = tmp_path / "out"
    proc = run_cli(DEMO, "-o", out, "--dense-loop", "--graph-pass", "broken:explode", "--no-decode", "-q",
                   env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 3 and "graph pass explode failed on model.onnx: RuntimeError: boom" in proc.stderr
    assert not out.exists()
    proc = run_cli(DEMO, "-o", out, "--graph-pass", "no_such_module:f", "-q")
    assert proc.returncode == 2 and "cannot load it" in proc.stderr


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["missing", "text", "pickle"])
def test_bad_input_files_exit_2(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"format": "depthscale", "state_dict": Payload()}))
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, str(path), "-o", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2
    expected = {"missing": "no such checkpoint", "text": "not a DepthScale checkpoint",
                "pickle": "arbitrary code"}[kind]
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "pwned").exists()


def test_existing_out_without_force_exits_2_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    proc = run_cli(DEMO, "-o", out, "-q")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"


def test_force_replaces_and_bad_usage_exits_2(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")                 # an earlier artifact (--force replaces only those)
    (out / "old.txt").write_text("old")
    signing = importlib.util.find_spec("model_signing") is not None     # the "sign" extra (CI installs it)
    if signing:
        from test_signing import keypair
        key, public = keypair(tmp_path, "key", "prime256v1")
    proc = run_cli(DEMO, "-o", out, "--force", "--max-iters-cap", "4", "--shapes", "1x3", "--iters", "2",
                   "--decode-shapes", "1x2+2", "--dense-loop", "-q", *(["--sign", key] if signing else []))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "old.txt").exists() and (out / "manifest.json").exists()
    if signing:                                               # signed in the staging directory, before the rename
        assert (out / "model.sig").is_file() and dr.load(out, verify=public).run([0, 1]).logits.shape == (2, 3)
        bad = run_cli(DEMO, "-o", tmp_path / "y", "--sign", public, "-q")    # a public key: refused before any work
        assert bad.returncode == 2 and "cannot sign" in bad.stderr and not (tmp_path / "y").exists()
    assert json.loads((out / "manifest.json").read_text())["max_iters_cap"] == 4   # (size against the cap: test_export_graph.py)
    assert proc.stderr == ""                                  # -q is quiet
    assert run_cli(DEMO, "--opset", "12").returncode == 2
    assert run_cli(DEMO, "--shapes", "1x0", "-o", tmp_path / "x").returncode == 2
    assert "exit codes" in run_cli("--help").stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, sig):
    out = tmp_path / "out"
    # SIGINT at its default disposition in the child: a shell starts background jobs (CI's, say) with
    # SIGINT ignored, and a child inherits that, which made this test see exit 0 under such a runner
    proc = subprocess.Popen([*CLI, DEMO, "-o", str(out), "--shapes", "3x257", "--iters", "16", "--no-decode",
                             "--no-engines"],
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stderr:                                  # wait until the staging directory exists
        if "parity ..." in line:
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    if sig == signal.SIGINT:                                  # one line, no traceback
        assert "interrupted; nothing written" in rest and "Traceback" not in rest
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".out.tmp-") and not (p / "manifest.json").exists() for p in leftovers)
    if sig == signal.SIGINT:
        assert leftovers == []                                # cleaned up on Ctrl-C


def test_force_never_replaces_the_input_or_what_is_not_an_artifact(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(open(DEMO, "rb").read())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    work = tmp_path / "work"
    work.mkdir()
    for target, expected in ((ckpt, "own input"), (tmp_path, "own input"), (mine, "not a DepthScale artifact"),
                             (mine / "notes.txt", "not a directory"), (".", "working directory"),
                             ("/proc/self/art", "cannot write under /proc/")):
        proc = subprocess.run([*CLI, str(ckpt), "-o", str(target), "--force"], capture_output=True, text=True,
                              timeout=300, cwd=work)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, (target, proc.stderr)
    assert ckpt.read_bytes() == open(DEMO, "rb").read() and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model.pt", "work"] and not any(work.iterdir())


def test_an_output_directory_gets_the_mode_mkdir_gives(tmp_path):
    """Not mkdtemp's 0700: an artifact shared with other users must be readable by them."""
    from depthscale.atomic_dir import staging_dir
    old = os.umask(0o022)
    try:
        with staging_dir(tmp_path / "out", replace=False) as tmp:
            (tmp / "manifest.json").write_text("{}")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o755


def test_a_killed_exports_staging_directory_is_removed_by_the_next(tmp_path):
    from depthscale.atomic_dir import staging_dir
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-x1"             # as a SIGKILLed export leaves it
    stale.mkdir()
    (stale / "model.onnx").write_text("half")
    live = tmp_path / f".out.tmp-{os.getpid()}-x2"           # a running export's: left alone
    live.mkdir()
    with staging_dir(tmp_path / "out", replace=False) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]
