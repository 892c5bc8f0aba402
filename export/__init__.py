"""depthscale_export: DepthScale checkpoint -> ONNX artifact, gated on parity with eager PyTorch.

    from depthscale_export import export
    report = export("model.pt", "model-onnx", shapes=[(1, 7), (3, 257)])
    report["status"]   # "passed" | "failed"
"""

from .api import BadInput, ExportFailed, ExportOptions, export
from .gate.parity import Tolerances

__version__ = "0.1.0"

__all__ = ["BadInput", "ExportFailed", "ExportOptions", "Tolerances", "__version__", "export"]
