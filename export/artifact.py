"""The artifact directory (DESIGN §3): its file table and JSON files (written atomically by export()).

Everything is built in a hidden temporary sibling of OUT; manifest.json is written last, and the
directory is renamed to OUT only then. An interrupted export leaves at most a hidden `.OUT.tmp-*`
directory without a manifest, never a directory at OUT that looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path

from depthscale_runtime.artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, MANIFEST, sha256

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_FORMAT_VERSION", "MANIFEST", "file_table", "write_json"]


def file_table(root: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} for every file under root except the manifest."""
    return {str(p.relative_to(root)): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
