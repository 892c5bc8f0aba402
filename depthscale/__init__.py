"""DepthScale: recurrent-depth transformers with BitNet linears, windowed attention and a YOCO
cross-decoder; model, checkpoints and training."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from depthscale_runtime.config import DepthScaleConfig
from .demo import demo_checkpoint
from .model import DepthScaleModel, DepthScaleOutput, RecurrentState

__version__ = "0.1.0"

__all__ = ["CheckpointError", "DepthScaleConfig", "DepthScaleModel", "DepthScaleOutput", "RecurrentState",
           "__version__", "demo_checkpoint", "load_checkpoint", "save_checkpoint"]
