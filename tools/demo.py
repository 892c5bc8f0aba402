"""The demo job: load the bundled demo checkpoint and show what recurrent depth buys.

Prints the model, its task accuracy for T = 1, 2, 4, 8, 16, and one example with each token's exit
iteration (tokens further along the sequence need more iterations before their state settles).

    python tools/demo.py [--checkpoint PATH] [--text 0110101...]
"""

from __future__ import annotations

import argparse
import sys

import torch

from depthscale import demo_checkpoint, load_checkpoint
from depthscale.tasks import get_task
from depthscale_runtime.tokenizer import CharTokenizer
from depthscale.train import EVAL_ITERS, evaluate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a model.pt or checkpoint directory (default: the demo)")
    p.add_argument("--text", default="110100101110010110101101", help="input characters")
    args = p.parse_args(argv)
    model = load_checkpoint(args.checkpoint or demo_checkpoint())
    cfg = model.config
    print(f"model: {model.num_parameters():,} parameters, d_model {cfg.d_model}, window {cfg.window}, "
          f"core layers {cfg.core_layers}, task {cfg.task!r}, default T {cfg.max_iters}, tol {cfg.tol}")
    if cfg.task not in ("parity", "addition"):               # answered in place, position by position
        print(f"demo: error: this demo shows per-position tasks; a {cfg.task!r} model generates its answer: "
              f"export it and run tools/generate_demo.py on the artifact", file=sys.stderr)
        return 2
    task = get_task(cfg.task)
    acc = evaluate(model, task, EVAL_ITERS)
    print("accuracy (tol 0):  " + "  ".join(f"T={t}: {a:.3f}" for t, a in acc.items()))
    tok = CharTokenizer(cfg.tokenizer)
    try:
        ids = torch.tensor([tok.encode(args.text)])
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    with torch.no_grad():
        out = model(ids)
    answer = tok.decode(out.logits.argmax(-1)[0, 1:].tolist())          # position 0 is BOS
    expected = task.labels_for(args.text)
    if task.name == "addition":
        answer = answer[1::2]
    print(f"input     {args.text}")
    print(f"answer    {answer}")
    print(f"expected  {expected}   ({sum(a == b for a, b in zip(answer, expected))}/{len(expected)} right)")
    print("exit iter " + " ".join(str(int(i)) for i in out.iterations[0, 1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
