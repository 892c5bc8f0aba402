"""Directories that appear complete or not at all: build in a hidden temporary sibling, rename at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staging_dir(out: Path, replace: bool):
    """Yields a temporary sibling of `out`; on normal exit it takes `out`'s place (an existing `out`
    only if replace, else FileExistsError). On any exception, KeyboardInterrupt included, the temporary
    directory is removed. A killed process leaves at most a hidden `.NAME.tmp-*` directory."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            if not replace:
                raise FileExistsError(f"{out} exists (use --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
