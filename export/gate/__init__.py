"""The parity gate: eager PyTorch against ONNX Runtime (or any Polygraphy runner) on seeded samples,
and each custom op's function body against its eager op."""
