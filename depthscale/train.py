"""Training on the synthetic tasks: `depthscale-train` and its Python API.

Cross-entropy on labelled positions, AdamW, linear warmup then cosine decay, gradient clipping, a
random iteration count T per batch (so that the model works across T), truncated backpropagation
through the last config.grad_iters iterations, periodic evaluation, and a model.pt at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import check_checkpoint_target, save_checkpoint
from depthscale_runtime.config import LIMITS, DepthScaleConfig
from depthscale_runtime.interrupt import interruptible
from .model import DepthScaleModel
from .tasks import IGNORE, Task, get_task

EVAL_ITERS = (1, 2, 4, 8, 16)


@dataclass
class TrainOptions:
    steps: int = 1500
    batch_size: int = 32
    seq_len: int = 24              # training examples have min_seq_len..seq_len characters
    min_seq_len: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    clip: float = 1.0
    min_train_iters: int = 1       # T per batch is uniform in [min_train_iters, config.max_iters]
    eval_every: int = 250
    eval_batch: int = 256
    eval_iters: tuple[int, ...] = EVAL_ITERS
    seed: int = 0
    threads: int | None = None


@dataclass
class TrainResult:
    model: DepthScaleModel
    accuracy: dict[int, float]                          # T -> token accuracy (tol = 0), final eval
    seconds: float
    history: list[dict] = field(default_factory=list)   # one entry per evaluation


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warmup to opts.lr, then cosine decay to 10% of it."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: DepthScaleModel, task: Task, iters=EVAL_ITERS, batch: int = 256, length: int = 24,
             seed: int = 1234, tol: float = 0.0) -> dict[int, float]:
    """Token accuracy on labelled positions of a fixed seeded batch, for each T in `iters`."""
    was_training = model.training
    model.eval()
    data = task.sample(batch, length, torch.Generator().manual_seed(seed))
    mask = data.labels != IGNORE
    acc = {}
    for T in iters:
        pred = model(data.ids, max_iters=T, tol=tol).logits.argmax(-1)
        acc[T] = float((pred[mask] == data.labels[mask]).float().mean())
    model.train(was_training)
    return acc


def check_options(opts: TrainOptions, config: DepthScaleConfig) -> None:
    """Every option in its range for `config`, before anything is built. Raises ValueError naming the
    option as its depthscale-train flag."""
    def fail(name, rule, value):
        raise ValueError(f"--{name.replace('_', '-')} must be {rule}, got {value!r}")

    def integer(name, low, high=None):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            fail(name, f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}", value)

    for name in ("steps", "batch_size", "eval_every", "eval_batch"):
        integer(name, 1)
    integer("seq_len", 1, config.max_seq_len - 1)                 # examples are seq_len tokens plus BOS
    integer("min_seq_len", 1, opts.seq_len)
    integer("warmup", 0)
    integer("min_train_iters", 0, config.max_iters)
    if opts.threads is not None:
        integer("threads", 1)
    for name, positive in (("lr", True), ("clip", True), ("weight_decay", False)):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (positive and value == 0):
            fail(name, "a finite number " + ("> 0" if positive else ">= 0"), value)
    if not all(isinstance(t, int) and 0 <= t <= LIMITS["max_iters"] for t in opts.eval_iters):
        fail("eval_iters", f"ints in [0, {LIMITS['max_iters']}]", opts.eval_iters)


def train(config: DepthScaleConfig, opts: TrainOptions, progress: bool = True) -> TrainResult:
    """Train a fresh model on config.task. Deterministic for a given seed and thread count. Raises
    ValueError for options out of range (check_options)."""
    check_options(opts, config)
    if config.task is None:
        raise ValueError("config.task must name a task to train on")
    task = get_task(config.task)
    if config.tokenizer != task.chars:
        raise ValueError(f"config.tokenizer must be the task's characters {task.chars!r}")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    model = DepthScaleModel(config).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))
    history: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(opts.steps), desc=f"train {task.name}", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    for step in bar:
        for group in optim.param_groups:
            group["lr"] = lr_at(step, opts)
        length = int(torch.randint(opts.min_seq_len, opts.seq_len + 1, (), generator=gen))
        T = int(torch.randint(opts.min_train_iters, config.max_iters + 1, (), generator=gen))
        data = task.sample(opts.batch_size, length, gen)
        loss = loss_fn(model(data.ids, max_iters=T, tol=0.0).logits, data.labels)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
        optim.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", T=T)
        if (step + 1) % opts.eval_every == 0 or step + 1 == opts.steps:
            acc = evaluate(model, task, opts.eval_iters, opts.eval_batch, opts.seq_len)
            history.append({"step": step + 1, "loss": loss.item(), "seconds": time.perf_counter() - start,
                            "accuracy": acc})
            bar.write("step {:5d}  loss {:.4f}  acc {}".format(
                step + 1, loss.item(), "  ".join(f"T={t}:{a:.3f}" for t, a in acc.items())), file=sys.stderr)
    model.eval()
    return TrainResult(model=model, accuracy=history[-1]["accuracy"], seconds=time.perf_counter() - start,
                       history=history)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthscale-train", description=__doc__.split("\n\n")[0],
                                epilog="Exit codes: 0 trained and saved, 2 bad arguments, 130 interrupted (nothing saved).")
    p.add_argument("--task", default="parity", help="parity | addition | sum (default parity)")
    p.add_argument("-o", "--out", default="model.pt", help="checkpoint path (.pt file, or a directory)")
    d = DepthScaleConfig()
    for name in ("d_model", "n_heads", "n_kv_heads", "d_ff", "window", "prelude_layers", "core_layers",
                 "cross_layers", "max_iters", "min_iters", "reason_tokens", "max_seq_len", "grad_iters"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--tol", type=float, default=d.tol, help="default exit tolerance stored in the config")
    p.add_argument("--mixer", choices=("window", "retention"), default=d.mixer)
    p.add_argument("--no-bitnet", action="store_true", help="float linears instead of BitLinear")
    o = TrainOptions()
    for name in ("steps", "batch_size", "seq_len", "min_seq_len", "warmup", "eval_every", "seed", "threads",
                 "min_train_iters"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(o, name))
    for name in ("lr", "weight_decay", "clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(o, name))
    p.add_argument("--json", action="store_true", help="print the final report as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


def main(argv=None) -> int:
    return interruptible("depthscale-train", _main, argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        task = get_task(args.task)
        config = DepthScaleConfig(
            vocab_size=task.tokenizer.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
            n_kv_heads=args.n_kv_heads, d_ff=args.d_ff, window=args.window, prelude_layers=args.prelude_layers,
            core_layers=args.core_layers, cross_layers=args.cross_layers, max_iters=args.max_iters,
            min_iters=args.min_iters, tol=args.tol, mixer=args.mixer, bitnet=not args.no_bitnet,
            reason_tokens=args.reason_tokens, max_seq_len=args.max_seq_len, grad_iters=args.grad_iters,
            tokenizer=task.chars, task=task.name)
        opts = TrainOptions(**{k: getattr(args, k) for k in (
            "steps", "batch_size", "seq_len", "min_seq_len", "warmup", "eval_every", "seed", "threads",
            "min_train_iters", "lr", "weight_decay", "clip")})
        check_options(opts, config)
        check_checkpoint_target(args.out)
    except ValueError as e:
        print(f"depthscale-train: error: {e}", file=sys.stderr)
        return 2
    result = train(config, opts, progress=not args.quiet)
    path = save_checkpoint(result.model, args.out)
    report = {"checkpoint": str(path), "task": task.name, "seconds": round(result.seconds, 1),
              "parameters": result.model.num_parameters(), "accuracy": result.accuracy,
              "config": config.to_dict(), "options": asdict(opts)}
    if args.json:
        print(json.dumps(report, indent=2))
    elif not args.quiet:
        print(f"saved {path} ({result.seconds:.0f} s); accuracy by T: "
              + "  ".join(f"T={t}:{a:.3f}" for t, a in result.accuracy.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
