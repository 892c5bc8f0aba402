"""import_tensorrt_rtx(): TensorRT-RTX's Python module, with the library link it needs made by us.

TensorRT-RTX 1.7's wheel (tensorrt-rtx-cu12-libs) ships libtensorrt_rtx.so.1 and
libtensorrt_onnxparser_rtx.so.1 only, yet once a plugin is registered the ONNX parser dlopens the
unversioned "libtensorrt_rtx.so", searched first in the parser's own directory ($ORIGIN); not
finding it, the process aborts ("terminate called without an active exception").

So before tensorrt_rtx loads them, both libraries are loaded here through links in a directory of our
own (one per process, removed at exit) that also holds the unversioned link: $ORIGIN is then that
directory, and the parser's dlopen finds the library already loaded (same file). The wheel's loader,
run next by `import tensorrt_rtx`, finds the same files loaded and loads nothing twice. Nothing is
written outside that directory and nothing is needed from the user.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

LIBRARIES = ("libtensorrt_rtx.so.1", "libtensorrt_onnxparser_rtx.so.1")   # in load order
UNVERSIONED = "libtensorrt_rtx.so"

_link_dir: Path | None = None


def tensorrt_rtx_missing() -> str | None:
    """Why TensorRT-RTX cannot be imported here (None when it can)."""
    if importlib.util.find_spec("tensorrt_rtx") is None or importlib.util.find_spec("tensorrt_rtx_libs") is None:
        return "tensorrt_rtx is not installed (pip install 'depthscale[tensorrt-rtx]')"
    return None


def import_tensorrt_rtx():
    """The tensorrt_rtx module, its libraries loaded through our links. ImportError if not installed;
    RuntimeError if tensorrt_rtx was imported before this could link it (import it through here)."""
    missing = tensorrt_rtx_missing()
    if missing:
        raise ImportError(missing)
    if _link_dir is None:
        _link_libraries()
    return importlib.import_module("tensorrt_rtx")


def _link_libraries() -> None:
    global _link_dir
    wheel_dir = Path(importlib.util.find_spec("tensorrt_rtx_libs").origin).parent
    if "tensorrt_rtx_bindings" in sys.modules and not (wheel_dir / UNVERSIONED).exists():
        raise RuntimeError("tensorrt_rtx was imported before depthscale could link libtensorrt_rtx.so; import "
                           "it through depthscale_runtime.tensorrt_rtx.import_tensorrt_rtx() (a TensorRT-RTX "
                           "parse with plugins would otherwise abort the process)")
    link_dir = Path(tempfile.mkdtemp(prefix="depthscale-tensorrt-rtx-"))
    atexit.register(shutil.rmtree, link_dir, True)
    (link_dir / UNVERSIONED).symlink_to(wheel_dir / LIBRARIES[0])
    for name in LIBRARIES:
        (link_dir / name).symlink_to(wheel_dir / name)
        ctypes.CDLL(str(link_dir / name), mode=ctypes.RTLD_GLOBAL)
    _link_dir = link_dir
