"""The models the bench measures, and their exports (made once per run, in a work directory).

Plans: "full" is the reference config (d_model 512, 8 heads, 2 KV heads, d_ff 1536,
2 prelude / 2 core / 2 cross layers, window 128, vocab 256, random weights) plus the bundled demo;
"quick" shrinks every dimension so that a smoke run takes well under two minutes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import onnx_ir as ir

from depthscale import DepthScaleConfig, DepthScaleModel, demo_checkpoint, load_checkpoint, save_checkpoint
from depthscale_export import export
from depthscale_export.graph.export import export_graph, finish_graph, forward_spec

REFERENCE = dict(vocab_size=256, d_model=512, n_heads=8, n_kv_heads=2, d_ff=1536, window=128, prelude_layers=2,
                 core_layers=2, cross_layers=2, max_iters=64, max_seq_len=4096)
QUICK_REFERENCE = dict(vocab_size=256, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, window=16, prelude_layers=1,
                       core_layers=1, cross_layers=1, max_iters=8, max_seq_len=256)
SEED = 0
# the parity gate of the bench's exports: small shapes (the bench measures, the tests cover parity widely)
# (T up to 16: the per-iteration check runs T ORT calls of up to T iterations; the latency rows check
# the outputs again at every T they measure); a short decoding gate (the decode section checks every
# step it times against eager again)
GATE = dict(shapes=[(1, 7), (2, 40)], tols=[0.0], decode_shapes=[(2, 6, 8)])
GATE_MAX_ITERS = 16


def random_model(config: dict, **overrides) -> DepthScaleModel:
    """A seeded random-weight model in eval mode (the same weights for the same config and seed)."""
    torch.manual_seed(SEED)
    return DepthScaleModel(DepthScaleConfig(**{**config, **overrides})).eval()


class UnrolledWrapper(torch.nn.Module):
    """The artifact's interface with the recursion unrolled: exactly `steps` core steps, no Loop.
    max_iters is ignored; per-token exit still freezes tokens, so outputs equal the Loop's at T = steps."""

    def __init__(self, model: DepthScaleModel, steps: int):
        super().__init__()
        self.model, self.steps = model, steps

    def forward(self, input_ids, lengths, max_iters, tol):
        state = self.model.init(input_ids, self.steps, tol, lengths)
        for _ in range(self.steps):
            state = self.model.step(state)
        out = self.model.finish(state)
        return out.logits, out.iterations


@dataclass
class Exported:
    name: str
    path: Path                 # artifact directory (gated export) or model.onnx (bench-only variant)
    seconds: float
    report: dict = field(default_factory=dict)

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx" if self.path.is_dir() else self.path


class Workspace:
    """Checkpoints and exports of one bench run, under `root` (a temporary directory)."""

    def __init__(self, root: Path, log):
        self.root, self.log = Path(root), log

    def checkpoint(self, name: str, model: DepthScaleModel) -> Path:
        """The float32 checkpoint (model.pt) of an unpacked model."""
        path = self.root / f"{name}.pt"
        if not path.exists():
            save_checkpoint(model, path)
        return path

    def artifact(self, name: str, source, cap: int) -> Exported:
        """A gated artifact (depthscale_export.export) of a checkpoint path or model, T cap `cap`."""
        self.log(f"export {name} (T cap {cap}, parity gate on)")
        start = time.perf_counter()
        report = export(source, self.root / name, max_iters_cap=cap, quiet=True, force=True, engines=False,
                        iters=sorted({0, 1, min(cap, GATE_MAX_ITERS)}), **GATE)
        seconds = time.perf_counter() - start
        if report["status"] != "passed":
            raise RuntimeError(f"the bench's export {name} failed its parity gate: {report['parity']}")
        return Exported(name, self.root / name, seconds, report)

    def graph(self, name: str, model: DepthScaleModel, cap: int, unroll: bool, optimize: bool = False) -> Exported:
        """model.onnx only: the recursion as the Loop(s) (T cap `cap`) or unrolled for exactly `cap` steps; by
        default without torch.onnx's optimizer, which takes minutes on the unrolled graph. No parity gate:
        the sections compare the forms' outputs."""
        self.log(f"export {name} ({'recursion unrolled, ' if unroll else 'Loop, T cap '}{cap}{' steps' if unroll else ''}"
                 f"{'' if optimize else ', no torch.onnx optimizer'})")
        packed = copy.deepcopy(model).packed()
        start = time.perf_counter()
        spec = forward_spec(packed, cap, UnrolledWrapper(packed, cap) if unroll else None)
        onnx_model = export_graph(packed, spec, optimize=optimize)
        finish_graph(onnx_model)
        path = self.root / f"{name}.onnx"
        ir.save(onnx_model, str(path))
        return Exported(name, path, time.perf_counter() - start)

def demo_model() -> DepthScaleModel:
    return load_checkpoint(demo_checkpoint())
