"""TensorRT-RTX engines, built on the CPU (no GPU needed: an ahead-of-time build for the compute
capabilities asked for). One plan per graph of the artifact, serving every target, in
engines/rtx<version>/<graph stem>.plan, with the custom nodes taken by the plugins of
depthscale_runtime.rtx_plugins, their Triton kernels compiled to PTX for the lowest target (the driver
JIT-compiles PTX for newer GPUs).

No timing cache: asking for one makes the builder query a GPU. A CPU build proves the parse, the loop
import, plugin matching, dtypes and the profile; it does not prove numerics or speed (NOT VERIFIED
HERE: running a plan, which needs an RTX-class GPU; TensorRT-RTX does not target Hopper).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import onnx

from depthscale_runtime.plugin_table import TRITON_DTYPES, PluginOp
from depthscale_runtime.tensorrt_rtx import import_tensorrt_rtx, tensorrt_rtx_missing

from .network import (Profile, engine_inventory, make_logger, network_facts, parse, plugin_input_conversions,
                      target_config)

# SM75 is not offered: its build fails on FP32 GEMM ("not supported for Turing").
TARGETS = ("sm80", "sm86", "sm89", "sm120", "sm121")
# All of them: a CPU-built TensorRT-RTX plan leaves kernel compilation to the device (its JIT), so one
# plan for all five targets has the size of a single-target plan and builds in about its time (measured
# per graph, target and precision in docs/tensorrt.md).
DEFAULT_TARGETS = TARGETS


def tensorrt_rtx_unavailable() -> str | None:
    """Why no TensorRT-RTX engine can be built here (None when one can: a GPU is not needed)."""
    missing = tensorrt_rtx_missing()
    if missing:
        return missing
    try:
        import triton  # noqa: F401  (the plugins' kernels are Triton kernels compiled to PTX)
    except ImportError:
        return "triton is not installed (pip install 'depthscale[kernels]')"
    return None


def check_targets(targets) -> list[str]:
    """Validated target names, lower case; ValueError names the bad one and the choices."""
    out = [t.strip().lower() for t in targets]
    bad = [t for t in out if t not in TARGETS]
    if bad or not out:
        raise ValueError(f"TensorRT-RTX targets must be among {', '.join(TARGETS)}, got {', '.join(bad) or 'none'}")
    return out


@functools.lru_cache(maxsize=None)
def _aot(kernel: str, dtype: str, args: tuple, arch: int):
    from depthscale.kernels import aot
    return getattr(aot, kernel)(dtype, **dict(args), arch=arch)


def _kernel_compiler(arch: int):
    def compile_kernel(op: PluginOp, activation: str, dims: dict, attrs: dict):
        return _aot(op.kernel, TRITON_DTYPES[activation], tuple(sorted(op.kernel_args(dims, attrs).items())), arch)
    return compile_kernel


def engine_dir_name(version: str) -> str:
    return f"rtx{version}"


def build_rtx_engines(artifact: Path, graphs: list[str], profile: Profile, targets: list[str],
                      positions_per_token: int = 1, log=print, sources: dict[str, Path] | None = None) -> list[dict]:
    """Build and write one plan per graph for all `targets`; returns their manifest entries.
    positions_per_token: 1 + the model's reasoning tokens (a decode graph's capacity is in positions).
    sources: graph -> the ONNX file its plan is built from instead (the dense-loop form of an active-set
    graph; see api._engine_sources)."""
    trt = import_tensorrt_rtx()
    from depthscale_runtime import rtx_plugins

    rtx_plugins.register(_kernel_compiler(min(int(t[2:]) for t in targets)))
    out_dir = artifact / "engines" / engine_dir_name(trt.__version__)
    entries = []
    for graph in graphs:
        source = (sources or {}).get(graph)
        entry = _build(trt, source or artifact / graph, out_dir, targets, profile, positions_per_token)
        entries.append({"dir": str(out_dir.relative_to(artifact)), **entry}
                       | ({"built_from": "the dense-loop form of the graph"} if source else {}))
        log(f"TensorRT-RTX {graph} for {','.join(targets)}: {entry['bytes'] / 1e6:.1f} MB in {entry['build_s']:.1f} s, "
            f"{entry['inventory']['plugin_layers']} plugin layers, {entry['inventory']['loops']} loop(s)")
    return entries


def _build(trt, onnx_path: Path, out_dir: Path, targets: list[str], profile: Profile, positions_per_token: int) -> dict:
    logger = make_logger(trt)
    start = time.perf_counter()
    builder, network, _ = parse(trt, onnx_path, logger)
    facts = network_facts(trt, network)
    config = target_config(trt, builder, network, targets, profile, positions_per_token)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED     # layer report names each ONNX node
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT-RTX could not build {onnx_path.name} for {','.join(targets)}: "
                           + ("; ".join(logger.errors) or "no reason given"))
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = out_dir / f"{onnx_path.stem}.plan"
    plan_path.write_bytes(bytes(plan))
    model = onnx.load(str(onnx_path), load_external_data=False)
    inventory = engine_inventory(logger.layer_report, model)
    return {"flavor": "tensorrt-rtx", "graph": onnx_path.name, "plan": plan_path.name, "targets": targets,
            "tensorrt_rtx": trt.__version__, "build_s": round(seconds, 2), "bytes": plan_path.stat().st_size,
            "profile": profile.as_dict(),
            "inventory": inventory, "parser_conversions": plugin_input_conversions(model, facts),
            "runtime_plugins": "Python IPluginV3 creators: depthscale_runtime registers them before loading "
                               "the plan (TensorRT-RTX has no AOT plugin module)"}

