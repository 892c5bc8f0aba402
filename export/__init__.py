"""depthscale_export: DepthScale checkpoint -> ONNX artifact, gated on parity with eager PyTorch.

    from depthscale_export import export
    report = export("model.pt", "model-onnx", shapes=[(1, 7), (3, 257)])
    report["status"]   # "passed" | "failed"

The names below load on first use (PEP 562): `depthscale-serve` and the serving modules need no torch.
"""

from depthscale.lazy_names import lazy_names

__version__ = "0.1.0"

_WHERE = {"BadInput": ".api", "ExportFailed": ".api", "ExportOptions": ".api", "export": ".api",
          "Tolerances": ".gate.parity"}

__all__ = ["BadInput", "ExportFailed", "ExportOptions", "Tolerances", "__version__", "export"]

__getattr__, __dir__ = lazy_names(__name__, _WHERE, __all__)
