import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import small_model
from depthscale import CheckpointError, load_checkpoint, save_checkpoint


def outputs(model, ids):
    with torch.no_grad():
        out = model(ids, max_iters=4, tol=0.0)
    return out.logits, out.iterations


@pytest.mark.parametrize("name", ["model.pt", "model_dir"])
@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "mixer": "retention", "reason_tokens": 1}])
def test_round_trip_is_exact(tmp_path, name, overrides):
    model = small_model(**overrides)
    path = save_checkpoint(model, tmp_path / name)
    assert path.is_file() == name.endswith(".pt")
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    ids = torch.randint(0, 17, (2, 7))
    for a, b in zip(outputs(model, ids), outputs(loaded, ids)):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == [name]            # no temporary files left


def test_pt_is_plain_data(tmp_path):
    save_checkpoint(small_model(), tmp_path / "m.pt")
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    assert obj["format"] == "depthscale" and obj["format_version"] == 1
    assert set(obj) == {"format", "format_version", "config", "state_dict"}


def test_saving_a_packed_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="packed"):
        save_checkpoint(small_model().packed(), tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_never_runs(tmp_path, how):
    target = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    obj = {"format": "depthscale", "format_version": 1, "config": {}, "state_dict": {"x": Payload(target)}}
    if how == "torch.save":
        torch.save(obj, bad)
    else:
        bad.write_bytes(pickle.dumps(obj))
    assert not target.exists()
    with pytest.raises(CheckpointError, match="refused.*arbitrary code"):
        load_checkpoint(bad)
    assert not target.exists()


def test_truncated_pt(tmp_path):
    good = save_checkpoint(small_model(), tmp_path / "m.pt")
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)


@pytest.mark.parametrize("content", [b"hello, I am text\n", b"", bytes(range(256)) * 4])
def test_not_a_checkpoint_file(tmp_path, content):
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(f.name)):
        load_checkpoint(f)


def test_special_files_and_compressed_archives_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint("/dev/zero")                       # used to grow until the memory cap
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(fifo)                              # used to hang
    good = save_checkpoint(small_model(), tmp_path / "m.pt")
    bomb = tmp_path / "bomb.pt"                            # the same archive, its entries deflated
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match="refused: compressed entries"):
        load_checkpoint(bomb)


def test_torch_file_that_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "x.pt"
    torch.save({"weight": torch.zeros(3)}, f)
    with pytest.raises(CheckpointError, match="not a DepthScale checkpoint"):
        load_checkpoint(f)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def edited(tmp_path, edit):
    path = save_checkpoint(small_model(), tmp_path / "m.pt")
    obj = torch.load(path, weights_only=True)
    edit(obj)
    torch.save(obj, path)
    return path


def test_unknown_format_version(tmp_path):
    path = edited(tmp_path, lambda o: o.update(format_version=99))
    with pytest.raises(CheckpointError, match="unknown format_version 99"):
        load_checkpoint(path)


def test_missing_key(tmp_path):
    path = edited(tmp_path, lambda o: o["state_dict"].pop("inject.weight"))
    with pytest.raises(CheckpointError, match="missing keys: inject.weight"):
        load_checkpoint(path)


def test_unexpected_key(tmp_path):
    path = edited(tmp_path, lambda o: o["state_dict"].update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected keys: extra.weight"):
        load_checkpoint(path)


def test_wrong_shape(tmp_path):
    path = edited(tmp_path, lambda o: o["state_dict"].update({"head.weight": torch.zeros(17, 33)}))
    with pytest.raises(CheckpointError, match=r"head.weight has shape \(17, 33\), the config needs \(17, 32\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("odd, named", [(lambda w: w.to_sparse(), "builds torch._utils._rebuild_sparse_tensor"),
                                         (lambda w: torch.empty(w.shape, device="meta"), "_rebuild_meta_tensor")])
def test_sparse_and_meta_tensors_are_refused(tmp_path, odd, named):
    path = edited(tmp_path, lambda o: o["state_dict"].update({"head.weight": odd(o["state_dict"]["head.weight"])}))
    with pytest.raises(CheckpointError, match=named):
        load_checkpoint(path)


def test_invalid_config(tmp_path):
    path = edited(tmp_path, lambda o: o["config"].update(n_kv_heads=3))
    with pytest.raises(CheckpointError, match="invalid config.*n_heads"):
        load_checkpoint(path)


def test_directory_problems(tmp_path):
    d = save_checkpoint(small_model(), tmp_path / "ckpt")
    weights = load_file(str(d / "model.safetensors"))
    weights["head.weight"] = torch.zeros(1, 1)
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="head.weight has shape"):
        load_checkpoint(d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors"):
        load_checkpoint(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(d)
    (d / "config.json").write_text("{")
    save_file({}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(d)


def test_directory_save_replaces_previous_checkpoint_whole(tmp_path):
    d = tmp_path / "ckpt"
    save_checkpoint(small_model(seed=1), d)
    save_checkpoint(small_model(seed=2), d)
    assert json.loads((d / "config.json").read_text())["d_model"] == 32
    loaded = load_checkpoint(d)
    assert torch.equal(loaded.embed.weight, small_model(seed=2).embed.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def hostile_checkpoints(directory) -> dict:
    """Small files that used to cost gigabytes (or hang) when loaded: {name: path}. Each is refused."""
    import struct
    good = save_checkpoint(small_model(), directory / "good.pt")
    with zipfile.ZipFile(good) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))

    def rezip(name, data_pkl, compression=zipfile.ZIP_STORED):
        with zipfile.ZipFile(directory / name, "w", compression) as dst:
            for n, data in entries.items():
                dst.writestr(n, data_pkl if n == pkl and data_pkl is not None else data)
        return directory / name

    bytearray_3gb = b"\x80\x02cbuiltins\nbytearray\n\x8a\x05" + (3 * 10**9).to_bytes(5, "little") + b"\x85R."
    data = entries[pkl]
    at = data.index(b"X\x03\x00\x00\x00cpu")                   # the first storage's ('storage', type, key, 'cpu', numel)
    numel = re.compile(rb"(?:q.|r....)?(K.|M..|J....)", re.S).match(data, at + 8)
    huge = data[:numel.start(1)] + b"J" + struct.pack("<i", 750_000_000) + data[numel.end(1):]   # 3 GB declared
    bomb = rezip("bomb.pt", None, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as zf:    # 1 GB of zeros in about 1 MB
        with zf.open("zeros/data/99", "w", force_zip64=True) as f:
            for _ in range(1024):
                f.write(bytes(1 << 20))
    fifo = directory / "fifo.pt"
    os.mkfifo(fifo)
    (directory / "bytearray.pkl").write_bytes(bytearray_3gb)
    (directory / "bytearray8.pkl").write_bytes(b"\x80\x05\x96" + (3 * 10**9).to_bytes(8, "little") + b".")
    return {"bytearray(3e9) in a torch.save zip": rezip("bytearray.pt", bytearray_3gb),
            "bytearray(3e9) as a plain pickle": directory / "bytearray.pkl",
            "BYTEARRAY8 of 3e9 declared": directory / "bytearray8.pkl",
            "storage of 3 GB declared": rezip("huge_storage.pt", huge),
            "deflate bomb": bomb, "/dev/zero": Path("/dev/zero"), "FIFO": fifo}


def test_small_hostile_checkpoints_are_refused_before_allocating(tmp_path):
    """Each file is refused, and the peak RSS of the process that loads all of them (ru_maxrss, in a
    subprocess) stays within 200 MB of what it was after importing torch: nothing was allocated for them.
    (bytearray(3e9) in a torch.save zip reached 3.1 GB before the pickle was checked.)"""
    cases = hostile_checkpoints(tmp_path)
    assert (tmp_path / "bytearray.pkl").stat().st_size < 40 and (tmp_path / "bomb.pt").stat().st_size < 4 << 20
    code = f"""
import resource, signal
from depthscale import CheckpointError, load_checkpoint
signal.alarm(60)                                              # a hang fails the test instead of blocking it
mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = mb()
for name, path in {({k: str(v) for k, v in cases.items()})!r}.items():
    try:
        load_checkpoint(path)
        print("ACCEPTED", name)
    except CheckpointError as e:
        print("refused", name, "|", str(e).splitlines()[0][:80])
print(f"peak {{mb():.0f}} MB, after imports {{base:.0f}} MB")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split(" |")[0] for line in lines[:-1]] == [f"refused {name}" for name in cases], proc.stdout
    peak, base = map(float, re.match(r"peak (\d+) MB, after imports (\d+) MB", lines[-1]).groups())
    assert peak - base < 200, proc.stdout
