"""depthscale-run: run an artifact on token ids (or text, for models with a CharTokenizer), or generate
after them (--generate N, streamed as it is decoded). No torch."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .errors import ArtifactError, BackendUnavailableError, DecodingUnavailableError
from .interrupt import interruptible
from .runtime import load
from .tokenizer import CharTokenizer

EPILOG = """exit codes:
  0  ran
  2  bad usage, bad input, or an artifact that does not verify
  130  interrupted (Ctrl-C)"""


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
    p.add_argument("--verify", metavar="PUB.pem", default=None,
                   help="refuse the artifact unless it is signed with this public key's private key and unchanged")
    g = p.add_argument_group("generation")
    g.add_argument("--generate", type=int, default=None, metavar="N",
                   help="generate N tokens after the input, printing each as it is decoded")
    g.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; else sampling")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", default="", help="stop after any of these characters (text models) or comma-separated ids")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    return p


def _generate(rt, args, ids, tok) -> dict:
    """Stream the generated tokens (text for tokenizer models) to stdout unless --json; return the result."""
    stop_ids = []
    if args.stop and tok:
        stop_ids = tok.encode(args.stop)[1:]
    elif args.stop:
        try:
            stop_ids = [int(x) for x in args.stop.split(",")]
        except ValueError:
            raise ValueError(f"--stop must be comma-separated integers (or characters, for text models), "
                             f"got {args.stop!r}") from None
    steps = rt.stream(np.asarray(ids, dtype=np.int64), args.generate, max_iters=args.max_iters, tol=args.tol,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      stop_ids=stop_ids)
    if not args.json:
        print(args.text if tok else ",".join(map(str, ids)), end="", flush=True)
    tokens, iterations = [], []
    for step in steps:
        tokens.append(int(step.tokens[0]))
        iterations.append(int(step.iterations[0]))
        if not args.json:
            print(tok.decode(tokens[-1:]) if tok else f",{tokens[-1]}", end="", flush=True)
    if not args.json:
        print()
    result = {"ids": ids, "tokens": tokens, "iterations": iterations, "backend": rt.backend}
    if tok:
        result["text"] = tok.decode(tokens)
    return result


def main(argv=None) -> int:
    return interruptible("depthscale-run", _main, argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rt = load(args.artifact, backend=args.backend, verify=args.verify)
        chars = rt.config.get("tokenizer")
        tok = None
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
        tok = tok if args.text is not None else None
        if args.generate is not None:
            result = _generate(rt, args, ids, tok)
            if args.json:
                print(json.dumps(result))
            return 0
        out = rt.run(np.asarray(ids, dtype=np.int64), args.max_iters, args.tol)
    except (ArtifactError, BackendUnavailableError, DecodingUnavailableError, ValueError) as e:
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
