"""Checkpoints: `model.pt` (a dict of plain data) or a directory with config.json + model.safetensors.

Nothing from a checkpoint is ever executed: `.pt` files load with torch.load(weights_only=True), the
directory form with safetensors. Every problem raises CheckpointError with a message naming it.
Writes are atomic: a checkpoint on disk is complete or absent.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic_dir import staging_dir
from depthscale_runtime.config import DepthScaleConfig
from .model import DepthScaleModel

FORMAT = "depthscale"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (or saved); the message says why."""


def _plain_state_dict(model: DepthScaleModel) -> dict[str, torch.Tensor]:
    if any(n.endswith("w_packed") for n, _ in model.named_buffers()):
        raise CheckpointError("cannot save a packed (inference-only) model: save the model before .packed()")
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("head.weight")                                   # the same tensor as embed.weight
    return sd


def check_checkpoint_target(path: str | os.PathLike) -> None:
    """Whether save_checkpoint(model, path) may write there, checked before any work: the nearest existing
    parent is a writable directory; a .pt path is not a directory; any other path is absent, an empty
    directory or an earlier checkpoint directory (never a file or a directory of other things). Raises
    CheckpointError."""
    path = Path(path)
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write under {parent} (read-only, not a directory, or permission denied)")
    if path.suffix == ".pt":
        if path.is_dir():
            raise CheckpointError(f"{path} is a directory; a .pt checkpoint is a file")
    elif path.exists() and (not path.is_dir() or (not (path / CONFIG_FILE).exists() and any(path.iterdir()))):
        raise CheckpointError(f"{path} exists and is not a DepthScale checkpoint directory; not replacing it")


def save_checkpoint(model: DepthScaleModel, path: str | os.PathLike) -> Path:
    """Save `model` to `path`: a path ending in .pt gets the single-file form, any other a directory."""
    path = Path(path)
    sd = _plain_state_dict(model)
    if path.suffix == ".pt":
        check_checkpoint_target(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION,
                        "config": model.config.to_dict(), "state_dict": sd}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
    check_checkpoint_target(path)
    with staging_dir(path, replace=True) as tmp_dir:
        save_file(sd, str(tmp_dir / WEIGHTS_FILE), metadata={"format": FORMAT,
                                                             "format_version": str(FORMAT_VERSION)})
        (tmp_dir / CONFIG_FILE).write_text(model.config.to_json() + "\n")
    return path


def load_checkpoint(path: str | os.PathLike, loop: str = "auto") -> DepthScaleModel:
    """Load either checkpoint form into a DepthScaleModel in eval mode. Raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.is_dir():
        config, sd = _read_directory(path)
    else:
        config, sd = _read_pt(path)
    model = DepthScaleModel(config, loop=loop)
    _check_state_dict(model, sd, path)
    model.load_state_dict(sd, strict=False)                    # keys and shapes checked above
    return model.eval()


def _check_pt_file(path: Path) -> None:
    """Before torch.load sees it: a regular file (not /dev/zero or a FIFO), a zip archive as torch.save
    writes (a plain pickle is refused, with why), whose entries are stored (torch.save never compresses,
    so a compressed entry can only be there to be inflated: a decompression bomb), and whose pickle holds
    only what a checkpoint needs (_check_pickle; torch itself checks each storage's declared size against
    its stored record before allocating it)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise CheckpointError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        if _pickle_calls_code(path):
            raise CheckpointError(f"{path}: refused: the file holds objects that only arbitrary code could build, "
                                  f"and DepthScale never runs code from a checkpoint")
        raise CheckpointError(f"{path}: not a DepthScale checkpoint (torch.save writes zip archives; this is not one)")
    try:
        with zipfile.ZipFile(path) as zf:
            compressed = [i.filename for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]
            if compressed:
                raise CheckpointError(f"{path}: refused: compressed entries ({compressed[0]}, ...); torch.save "
                                      f"stores them uncompressed, and DepthScale does not inflate what it did not write")
            pickles = [i for i in zf.infolist() if i.filename.endswith(".pkl")]
            for info in pickles:
                if info.file_size > MAX_PICKLE_BYTES:
                    raise CheckpointError(f"{path}: refused: {info.filename} is {info.file_size} bytes, more than "
                                          f"{MAX_PICKLE_BYTES} (a checkpoint's pickle holds only the tensors' index)")
                _check_pickle(zf.read(info), f"{path}: {info.filename}")
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt file ({e})") from None
    if not pickles:
        raise CheckpointError(f"{path}: not a DepthScale checkpoint (a zip archive without torch.save's data.pkl)")


# What the pickle of a checkpoint torch.save wrote may hold (protocol 2): plain containers, numbers,
# strings, and tensors rebuilt from the archive's storages. Anything else is refused before torch.load
# runs, so nothing it could build is ever allocated (torch's weights_only unpickler would build, say,
# bytearray(3e9) from a 30-byte pickle).
MAX_PICKLE_BYTES = 8 << 20
_PICKLE_OPCODES = {"PROTO", "STOP", "MARK", "GLOBAL", "REDUCE", "BINPERSID", "BINPUT", "LONG_BINPUT", "BINGET",
                   "LONG_BINGET", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
                   "SETITEM", "SETITEMS", "APPEND", "APPENDS", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT",
                   "NEWTRUE", "NEWFALSE", "NONE", "BINUNICODE", "SHORT_BINUNICODE"}
_PICKLE_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
                   *(f"torch {t}Storage" for t in ("Float", "Double", "Half", "BFloat16"))}


def _check_pickle(data: bytes, where: str) -> None:
    """Refuse a pickle with any opcode or global outside what a checkpoint needs (read with pickletools,
    which lists opcodes and never executes or allocates what they describe)."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name not in _PICKLE_OPCODES:
                raise CheckpointError(f"{where}: refused: pickle opcode {opcode.name}, which a DepthScale "
                                      f"checkpoint never holds")
            if opcode.name == "GLOBAL" and arg not in _PICKLE_GLOBALS:
                raise CheckpointError(f"{where}: refused: the pickle builds {arg.replace(' ', '.')}; a checkpoint "
                                      f"holds only dense tensors and plain data, and DepthScale never runs arbitrary "
                                      f"code from one")
    except CheckpointError:
        raise
    except ValueError as e:                             # pickletools: truncated or malformed
        raise CheckpointError(f"{where}: truncated or corrupt pickle ({e})") from None


def _read_pt(path: Path) -> tuple[DepthScaleConfig, dict]:
    _check_pt_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # torch's notes on pickle protocols: noise here
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or _pickle_calls_code(path):
            raise CheckpointError(
                f"{path}: refused: the file holds objects that only arbitrary code could build, and "
                f"DepthScale never runs code from a checkpoint") from None
        raise CheckpointError(f"{path}: not a DepthScale checkpoint, nor any torch.save file or pickle") from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt file ({type(e).__name__}: {e})") from None
    except RuntimeError as e:
        msg = str(e)
        kind = "truncated or corrupt file" if ("zip" in msg or "archive" in msg or "central directory" in msg) \
            else "not a readable checkpoint"
        raise CheckpointError(f"{path}: {kind} ({msg.splitlines()[0][:200]})") from None
    except Exception as e:  # noqa: BLE001 - anything else torch.load raises means "not a checkpoint"
        raise CheckpointError(f"{path}: not a DepthScale checkpoint, nor any torch.save file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a DepthScale checkpoint (expected a dict with format={FORMAT!r})")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown format_version {version!r}; this DepthScale reads {FORMAT_VERSION}")
    for key in ("config", "state_dict"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no '{key}' dict")
    return _config(obj["config"], path), obj["state_dict"]


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickle_calls_code(path: Path) -> bool:
    """Whether the file is a plain pickle that imports or calls anything (read with pickletools,
    which only lists opcodes and never executes them)."""
    try:
        with open(path, "rb") as f:                     # streamed: the file may be large
            return any(opcode.name in _CODE_OPCODES for opcode, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a parseable pickle
        return False


def _read_directory(path: Path) -> tuple[DepthScaleConfig, dict]:
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"{path}: not a DepthScale checkpoint directory (missing {f.name})")
    if cfg_file.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{cfg_file}: larger than {MAX_CONFIG_BYTES} bytes; not a model config")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    try:
        sd = load_file(str(weights_file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_file}: truncated or corrupt safetensors file ({e})") from None
    return _config(cfg, cfg_file), sd


def _config(d, where: Path) -> DepthScaleConfig:
    try:
        return DepthScaleConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: invalid config: {e}") from None


def _check_state_dict(model: DepthScaleModel, sd: dict, where: Path) -> None:
    expected = {k: v for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("head.weight")
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"{where}: state_dict does not match the config ({'; '.join(parts)})")
    for k, ref in expected.items():
        t = sd[k]
        if type(t) not in (torch.Tensor, torch.nn.Parameter):          # subclasses may override anything
            raise CheckpointError(f"{where}: {k} is a {type(t).__name__}, not a plain tensor")
        if t.layout != torch.strided or t.is_meta or t.device.type != "cpu":
            raise CheckpointError(f"{where}: {k} is a {t.layout} tensor on {t.device}; only dense CPU tensors "
                                  f"with data are read")
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{where}: {k} has shape {tuple(t.shape)}, the config needs {tuple(ref.shape)}")
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: {k} has dtype {t.dtype}, expected a floating-point tensor")
