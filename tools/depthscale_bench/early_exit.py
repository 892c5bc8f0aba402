"""f. Early exit: mean exit iteration, task accuracy and latency per request against tol, on the demo
model's task (ONNX Runtime, through depthscale_runtime)."""

from __future__ import annotations

import numpy as np
import torch

from depthscale.tasks import IGNORE, get_task

from .runners import runtime
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
    # The Loop stops when every token of the batch is done, and a done token still costs its share of
    # each iteration, so time is measured where early exit can pay: requests of one example each.
    singles = ids[:plan.early_exit_singles]
    one_by_one = {str(tol): (lambda tol=tol: [rt.run(x[None], T, tol) for x in singles]) for tol in plan.early_exit_tols}
    times = interleaved(one_by_one, reps=plan.reps, budget_s=plan.budget_s)
    rows = []
    for tol in plan.early_exit_tols:
        out = rt.run(ids, T, tol)
        single_iters = np.array([rt.run(x[None], T, tol).iterations.max() for x in singles])
        rows.append({"tol": tol, "accuracy": float((out.logits.argmax(-1)[mask] == labels[mask]).mean()),
                     "mean_exit_iteration": float(out.iterations[mask].mean()),
                     "max_exit_iteration": int(out.iterations[mask].max()),
                     "mean_loop_iterations_per_request": float(single_iters.mean()),
                     "latency_per_request_s": times[str(tol)]["median_s"] / len(singles)})
        log(f"early exit tol {tol:g}: accuracy {rows[-1]['accuracy']:.4f}, mean exit iteration "
            f"{rows[-1]['mean_exit_iteration']:.2f} of {T}, {rows[-1]['latency_per_request_s'] * 1e3:.2f} ms per request")
    base = next(r for r in rows if r["tol"] == 0.0)
    for r in rows:
        r["speedup_over_tol0"] = base["latency_per_request_s"] / r["latency_per_request_s"]
    return {"task": task.name, "max_iters": T, "batch": int(ids.shape[0]), "seq": int(ids.shape[1]),
            "labelled_positions": int(mask.sum()), "requests_timed": len(singles), "threads": 1,
            "backend": "onnxruntime", "rows": rows}
