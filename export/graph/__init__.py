"""The ONNX graph: torch.onnx export of the model, the custom "depthscale" ops with their function
bodies, and the passes over the exported onnx-ir model."""
