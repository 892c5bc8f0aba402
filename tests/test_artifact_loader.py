"""The artifact loader against a hostile or careless hand: paths out of the directory, unlisted external
data, a swap during load, flipped and hand-edited manifests, broken config.json and graphs. Each is
refused with its documented ArtifactError subclass (depthscale-run and -check map them to exit 2), never
another exception; nothing is accepted that changes what the artifact does."""

import json
import os
import shutil
import threading
import time

from pathlib import Path

import numpy as np
import pytest

import depthscale_runtime as dr
from depthscale_runtime.artifact import open_artifact, sha256

IDS = [0, 1, 2, 2, 1, 0, 1]


@pytest.fixture
def art(demo_artifact, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(demo_artifact, dst)
    return dst


def edit_manifest(art, change):
    manifest = json.loads((art / "manifest.json").read_text())
    change(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))


def relist(art, name, target=None):
    """List `name` in the manifest with the sha256 and size of `target` (default: the file itself)."""
    target = Path(target or art / name)
    edit_manifest(art, lambda m: m["files"].update({name: {"sha256": sha256(target), "bytes": target.stat().st_size}}))


def _outside(art):
    relist(art, "../../../../../../etc/passwd", "/etc/passwd")


def _absolute(art):
    relist(art, "/etc/passwd", "/etc/passwd")


def _proc_mem(art):
    edit_manifest(art, lambda m: m["files"].update({"/proc/self/mem": {"sha256": "0" * 64, "bytes": 1}}))


def _alias(art):
    relist(art, "./model.onnx", art / "model.onnx")


def _symlink(art):
    (art / "config.json").rename(art / "real.json")
    (art / "config.json").symlink_to(art / "real.json")


def _fifo(art):
    (art / "config.json").unlink()
    os.mkfifo(art / "config.json")


def _unlisted_external_data(art):
    """model.onnx reads its weights from a copy the manifest does not list (finding 2)."""
    data = (art / "model.onnx").read_bytes().replace(b"weights.bin", b"weights.xyz")
    shutil.copy(art / "weights.bin", art / "weights.xyz")
    (art / "model.onnx").write_bytes(data)
    relist(art, "model.onnx")


def _field(path, value):
    def change(m):
        *parents, last = path
        for p in parents:
            m = m[p]
        if value is DELETE:
            del m[last]
        else:
            m[last] = value
    return lambda art: edit_manifest(art, change)


DELETE = object()


def _config(text):
    def edit(art):
        (art / "config.json").write_text(text)
        relist(art, "config.json")
    return edit


def _graph(data):
    def edit(art):
        (art / "model.onnx").write_bytes(data if isinstance(data, bytes) else data((art / "model.onnx").read_bytes()))
        relist(art, "model.onnx")
    return edit


def _deep(art):
    (art / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)


CASES = {
    # finding 1: paths outside the artifact
    "listed ../../etc/passwd": (_outside, dr.InvalidManifestError),
    "listed /etc/passwd": (_absolute, dr.InvalidManifestError),
    "listed /proc/self/mem": (_proc_mem, dr.InvalidManifestError),
    "./model.onnx alias": (_alias, dr.InvalidManifestError),
    "config.json a symlink": (_symlink, dr.UnsafePathError),
    "config.json a FIFO": (_fifo, dr.UnsafePathError),
    # finding 2: weights from a file the manifest does not list
    "unlisted external data": (_unlisted_external_data, dr.InvalidGraphError),
    # finding 4: fields that drive behaviour, edited by hand
    "defaults.tol changed": (_field(["defaults", "tol"], 0.103), dr.InvalidManifestError),
    "cap raised to 17": (_field(["max_iters_cap"], 17), dr.InvalidManifestError),
    "cap 1e9": (_field(["max_iters_cap"], 10**9), dr.InvalidManifestError),
    "cap a string": (_field(["max_iters_cap"], "16"), dr.InvalidManifestError),
    "max_seq_len raised": (_field(["max_seq_len"], 4096), dr.InvalidManifestError),
    "max_seq_len a string": (_field(["max_seq_len"], "1024"), dr.InvalidManifestError),
    "files a list": (_field(["files"], ["model.onnx"]), dr.InvalidManifestError),
    "files a string": (_field(["files"], "model.onnx"), dr.InvalidManifestError),
    "files null": (_field(["files"], None), dr.InvalidManifestError),
    "parity missing": (_field(["parity"], DELETE), dr.InvalidManifestError),
    "defaults.tol Infinity": (lambda a: (a / "manifest.json").write_text(
        (a / "manifest.json").read_text().replace('"tol": 0.003', '"tol": Infinity', 1)), dr.UnsupportedFormatError),
    "deep nesting": (_deep, dr.InvalidManifestError),
    "manifest not JSON": (lambda a: (a / "manifest.json").write_bytes(b"\xff{"), dr.UnsupportedFormatError),
    # finding 5: config.json and the graphs
    "config a list": (_config("[]"), dr.InvalidConfigError),
    # (a config valid in itself but not this model's: refused as disagreeing with the manifest and graphs)
    "config without vocab_size": (_config('{"d_model": 32}'), (dr.InvalidConfigError, dr.InvalidManifestError)),
    "config vocab_size a string": (lambda a: _config((a / "config.json").read_text().replace(
        '"vocab_size": 3', '"vocab_size": "three"'))(a), dr.InvalidConfigError),
    "config vocab_size 1e6": (lambda a: _config((a / "config.json").read_text().replace(
        '"vocab_size": 3', '"vocab_size": 1000000'))(a), (dr.InvalidConfigError, dr.InvalidManifestError)),
    "config not JSON": (_config("{"), dr.InvalidConfigError),
    "model.onnx empty": (_graph(b""), dr.InvalidGraphError),
    "model.onnx truncated": (_graph(lambda d: d[: len(d) // 2]), dr.InvalidGraphError),
    "model.onnx garbage": (_graph(bytes(range(256)) * 64), dr.InvalidGraphError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_artifact_is_refused_with_its_error(art, case):
    edit, error = CASES[case]
    edit(art)
    with pytest.raises(error):
        dr.load(art)


def test_one_bit_flips_of_the_manifest_change_nothing_that_loads(art):
    """Every 97th bit of manifest.json flipped, one at a time: each load is refused with an ArtifactError,
    or (a flip in an informational field: versions, timings, reports) behaves as the original: same cap,
    lengths, defaults, precision, status, graphs and files."""
    original = (art / "manifest.json").read_bytes()
    reference = open_artifact(art)
    driving = lambda a: {k: a.manifest[k] for k in ("max_iters_cap", "max_seq_len", "defaults", "precision",
                                                     "status", "graphs", "files")}
    accepted = refused = 0
    for bit in range(0, len(original) * 8, 97):
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        (art / "manifest.json").write_bytes(bytes(data))
        try:
            flipped = open_artifact(art)
        except dr.ArtifactError:
            refused += 1
            continue
        accepted += 1
        assert driving(flipped) == driving(reference), bit
    print(f"manifest bit flips: {refused} refused, {accepted} accepted with behaviour unchanged")
    assert refused > accepted > 0


def swap_race(art, name: str, altered: bytes, load, loads: int = 12, seconds: float = 10):
    """While a thread swaps `name` back and forth with `altered` bytes, load the artifact repeatedly:
    every load must be refused (ArtifactError) or run exactly what the original runs. Returns
    (loaded, refused)."""
    expected = load().run(IDS).logits
    good, bad = art.parent / "good.bin", art.parent / "bad.bin"
    shutil.copy(art / name, good)
    bad.write_bytes(altered)
    stop = threading.Event()

    def swap():
        n = 0
        while not stop.is_set() and n < 100_000:
            shutil.copy(bad if n % 2 else good, art / "swap.tmp")
            os.replace(art / "swap.tmp", art / name)
            n += 1

    swapper = threading.Thread(target=swap)
    swapper.start()
    loaded = refused = 0
    try:
        deadline = time.monotonic() + seconds
        while loaded + refused < loads and time.monotonic() < deadline:
            try:
                rt = load()
            except dr.ArtifactError:
                refused += 1
                continue
            loaded += 1
            assert np.array_equal(rt.run(IDS).logits, expected)
    finally:
        stop.set()
        swapper.join()
    print(f"swap race on {name}: {loaded} loads ran the original bytes, {refused} refused")
    assert loaded + refused >= 5 and refused >= 1
    return loaded, refused


def test_a_swap_during_load_never_runs_unverified_bytes(art):
    """Finding 3: model.onnx swapped with another graph during load (it used to be hashed, then read
    again by ONNX Runtime: 6 of 80 loads ran the other graph)."""
    data = bytearray((art / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    swap_race(art, "model.onnx", bytes(data), lambda: dr.load(art))
