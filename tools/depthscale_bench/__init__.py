"""depthscale-bench: eager PyTorch against ONNX Runtime on the demo model and a reference config.

Run it as `python tools/bench.py [--quick]`; every figure is measured side by side in one run.
Sections (README "Performance"): latency, depth, sequence, size, unrolled, early_exit, machine_limit, decode
(`--only SECTION` runs some of them).
"""
