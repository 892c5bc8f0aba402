"""The generative demo: an exported `sum` model writes the digits of a + b after "a+b=", one token at a
time, through the torch-free runtime (prefill.onnx, then decode.onnx per token).

Numbers are written least significant digit first (as the model reads and writes them): "12+93=" asks
for 21 + 39, and the answer "060" is 60. Prints a few answers next to the expected sums with each
generated token's exit iteration, then exact-match (and per-digit) accuracy over seeded prompts for each
iteration budget T (max_iters), so that one sees what depth buys.

    depthscale-export "$(python -c 'import depthscale; print(depthscale.demo_checkpoint("sum"))')" -o sum-onnx
    python tools/generate_demo.py sum-onnx [--digits 7] [--prompts 100] [--iters 1,2,4,8,16]

It imports no torch: prompts come from Python's random (seeded), expected sums from Python's integers.
"""

from __future__ import annotations

import argparse
import random
import sys

import depthscale_runtime
from depthscale_runtime import ArtifactError, BackendUnavailableError
from depthscale_runtime.tokenizer import CharTokenizer


def operands(rng: random.Random, n: int) -> tuple[int, int]:
    """Two n-digit operands (leading zeros allowed) with long carry chains, as the model was trained on:
    each digit pair sums to 9 with probability 1/2, else b's digit is uniform."""
    a = [rng.randrange(10) for _ in range(n)]
    b = [9 - d if rng.random() < 0.5 else rng.randrange(10) for d in a]
    return (int("".join(map(str, a))), int("".join(map(str, b))))


def prompt(a: int, b: int, n: int) -> str:
    """"a+b=" with a and b as n digits each, least significant first."""
    return f"{a:0{n}d}"[::-1] + "+" + f"{b:0{n}d}"[::-1] + "="


def answer(a: int, b: int, n: int) -> str:
    """The n + 1 digits of a + b, least significant first: what the model should generate."""
    return f"{a + b:0{n + 1}d}"[::-1]


def generate(rt, tok: CharTokenizer, pairs, n: int, **options) -> tuple[list[str], list[list[int]]]:
    """Greedy answers (n + 1 tokens each) for the operand pairs, and each token's exit iteration."""
    ids = [tok.encode(prompt(a, b, n)) for a, b in pairs]
    result = rt.generate(ids, n + 1, **options)
    texts = [tok.decode(row) for row in result.tokens.tolist()]
    return texts, result.iterations.tolist()


def parse_iters(text: str) -> list[int]:
    try:
        iters = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"iters must look like 1,2,4,8,16, got {text!r}") from None
    if not iters or min(iters) < 0:
        raise argparse.ArgumentTypeError(f"iters must be >= 0, got {text!r}")
    return iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="an artifact directory exported from the sum demo (depthscale-export)")
    p.add_argument("--digits", type=int, default=7, help="digits per operand (default 7; trained on 1..7)")
    p.add_argument("--examples", type=int, default=6, help="answers shown (default 6)")
    p.add_argument("--prompts", type=int, default=100, help="prompts per accuracy measurement (default 100)")
    p.add_argument("--iters", type=parse_iters, default=[1, 2, 4, 8, 16], help="T values (default 1,2,4,8,16)")
    p.add_argument("--tol", type=float, default=0.0, help="exit tolerance for the accuracy table (default 0: "
                                                          "every token runs T iterations)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts (default 0)")
    args = p.parse_args(argv)
    if args.digits < 1 or args.examples < 0 or args.prompts < 1:
        p.error("digits and prompts must be >= 1, examples >= 0")
    try:
        rt = depthscale_runtime.load(args.artifact, backend="onnxruntime")
    except (ArtifactError, BackendUnavailableError) as e:       # what the runtime refuses: say what, and stop
        print(f"generate_demo: error: {e}", file=sys.stderr)
        return 2
    cfg = rt.config
    if cfg.get("task") != "sum" or not cfg.get("tokenizer"):
        print(f"generate_demo: error: {args.artifact} holds a {cfg.get('task')!r} model, not the sum demo",
              file=sys.stderr)
        return 2
    n = args.digits
    if 3 * n + 3 > rt.artifact.max_seq_len:
        p.error(f"{n}-digit prompts and answers do not fit the model's max_seq_len ({rt.artifact.max_seq_len})")
    tok = CharTokenizer(cfg["tokenizer"])
    print(f"model: task {cfg['task']!r}, d_model {cfg['d_model']}, window {cfg['window']}, core layers "
          f"{cfg['core_layers']}, default T {rt.default_max_iters}, tol {rt.default_tol} ({rt.backend})")
    print("numbers are written least significant digit first: 12+93= is 21 + 39, and 060 is 60")

    rng = random.Random(args.seed)
    if args.examples:
        pairs = [operands(rng, n) for _ in range(args.examples)]
        texts, iterations = generate(rt, tok, pairs, n)          # the artifact's default T and tol
        print(f"\n{n}-digit sums at the defaults (T {rt.default_max_iters}, tol {rt.default_tol}):")
        print(f"{'prompt':<{2 * n + 3}} {'generated':<{n + 2}} {'expected':<{n + 2}}     exit iteration per token")
        for (a, b), text, its in zip(pairs, texts, iterations):
            expected = answer(a, b, n)
            mark = "ok" if text == expected else "xx"
            print(f"{prompt(a, b, n):<{2 * n + 3}} {text:<{n + 2}} {expected:<{n + 2}} {mark}   "
                  + " ".join(f"{i:2d}" for i in its) + f"      ({a} + {b} = {a + b})")

    pairs = [operands(rng, n) for _ in range(args.prompts)]
    expected = [answer(a, b, n) for a, b in pairs]
    print(f"\naccuracy over {args.prompts} {n}-digit prompts (seed {args.seed}), tol {args.tol}: "
          f"whole answers exactly right (digits right)")
    for T in args.iters:
        texts, _ = generate(rt, tok, pairs, n, max_iters=T, tol=args.tol)
        exact = sum(t == e for t, e in zip(texts, expected)) / len(pairs)
        digits = sum(x == y for t, e in zip(texts, expected) for x, y in zip(t, e)) / (len(pairs) * (n + 1))
        print(f"  T={T:<3d} {exact:6.3f}   ({digits:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
