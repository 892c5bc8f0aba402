"""f. Early exit: mean exit iteration, task accuracy and latency against tol, on the demo model's task
(ONNX Runtime, through depthscale_runtime)."""

from __future__ import annotations

import numpy as np
import torch

from depthscale.tasks import IGNORE, get_task

from .runners import OrtRun, runtime
from .timing import interleaved


def run(demo_artifact, config, plan, log) -> dict:
    """config: the demo's DepthScaleConfig; T = its max_iters; a seeded batch of the task it was
    trained on (plan.early_exit_batch examples of plan.early_exit_length characters)."""
    task = get_task(config.task)
    data = task.sample(plan.early_exit_batch, plan.early_exit_length, torch.Generator().manual_seed(1234))
    ids, labels = data.ids.numpy(), data.labels.numpy()
    mask = labels != IGNORE
    T = config.max_iters
    rt = runtime(demo_artifact, 1)
    runs = {tol: OrtRun(rt, ids, T, tol) for tol in plan.early_exit_tols}
    times = interleaved({str(tol): r for tol, r in runs.items()}, reps=plan.reps, budget_s=plan.budget_s)
    rows = []
    for tol, r in runs.items():
        logits, iterations = r.last
        rows.append({"tol": tol, "accuracy": float((logits.argmax(-1)[mask] == labels[mask]).mean()),
                     "mean_exit_iteration": float(iterations[mask].mean()),
                     "max_exit_iteration": int(iterations[mask].max()),
                     "latency_median_s": times[str(tol)]["median_s"]})
        log(f"early exit tol {tol:g}: accuracy {rows[-1]['accuracy']:.4f}, mean exit iteration "
            f"{rows[-1]['mean_exit_iteration']:.2f} of {T}, {rows[-1]['latency_median_s'] * 1e3:.1f} ms")
    base = next(r for r in rows if r["tol"] == 0.0)
    for r in rows:
        r["speedup_over_tol0"] = base["latency_median_s"] / r["latency_median_s"]
    return {"task": task.name, "max_iters": T, "batch": int(ids.shape[0]), "seq": int(ids.shape[1]),
            "labelled_positions": int(mask.sum()), "threads": 1, "backend": "onnxruntime", "rows": rows}
