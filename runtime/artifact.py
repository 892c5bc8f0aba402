"""Reading and verifying an exported artifact directory (DESIGN §3). No torch."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import HashMismatchError, MissingFileError, ParityFailedError, UnsupportedFormatError

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = "depthscale-artifact"
ARTIFACT_FORMAT_VERSION = 2


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict
    config: dict

    @property
    def model_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def max_iters_cap(self) -> int:
        return int(self.manifest["max_iters_cap"])

    @property
    def max_seq_len(self) -> int:
        """In real tokens (the ids a caller passes)."""
        return int(self.manifest["max_seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def passed(self) -> bool:
        return self.manifest.get("status") == "passed"


def open_artifact(path, allow_failed: bool = False) -> Artifact:
    """Verify and open an artifact: the manifest's format and version, every listed file present with
    its sha256, and a passed parity status (unless allow_failed). Raises an ArtifactError subclass."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise MissingFileError(f"{root}: no {MANIFEST} (not an artifact, or an incomplete one)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsupportedFormatError(f"{manifest_path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise UnsupportedFormatError(f"{manifest_path}: not a DepthScale artifact manifest")
    if manifest.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise UnsupportedFormatError(f"{manifest_path}: format_version {manifest.get('format_version')!r} is not "
                                     f"supported; this runtime reads {ARTIFACT_FORMAT_VERSION}")
    files = manifest.get("files", {})
    for required in ("model.onnx", "config.json"):
        if required not in files:
            raise UnsupportedFormatError(f"{manifest_path}: the manifest lists no {required}")
    for name, entry in files.items():
        f = root / name
        if not f.is_file():
            raise MissingFileError(f"{root}: {name} is missing")
        if sha256(f) != entry.get("sha256"):
            raise HashMismatchError(f"{root}: {name} does not match its sha256 in the manifest "
                                    f"(modified after export?)")
    if manifest.get("status") != "passed" and not allow_failed:
        raise ParityFailedError(f"{root}: the artifact failed its parity gate at export "
                                f"(status {manifest.get('status')!r}); pass allow_failed=True to load it anyway")
    config = json.loads((root / "config.json").read_text())
    return Artifact(path=root, manifest=manifest, config=config)
