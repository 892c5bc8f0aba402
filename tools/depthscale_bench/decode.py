"""h. Decode: incremental decoding (the artifact's prefill.onnx + decode.onnx through depthscale_runtime,
and eager depthscale.decode) against re-running the whole forward for every new token; the decode cache's
bytes per sequence against N and the cache's T; decode iterations per token against the full forward's
exit iterations over the same tokens."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from depthscale.decode import DecodeCache, decode, prefill
from depthscale.tasks import get_task
from depthscale_runtime.generate import pad_global_kv

from .runners import EagerRun, OrtRun, runtime, seeded_ids
from .timing import interleaved

CACHE_PARTS = ("prelude", "core", "global_kv")          # the order of the runtime's caches


def _budgets(batch: int, max_iters: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    return np.full(batch, max_iters, np.int64), np.full(batch, tol, np.float32)


def ort_prefill(rt, ids: np.ndarray, max_iters: int, tol: float):
    """The runtime's prefill graph over a full-length batch: (logits, iterations, [prelude, core, global_kv])."""
    batch, n = ids.shape
    return rt._decoder().prefill(ids, np.full(batch, n, np.int64), *_budgets(batch, max_iters, tol))


def cache_bytes(caches) -> dict:
    """Bytes per sequence of each part, from the arrays' nbytes (prelude and core: the self-decoder's window
    caches; global_kv: YOCO's one global KV)."""
    batch = caches[0].shape[0]
    parts = {name: int(c.nbytes) // batch for name, c in zip(CACHE_PARTS, caches)}
    return {**parts, "self_decoder": parts["prelude"] + parts["core"], "total": sum(parts.values())}


def formula_bytes(cfg: dict, positions: int, iters: int, itemsize: int = 4) -> dict:
    """docs/decoding.md's table: the same parts from the config alone (a cross-check of the measured bytes)."""
    kv = 2 * cfg["n_kv_heads"] * (cfg["d_model"] // cfg["n_heads"]) * itemsize
    P = cfg["window"] - 1
    return {"prelude": cfg["prelude_layers"] * P * kv, "core": cfg["core_layers"] * iters * P * kv,
            "global_kv": positions * kv}


class OrtDecodeStep:
    """One decode.onnx step per call through depthscale_runtime's decoder: the next token of `ids`
    (teacher-forced) after the cached ones; keeps every step's logits and iterations."""

    name = "ort decode"

    def __init__(self, rt, ids: np.ndarray, start: int, caches, max_iters: int, tol: float):
        self.decoder, self.ids, self.pos, self.caches = rt._decoder(), ids, start, list(caches)
        self.max_iters, self.tol = _budgets(ids.shape[0], max_iters, tol)
        self.logits, self.iterations = [], []

    def __call__(self):
        batch = self.ids.shape[0]
        logits, iterations, self.caches = self.decoder.decode(self.ids[:, self.pos:self.pos + 1],
                                                              np.full(batch, self.pos, np.int64), self.max_iters,
                                                              self.tol, self.caches)
        self.pos += 1
        self.logits.append(logits[:, 0])
        self.iterations.append(iterations[:, 0])


class EagerDecodeStep:
    """One depthscale.decode.decode step per call on the packed model, `threads` torch threads, from a
    DecodeCache; keeps every step's logits and iterations."""

    name = "eager decode"

    def __init__(self, model, ids: np.ndarray, start: int, cache: DecodeCache, threads: int = 1):
        self.model, self.ids, self.pos, self.cache, self.threads = model, torch.from_numpy(ids), start, cache, threads
        self.logits, self.iterations = [], []

    def __call__(self):
        torch.set_num_threads(self.threads)
        with torch.no_grad():
            out, self.cache = decode(self.model, self.cache, self.ids[:, self.pos:self.pos + 1])
        self.pos += 1
        self.logits.append(out.logits[:, 0].numpy())
        self.iterations.append(out.iterations[:, 0].numpy())


def eager_cache(caches, ids_len: int, batch: int, max_iters: int, tol: float) -> DecodeCache:
    """The runtime's prefill caches as an eager DecodeCache (the same layout; the export's decoding gate
    holds ORT's prefill to eager's): eager decode steps start where ORT's do, without an eager prefill."""
    prelude, core, global_kv = (torch.from_numpy(np.array(c)) for c in caches)
    return DecodeCache(prelude, core, global_kv, torch.full((batch,), ids_len, dtype=torch.int64),
                       torch.full((batch,), max_iters, dtype=torch.int64), torch.full((batch,), tol, dtype=torch.float32))


def _recompute(calls: dict, reps: int, budget_s: float) -> dict:
    """Each whole forward once; if that took under budget_s it was the warm-up, and 1..reps timed runs follow
    (as many as fit budget_s at its pace); else that one (cold) run is the figure: a whole forward at 4096
    tokens and batch 8 takes minutes here, and ORT's first run at a new length is slower (the ratio to
    decoding is then overstated by that much, which `warmed_up` says)."""
    out = {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
        if first > budget_s:
            out[name] = {"median_s": first, "times_s": [round(first, 6)], "warmed_up": False}
            continue
        times = []
        for _ in range(max(1, min(reps, int(budget_s / first)))):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out[name] = {"median_s": statistics.median(times), "times_s": [round(x, 6) for x in times], "warmed_up": True,
                     "warmup_s": first}
    return out


def speed(rt, model, vocab_size: int, plan, log) -> list[dict]:
    """Per (batch, N): ms per decode step with about N tokens cached, for ORT and eager (interleaved, the
    median of plan.decode_steps steps after plan.decode_warmup; the prompt is N - warmup - steps tokens,
    so that the last step decodes token N, within max_seq_len), against the whole forward over the N
    tokens that the last step completes (ORT's model.onnx and, up to plan.decode_eager_recompute_tokens
    tokens per batch, eager): both give that token's logits. T = the decode artifact's cap, tol 0.
    The rows of a batch repeat one prompt, prefilled once and its caches repeated (every op is row-wise:
    rows cost the same whatever they hold; a prefill of 8 x 4096 tokens takes minutes here)."""
    T = rt.artifact.max_iters_cap
    # the runtime creates its prefill and decode sessions on first use: not inside a timed prefill
    warm = seeded_ids(vocab_size, 1, 4)
    _, _, caches = ort_prefill(rt, warm[:, :3], 1, 0.0)
    caches[2] = pad_global_kv(caches[2], 4)
    OrtDecodeStep(rt, warm, 3, caches, 1, 0.0)()
    rows = []
    k = plan.decode_warmup + plan.decode_steps
    for n in plan.decode_seqs:
        one = seeded_ids(vocab_size, 1, n, seed=n)
        start = time.perf_counter()
        _, _, prefilled = ort_prefill(rt, one[:, :n - k], T, 0.0)
        prefill_s = time.perf_counter() - start
        prefilled[2] = pad_global_kv(prefilled[2], n)
        for batch in plan.decode_batches:
            ids = np.repeat(one, batch, 0)
            caches = [np.repeat(c, batch, 0) for c in prefilled]
            steps = {"ort": OrtDecodeStep(rt, ids, n - k, caches, T, 0.0),
                     "eager": EagerDecodeStep(model, ids, n - k, eager_cache(caches, n - k, batch, T, 0.0))}
            t = interleaved(steps, reps=plan.decode_steps, warmup=plan.decode_warmup)
            recompute = {"ort": OrtRun(rt, ids, T, 0.0)}
            if batch * n <= plan.decode_eager_recompute_tokens:
                recompute["eager"] = EagerRun(model, ids, T, 0.0, 1)
            r = _recompute(recompute, plan.decode_recompute_reps, plan.decode_recompute_budget_s)
            ort_step, eager_step = t["ort"]["median_s"], t["eager"]["median_s"]
            ort_full = r["ort"]["median_s"]
            eager_full = r["eager"]["median_s"] if "eager" in r else None
            # the last decode step gives token n's logits: the whole forward's at its last position
            last = steps["ort"].logits[-1]
            row = {"batch": batch, "seq": n, "prompt": n - k, "max_iters": T, "tol": 0.0, "threads": 1,
                   "ort_prefill_s": prefill_s, "ort_prefill_batch": 1,
                   "ort_decode_step_s": ort_step, "eager_decode_step_s": eager_step,
                   "ort_recompute_s": ort_full, "eager_recompute_s": eager_full,
                   "ort_decode_ms_per_token": ort_step * 1e3 / batch, "eager_decode_ms_per_token": eager_step * 1e3 / batch,
                   "ort_recompute_ms_per_token": ort_full * 1e3 / batch,
                   "eager_recompute_ms_per_token": None if eager_full is None else eager_full * 1e3 / batch,
                   "ort_decode_tokens_per_s": batch / ort_step, "eager_decode_tokens_per_s": batch / eager_step,
                   "ort_recompute_tokens_per_s": batch / ort_full,
                   "eager_recompute_tokens_per_s": None if eager_full is None else batch / eager_full,
                   "ort_recompute_over_ort_decode": ort_full / ort_step,
                   "eager_recompute_over_eager_decode": None if eager_full is None else eager_full / eager_step,
                   "ort_recompute_over_eager_decode": ort_full / eager_step,
                   "eager_decode_over_ort_decode": eager_step / ort_step,
                   "decode_steps_timed": len(t["ort"]["times_s"]), "recompute_reps": len(r["ort"]["times_s"]),
                   "ort_recompute_warmed_up": r["ort"]["warmed_up"],
                   "eager_recompute_warmed_up": r["eager"]["warmed_up"] if "eager" in r else None,
                   "ort_decode_times_s": t["ort"]["times_s"], "eager_decode_times_s": t["eager"]["times_s"],
                   "ort_recompute_times_s": r["ort"]["times_s"],
                   "eager_recompute_times_s": r["eager"]["times_s"] if "eager" in r else None,
                   # agreement: ORT and eager decode steps alike; the last step against the whole forward
                   "decode_logits_max_abs_diff": float(max(np.abs(a - b).max() for a, b in
                                                           zip(steps["ort"].logits, steps["eager"].logits))),
                   "decode_iterations_equal": all(np.array_equal(a, b) for a, b in
                                                  zip(steps["ort"].iterations, steps["eager"].iterations)),
                   "last_step_vs_recompute_logits_max_abs_diff": float(np.abs(last - recompute["ort"].last[0][:, -1]).max())}
            rows.append(row)
            log(f"decode b{batch} N{n} T{T}: ORT {ort_step * 1e3:.2f} ms/step, eager {eager_step * 1e3:.2f} ms/step; "
                f"recompute ORT {ort_full:.3f} s" + ("" if eager_full is None else f", eager {eager_full:.3f} s")
                + f"; ORT recompute / ORT decode {ort_full / ort_step:,.0f}x")
    return rows


def cache(rts: dict[int, object], model, plan, log) -> dict:
    """Bytes per sequence of the runtime's prefill caches (nbytes) at batch 1: against N with the decode
    artifact (T = its cap, plan.decode_cap), and against T at the anchor's N, for the runtime (one artifact per cap in
    `rts`) and for eager depthscale.decode.prefill (cache_iters T). Prefilled at max_iters 1: the caches'
    shapes do not depend on it (the core cache always has the cap's T slots)."""
    T0 = plan.decode_cap
    cfg = rts[T0].config
    vocab = cfg["vocab_size"]
    seq_rows = []
    for n in plan.decode_cache_seqs:
        _, _, caches = ort_prefill(rts[T0], seeded_ids(vocab, 1, n), 1, 0.0)
        b = cache_bytes(caches)
        seq_rows.append({"seq": n, "max_iters_cap": T0, **b,
                         "matches_formula": {k: b[k] for k in CACHE_PARTS} == formula_bytes(cfg, n, T0)})
        log(f"decode cache N{n} T{T0}: prelude {b['prelude']:,} B, core {b['core']:,} B, "
            f"global KV {b['global_kv']:,} B")
    n = plan.anchor[1]
    ids = seeded_ids(vocab, 1, n)
    iter_rows = []
    for T in sorted(set(plan.decode_cache_iters) | set(rts)):
        row = {"max_iters_cap": T, "seq": n}
        with torch.no_grad():
            _, c = prefill(model, torch.from_numpy(ids), max_iters=1, cache_iters=T)
        row["eager"] = cache_bytes([c.prelude.numpy(), c.core.numpy(), c.global_kv.numpy()])
        if T in rts:
            row["onnxruntime"] = cache_bytes(ort_prefill(rts[T], ids, 1, 0.0)[2])
        row["matches_formula"] = {k: row["eager"][k] for k in CACHE_PARTS} == formula_bytes(cfg, n, T)
        iter_rows.append(row)
        log(f"decode cache T{T} N{n}: core {row['eager']['core']:,} B (eager)"
            + (f", {row['onnxruntime']['core']:,} B (ORT)" if "onnxruntime" in row else ""))
    by_seq = {r["seq"]: r for r in seq_rows}
    lo, hi = min(plan.decode_seqs), max(plan.decode_seqs)
    return {"batch": 1, "itemsize": 4, "by_seq": seq_rows, "by_iters": iter_rows,
            "self_decoder_ratio": {"label": f"self-decoder bytes N {hi} / N {lo}",
                                   "value": by_seq[hi]["self_decoder"] / by_seq[lo]["self_decoder"]},
            "ort_equals_eager_by_iters": all(r["onnxruntime"] == r["eager"] for r in iter_rows if "onnxruntime" in r)}


def iterations(label: str, rt, ids: np.ndarray, prompt: int, max_iters: int, tol: float, log) -> dict:
    """Prefill ids[:, :prompt], decode the rest one token per step (teacher-forced), and compare the decode
    steps' exit iterations with the whole forward's over the same positions (ORT, tol `tol`)."""
    batch, total = ids.shape
    _, _, caches = ort_prefill(rt, ids[:, :prompt], max_iters, tol)
    caches[2] = pad_global_kv(caches[2], total)
    step = OrtDecodeStep(rt, ids, prompt, caches, max_iters, tol)
    for _ in range(total - prompt):
        step()
    decoded = np.stack(step.iterations, 1)                                  # [B, new]
    full = rt.run(ids, max_iters, tol).iterations[:, prompt:]
    dec_mean, full_mean = float(decoded.mean()), float(full.mean())
    row = {"model": label, "batch": batch, "prompt": prompt, "new_tokens": total - prompt, "max_iters": max_iters,
           "tol": tol, "decode_mean_iterations": dec_mean, "full_forward_mean_exit_iteration": full_mean,
           "relative_difference": abs(dec_mean - full_mean) / full_mean, "identical": bool(np.array_equal(decoded, full)),
           "decode_loop_iterations_per_step": float(decoded.max(0).mean()),
           "early_exit_fraction": float((full < max_iters).mean())}
    log(f"decode iterations {label} T{max_iters} tol {tol:g}: decode {dec_mean:.3f} per token, whole forward "
        f"{full_mean:.3f} (exited early: {row['early_exit_fraction']:.0%})")
    return row


def run(ref_decode_artifact, ref_artifacts: dict, ref_packed, demo_artifact, demo_config, plan, log) -> dict:
    """ref_decode_artifact: the reference exported with cap T = plan.decode_cap (all decoding is timed on it);
    ref_artifacts: {cap: artifact dir} of the reference for the cache-against-T sweep (the decode one
    included); demo_artifact: the demo's (its decode iterations, the demo being trained to exit early)."""
    rt = runtime(ref_decode_artifact, 1)
    cfg = ref_packed.config
    result = {"threads": 1, "backend": "onnxruntime and eager", "max_iters": rt.artifact.max_iters_cap,
              "eager_recompute_tokens": plan.decode_eager_recompute_tokens,
              "speed": speed(rt, ref_packed, cfg.vocab_size, plan, log)}
    rts = {cap: runtime(path, 1) for cap, path in ref_artifacts.items()}
    result["cache"] = cache(rts, ref_packed, plan, log)
    batch, prompt, new = plan.decode_iter_shape
    ids = seeded_ids(cfg.vocab_size, batch, prompt + new, seed=1)
    rows = [iterations("reference", rt, ids, prompt, rt.artifact.max_iters_cap, cfg.tol if tol is None else tol, log)
            for tol in plan.decode_iter_tols]
    task = get_task(demo_config.task)
    data = task.sample(plan.early_exit_examples, plan.early_exit_length, torch.Generator().manual_seed(1234)).ids.numpy()
    rows.append(iterations("demo", runtime(demo_artifact, 1), data, data.shape[1] // 2, demo_config.max_iters,
                           demo_config.tol, log))
    result["iterations"] = rows
    slowest = max(plan.decode_seqs)
    at = [r for r in result["speed"] if r["seq"] == slowest]
    result["speedup_at_longest"] = {"seq": slowest, "min_over_batches": min(r["ort_recompute_over_ort_decode"] for r in at),
                                    "by_batch": {r["batch"]: r["ort_recompute_over_ort_decode"] for r in at}}
    return result
