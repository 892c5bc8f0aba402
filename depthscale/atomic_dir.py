"""Directories that appear complete or not at all: build in a hidden temporary sibling, rename at the end."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                      # EPERM: another user's live process
        return True
    return True


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the `.NAME.tmp-PID-*` and `.NAME.old-PID-*` siblings of `out` whose process PID is gone
    (killed mid-write); returns them. A live process's staging directory is left alone."""
    pattern = re.compile(re.escape(f".{out.name}.") + r"(?:tmp|old)-(\d+)-")
    removed = []
    for staging in out.parent.glob(f".{_glob_escape(out.name)}.*-*"):
        match = pattern.match(staging.name)
        if match and staging.is_dir() and not staging.is_symlink() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def staging_dir(out: Path, replace: bool):
    """Yields a temporary sibling `.NAME.tmp-PID-*` of `out` (with the mode mkdir would give `out`); on
    normal exit it takes `out`'s place (an existing `out` only if replace, else FileExistsError). On any
    exception, KeyboardInterrupt included, the temporary directory is removed. A killed process leaves at
    most that hidden directory, which the next staging_dir for the same `out` removes (its PID is gone)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())        # the mode mkdir gives (mkdtemp's is 0700): others can read it
        yield tmp
        if out.exists():
            if not replace:
                raise FileExistsError(f"{out} exists (use --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TargetError(ValueError):
    """An output target that must not or cannot be written; the message says why."""


def check_target(out: Path, replace: bool, marker: str, what: str, inputs=()) -> None:
    """Before any work: staging_dir(out, replace) may write over nothing but an earlier output of its own
    kind (a directory holding `marker`, and that only with replace); never over one of `inputs` or a
    directory holding one, the working directory, a file, or a directory of other things; and the
    nearest existing parent must be writable. `what` names the kind in messages. Raises TargetError."""
    out = Path(out)
    where = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if where == src or where in src.parents:
            raise TargetError(f"{out} would replace its own input {source}; choose another directory")
    if where == Path.cwd() or where in Path.cwd().parents:
        raise TargetError(f"{out} is the working directory or holds it; choose another directory")
    parent = where.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise TargetError(f"cannot write under {parent} (read-only, not a directory, or permission denied)")
    if not out.exists() and not out.is_symlink():
        return
    if not replace:
        raise TargetError(f"{out} exists (use --force to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise TargetError(f"{out} is not a directory; --force replaces only an earlier {what}")
    if any(out.iterdir()) and not (out / marker).is_file():
        raise TargetError(f"{out} is not a {what} (it has no {marker}); --force replaces only an earlier "
                          f"{what}, so move it away yourself if it should go")
