"""depthscale_runtime: runs an exported DepthScale artifact without torch.

Not implemented yet: the runtime is issue 4. This package exists so that the import name is fixed
and so that `pip install depthscale` (no extras) installs a torch-free distribution.
"""

__version__ = "0.1.0"
