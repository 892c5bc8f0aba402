"""Ray Data batch inference over an artifact: a callable class for Dataset.map_batches, each actor
holding a depthscale_runtime.Runtime.

    import ray
    from depthscale_export.serving.ray_data import DepthScalePredictor
    ds = ray.data.from_items([{"input_ids": [0, 1, 2]}, {"input_ids": [2, 1], "max_iters": 4, "tol": 0.0}, ...])
    out = ds.map_batches(DepthScalePredictor, fn_constructor_kwargs={"artifact": "demo-onnx"},
                         batch_size=64, concurrency=2, batch_format="numpy")

A batch's rows run as one Runtime.run (right-padded, each with its own length and budgets: exact).
"""

from __future__ import annotations

import numpy as np

import depthscale_runtime


class DepthScalePredictor:
    """map_batches UDF. Input columns: input_ids (one sequence of token ids per row, lengths may differ);
    optional max_iters and tol (per row; the artifact's defaults where absent). Adds columns
    iterations (int64 [n] per row: each token's exit iteration), predictions (int64 [n]: each token's
    argmax) and, with logits=True, logits (float32 [n, vocab] per row). Bad input raises ValueError."""

    def __init__(self, artifact: str, logits: bool = False, intra_op_threads: int | None = None):
        self.runtime = depthscale_runtime.load(artifact, backend="onnxruntime", intra_op_threads=intra_op_threads)
        self.logits = logits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [np.asarray(ids, dtype=np.int64) for ids in batch["input_ids"]]
        budgets = {name: batch[name].tolist() for name in ("max_iters", "tol") if name in batch}
        out = self.runtime.run(rows, **budgets)
        n = [len(r) for r in rows]
        result = dict(batch)
        result["iterations"] = _ragged([out.iterations[i, :k] for i, k in enumerate(n)])
        result["predictions"] = _ragged([out.logits[i, :k].argmax(-1) for i, k in enumerate(n)])
        if self.logits:
            result["logits"] = _ragged([out.logits[i, :k] for i, k in enumerate(n)])
        return result


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A column of per-row arrays whose lengths may differ (an object array: Ray Data stores it as a
    variable-shaped tensor column)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column
