"""The export's "engines" stage (after the ONNX Runtime gate): TensorRT plans for each graph of the
artifact, in each flavor that can build here.

- TensorRT-RTX (engines.rtx): whenever tensorrt_rtx is importable, on CPU, for the targets asked for.
- Full TensorRT (this module): where tensorrt (>= 10.9, with tensorrt.plugin) and a CUDA device are
  present, for the local GPU, with the timing cache kept in the artifact, and gated against eager
  PyTorch on the artifact's samples (Polygraphy's TrtRunner beside the EagerRunner, as the ONNX Runtime
  gate does). NOT VERIFIED HERE: this workplace cannot install TensorRT's builder and has no GPU.

The manifest's "tensorrt" section: {"built", "engines": [one entry per plan], "skipped": {flavor: why},
"parity" (full TensorRT's gate)}.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .network import Profile, add_profile, make_logger, parse
from .rtx import build_rtx_engines, tensorrt_rtx_unavailable

MIN_TENSORRT = (10, 9)       # AOT implementations for quickly deployable plugins


def tensorrt_unavailable() -> str | None:
    """Why no full-TensorRT engine can be built on this machine, or None."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'depthscale[tensorrt]' on a machine with an NVIDIA GPU)"
    import tensorrt as trt
    version = tuple(int(v) for v in trt.__version__.split(".")[:2])
    if version < MIN_TENSORRT:
        return f"tensorrt {trt.__version__} is older than {'.'.join(map(str, MIN_TENSORRT))} (AOT plugins)"
    if not hasattr(trt, "Builder") or importlib.util.find_spec("tensorrt.plugin") is None:
        return f"tensorrt {trt.__version__} here is a runtime without the builder or tensorrt.plugin"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def build_engines(artifact: Path, graphs: list[str], profile: Profile, rtx_targets: list[str], model, samples,
                  tolerances, seed: int, log=print, sources: dict[str, Path] | None = None) -> dict:
    """Build every flavor that can build here; returns the manifest's "tensorrt" section. sources: graph ->
    the ONNX file to build its plans from instead of the artifact's (the dense-loop form of an active-set
    graph: TensorRT-RTX's parser imports NonZero only through a plugin it does not ship)."""
    section = {"built": False, "engines": [], "skipped": {}}
    why = tensorrt_rtx_unavailable()
    if why:
        section["skipped"]["tensorrt-rtx"] = why
    else:
        section["engines"] += build_rtx_engines(artifact, graphs, profile, rtx_targets,
                                                1 + model.config.reason_tokens, log, sources)
    why = tensorrt_unavailable()
    if why:
        section["skipped"]["tensorrt"] = why
    else:
        entries, parity = _build_tensorrt(artifact, graphs, profile, model, samples, tolerances, seed, sources or {})
        section["engines"] += entries
        section["parity"] = parity
    section["built"] = bool(section["engines"])
    return section


def engine_dir_name() -> str:
    """engines/<this name>/: the GPU architecture and TensorRT version a full-TensorRT plan is built for."""
    import tensorrt as trt
    import torch
    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}-trt{trt.__version__}"


def _build_tensorrt(artifact: Path, graphs: list[str], profile: Profile, model, samples, tolerances,
                    seed: int, sources: dict[str, Path]) -> tuple[list[dict], dict]:
    """One plan per graph for this machine's GPU; the main graph's plan gated against eager."""
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from . import plugins  # noqa: F401  (registers the plugins)
    from ..gate.parity import compare_samples

    out_dir = artifact / "engines" / engine_dir_name()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = out_dir / "timing.cache"
    entries, plans = [], {}
    for graph in graphs:
        logger = make_logger(trt)
        builder, network, _ = parse(trt, sources.get(graph, artifact / graph), logger)
        config = builder.create_builder_config()
        add_profile(builder, config, network, profile, 1 + model.config.reason_tokens)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build {graph}: {'; '.join(logger.errors) or 'no reason given'}")
        plans[graph] = bytes(plan)
        plan_name = f"{Path(graph).stem}.plan"
        (out_dir / plan_name).write_bytes(plans[graph])
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        entries.append({"dir": str(out_dir.relative_to(artifact)), "flavor": "tensorrt", "graph": graph,
                        "plan": plan_name, "timing_cache": cache_path.name, "tensorrt": trt.__version__,
                        "profile": profile.as_dict()})
    inside = [s for s in samples if profile.min[0] <= s.batch <= profile.max[0] and profile.min[1] <= s.seq <= profile.max[1]]
    rows = compare_samples(model, TrtRunner(EngineFromBytes(plans[graphs[0]])), inside, tolerances, seed)["rows"]
    return entries, {"passed": all(r["passed"] for r in rows), "samples": len(rows),
                     "logits_max_abs_err": max((r["logits_max_abs_err"] for r in rows), default=0.0),
                     "iterations_equal": all(r["iterations_equal"] for r in rows), "rows": rows}
