"""The bundled demo checkpoints, small models trained by `depthscale-train` (see README):

  parity  depthscale/data/demo.pt  running parity of a bit string (per-position answers)
  sum     depthscale/data/sum.pt   generative addition: "a+b=" then the sum's digits, one at a time
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEMOS = {"parity": "demo.pt", "sum": "sum.pt"}


def demo_checkpoint(task: str = "parity") -> Path:
    """Path of the bundled demo model.pt for `task` ("parity", the default, or "sum")."""
    if task not in DEMOS:
        raise ValueError(f"no bundled demo for task {task!r}; choose from {', '.join(DEMOS)}")
    path = Path(str(files("depthscale") / "data" / DEMOS[task]))
    if not path.is_file():
        raise FileNotFoundError(f"the {task} demo checkpoint is missing from the installation: {path}")
    return path
