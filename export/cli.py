"""depthscale-export: a thin CLI over depthscale_export.export()."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path

from depthscale_runtime.interrupt import EXIT_INTERRUPTED

from .api import BadInput, ExportFailed, ExportOptions, export
from .gate.parity import DEFAULT_TOLERANCES, Tolerances
from .engines.network import Profile
from .engines.rtx import DEFAULT_TARGETS, TARGETS

EXIT_OK, EXIT_PARITY, EXIT_BAD_INPUT, EXIT_EXPORT = 0, 1, 2, 3

EPILOG = """exit codes:
  0  exported, parity passed
  1  parity failed (the artifact is written, its manifest says "failed")
  2  bad usage or bad input file (nothing written)
  3  export failed (nothing written)
  130  interrupted (Ctrl-C; nothing written)"""


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes must look like 1x7,3x257, got {text!r}") from None


def _decode_shapes(text: str) -> list[tuple[int, int, int]]:
    try:
        shapes = []
        for part in text.split(","):
            rows, rest = part.lower().split("x")
            prompt, new = rest.split("+")
            shapes.append((int(rows), int(prompt), int(new)))
        return shapes
    except ValueError:
        raise argparse.ArgumentTypeError(f"decode shapes must look like 1x1+16,3x12+64, got {text!r}") from None


def _profile(text: str) -> Profile:
    try:
        return Profile.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthscale-export", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Export a DepthScale checkpoint to an ONNX artifact, gated on parity with eager PyTorch.")
    p.add_argument("model", help="model.pt or a checkpoint directory")
    p.add_argument("-o", "--out", help="artifact directory (default: <model stem>-onnx beside the model)")
    p.add_argument("--force", action="store_true", help="replace an existing artifact")
    p.add_argument("--opset", type=int, default=ExportOptions.opset)
    p.add_argument("--max-iters-cap", type=int, default=None, help="largest T the artifact runs (default: config.max_iters)")
    p.add_argument("--precision", choices=list(DEFAULT_TOLERANCES), default="fp32",
                   help="dtype of the activations in the ONNX graph (default fp32); fp16/bf16 for half-precision "
                        "engines, gated with their own tolerances")
    d = DEFAULT_TOLERANCES
    p.add_argument("--atol", type=float, default=None,
                   help=f"logits absolute tolerance (default {', '.join(f'{k} {t.atol:g}' for k, t in d.items())})")
    p.add_argument("--rtol", type=float, default=None,
                   help=f"logits relative tolerance (default {', '.join(f'{k} {t.rtol:g}' for k, t in d.items())})")
    p.add_argument("--state-atol", type=float, default=None,
                   help="per-iteration hidden-state tolerance (default "
                        f"{', '.join(f'{k} {t.state_atol:g}' for k, t in d.items())})")
    p.add_argument("--shapes", type=_shapes, default=None, help="parity input shapes BxN,... (default 1x1,1x7,3x24, shortened to the model's max_seq_len)")
    p.add_argument("--iters", type=_ints, default=None, help="parity iteration budgets (default 0,1,4,cap)")
    p.add_argument("--tols", type=_floats, default=None, help="parity exit tolerances (default 0,config.tol)")
    p.add_argument("--decode-shapes", type=_decode_shapes, default=None, metavar="BxP+K,...",
                   help="decoding gate: B rows, prompts of P - b tokens, then K tokens decoded one at a time "
                        "(default 1x1+16,3x12+64, shortened to the model's max_seq_len)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph-pass", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="also apply your own pass (onnx_ir.Model -> None, in place) before the gate; repeatable")
    p.add_argument("--no-decode", action="store_true",
                   help="no prefill/decode graphs (incremental decoding): a smaller artifact for whole-sequence use")
    p.add_argument("--no-engines", action="store_true", help="do not build TensorRT engines even where possible")
    p.add_argument("--dense-loop", action="store_true",
                   help="compute every position at every iteration (no active set: done tokens still cost their share)")
    p.add_argument("--active-crossover", type=float, default=None, metavar="F",
                   help="compute only the running tokens once at most this fraction of the positions runs "
                        "(default 0.8; 1.0: from the first iteration, which pays on models with d_model in the hundreds)")
    p.add_argument("--rtx-targets", type=lambda t: t.split(","), default=list(DEFAULT_TARGETS), metavar="SM,...",
                   help=f"TensorRT-RTX compute capabilities one plan serves, built on this CPU (choices "
                        f"{','.join(TARGETS)}; default {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--trt-profile", type=_profile, default=None, metavar="MIN:OPT:MAX",
                   help="TensorRT optimisation profile over batch and seq, e.g. 1x1:1x512:8x4096 "
                        "(default 1x1:1x512:8xmax_seq_len)")
    p.add_argument("--sign", metavar="KEY.pem", default=None,
                   help="sign the artifact with this elliptic-curve private key (PEM; offline, no Sigstore); "
                        "needs the 'sign' extra. Verify with depthscale-check --verify or load(verify=...)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="print every parity sample")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or table on stderr")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    model = Path(args.model)
    out = Path(args.out) if args.out else model.with_name(f"{model.stem}-onnx")
    defaults = DEFAULT_TOLERANCES[args.precision]
    tolerances = Tolerances(*(default if given is None else given for given, default in
                              ((args.atol, defaults.atol), (args.rtol, defaults.rtol),
                               (args.state_atol, defaults.state_atol))))
    opts = ExportOptions(opset=args.opset, max_iters_cap=args.max_iters_cap, seed=args.seed, force=args.force,
                         precision=args.precision, tolerances=tolerances, iters=args.iters,
                         decode=not args.no_decode, engines=not args.no_engines, active_set=not args.dense_loop,
                         active_crossover=args.active_crossover, trt_profile=args.trt_profile,
                         rtx_targets=args.rtx_targets,
                         tols=args.tols, quiet=args.quiet, sign=args.sign, command=shlex.join(["depthscale-export", *argv]))
    if args.shapes:
        opts.shapes = args.shapes
    if args.decode_shapes:
        opts.decode_shapes = args.decode_shapes
    try:
        opts.graph_passes = [_load_pass(spec) for spec in args.graph_pass]
        report = export(model, out, opts)
    except BadInput as e:
        print(f"depthscale-export: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ExportFailed as e:
        print(f"depthscale-export: export failed: {e}", file=sys.stderr)
        return EXIT_EXPORT
    except KeyboardInterrupt:                 # the staging directory is gone already (atomic_dir)
        print(f"depthscale-export: interrupted; nothing written to {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        _print_table(out, report, args.verbose)
    if args.json:
        print(json.dumps({"artifact": str(out), **report}, indent=2))
    return EXIT_OK if report["status"] == "passed" else EXIT_PARITY


def _load_pass(spec: str):
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise BadInput(f"--graph-pass {spec!r}: cannot load it ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise BadInput(f"--graph-pass {spec!r} is not callable")
    return fn


def _print_table(out: Path, report: dict, verbose: bool) -> None:
    s = report["parity"]
    err = sys.stderr
    print(f"parity {s['samples'] - s['samples_failed']}/{s['samples']} samples passed; "
          f"logits max abs {s['logits_max_abs_err']:.3g}, max rel {s['logits_max_rel_err']:.3g}; "
          f"iterations equal: {s['iterations_equal']}; top-1 agreement min {s['top1_agreement_min']:.4f}; "
          f"ops bit-exact where required: {s['ops_passed']}", file=err)
    print(f"would pass with atol {s['would_pass_with']['atol']:.3g} (rtol 0) or rtol {s['would_pass_with']['rtol']:.3g} "
          f"(atol 0); first diverging iteration: {s['first_diverging_iteration']}", file=err)
    if verbose:
        rows = json.loads((out / "reports" / "parity.json").read_text())["samples"]
        print(f"{'batch':>5} {'seq':>5} {'T':>3} {'tol':>8} {'max abs':>9} {'iters eq':>8} {'top1':>7} pass", file=err)
        for r in rows:
            print(f"{r['batch']:5d} {r['seq']:5d} {r['max_iters']:3d} {r['tol']:8.3g} {r['logits_max_abs_err']:9.2g} "
                  f"{str(r['iterations_equal']):>8} {r['top1_agreement']:7.4f} {r['passed']}", file=err)
    d = s.get("decode")
    if d is not None:
        where = d["first_diverging"]
        print(f"decoding {d['samples'] - d['samples_failed']}/{d['samples']} samples passed ({d['tokens_decoded']} tokens "
              f"decoded one at a time after a prefill); logits max abs {d['logits_max_abs_err']:.3g}; iterations equal: "
              f"{d['iterations_equal']}" + ("" if where is None else
                                            f"; first diverging: {where['where']}, iteration {where['iteration']}"),
              file=err)
    else:
        print(f"decoding: no prefill/decode graphs ({report['decode']['why']})", file=err)
    trt = report["tensorrt_readiness"]
    problems = [f"{graph}: {c['check']}" for graph, r in trt["graphs"].items() for c in r["checks"] if not c["passed"]]
    print("TensorRT readiness (static, not gating): " + ("all checks pass" if trt["passed"] else
          "problems: " + "; ".join(problems)), file=err)
    engines = report["tensorrt"]
    built = sorted({e["dir"] for e in engines["engines"]})
    skipped = "; ".join(f"{flavor}: {why}" for flavor, why in engines["skipped"].items())
    print("TensorRT engines: " + (", ".join(built) if built else "none") + (f" (skipped {skipped})" if skipped else ""),
          file=err)
    print(f"{'PASSED' if report['status'] == 'passed' else 'FAILED'}: {out}", file=err)


if __name__ == "__main__":
    sys.exit(main())
