"""depthscale-run: run an artifact on token ids (or text, for models with a CharTokenizer). No torch."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .errors import ArtifactError, BackendUnavailableError
from .runtime import load
from .tokenizer import CharTokenizer

EPILOG = """exit codes:
  0  ran
  2  bad usage, bad input, or an artifact that does not verify"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthscale-run", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run a DepthScale artifact and print each token's output and exit iteration.")
    p.add_argument("artifact", help="artifact directory (made by depthscale-export)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="comma-separated token ids, e.g. 0,1,2,2")
    src.add_argument("--text", help="text, for models whose config carries a tokenizer (BOS is prepended)")
    p.add_argument("--max-iters", type=int, default=None)
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rt = load(args.artifact, backend=args.backend)
        chars = rt.config.get("tokenizer")
        if args.text is not None:
            if not chars:
                raise ValueError("this model has no tokenizer in its config: pass --ids")
            tok = CharTokenizer(chars)
            ids = tok.encode(args.text)
        else:
            try:
                ids = [int(x) for x in args.ids.split(",")]
            except ValueError:
                raise ValueError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
        out = rt.run(np.asarray(ids, dtype=np.int64), args.max_iters, args.tol)
    except (ArtifactError, BackendUnavailableError, ValueError) as e:
        print(f"depthscale-run: error: {e}", file=sys.stderr)
        return 2
    top = out.logits.argmax(-1).tolist()
    result = {"ids": ids, "argmax": top, "iterations": out.iterations.tolist(), "backend": rt.backend}
    if args.text is not None:
        result["answer"] = tok.decode(top[1:])                # position 0 is BOS
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'pos':>4} {'id':>6} {'argmax':>6} {'iters':>5}")
    for i, (t, a, it) in enumerate(zip(ids, top, result["iterations"])):
        print(f"{i:4d} {t:6d} {a:6d} {it:5d}")
    if "answer" in result:
        print(f"text    {args.text}\nanswer  {result['answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
