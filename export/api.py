"""export(): checkpoint or model -> artifact directory, gated on parity with eager PyTorch.

Stages (each timed, reported on stderr unless quiet): load, export, functions (our graph passes,
then any of yours), check, parity, engines (TensorRT-RTX where it is installed, full TensorRT where it
and a GPU are present), write.
"""

from __future__ import annotations

import copy
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import onnx
import onnx_ir as ir
import onnxruntime
import onnxruntime as ort
import onnxscript
import polygraphy
import torch

import depthscale
from depthscale import DepthScaleModel, load_checkpoint
from depthscale.model import PRECISIONS

from depthscale.atomic_dir import staging_dir

from .artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, MANIFEST, file_table, write_json
from .graph.export import DEFAULT_OPSET, export_graph, finish_graph
from .graph.ops import DOMAIN, DOMAIN_VERSION
from .gate.op_check import check_ops
from .gate.parity import DEFAULT_TOLERANCES, Sample, Tolerances, make_samples, run_gate
from .engines.network import Profile
from .engines.readiness import check_tensorrt_readiness
from .engines.rtx import DEFAULT_TARGETS, check_targets
from .engines.tensorrt import build_engines


MIN_OPSET, MAX_OPSET = 18, 23


class BadInput(Exception):
    """Bad usage or a bad input file (exit code 2)."""


class ExportFailed(Exception):
    """torch.onnx or the graph passes failed (exit code 3)."""


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    max_iters_cap: int | None = None                     # default: config.max_iters
    precision: str = "fp32"                              # "fp32" | "fp16" | "bf16": the activations' dtype
    tolerances: Tolerances | None = None                 # default: DEFAULT_TOLERANCES[precision]
    shapes: list[tuple[int, int]] = field(default_factory=lambda: [(1, 1), (1, 7), (3, 24)])
    iters: list[int] | None = None                       # default: 0, 1, 4 and the cap
    tols: list[float] | None = None                      # default: 0 and config.tol
    seed: int = 0
    force: bool = False
    quiet: bool = False
    # your own passes (onnx_ir.Model -> None, in place), run after ours and before the gate, so the
    # gate verifies them
    graph_passes: list[Callable[[ir.Model], None]] = field(default_factory=list)
    engines: bool = True                                 # build TensorRT engines where a flavor can build here
    trt_profile: Profile | None = None                   # default: Profile.default(max_seq_len)
    rtx_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))   # TensorRT-RTX: sm86, ...
    command: str | None = None                           # recorded in the manifest


class _Progress:
    def __init__(self, quiet: bool):
        self.quiet, self.timings = quiet, {}

    def stage(self, name: str, fn, *args, **kwargs):
        if not self.quiet:
            print(f"[depthscale-export] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - start, 3)
        if not self.quiet:
            print(f"[depthscale-export] {name} done in {self.timings[name]:.1f} s", file=sys.stderr, flush=True)
        return result


def _load(source) -> DepthScaleModel:
    if isinstance(source, DepthScaleModel):
        return copy.deepcopy(source).eval()           # export packs it: leave the caller's model alone
    try:
        return load_checkpoint(source)
    except depthscale.CheckpointError as e:
        raise BadInput(str(e)) from None


def _export(model: DepthScaleModel, cap: int, opset: int) -> ir.Model:
    try:
        return export_graph(model, cap, opset)
    except Exception as e:  # noqa: BLE001 - torch.onnx raises many types; all mean "export failed"
        raise ExportFailed(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _passes(onnx_model: ir.Model, graph_passes) -> None:
    finish_graph(onnx_model)
    for graph_pass in graph_passes:
        try:
            graph_pass(onnx_model)
        except Exception as e:  # noqa: BLE001 - a user pass failing means the export failed
            raise ExportFailed(f"graph pass {getattr(graph_pass, '__name__', graph_pass)} failed: "
                               f"{type(e).__name__}: {e}") from e


def export(source, out_dir, options: ExportOptions | None = None, **overrides) -> dict:
    """Export a checkpoint path (or a DepthScaleModel) to the artifact directory `out_dir`.

    Options come as an ExportOptions, or as its fields by keyword (export(p, out, force=True)).

    Returns the report (also in manifest.json); report["status"] is "passed" or "failed".
    Raises BadInput (exit 2) or ExportFailed (exit 3). A failed gate still writes the artifact,
    marked failed in its manifest.
    """
    try:
        opts = replace(options or ExportOptions(), **overrides)
    except TypeError as e:
        raise BadInput(f"unknown export option: {e}") from None
    out = Path(out_dir)
    if out.exists() and not opts.force:
        raise BadInput(f"{out} exists (use --force to replace it)")
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise BadInput(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}] (the function bodies need >= 18; "
                       f"torch.onnx and ONNX Runtime here go to {MAX_OPSET}), got {opts.opset}")
    if opts.precision not in PRECISIONS:
        raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if opts.tolerances is None:
        opts = replace(opts, tolerances=DEFAULT_TOLERANCES[opts.precision])
    try:
        opts = replace(opts, rtx_targets=check_targets(opts.rtx_targets))
    except ValueError as e:
        raise BadInput(str(e)) from None
    progress = _Progress(opts.quiet)
    model = progress.stage("load", _load, source)
    cfg = model.config
    model.packed().to_precision(opts.precision)
    cap = cfg.max_iters if opts.max_iters_cap is None else opts.max_iters_cap
    if cap < 0:
        raise BadInput(f"max_iters cap must be >= 0, got {cap}")
    for b, n in opts.shapes:
        if b < 1 or not 1 <= n <= cfg.max_seq_len:
            raise BadInput(f"parity shape {b}x{n} is outside batch >= 1, 1 <= seq <= {cfg.max_seq_len}")
    onnx_model = progress.stage("export", _export, model, cap, opts.opset)
    progress.stage("functions", _passes, onnx_model, opts.graph_passes)
    with staging_dir(out, opts.force) as tmp:
        onnx_path = tmp / "model.onnx"
        ir.save(onnx_model, str(onnx_path))
        (tmp / "config.json").write_text(cfg.to_json() + "\n")
        readiness = progress.stage("check", _check, onnx_path)
        iters = opts.iters if opts.iters is not None else sorted({0, 1, min(4, cap), cap})
        tols = opts.tols if opts.tols is not None else sorted({0.0, cfg.tol})
        samples = make_samples(opts.shapes, [min(t, cap) for t in iters], tols)
        try:
            parity = progress.stage("parity", _parity, model, str(onnx_path), samples, opts)
        except ort.capi.onnxruntime_pybind11_state.Fail as e:
            raise ExportFailed(f"ONNX Runtime cannot run the exported model: {str(e)[:300]}") from e
        tensorrt = progress.stage("engines", _engines, model, onnx_path, tmp, samples, opts, parity["passed"])
        passed = parity["passed"] and tensorrt.get("parity", {}).get("passed", True)
        report = {
            "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION,
            "status": "passed" if passed else "failed",
            "versions": {"depthscale": depthscale.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__,
                         "onnx_ir": ir.__version__, "polygraphy": polygraphy.__version__,
                         "python": platform.python_version()},
            "opset": opts.opset, "precision": opts.precision,
            "custom_domain": {"domain": DOMAIN, "version": DOMAIN_VERSION},
            "inputs": [_describe(v) for v in onnx_model.graph.inputs],
            "outputs": [_describe(v) for v in onnx_model.graph.outputs],
            "max_seq_len": cfg.max_seq_len, "max_iters_cap": cap,
            "defaults": {"max_iters": min(cfg.max_iters, cap), "tol": cfg.tol},
            "parity": parity["summary"],
            "tensorrt_readiness": readiness,
            "tensorrt": {k: v for k, v in tensorrt.items() if k != "parity"} | (
                {"parity": {k: v for k, v in tensorrt["parity"].items() if k != "rows"}} if "parity" in tensorrt else {}),
            "command": opts.command,
        }
        report["timings_s"] = dict(progress.timings)
        progress.stage("write", _write, tmp, parity, report)
    return report


def _engines(model: DepthScaleModel, onnx_path: Path, artifact: Path, samples: list[Sample], opts: ExportOptions,
             onnx_passed: bool) -> dict:
    """TensorRT plans for every graph of the artifact (today model.onnx) in every flavor that can build
    here (engines.tensorrt); the manifest records them and why any flavor was skipped."""
    def say(line):
        if not opts.quiet:
            print(f"[depthscale-export] {line}", file=sys.stderr, flush=True)

    why = ("not asked for (engines=False)" if not opts.engines else
           "the ONNX Runtime parity gate failed" if not onnx_passed else None)
    if why:
        section = {"built": False, "engines": [], "skipped": {"tensorrt-rtx": why, "tensorrt": why}}
    else:
        profile = opts.trt_profile or Profile.default(model.config.max_seq_len)
        graphs = [p.name for p in sorted(artifact.glob("*.onnx"))]
        try:
            section = build_engines(artifact, graphs, profile, opts.rtx_targets, model, samples, opts.tolerances,
                                    opts.seed, log=say)
        except Exception as e:  # noqa: BLE001 - TensorRT raises many types; all mean "no engine"
            raise ExportFailed(f"TensorRT engine build failed: {type(e).__name__}: {e}") from e
    for flavor, reason in section["skipped"].items():
        say(f"{flavor} engines skipped: {reason}")
    return section


def _describe(value: ir.Value) -> dict:
    """name, dtype and shape (dim names for dynamic dims) of a graph input or output."""
    return {"name": value.name, "dtype": value.dtype.numpy().name,
            "shape": [d.value if isinstance(d, ir.SymbolicDim) else int(d) for d in value.shape]}


def _write(tmp: Path, parity: dict, report: dict) -> None:
    """reports/parity.json, then manifest.json (last, with every other file's sha256)."""
    write_json(tmp / "reports" / "parity.json", parity)
    report["files"] = file_table(tmp)
    write_json(tmp / MANIFEST, report)


def _check(onnx_path: Path) -> dict:
    """onnx.checker (full) must pass; the TensorRT-readiness findings are reported, not gated on."""
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportFailed(f"onnx.checker rejected the graph: {str(e)[:300]}") from e
    return check_tensorrt_readiness(onnx.load(str(onnx_path)))


def _parity(model: DepthScaleModel, onnx_path: str, samples: list[Sample], opts: ExportOptions) -> dict:
    ops = check_ops(opts.opset, opts.seed, opts.precision)
    gate = run_gate(model, onnx_path, samples, opts.tolerances, opts.seed)
    ops_passed = all(r["passed"] for r in ops)
    passed = gate["summary"]["passed"] and ops_passed
    gate["summary"].update(passed=passed, ops_passed=ops_passed)
    return {"passed": passed, **gate, "ops": ops}
