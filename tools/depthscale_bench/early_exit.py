"""f. Early exit: accuracy, agreement with the full-depth output, mean exit iteration and latency against
tol, on trained models (random weights do not converge meaningfully), with the recursion computed densely
(every position every iteration) and by active set (the export's default: dense while more than the
crossover fraction of positions run, then only the running tokens), side by side in one run.

Each model's graphs are model.onnx files of one packed model: the gated demo artifact's for the default
("active"), bench-only exports for the others (no parity gate: the section checks that the loops' outputs
are identical); "active-only" takes the active-set step from the first iteration,
which locates the crossover: the running fraction below which the active-set step is the faster one."""

from __future__ import annotations

import copy

import numpy as np
import torch

from depthscale.model import ACTIVE_CROSSOVER
from depthscale.tasks import IGNORE, get_task

from .runners import forward_feed, session
from .timing import interleaved

LOOPS = ("dense", "active", "active-only")


def graphs(ws, label: str, model, loops, made: dict) -> dict:
    """model.onnx of `model` (T cap = its max_iters, torch.onnx's optimizer on, as an artifact's) per loop
    kind: {loop: Exported}; made: the loops whose graph exists already (the default artifact's, "active")."""
    out = dict(made)
    for loop in (loop for loop in loops if loop not in made):
        variant = copy.deepcopy(model)
        variant.active_set = loop != "dense"
        variant.active_crossover = (1, 1) if loop == "active-only" else ACTIVE_CROSSOVER
        out[loop] = ws.graph(f"{label}-{loop}", variant, model.config.max_iters, unroll=False, optimize=True)
    return out


def outputs(s, ids: np.ndarray, T: int, tol: float, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, iterations) of every row of ids, `rows` at a time (one call over 256 examples of 1024
    tokens grew the three sessions' arenas past 20 GB)."""
    parts = [s.run(None, forward_feed(ids[i:i + rows], T, tol)) for i in range(0, len(ids), rows)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run(models: list, plan, log) -> dict:
    """models: [(label, config, {loop: Exported})], each a trained model and its graphs (T cap =
    config.max_iters). For every length (the task's own, and plan.early_exit_long where the model's
    max_seq_len allows), tol and batch: accuracy and top-1 agreement with tol 0 (T full iterations) over
    plan.early_exit_examples seeded examples (early_exit_long_examples at the long lengths), then every loop
    timed on the first `batch` of them."""
    results = []
    for label, config, onnx in models:
        task = get_task(config.task)
        T = config.max_iters
        sessions = {loop: session(e.onnx_path, 1) for loop, e in onnx.items()}
        lengths = [plan.early_exit_length] + [n for n in plan.early_exit_long if n + 1 <= config.max_seq_len]
        for length in lengths:
            examples = plan.early_exit_examples if length == plan.early_exit_length else plan.early_exit_long_examples
            data = task.sample(examples, length, torch.Generator().manual_seed(1234))
            ids, labels = data.ids.numpy(), data.labels.numpy()
            mask = labels != IGNORE
            full = outputs(sessions["dense"], ids, T, 0.0, plan.early_exit_batches[-1])[0].argmax(-1)
            rows = []
            for tol in plan.early_exit_tols:
                outs = {loop: outputs(s, ids, T, tol, plan.early_exit_batches[-1]) for loop, s in sessions.items()}
                logits, iterations = outs["dense"]
                same = all(np.array_equal(o[0], logits) and np.array_equal(o[1], iterations) for o in outs.values())
                top1 = logits.argmax(-1)
                row = {"tol": tol, "accuracy": float((top1[mask] == labels[mask]).mean()),
                       "agreement_with_full_depth": float((top1[mask] == full[mask]).mean()),
                       "mean_exit_iteration": float(iterations.mean()),
                       "running_fraction": float(iterations.mean() / T) if T else 0.0,
                       "loops_identical": same, "by_batch": {}}
                for batch in plan.early_exit_batches:
                    x = ids[:batch]
                    calls = {loop: (lambda s=s: s.run(None, forward_feed(x, T, tol))) for loop, s in sessions.items()}
                    t = interleaved(calls, reps=plan.reps, budget_s=plan.budget_s)
                    row["by_batch"][str(batch)] = {f"{loop}_ms": t[loop]["median_s"] * 1e3 for loop in sessions}
                rows.append(row)
                b = str(plan.early_exit_batches[-1])
                log(f"early exit {label} len {length + 1} tol {tol:g}: accuracy {row['accuracy']:.4f}, agreement "
                    f"{row['agreement_with_full_depth']:.4f}, mean exit {row['mean_exit_iteration']:.2f} of {T}; batch {b}: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in row["by_batch"][b].items()))
            for row in rows:
                for batch, times in row["by_batch"].items():
                    base = next(r for r in rows if r["tol"] == 0.0)["by_batch"][batch]
                    times["active_speedup_over_dense_tol0"] = base["dense_ms"] / times["active_ms"]
            results.append({"model": label, "task": task.name, "seq": length + 1, "max_iters": T,
                            "examples": int(ids.shape[0]), "labelled_positions": int(mask.sum()), "rows": rows})
    return {"threads": 1, "backend": "onnxruntime", "loops": list(LOOPS), "runs": results,
            "target": target(results, plan)}


def target(results: list, plan) -> dict:
    """The demo (first model) at its own length and the largest batch: the largest tol whose top-1 agreement
    with the full-depth output is >= 99 %, its speed-up over tol 0 (the active-set default against the
    dense loop at tol 0), and the default's overhead at tol 0 (every token runs all T)."""
    run = results[0]
    b = str(plan.early_exit_batches[-1])
    ok = [r for r in run["rows"] if r["agreement_with_full_depth"] >= 0.99]
    best = max(ok, key=lambda r: r["tol"])
    tol0 = next(r for r in run["rows"] if r["tol"] == 0.0)["by_batch"][b]
    return {"model": run["model"], "seq": run["seq"], "batch": int(b), "tol": best["tol"],
            "agreement": best["agreement_with_full_depth"],
            "speedup_over_tol0": tol0["dense_ms"] / best["by_batch"][b]["active_ms"],
            "ideal_speedup": run["max_iters"] / best["mean_exit_iteration"],
            "tol0_active_over_dense": tol0["active_ms"] / tol0["dense_ms"],
            "crossover_running_fraction": crossover(run["rows"], b)}


def crossover(rows: list, batch: str) -> float | None:
    """The running fraction (mean exit iteration / T) at which the active-set step from the first iteration
    ("active-only") costs as much as the dense loop, interpolated between the tols measured; None without
    active-only timings or a crossing (1.0 when active-only is never slower)."""
    points = sorted((r["running_fraction"], r["by_batch"][batch]["active-only_ms"] / r["by_batch"][batch]["dense_ms"])
                    for r in rows if "active-only_ms" in r["by_batch"][batch])
    if not points:
        return None
    if all(ratio <= 1 for _, ratio in points):
        return 1.0
    for (f0, r0), (f1, r1) in zip(points, points[1:]):
        if r0 <= 1 < r1:
            return f0 + (1 - r0) * (f1 - f0) / (r1 - r0)
    return None
