"""The artifact directory (DESIGN §3), written atomically.

Everything is built in a hidden temporary sibling of OUT; manifest.json is written last, and the
directory is renamed to OUT only then. An interrupted export leaves at most a hidden `.OUT.tmp-*`
directory without a manifest, never a directory at OUT that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from depthscale_runtime.artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, MANIFEST, sha256

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_FORMAT_VERSION", "MANIFEST", "file_table", "staging_dir", "write_json"]


def file_table(root: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} for every file under root except the manifest."""
    return {str(p.relative_to(root)): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def staging_dir(out: Path, force: bool):
    """Yields a temporary sibling of `out`; on normal exit it replaces `out` (which must not exist
    unless force). On any exception, including KeyboardInterrupt, the temporary directory is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            if not force:
                raise FileExistsError(f"{out} exists (use --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
