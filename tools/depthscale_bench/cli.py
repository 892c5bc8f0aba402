"""depthscale-bench: measure everything side by side in one run and write results.json, results.md and
PNG plots into OUT (atomically: OUT appears complete or not at all).

    python tools/bench.py                 # the full plan (its early-exit section alone: 15 minutes on 2 cores)
    python tools/bench.py --quick         # the same sections on small shapes, about 6 minutes
    python tools/bench.py --only decode   # one section (or several, comma-separated)

Exit codes: 0 measured (missed targets are reported in the results, not by the exit code), 2 bad usage.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import onnxruntime
import torch

import depthscale
from depthscale import DepthScaleModel, demo_checkpoint, load_checkpoint
from depthscale.atomic_dir import TargetError, check_target, staging_dir
from depthscale_runtime.interrupt import interruptible

from . import decode, depth, early_exit, latency, machine_limit, report, sequence, size, unrolled
from .models import Workspace, demo_model, random_model
from .plan import PLANS


def machine() -> str:
    name = platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


class Subjects:
    """The models and exports the sections measure, each made on first use (so that --only makes only
    what its sections need); `exports` records each export's time."""

    def __init__(self, plan, ws: Workspace):
        self.plan, self.ws, self.exports = plan, ws, {}

    def _made(self, exported):
        self.exports[exported.name] = {"seconds": exported.seconds}
        return exported

    @cached_property
    def ref(self):
        return random_model(self.plan.reference)

    @cached_property
    def ref_ckpt(self):
        return self.ws.checkpoint("reference", self.ref)

    @cached_property
    def cap(self) -> int:
        return max(self.plan.size_caps[1], *self.plan.iters)

    @cached_property
    def ref_art(self):
        return self._made(self.ws.artifact("reference", self.ref_ckpt, self.cap))

    @cached_property
    def ref_small(self):
        return self._made(self.ws.artifact(f"reference-cap{self.plan.size_caps[0]}", self.ref_ckpt,
                                           self.plan.size_caps[0]))

    @cached_property
    def ref_decode(self):
        """The reference with T cap plan.decode_cap: the decode section times decoding on it (the decode
        graphs carry the cap's T slots of core cache, whatever max_iters a generation asks for). One of
        the other exports when their cap is the same (the quick plan: no extra export)."""
        T = self.plan.decode_cap
        if T == self.cap:
            return self.ref_art
        if T == self.plan.size_caps[0]:
            return self.ref_small
        return self._made(self.ws.artifact(f"reference-cap{T}", self.ref_ckpt, T))

    @cached_property
    def full_art(self):
        ref = self.ref
        full = DepthScaleModel(ref.config.replace(window=ref.config.max_seq_len)).eval()
        full.load_state_dict(ref.state_dict())
        return self._made(self.ws.artifact("reference-full-attention",
                                           self.ws.checkpoint("reference-full-attention", full), self.plan.seq_iters))

    @cached_property
    def loop_onnx(self):
        return self._made(self.ws.graph("reference-loop", self.ref, self.plan.unroll_steps, unroll=False))

    @cached_property
    def unrolled_onnx(self):
        return self._made(self.ws.graph("reference-unrolled", self.ref, self.plan.unroll_steps, unroll=True))

    @cached_property
    def demo(self):
        return demo_model()

    @cached_property
    def demo_art(self):
        return self._made(self.ws.artifact("demo", demo_checkpoint(), max(*self.plan.iters, self.demo.config.max_iters)))

    @cached_property
    def early_exit_models(self):
        """[(label, config, {loop: Exported})] of the plan's trained demos (early_exit.graphs)."""
        models = []
        for task in self.plan.early_exit_models:
            model = self.demo if task == "parity" else load_checkpoint(demo_checkpoint(task))
            made = {"active": self.demo_art} if task == "parity" else {}
            onnx = early_exit.graphs(self.ws, f"demo-{task}", model, self.plan.early_exit_loops, made)
            for loop, e in onnx.items():
                if loop not in made:
                    self._made(e)
            models.append((f"demo-{task}", model.config, onnx))
        return models

    @cached_property
    def ref_packed(self):
        return copy.deepcopy(self.ref).packed()

    @cached_property
    def demo_packed(self):
        return copy.deepcopy(self.demo).packed()


# every section: its results key and how it runs on the Subjects (s), the plan, the work directory and log
SECTIONS = {
    "size": lambda s, plan, tmp, log: size.run({plan.size_caps[0]: s.ref_small.path, s.cap: s.ref_art.path}, s.ref_ckpt),
    "machine_limit": lambda s, plan, tmp, log: machine_limit.run(s.ref_packed, s.ref_art.path, plan, tmp, log),
    "latency": lambda s, plan, tmp, log: latency.run([("reference", s.ref_packed, s.ref_art.path),
                                                      ("demo", s.demo_packed, s.demo_art.path)], plan, log),
    "depth": lambda s, plan, tmp, log: depth.run(s.ref_ckpt, s.ref_art.path, plan, log),
    "sequence": lambda s, plan, tmp, log: sequence.run(s.ref_art.path, s.full_art.path, s.ref.config.vocab_size, plan, log),
    "unrolled": lambda s, plan, tmp, log: unrolled.run(s.loop_onnx, s.unrolled_onnx, plan.unroll_steps,
                                                       s.ref.config.vocab_size, plan, log),
    "early_exit": lambda s, plan, tmp, log: early_exit.run(s.early_exit_models, plan, log),
    "decode": lambda s, plan, tmp, log: decode.run(
        s.ref_decode.path, {plan.size_caps[0]: s.ref_small.path, plan.decode_cap: s.ref_decode.path, s.cap: s.ref_art.path},
        s.ref_packed, s.demo_art.path, s.demo.config, plan, log),
}


def run(plan, out: Path, command: str, log, only: list[str] | None = None) -> dict:
    """The plan's sections (all, or those in `only`); returns the results dict (also written into out)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="depthscale-bench-") as tmp:
        s = Subjects(plan, Workspace(Path(tmp), log))
        results = {"plan": dataclasses.asdict(plan),
                   "models": {"reference": {"config": s.ref.config.to_dict(), "parameters": s.ref.num_parameters(),
                                            "weights": "random, seed 0"},
                              "demo": {"config": s.demo.config.to_dict(), "parameters": s.demo.num_parameters(),
                                       "weights": "trained (depthscale/data/demo.pt)"}},
                   "exports": s.exports}
        if only:
            results["only"] = list(only)
        for name, section in SECTIONS.items():
            if not only or name in only:
                results[name] = section(s, plan, Path(tmp), log)
    results["targets"] = report.targets(results)
    results["meta"] = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "seconds": time.perf_counter() - start, "command": command,
                       "versions": {"depthscale": depthscale.__version__, "torch": torch.__version__,
                                    "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}}
    with staging_dir(out, replace=True) as tmp_out:
        report.write(results, tmp_out)
    return results


def main(argv=None) -> int:
    return interruptible("depthscale-bench", _main, argv)


def _main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="depthscale-bench", description=__doc__.split("\n\n")[0],
                                epilog="exit codes: 0 measured, 2 bad usage, 130 interrupted (nothing written)")
    p.add_argument("--quick", action="store_true", help="small shapes, one repetition: a smoke run (about 6 min on 2 cores)")
    p.add_argument("-o", "--out", default="bench-results", help="output directory (default bench-results)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--grid", choices=("axes", "full", "anchor"), default="axes",
                   help="latency points: each of batch/seq/T varied around the anchor (default), every combination, "
                        "or the anchor only")
    p.add_argument("--only", metavar="SECTION[,SECTION...]", type=lambda v: v.split(","),
                   help=f"run only these sections (of {', '.join(SECTIONS)}); results.md, the plots and the targets "
                        f"then cover only them")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(SECTIONS))
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    out = Path(args.out)
    try:
        check_target(out, args.force, "results.json", "bench output")
    except TargetError as e:
        print(f"depthscale-bench: error: {e}", file=sys.stderr)
        return 2
    plan = dataclasses.replace(PLANS["quick" if args.quick else "full"], grid=args.grid)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench {time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    results = run(plan, out, " ".join(["python tools/bench.py", shlex.join(argv)]).strip(), log, args.only)
    for t in results["targets"]:
        fig = "n/a" if t["figure"] is None else f"{t['figure']:.3f}"
        log(f"target {t['target']} ({t['where']}): {fig}, goal {t['goal']}: {'met' if t['met'] else 'MISSED'}")
    log(f"wrote {out}/results.json, results.md and plots")
    return 0
