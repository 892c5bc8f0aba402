"""DepthScale: recurrent-depth transformers with BitNet linears, windowed attention and a YOCO
cross-decoder; model, checkpoints and training.

The names below load on first use (PEP 562), so that importing a torch-free part of the package
(depthscale.atomic_dir, for the Triton repository writer) does not import torch."""

from .lazy_names import lazy_names

__version__ = "0.1.0"

_WHERE = {"CheckpointError": ".checkpoint", "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
          "DepthScaleConfig": "depthscale_runtime.config", "demo_checkpoint": ".demo",
          "DepthScaleModel": ".model", "DepthScaleOutput": ".model", "RecurrentState": ".model"}

__all__ = ["CheckpointError", "DepthScaleConfig", "DepthScaleModel", "DepthScaleOutput", "RecurrentState",
           "__version__", "demo_checkpoint", "load_checkpoint", "save_checkpoint"]

__getattr__, __dir__ = lazy_names(__name__, _WHERE, __all__)
