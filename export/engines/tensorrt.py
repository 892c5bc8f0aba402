"""Engine building, the export stage after the ONNX Runtime gate (DESIGN §5).

tensorrt_unavailable() says why no engine can be built here (None when one can). build_engines() parses
model.onnx with the plugin override (engines.plugins serves our three op types), builds a strongly
typed network (the precision is the graph's) with one optimisation profile over batch and seq, keeps
the timing cache in the artifact, writes engines/<sm_XY>-trt<version>/model.plan, and gates the engine
against eager PyTorch on the artifact's samples and tolerances (Polygraphy's TrtRunner beside the
EagerRunner, as the ORT gate does).

NOT VERIFIED HERE: this workplace cannot install TensorRT's builder and this task has no GPU; only the
path that skips the stage, with its reason in the manifest, runs here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

MIN_TENSORRT = (10, 9)       # AOT implementations for quickly deployable plugins


@dataclass(frozen=True)
class Profile:
    """(batch, seq) at the minimum, optimum and maximum of the engine's optimisation profile."""
    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    @staticmethod
    def default(max_seq_len: int) -> "Profile":
        return Profile(min=(1, 1), opt=(1, min(512, max_seq_len)), max=(8, max_seq_len))

    @staticmethod
    def parse(text: str) -> "Profile":
        """"1x1:1x512:8x4096" (min:opt:max, each BATCHxSEQ)."""
        try:
            lo, opt, hi = (tuple(int(v) for v in part.lower().split("x")) for part in text.split(":"))
            profile = Profile(min=lo, opt=opt, max=hi)
        except ValueError:
            raise ValueError(f"a TensorRT profile looks like 1x1:1x512:8x4096 (min:opt:max), got {text!r}") from None
        points = (profile.min, profile.opt, profile.max)
        if not (all(len(p) == 2 for p in points)
                and all(1 <= lo <= opt <= hi for lo, opt, hi in zip(*points))):
            raise ValueError(f"TensorRT profile {text!r}: need 1 <= min <= opt <= max in batch and in seq")
        return profile


def tensorrt_unavailable() -> str | None:
    """Why no engine can be built on this machine, or None."""
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


def engine_dir_name() -> str:
    """engines/<this name>/: the GPU architecture and TensorRT version a plan is built for."""
    import tensorrt as trt
    import torch
    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}-trt{trt.__version__}"


def build_engines(onnx_path: Path, artifact: Path, profile: Profile, model, samples, tolerances, seed: int) -> dict:
    """Build, write and gate one plan for this machine's GPU. Returns the manifest's "tensorrt" section."""
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from . import plugins  # noqa: F401  (registers the plugins)
    from ..gate.parity import compare_samples

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected model.onnx: {errors}")
    config = builder.create_builder_config()
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape("input_ids", profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    out_dir = artifact / "engines" / engine_dir_name()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = out_dir / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    (out_dir / "model.plan").write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    inside = [s for s in samples if profile.min[0] <= s.batch <= profile.max[0] and profile.min[1] <= s.seq <= profile.max[1]]
    gate = compare_samples(model, TrtRunner(EngineFromBytes(bytes(plan))), inside, tolerances, seed)
    rows = gate["rows"]
    return {"built": True, "engines": [{"dir": str(out_dir.relative_to(artifact)), "plan": "model.plan",
                                        "timing_cache": "timing.cache", "tensorrt": trt.__version__,
                                        "profile": asdict(profile)}],
            "parity": {"passed": all(r["passed"] for r in rows), "samples": len(rows),
                       "logits_max_abs_err": max((r["logits_max_abs_err"] for r in rows), default=0.0),
                       "iterations_equal": all(r["iterations_equal"] for r in rows), "rows": rows}}
