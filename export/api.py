"""export(): checkpoint or model -> artifact directory, gated on parity with eager PyTorch.

Stages (each timed, reported on stderr unless quiet): load, export (the forward graph, and the prefill
and decode graphs where the model decodes incrementally), functions (our graph passes, then any of
yours, on every graph), check, parity (the forward gate, the op checks, the decoding gate), engines
(TensorRT-RTX where it is installed, full TensorRT where it and a GPU are present), write, and sign
where a private key is given (model.sig, over every file, written before the directory is renamed).
"""

from __future__ import annotations

import copy
import math
import os
from fractions import Fraction
import platform
import sys
import tempfile
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

from depthscale.atomic_dir import TargetError, check_target, staging_dir
from depthscale_runtime.config import LIMITS
from depthscale_runtime.errors import SignatureError
from depthscale_runtime.signing import signer

from .artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, MANIFEST, file_table, write_json
from .decode.gate import DecodeSample, make_decode_samples, run_decode_gate
from .decode.graphs import decode_spec, decode_unavailable, prefill_spec
from .graph.export import DEFAULT_OPSET, GraphSpec, export_graph, finish_graph, forward_spec
from .graph.ops import DOMAIN, DOMAIN_VERSION, ONNXRUNTIME_MIN
from .graph.weights import WEIGHTS_FILE, save_graphs
from .gate.op_check import check_ops
from .gate.parity import DEFAULT_TOLERANCES, Sample, Tolerances, make_samples, run_gate
from .engines.network import Profile
from .engines.readiness import check_tensorrt_readiness
from .engines.rtx import DEFAULT_TARGETS, check_targets, tensorrt_rtx_unavailable
from .engines.tensorrt import build_engines, tensorrt_unavailable


MIN_OPSET, MAX_OPSET = 18, 23


class BadInput(Exception):
    """Bad usage or a bad input file (exit code 2)."""


class ExportFailed(Exception):
    """torch.onnx or the graph passes failed (exit code 3)."""


DEFAULT_SHAPES = ((1, 1), (1, 7), (3, 24))
DEFAULT_DECODE_SHAPES = ((1, 1, 16), (3, 12, 64))


def default_shapes(max_seq_len: int) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """The default parity and decoding-gate shapes, shortened to fit a model's max_seq_len (a short model
    gets the same kinds of samples, not a usage error for shapes it never asked for)."""
    shapes = sorted({(b, min(n, max_seq_len)) for b, n in DEFAULT_SHAPES})
    decode = []
    for b, p, k in DEFAULT_DECODE_SHAPES:
        p = min(p, max(b, max_seq_len // 4))
        decode.append((b, p, min(k, max_seq_len - p)))
    return shapes, decode


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    max_iters_cap: int | None = None                     # default: config.max_iters
    precision: str = "fp32"                              # "fp32" | "fp16" | "bf16": the activations' dtype
    tolerances: Tolerances | None = None                 # default: DEFAULT_TOLERANCES[precision]
    shapes: list[tuple[int, int]] | None = None           # default: DEFAULT_SHAPES, fitted to max_seq_len
    # decoding gate: (batch, prompt, new): a ragged batch (row b's prompt has prompt - b tokens), then
    # `new` tokens decoded one at a time; each at the cap and at the tols below
    decode_shapes: list[tuple[int, int, int]] | None = None   # default: DEFAULT_DECODE_SHAPES, fitted
    iters: list[int] | None = None                       # default: 0, 1, 4 and the cap
    tols: list[float] | None = None                      # default: 0 and config.tol
    seed: int = 0
    force: bool = False
    quiet: bool = False
    # your own passes (onnx_ir.Model -> None, in place), run on every graph (model.graph.name says which:
    # "model", "prefill" or "decode") after ours and before the gate, so the gate verifies them
    graph_passes: list[Callable[[ir.Model], None]] = field(default_factory=list)
    decode: bool = True                                  # prefill and decode graphs (where the model decodes incrementally)
    engines: bool = True                                 # build TensorRT engines where a flavor can build here
    active_set: bool = True                              # skip done tokens (where exact); False: the dense Loop only
    active_crossover: float | None = None                # active-set steps once at most this fraction runs (default 0.8)
    trt_profile: Profile | None = None                   # default: Profile.default(max_seq_len)
    rtx_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))   # TensorRT-RTX: sm86, ...
    command: str | None = None                           # recorded in the manifest
    sign: str | os.PathLike | None = None                # an EC private key (PEM): sign the artifact (model.sig)


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


def _export(model: DepthScaleModel, specs: list[GraphSpec], opset: int) -> dict[str, ir.Model]:
    graphs = {}
    for spec in specs:
        try:
            graphs[spec.name] = export_graph(model, spec, opset)
        except Exception as e:  # noqa: BLE001 - torch.onnx raises many types; all mean "export failed"
            raise ExportFailed(f"{spec.filename}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        graphs[spec.name].graph.name = spec.name
    return graphs


def _passes(graphs: dict[str, ir.Model], graph_passes, metadata: dict[str, str]) -> None:
    for onnx_model in graphs.values():
        finish_graph(onnx_model)
        for graph_pass in graph_passes:
            try:
                graph_pass(onnx_model)
            except Exception as e:  # noqa: BLE001 - a user pass failing means the export failed
                raise ExportFailed(f"graph pass {getattr(graph_pass, '__name__', graph_pass)} failed on "
                                   f"{onnx_model.graph.name}.onnx: {type(e).__name__}: {e}") from e
        onnx_model.metadata_props.update(metadata)


def _check_output(out: Path, source, force: bool) -> None:
    """The export writes over nothing but an earlier artifact (and that only with force): never over its
    own input or a directory holding it, the working directory, a file, or a directory of other things."""
    inputs = [source] if isinstance(source, (str, os.PathLike)) else []
    try:
        check_target(out, force, MANIFEST, "DepthScale artifact", inputs)
    except TargetError as e:
        raise BadInput(f"-o {e}" if str(e).startswith(str(out)) else str(e)) from None


def _check_gate_options(opts: ExportOptions) -> None:
    """The gate's tolerances, budgets and seed, before any work (a NaN tolerance or a negative budget
    would otherwise fail or skew the gate after minutes)."""
    for name, value in vars(opts.tolerances).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BadInput(f"{'--' + name.replace('_', '-')} (tolerance {name}) must be a finite number >= 0, "
                           f"got {value!r}")
    for t in opts.iters or ():
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= LIMITS["max_iters"]:
            raise BadInput(f"--iters values must be ints in [0, {LIMITS['max_iters']}], got {t!r}")
    for tol in opts.tols or ():
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise BadInput(f"--tols values must be finite numbers >= 0, got {tol!r}")
    if isinstance(opts.seed, bool) or not isinstance(opts.seed, int) or not 0 <= opts.seed < 2**32:
        raise BadInput(f"--seed must be an int in [0, 2**32), got {opts.seed!r}")


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
    _check_output(out, source, opts.force)
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise BadInput(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}] (the function bodies need >= 18; "
                       f"torch.onnx and ONNX Runtime here go to {MAX_OPSET}), got {opts.opset}")
    if opts.precision not in PRECISIONS:
        raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if opts.tolerances is None:
        opts = replace(opts, tolerances=DEFAULT_TOLERANCES[opts.precision])
    _check_gate_options(opts)
    try:
        opts = replace(opts, rtx_targets=check_targets(opts.rtx_targets))
    except ValueError as e:
        raise BadInput(str(e)) from None
    try:
        sign = None if opts.sign is None else signer(opts.sign)
    except SignatureError as e:
        raise BadInput(str(e)) from None
    progress = _Progress(opts.quiet)
    model = progress.stage("load", _load, source)
    cfg = model.config
    model.packed().to_precision(opts.precision)
    recursion = _recursion(model, opts.active_set, opts.active_crossover)
    cap = cfg.max_iters if opts.max_iters_cap is None else opts.max_iters_cap
    if not 0 <= cap <= LIMITS["max_iters"]:
        raise BadInput(f"max_iters cap must be in [0, {LIMITS['max_iters']}], got {cap}")
    fitted_shapes, fitted_decode_shapes = default_shapes(cfg.max_seq_len)
    opts = replace(opts, shapes=opts.shapes or fitted_shapes,
                   decode_shapes=opts.decode_shapes or fitted_decode_shapes)
    for b, n in opts.shapes:
        if b < 1 or not 1 <= n <= cfg.max_seq_len:
            raise BadInput(f"parity shape {b}x{n} is outside batch >= 1, 1 <= seq <= {cfg.max_seq_len}")
    for b, p, k in opts.decode_shapes:
        if b < 1 or p < 1 or k < 0 or p + k > cfg.max_seq_len:
            raise BadInput(f"decode shape {b}x{p}+{k} is outside batch >= 1, prompt >= 1, new >= 0, "
                           f"prompt + new <= {cfg.max_seq_len}")
    specs = [forward_spec(model, cap)]
    no_decode = decode_unavailable(model) if opts.decode else "not asked for (decode=False)"
    if no_decode is None:
        specs += [prefill_spec(model, cap), decode_spec(model, cap)]
    graphs = progress.stage("export", _export, model, specs, opts.opset)
    # the graph's own record of what the manifest says about it (the runtime checks they agree)
    metadata = {"depthscale.max_iters_cap": str(cap), "depthscale.max_seq_len": str(cfg.max_seq_len),
                "depthscale.precision": opts.precision}
    progress.stage("functions", _passes, graphs, opts.graph_passes, metadata)
    try:
        with staging_dir(out, opts.force) as tmp:
            files = save_graphs(graphs, tmp)
            (tmp / "config.json").write_text(cfg.to_json() + "\n")
            readiness = progress.stage("check", _check, tmp, files)
            iters = opts.iters if opts.iters is not None else sorted({0, 1, min(4, cap), cap})
            tols = opts.tols if opts.tols is not None else sorted({0.0, cfg.tol})
            samples = make_samples(opts.shapes, [min(t, cap) for t in iters], tols)
            decode_samples = [] if no_decode else make_decode_samples(opts.decode_shapes, [cap], tols)
            try:
                parity = progress.stage("parity", _parity, model, tmp, samples, decode_samples, opts)
            except ort.capi.onnxruntime_pybind11_state.Fail as e:
                raise ExportFailed(f"ONNX Runtime cannot run the exported model: {str(e)[:300]}") from e
            tensorrt = progress.stage("engines", _engines, model, tmp, list(files.values()), samples, opts,
                                      parity["passed"], cap, metadata, no_decode is None)
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
                "runtime": {"onnxruntime_min": ONNXRUNTIME_MIN},
                "graphs": {name: {"file": files[name], "inputs": [_describe(v) for v in g.graph.inputs],
                                  "outputs": [_describe(v) for v in g.graph.outputs]} for name, g in graphs.items()},
                "weights": WEIGHTS_FILE,
                "decode": {"available": no_decode is None} | ({"why": no_decode} if no_decode else {}),
                "max_seq_len": cfg.max_seq_len, "max_iters_cap": cap, "recursion": recursion,
                "defaults": {"max_iters": min(cfg.max_iters, cap), "tol": cfg.tol},
                "parity": parity["summary"],
                "tensorrt_readiness": readiness,
                "tensorrt": {k: v for k, v in tensorrt.items() if k != "parity"} | (
                    {"parity": {k: v for k, v in tensorrt["parity"].items() if k != "rows"}} if "parity" in tensorrt else {}),
                "command": opts.command,
            }
            report["timings_s"] = dict(progress.timings)
            progress.stage("write", _write, tmp, parity, report)
            if sign is not None:                  # in the staging directory: the artifact is signed or absent
                progress.stage("sign", sign, tmp)
    except OSError as e:              # disk full, read-only, vanished directory: one line, nothing at OUT
        raise ExportFailed(f"writing the artifact to {out} failed: {e.strerror or e}"
                           + (f" ({e.filename})" if e.filename else "")) from None
    return report


def _dense_sources(model: DepthScaleModel, cap: int, decodes: bool, opts: ExportOptions, metadata: dict,
                   scratch: Path) -> dict[str, Path]:
    """The whole-pass and prefill graphs again with the dense Loop only, written to `scratch` (with their own
    weights file), for TensorRT: its parsers import the active-set Loop's NonZero only through a NonZero
    plugin, which TensorRT-RTX 1.7 does not ship. Same passes as the artifact's graphs; the decode graph is
    dense already. Returns {artifact graph file: its dense form}."""
    dense = copy.deepcopy(model)
    dense.active_set = False
    specs = [forward_spec(dense, cap)] + ([prefill_spec(dense, cap)] if decodes else [])
    graphs = _export(dense, specs, opts.opset)
    _passes(graphs, opts.graph_passes, metadata)
    return {file: scratch / file for file in save_graphs(graphs, scratch).values()}


def _recursion(model: DepthScaleModel, active_set: bool, crossover: float | None) -> dict:
    """Whether the exported recursion skips done tokens (model.active_set, turned off when not asked for)
    and from which running fraction on (model.active_crossover, set from `crossover`), as the manifest
    records it; or why not."""
    if crossover is not None:
        if not 0.0 <= crossover <= 1.0:
            raise BadInput(f"active_crossover must be in [0, 1] (a fraction of the positions), got {crossover}")
        ratio = Fraction(crossover).limit_denominator(1000)
        model.active_crossover = (ratio.numerator, ratio.denominator)
    if not active_set:
        model.active_set = False
        return {"active_set": False, "why": "not asked for (active_set=False, --dense-loop)"}
    if not model.active_set:
        why = ("the retention mixer carries a state along positions" if model.config.mixer != "window" else
               "float (non-BitNet) linears sum in an order that depends on the row count")
        return {"active_set": False, "why": why}
    num, den = model.active_crossover
    return {"active_set": True, "crossover": num / den}


def _engines(model: DepthScaleModel, artifact: Path, graphs: list[str], samples: list[Sample], opts: ExportOptions,
             onnx_passed: bool, cap: int, metadata: dict, decodes: bool) -> dict:
    """TensorRT plans for every graph of the artifact in every flavor that can build
    here (engines.tensorrt); the manifest records them and why any flavor was skipped. An active-set
    artifact's plans are built from the dense-loop form of its graphs (_dense_sources)."""
    def say(line):
        if not opts.quiet:
            print(f"[depthscale-export] {line}", file=sys.stderr, flush=True)

    why = ("not asked for (engines=False)" if not opts.engines else
           "the ONNX Runtime parity gate failed" if not onnx_passed else None)
    if why:
        section = {"built": False, "engines": [], "skipped": {"tensorrt-rtx": why, "tensorrt": why}}
    else:
        profile = opts.trt_profile or Profile.default(model.config.max_seq_len)
        buildable = tensorrt_rtx_unavailable() is None or tensorrt_unavailable() is None
        with tempfile.TemporaryDirectory(prefix="depthscale-dense-loop-") as scratch:
            sources = (_dense_sources(model, cap, decodes, opts, metadata, Path(scratch))
                       if model.active_set and buildable else {})
            try:
                section = build_engines(artifact, graphs, profile, opts.rtx_targets, model, samples, opts.tolerances,
                                        opts.seed, log=say, sources=sources)
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


def _check(artifact: Path, files: dict[str, str]) -> dict:
    """onnx.checker (full) must pass on every graph; the TensorRT-readiness findings of each are reported,
    not gated on. Returns the readiness report of every graph."""
    readiness = {}
    for name, file in files.items():
        try:
            onnx.checker.check_model(str(artifact / file), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportFailed(f"onnx.checker rejected {file}: {str(e)[:300]}") from e
        readiness[name] = check_tensorrt_readiness(onnx.load(str(artifact / file)))
    return {"passed": all(r["passed"] for r in readiness.values()), "graphs": readiness}


def _parity(model: DepthScaleModel, artifact: Path, samples: list[Sample], decode_samples: list[DecodeSample],
            opts: ExportOptions) -> dict:
    """The forward gate, the op checks and, where the artifact decodes, the decoding gate."""
    ops = check_ops(opts.opset, opts.seed, opts.precision)
    gate = run_gate(model, str(artifact / "model.onnx"), samples, opts.tolerances, opts.seed)
    ops_passed = all(r["passed"] for r in ops)
    decoding = run_decode_gate(model, artifact, decode_samples, opts.tolerances, opts.seed) if decode_samples else None
    decode_passed = decoding is None or decoding["summary"]["passed"]
    passed = gate["summary"]["passed"] and ops_passed and decode_passed
    gate["summary"].update(passed=passed, ops_passed=ops_passed,
                           decode=None if decoding is None else decoding["summary"])
    return {"passed": passed, **gate, "ops": ops, "decode": decoding}
