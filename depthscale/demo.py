"""The bundled demo checkpoint: a small parity model trained by `depthscale-train` (see README)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def demo_checkpoint() -> Path:
    """Path of the demo model.pt shipped inside the package."""
    path = Path(str(files("depthscale") / "data" / "demo.pt"))
    if not path.is_file():
        raise FileNotFoundError(f"the demo checkpoint is missing from the installation: {path}")
    return path
