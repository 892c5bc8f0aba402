"""depthscale_export: DepthScale checkpoint -> ONNX artifact with a parity gate (DESIGN §3-4).

Not implemented yet: the exporter is issue 3. This package exists so that the import name is fixed.
"""

__version__ = "0.1.0"
