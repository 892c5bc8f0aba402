"""depthscale_export: DepthScale checkpoint -> ONNX artifact, gated on parity with eager PyTorch.

    from depthscale_export import export
    report = export("model.pt", "model-onnx", shapes=[(1, 7), (3, 257)])
    report["status"]   # "passed" | "failed"

The names below load on first use (PEP 562): `depthscale-serve` and the serving modules need no torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {"BadInput": ".api", "ExportFailed": ".api", "ExportOptions": ".api", "export": ".api",
          "Tolerances": ".gate.parity"}

__all__ = ["BadInput", "ExportFailed", "ExportOptions", "Tolerances", "__version__", "export"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'depthscale_export' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
