import json
import os
import pickle
import zipfile

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


@pytest.mark.parametrize("odd, named", [(lambda w: w.to_sparse(), "sparse_coo tensor"),
                                         (lambda w: torch.empty(w.shape, device="meta"), "on meta")])
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
