"""Reading and verifying an exported artifact directory (docs/artifact.md). No torch.

open_artifact() reads every file the manifest lists exactly once, into memory, and hashes those bytes;
they are the bytes ONNX Runtime later gets (Artifact.file), so a file swapped after verification is
never run. Before anything else reads it, the manifest is checked against its schema (manifest.py),
and its fields that drive behaviour against the hashed files. Nothing outside the directory is opened:
listed paths are normalised relative paths, opened one component at a time without following
symlinks, and only regular files are read (a FIFO or device is refused without blocking).

With verify= (a public key), the signature (signing.py) is read and verified first, the manifest's bytes
must be the signed ones before it is parsed, each file's bytes as read must be the signed ones, and the
directory must hold exactly the signed files: the bytes checked are the bytes used.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .config import DepthScaleConfig
from .errors import (ArtifactError, HashMismatchError, InvalidConfigError, InvalidGraphError, InvalidManifestError,
                     MissingFileError, ParityFailedError, SignatureError, UnsafePathError)
from .manifest import (ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, MAX_MANIFEST_BYTES, parse_json, relative_path,
                       validate)
from .onnx_proto import ModelInfo, read_model
from .signing import MAX_SIGNATURE_BYTES, SIGNATURE, check_signed, public_key, signed_digests

MANIFEST = "manifest.json"
__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_FORMAT_VERSION", "MANIFEST", "Artifact", "open_artifact", "sha256"]

# ONNX TensorProto element types of the dtypes a manifest names
ONNX_DTYPES = {"float32": 1, "uint8": 2, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "bfloat16": 16}
# the interface the runtime feeds and reads, by graph role
INTERFACES = {
    "model": (["input_ids", "lengths", "max_iters", "tol"], ["logits", "iterations"]),
    "prefill": (["input_ids", "lengths", "max_iters", "tol"], ["logits", "iterations", "prelude_kv", "core_kv", "global_kv"]),
    "decode": (["input_ids", "lengths", "max_iters", "tol", "past_prelude_kv", "past_core_kv", "past_global_kv"],
               ["logits", "iterations", "prelude_kv", "core_kv", "global_kv"]),
}


def sha256(path: Path) -> str:
    """sha256 of a file (the exporter's file table; the loader hashes the bytes it read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict
    config: dict                          # config.json, validated (DepthScaleConfig.to_dict())
    files: dict                           # listed path -> its verified bytes
    graphs: dict                          # role -> ModelInfo of its graph

    def file(self, name: str) -> bytes:
        """The verified bytes of a listed file."""
        return self.files[name]

    def graph_bytes(self, role: str) -> bytes:
        return self.files[self.manifest["graphs"][role]["file"]]

    def external_files(self, role: str) -> dict[str, bytes]:
        """The files a graph reads its external data from, by location (all listed and verified)."""
        return {e["location"]: self.files[e["location"]] for e in self.graphs[role].external}

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["graphs"]["model"]["file"]

    @property
    def max_iters_cap(self) -> int:
        return self.manifest["max_iters_cap"]

    @property
    def max_seq_len(self) -> int:
        """In real tokens (the ids a caller passes)."""
        return self.manifest["max_seq_len"]

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    @property
    def decodes(self) -> bool:
        """Whether the artifact has prefill and decode graphs (incremental decoding)."""
        return "decode" in self.manifest["graphs"]

    @property
    def passed(self) -> bool:
        return self.manifest["status"] == "passed"


def _open_at(root_fd: int, name: str, root: Path) -> int:
    """An fd of the regular file `name` under root_fd, opened component by component with no symlink
    followed and without blocking on a FIFO."""
    fds = []
    try:
        fd = root_fd
        parts = name.split("/")
        for part in parts[:-1]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            fds.append(fd)
        f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        raise MissingFileError(f"{root}: {name} is missing") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise UnsafePathError(f"{root}: {name} is or goes through a symlink (refused: an artifact holds "
                                  f"regular files only)") from None
        raise ArtifactError(f"{root}: cannot open {name}: {e.strerror}") from None
    finally:
        for d in fds:
            os.close(d)
    return f


def _read(root_fd: int, name: str, root: Path, size: int | None, limit: int) -> bytes:
    """The whole regular file `name` (of `size` bytes when given, else at most `limit`)."""
    fd = _open_at(root_fd, name, root)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{root}: {name} is not a regular file")
        if size is not None and st.st_size != size:
            raise HashMismatchError(f"{root}: {name} has {st.st_size} bytes, the manifest says {size} "
                                    f"(modified after export?)")
        if st.st_size > limit:
            raise ArtifactError(f"{root}: {name} is larger than {limit} bytes")
        os.set_blocking(fd, True)
        chunks, left = [], st.st_size
        while left:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) != st.st_size or os.read(fd, 1):
            raise HashMismatchError(f"{root}: {name} changed size while being read")
        return data
    except OSError as e:
        raise ArtifactError(f"{root}: cannot read {name}: {e.strerror}") from None
    finally:
        os.close(fd)


def open_artifact(path, allow_failed: bool = False, verify=None) -> Artifact:
    """Verify and open an artifact: the manifest's schema, every listed file read once and matching its
    sha256, config.json a valid config, each graph of the expected interface with its external data in
    listed files, the manifest's cap, lengths and defaults agreeing with config.json and the graphs, and
    a passed parity status (unless allow_failed). verify: a public key (PEM path); the artifact must then
    be signed with its private key, and hold exactly the files signed, unchanged (SignatureError).
    Raises an ArtifactError subclass naming the problem."""
    root = Path(path)
    verifier = None if verify is None else public_key(verify)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MissingFileError(f"{root}: no such artifact directory") from None
    except OSError as e:
        raise ArtifactError(f"{root}: cannot open the artifact directory: {e.strerror}") from None
    try:
        signed = None if verifier is None else _signature(root_fd, root, verifier)
        try:
            data = _read(root_fd, MANIFEST, root, None, MAX_MANIFEST_BYTES)
        except MissingFileError:
            raise MissingFileError(f"{root}: no {MANIFEST} (not an artifact, or an incomplete one)") from None
        if signed is not None:
            check_signed(MANIFEST, data, signed, str(root))
        manifest = validate(parse_json(data, f"{root / MANIFEST}"))
        files = {}
        for name, entry in manifest["files"].items():
            content = _read(root_fd, name, root, entry["bytes"], entry["bytes"])
            if signed is not None:
                check_signed(name, content, signed, str(root))
            if hashlib.sha256(content).hexdigest() != entry["sha256"]:
                raise HashMismatchError(f"{root}: {name} does not match its sha256 in the manifest "
                                        f"(modified after export?)")
            files[name] = content
        if signed is not None:
            _exactly_signed(root_fd, root, set(signed))
    finally:
        os.close(root_fd)
    config = _config(files["config.json"], root)
    graphs = {role: _graph(role, g, files, manifest, root) for role, g in manifest["graphs"].items()}
    _agree(manifest, config, graphs, root)
    if manifest["status"] != "passed" and not allow_failed:
        raise ParityFailedError(f"{root}: the artifact failed its parity gate at export "
                                f"(status {manifest['status']!r}); pass allow_failed=True to load it anyway")
    return Artifact(path=root, manifest=manifest, config=config.to_dict(), files=files, graphs=graphs)


def _signature(root_fd: int, root: Path, verifier) -> dict[str, str]:
    """The digests the artifact's signature signs, once it verifies."""
    try:
        signature = _read(root_fd, SIGNATURE, root, None, MAX_SIGNATURE_BYTES)
    except MissingFileError:
        raise SignatureError(f"{root}: not signed (no {SIGNATURE}); it was exported without --sign, "
                             f"or the signature was removed") from None
    return signed_digests(signature, verifier, str(root))


def _exactly_signed(root_fd: int, root: Path, signed: set[str]) -> None:
    """The directory holds the signed files and the signature, nothing else (no symlink either)."""
    present = set()
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        prefix = "" if dirpath == "." else dirpath[2:] + "/"
        links = [d for d in dirnames if stat.S_ISLNK(os.stat(d, dir_fd=dir_fd, follow_symlinks=False).st_mode)]
        present.update(prefix + name for name in [*filenames, *links])
    present.discard(SIGNATURE)
    if present != signed:
        added, removed = sorted(present - signed), sorted(signed - present)
        raise SignatureError(f"{root}: the files are not the ones signed"
                             + (f"; not signed: {', '.join(added[:5])}" if added else "")
                             + (f"; signed but missing: {', '.join(removed[:5])}" if removed else ""))


def _config(data: bytes, root: Path) -> DepthScaleConfig:
    try:
        obj = parse_json(data, f"{root / 'config.json'}")
        return DepthScaleConfig.from_dict(obj)
    except (ArtifactError, ValueError, TypeError) as e:
        raise InvalidConfigError(f"{root / 'config.json'}: not a valid model config: {e}") from None


def _graph(role: str, described: dict, files: dict, manifest: dict, root: Path) -> ModelInfo:
    """The graph's facts, checked: readable, the role's interface as the manifest describes it, external
    data only in listed files and within them."""
    name = described["file"]
    try:
        info = read_model(files[name])
    except ValueError as e:
        raise InvalidGraphError(f"{root}: {name} is not a readable ONNX model ({e})") from None
    inputs, outputs = INTERFACES[role]
    for kind, expected, values, listed in (("inputs", inputs, info.inputs, described["inputs"]),
                                           ("outputs", outputs, info.outputs, described["outputs"])):
        got = [v.name for v in values]
        if got != expected or [d["name"] for d in listed] != expected:
            raise InvalidGraphError(f"{root}: {name} ({role} graph) has {kind} {got}, the manifest lists "
                                    f"{[d['name'] for d in listed]}; the runtime needs {expected}")
        for value, d in zip(values, listed):
            if value.elem_type != ONNX_DTYPES[d["dtype"]] or list(value.shape) != list(d["shape"]):
                raise InvalidGraphError(f"{root}: {name}: {value.name} is not {d['dtype']} of shape {d['shape']} "
                                        f"as the manifest says")
    for entry in info.external:
        location = entry.get("location")
        try:
            relative_path(location, f"external data location in {name}")
        except InvalidManifestError as e:
            raise InvalidGraphError(f"{root}: {e}") from None
        if location not in files or location == name:
            raise InvalidGraphError(f"{root}: {name} reads external data from {location!r}, which the manifest "
                                    f"does not list (refused: every byte a graph reads must be hashed)")
        try:
            offset, length = int(entry.get("offset", 0)), int(entry["length"])
        except (KeyError, ValueError):
            raise InvalidGraphError(f"{root}: {name} has an external tensor in {location} without a valid "
                                    f"offset and length") from None
        if offset < 0 or length < 0 or offset + length > len(files[location]):
            raise InvalidGraphError(f"{root}: {name} reads bytes {offset}..{offset + length} of {location}, "
                                    f"which has {len(files[location])}")
    return info


def _agree(manifest: dict, config: DepthScaleConfig, graphs: dict[str, ModelInfo], root: Path) -> None:
    """The manifest's behaviour-driving fields must say what the hashed files say."""
    cap = manifest["max_iters_cap"]
    expected = {"defaults.tol": (manifest["defaults"]["tol"], config.tol),
                "defaults.max_iters": (manifest["defaults"]["max_iters"], min(config.max_iters, cap)),
                "max_seq_len": (manifest["max_seq_len"], config.max_seq_len)}
    for role, info in graphs.items():
        meta = info.metadata
        expected[f"max_iters_cap ({role} graph)"] = (str(cap), meta.get("depthscale.max_iters_cap"))
        expected[f"max_seq_len ({role} graph)"] = (str(manifest["max_seq_len"]), meta.get("depthscale.max_seq_len"))
        expected[f"precision ({role} graph)"] = (manifest["precision"], meta.get("depthscale.precision"))
        logits = info.outputs[0].shape
        expected[f"vocab_size ({role} graph's logits)"] = (config.vocab_size, logits[-1] if logits else None)
    if "decode" in graphs:
        core = graphs["decode"].inputs[5].shape                         # past_core_kv [B, L_c, T, 2, Hkv, P, dh]
        expected["max_iters_cap (decode graph's cache)"] = (cap, core[2] if len(core) == 7 else None)
    for field, (manifest_value, actual) in expected.items():
        if manifest_value != actual:
            raise InvalidManifestError(f"{root}: manifest {field} is {manifest_value!r} but the hashed files say "
                                       f"{actual!r} (the manifest was edited after export?)")
