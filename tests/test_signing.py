"""Signed artifacts (docs/artifact.md, "Signing"): a signed artifact loads with the right public key and
is refused, with SignatureError, when any byte of any file changes (the manifest and the signature
included), a file is added or removed, the signature is missing, or the key is another one."""

import shutil
import subprocess
import sys

import pytest

import depthscale_runtime as dr

pytest.importorskip("model_signing", reason="the 'sign' extra is not installed")

from depthscale_runtime.signing import SIGNATURE, signer  # noqa: E402
from test_artifact_loader import swap_race  # noqa: E402

RUN = [sys.executable, "-m", "depthscale_runtime.cli"]


def keypair(directory, name, curve):
    """An elliptic-curve key pair made with openssl, as docs/artifact.md says: (private, public) PEM paths."""
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    subprocess.run(["openssl", "ecparam", "-name", curve, "-genkey", "-noout", "-out", str(private)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)], check=True,
                   capture_output=True)
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"ours": keypair(d, "ours", "prime256v1"), "theirs": keypair(d, "theirs", "secp384r1")}


@pytest.fixture(scope="module")
def signed(demo_artifact, keys, tmp_path_factory):
    """A copy of the demo artifact, signed as `depthscale-export --sign` signs its staging directory."""
    out = tmp_path_factory.mktemp("signed") / "demo-onnx"
    shutil.copytree(demo_artifact, out)
    signer(keys["ours"][0])(out)
    return out


def test_signed_artifact_loads_with_its_key_and_runs(signed, keys):
    rt = dr.load(signed, verify=keys["ours"][1])
    assert rt.run([0, 1, 2, 2, 1]).logits.shape == (5, 3)
    proc = subprocess.run([*RUN, str(signed), "--ids", "0,1,2", "--verify", str(keys["ours"][1]), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_each_one_byte_change_of_each_file_is_refused(signed, keys, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(signed, art)
    files = sorted(p for p in art.rglob("*") if p.is_file())
    assert {p.relative_to(art).as_posix() for p in files} >= {"manifest.json", "model.onnx", "weights.bin",
                                                             "config.json", SIGNATURE}
    tried = 0
    for path in files:
        original = path.read_bytes()
        for where in sorted({0, len(original) // 2, len(original) - 1}):
            data = bytearray(original)
            data[where] ^= 0x01
            path.write_bytes(bytes(data))
            with pytest.raises(dr.SignatureError):
                dr.load(art, verify=keys["ours"][1])
            tried += 1
        path.write_bytes(original)
    assert tried >= 3 * len(files) - 2
    dr.load(art, verify=keys["ours"][1])                      # restored: loads again


def test_unsigned_added_removed_and_another_key_are_refused(demo_artifact, signed, keys, tmp_path):
    _, public = keys["ours"]
    with pytest.raises(dr.SignatureError, match="not signed"):
        dr.load(demo_artifact, verify=public)
    with pytest.raises(dr.SignatureError, match="does not verify"):
        dr.load(signed, verify=keys["theirs"][1])
    art = tmp_path / "art"
    shutil.copytree(signed, art)
    (art / "reports" / "extra.json").write_text("{}")
    with pytest.raises(dr.SignatureError, match="not signed: reports/extra.json"):
        dr.load(art, verify=public)
    (art / "reports" / "extra.json").unlink()
    (art / "link").symlink_to(art / "config.json")
    with pytest.raises(dr.SignatureError, match="not signed: link"):
        dr.load(art, verify=public)
    (art / "link").unlink()
    (art / "reports" / "parity.json").unlink()                 # listed and signed: gone
    with pytest.raises(dr.ArtifactError, match="parity.json"):
        dr.load(art, verify=public)
    shutil.copytree(signed, art, dirs_exist_ok=True)
    signer(keys["theirs"][0])(art)                             # re-signed by someone else
    with pytest.raises(dr.SignatureError, match="does not verify"):
        dr.load(art, verify=public)
    dr.load(art)                                               # without verify=, hashes only: loads


def test_unusable_keys_are_refused_in_one_line(signed, keys, tmp_path):
    (tmp_path / "junk.pem").write_text("not a key")
    for key, message in ((tmp_path / "nope.pem", "No such file"), (tmp_path / "junk.pem", "cannot verify"),
                         (keys["ours"][0], "cannot verify")):            # a private key where a public one goes
        with pytest.raises(dr.SignatureError, match=message):
            dr.load(signed, verify=key)
        proc = subprocess.run([*RUN, str(signed), "--ids", "0", "--verify", str(key)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    with pytest.raises(dr.SignatureError, match="cannot sign"):
        signer(keys["ours"][1])                                # a public key where a private one goes


def test_a_swap_during_a_verified_load_never_runs_unverified_bytes(signed, keys, tmp_path):
    """Finding 3's race, with a signature: weights.bin swapped back and forth with altered bytes during
    loads; each load is refused or runs exactly the signed artifact."""
    art = tmp_path / "art"
    shutil.copytree(signed, art)
    data = bytearray((art / "weights.bin").read_bytes())
    for i in range(0, len(data), 7):
        data[i] ^= 0x40
    swap_race(art, "weights.bin", bytes(data), lambda: dr.load(art, verify=keys["ours"][1]))
