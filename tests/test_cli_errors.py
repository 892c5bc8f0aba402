"""Every CLI's error paths, as real subprocesses: each bad input gets one line on stderr naming the
problem (never a traceback) and its documented exit code (2 for bad usage or bad input in every CLI; see
each --help and docs/export.md). The cases run a few at a time (each starts a Python with torch), once per
module; each is its own test."""

import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from depthscale import demo_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(demo_checkpoint())
EXPORT = [sys.executable, "-m", "depthscale_export.cli"]
CHECK = [sys.executable, "-m", "depthscale_export.check"]
RUN = [sys.executable, "-m", "depthscale_runtime.cli"]
TRAIN = [sys.executable, "-m", "depthscale.train"]
BENCH = [sys.executable, str(ROOT / "tools" / "bench.py")]
TINY = ["--steps", "1", "--batch-size", "1", "--eval-every", "1", "--d-model", "8", "--n-heads", "2",
        "--n-kv-heads", "1", "--d-ff", "8", "--max-iters", "2", "-q"]
NOT_WRITABLE = "/proc/self/not-here/out"       # root can write almost anywhere; /proc it cannot
# without the "sign" extra, --sign and --verify are refused saying what to install
SIGNING = importlib.util.find_spec("model_signing") is not None
NO_SIGNING = "model-signing"

# (name, command, expected exit code, a fragment of the one stderr line). In commands, ART is the demo
# artifact, CKPT the demo checkpoint, TMP a scratch directory of the module, TEXT a text file, FIFO a FIFO.
CASES = [
    # depthscale-run
    ("run: no such artifact", [*RUN, "TMP/nowhere", "--ids", "0"], 2, "no such artifact directory"),
    ("run: artifact is a file", [*RUN, "TEXT", "--ids", "0"], 2, "cannot open the artifact directory"),
    ("run: directory that is not an artifact", [*RUN, "TMP", "--ids", "0"], 2, "no manifest.json"),
    ("run: manifest is a FIFO", [*RUN, "TMP/fifo-art", "--ids", "0"], 2, "not a regular file"),
    ("run: manifest is a list", [*RUN, "TMP/list-art", "--ids", "0"], 2, "manifest"),
    ("run: ids not integers", [*RUN, "ART", "--ids", "a,b"], 2, "--ids must be comma-separated integers"),
    ("run: empty ids", [*RUN, "ART", "--ids", ""], 2, "--ids"),
    ("run: id out of vocabulary", [*RUN, "ART", "--ids", "0,9"], 2, "input_ids must be in [0, 3)"),
    ("run: too many tokens", [*RUN, "ART", "--ids", ",".join(["1"] * 5_000)], 2, "input_ids seq must be in [1, "),
    ("run: max-iters negative", [*RUN, "ART", "--ids", "0", "--max-iters", "-1"], 2, "max_iters"),
    ("run: max-iters over the cap", [*RUN, "ART", "--ids", "0", "--max-iters", "17"], 2, "max_iters"),
    ("run: max-iters not an int", [*RUN, "ART", "--ids", "0", "--max-iters", "x"], 2, "invalid int value"),
    ("run: tol nan", [*RUN, "ART", "--ids", "0", "--tol", "nan"], 2, "tol"),
    ("run: tol inf", [*RUN, "ART", "--ids", "0", "--tol", "inf"], 2, "tol"),
    ("run: tol negative", [*RUN, "ART", "--ids", "0", "--tol", "-1"], 2, "tol"),
    ("run: text outside the tokenizer", [*RUN, "ART", "--text", "012x"], 2, "x"),
    ("run: generate 0", [*RUN, "ART", "--ids", "0", "--generate", "0"], 2, "max_new_tokens"),
    ("run: generate past max_seq_len", [*RUN, "ART", "--ids", "0", "--generate", "100000"], 2, "max_seq_len"),
    ("run: temperature negative", [*RUN, "ART", "--ids", "0", "--generate", "2", "--temperature", "-1"], 2,
     "temperature"),
    ("run: top-p over 1", [*RUN, "ART", "--ids", "0", "--generate", "2", "--temperature", "1", "--top-p", "2"], 2,
     "top_p"),
    ("run: top-k 0", [*RUN, "ART", "--ids", "0", "--generate", "2", "--temperature", "1", "--top-k", "0"], 2,
     "top_k"),
    ("run: stop ids not integers", [*RUN, "ART", "--ids", "0", "--generate", "2", "--stop", "a"], 2, "--stop"),
    ("run: stop id out of vocabulary", [*RUN, "ART", "--ids", "0", "--generate", "2", "--stop", "7"], 2,
     "stop_ids"),
    ("run: tensorrt unavailable", [*RUN, "ART", "--ids", "0", "--backend", "tensorrt"], 2, "tensorrt"),
    ("run: verify key missing", [*RUN, "ART", "--ids", "0", "--verify", "TMP/nope.pem"], 2,
     "nope.pem" if SIGNING else NO_SIGNING),
    ("run: no arguments", [*RUN], 2, "required"),
    ("run: unknown flag", [*RUN, "ART", "--ids", "0", "--bogus"], 2, "unrecognized arguments"),
    # depthscale-check
    ("check: no such artifact", [*CHECK, "TMP/nowhere", "--against", "CKPT"], 2, "no such artifact directory"),
    ("check: no such checkpoint", [*CHECK, "ART", "--against", "TMP/nope.pt"], 2, "no such checkpoint"),
    ("check: checkpoint is a FIFO", [*CHECK, "ART", "--against", "FIFO"], 2, "not a regular file"),
    ("check: another model's checkpoint", [*CHECK, "ART", "--against", "SUM"], 2, "config"),
    ("check: hostile pickle", [*CHECK, "ART", "--against", "TMP/bytearray.pt"], 2, "refused"),
    ("check: unsigned with --verify", [*CHECK, "ART", "--against", "CKPT", "--verify", "TMP/pub.pem"], 2,
     "not signed" if SIGNING else NO_SIGNING),
    # depthscale-export
    ("export: no such checkpoint", [*EXPORT, "TMP/nope.pt", "-o", "TMP/o1"], 2, "no such checkpoint"),
    ("export: checkpoint is a directory of other things", [*EXPORT, "TMP/empty", "-o", "TMP/o2"], 2,
     "not a DepthScale checkpoint directory"),
    ("export: hostile pickle", [*EXPORT, "TMP/bytearray.pt", "-o", "TMP/o4"], 2, "refused"),
    ("export: config with a bad field", [*EXPORT, "TMP/badcfg", "-o", "TMP/o5"], 2, "invalid config"),
    ("export: opset out of range", [*EXPORT, "CKPT", "-o", "TMP/o6", "--opset", "12"], 2, "opset"),
    ("export: cap too large", [*EXPORT, "CKPT", "-o", "TMP/o7", "--max-iters-cap", "100000"], 2, "max_iters cap"),
    ("export: shapes malformed", [*EXPORT, "CKPT", "-o", "TMP/o9", "--shapes", "1x"], 2, "shapes must look like"),
    ("export: iters negative", [*EXPORT, "CKPT", "-o", "TMP/o13", "--iters", "-5"], 2, "iters"),
    ("export: tols nan", [*EXPORT, "CKPT", "-o", "TMP/o14", "--tols", "nan"], 2, "tols"),
    ("export: atol negative", [*EXPORT, "CKPT", "-o", "TMP/o16", "--atol", "-1"], 2, "atol"),
    ("export: seed negative", [*EXPORT, "CKPT", "-o", "TMP/o18", "--seed", "-1"], 2, "seed"),
    ("export: unknown rtx target", [*EXPORT, "CKPT", "-o", "TMP/o19", "--rtx-targets", "sm99"], 2, "sm99"),
    ("export: output not writable", [*EXPORT, "CKPT", "-o", NOT_WRITABLE], 2, "cannot write under"),
    ("export: signing key missing", [*EXPORT, "CKPT", "-o", "TMP/o23", "--sign", "TMP/nope.pem"], 2,
     "nope.pem" if SIGNING else NO_SIGNING),
    # depthscale-train
    ("train: unknown task", [*TRAIN, "--task", "nope", "-o", "TMP/t1.pt", *TINY], 2, "unknown task"),
    ("train: d-model 0", [*TRAIN, "-o", "TMP/t2.pt", *TINY, "--d-model", "0"], 2, "d_model"),
    ("train: oversized model", [*TRAIN, "-o", "TMP/t3.pt", *TINY, "--core-layers", "1000000"], 2, "core_layers"),
    ("train: lr nan", [*TRAIN, "-o", "TMP/t5.pt", *TINY, "--lr", "nan"], 2, "lr"),
    ("train: eval-every 0", [*TRAIN, "-o", "TMP/t8.pt", *TINY, "--eval-every", "0"], 2, "eval-every"),
    ("train: threads 0", [*TRAIN, "-o", "TMP/t10.pt", *TINY, "--threads", "0"], 2, "threads"),
    ("train: seq-len over max-seq-len", [*TRAIN, "-o", "TMP/t12.pt", *TINY, "--seq-len", "600",
                                         "--max-seq-len", "64"], 2, "seq-len"),
    ("train: output not writable", [*TRAIN, "-o", NOT_WRITABLE + ".pt", *TINY], 2, "cannot write under"),
    ("train: output is a directory of other things", [*TRAIN, "-o", "TMP", *TINY], 2, "not a DepthScale checkpoint"),
    # tools/bench.py
    ("bench: unknown section", [*BENCH, "--only", "nope", "-o", "TMP/b1"], 2, "unknown section"),
    ("bench: output not writable", [*BENCH, "-o", NOT_WRITABLE], 2, "cannot write under"),
    ("bench: output is a file", [*BENCH, "-o", "TEXT", "--force"], 2, "not a directory"),
    ("bench: output holds other things", [*BENCH, "-o", "TMP/mine", "--force"], 2, "not a bench output"),
]


def _prepare(tmp: Path, artifact: Path) -> dict:
    from conftest import small_model
    from depthscale import save_checkpoint
    from test_checkpoint import hostile_checkpoints
    (tmp / "text.txt").write_text("not a checkpoint\n")
    os.mkfifo(tmp / "fifo")
    (tmp / "empty").mkdir()
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep me")
    hostile = tmp / "hostile"
    hostile.mkdir()
    shutil.copy(hostile_checkpoints(hostile)["bytearray(3e9) in a torch.save zip"], tmp / "bytearray.pt")
    bad = save_checkpoint(small_model(), tmp / "badcfg")
    (bad / "config.json").write_text((bad / "config.json").read_text().replace('"d_model": 32', '"d_model": -4'))
    for name, content in (("fifo-art", None), ("list-art", "[]")):
        (tmp / name).mkdir()
        if content is None:
            os.mkfifo(tmp / name / "manifest.json")
        else:
            (tmp / name / "manifest.json").write_text(content)
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(tmp / "key.pem")],
                   check=True)
    subprocess.run(["openssl", "ec", "-in", str(tmp / "key.pem"), "-pubout", "-out", str(tmp / "pub.pem")],
                   check=True, capture_output=True)
    return {"ART": str(artifact), "CKPT": DEMO, "SUM": str(demo_checkpoint("sum")), "TEXT": str(tmp / "text.txt"),
            "FIFO": str(tmp / "fifo")}


def _command(command: list[str], tmp: Path, names: dict) -> list[str]:
    out = []
    for arg in command:
        for name, value in names.items():
            if arg == name:
                arg = value
        out.append(arg.replace("TMP", str(tmp)) if arg.startswith("TMP") else arg)
    return out


@pytest.fixture(scope="module")
def results(demo_artifact, tmp_path_factory):
    """Every case run once, three at a time: {name: CompletedProcess}."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    names = _prepare(tmp, demo_artifact)
    work = tmp / "work"
    work.mkdir()

    def one(case):
        name, command, _, _ = case
        try:
            return name, subprocess.run(_command(command, tmp, names), capture_output=True, text=True,
                                        timeout=300, cwd=work, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            return name, e

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(pool.map(one, CASES))
    done["_tmp"] = tmp
    return done


@pytest.mark.parametrize("name, command, code, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_its_exit_code(results, name, command, code, fragment):
    proc = results[name]
    assert not isinstance(proc, subprocess.TimeoutExpired), f"{name}: hung"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-2000:]
    # the one line; before it, only the export's stage progress or argparse's usage
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("[depthscale-export] ")]
    assert len(lines) == 1 or (lines[0].startswith("usage:") and len(lines) <= 40), proc.stderr
    assert fragment in lines[-1], lines[-1]


def test_nothing_was_written(results):
    """No case made an output, and what was there is untouched."""
    tmp = results["_tmp"]
    made = sorted(p.name for p in tmp.iterdir() if p.name.startswith(("o", "t", "b")) and p.name[1:2].isdigit())
    assert made == []
    assert not any((tmp / "empty").iterdir()) and (tmp / "mine" / "notes.txt").read_text() == "keep me"
    assert (tmp / "text.txt").read_text() == "not a checkpoint\n"
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]      # no staging directories left
