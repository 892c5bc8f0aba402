"""What a bench run measures: the full plan (the README's figures) and the quick plan (the same sections
and JSON structure on small shapes, about 6 minutes on 2 cores, four gated exports being most of it)."""

from __future__ import annotations

from dataclasses import dataclass

from .models import QUICK_REFERENCE, REFERENCE


@dataclass(frozen=True)
class Plan:
    name: str
    reference: dict                      # DepthScaleConfig fields of the random-weight reference model
    anchor: tuple[int, int, int]         # (batch, seq, T) the targets are read at
    batches: tuple[int, ...]
    seqs: tuple[int, ...]
    iters: tuple[int, ...]
    threads: tuple[int, ...]
    grid: str                            # "axes": vary one of batch/seq/T around the anchor; "full": all;
                                         # "anchor": the anchor only
    reps: int                            # timed repetitions (at least 3 are kept under budget_s)
    budget_s: float                      # per measurement: stop adding repetitions past 3 after this long
    size_caps: tuple[int, int]           # T caps of the two exports compared for size
    depth_iters: tuple[int, ...]
    depth_shape: tuple[int, int]
    depth_reps: int                      # fresh processes per (backend, T); the median counts
    seq_sweep: tuple[int, ...]
    seq_iters: int
    unroll_steps: int
    session_reps: int
    early_exit_tols: tuple[float, ...]
    early_exit_examples: int             # seeded examples accuracy and agreement are read over ...
    early_exit_long_examples: int        # ... and at the long lengths (run early_exit_batches[-1] at a time)
    early_exit_length: int               # the tasks' own length (characters, BOS not counted) ...
    early_exit_long: tuple[int, ...]     # ... and these, where a model's max_seq_len allows
    early_exit_batches: tuple[int, ...]  # batches timed (the first examples)
    early_exit_loops: tuple[str, ...]    # early_exit.LOOPS measured side by side
    early_exit_models: tuple[str, ...]   # bundled demos ("parity", "sum")
    products: tuple[tuple[int, int, int], ...]     # (m, k, n) of the products the machine's limit is read from
    decode_cap: int                      # T of the decode section's timing: the cap of the artifact it decodes with
    decode_batches: tuple[int, ...]      # decode against recompute: batches x prompt lengths N
    decode_seqs: tuple[int, ...]
    decode_warmup: int                   # untimed decode steps, then decode_steps timed ones (the median counts)
    decode_steps: int
    decode_recompute_reps: int           # whole forwards over N + 1 tokens, after one warm-up, at most ...
    decode_recompute_budget_s: float     # ... as many as fit this at the warm-up's pace (at least one)
    decode_eager_recompute_tokens: int   # eager's whole forward only up to batch x N tokens (minutes beyond)
    decode_cache_seqs: tuple[int, ...]   # cache bytes against N (T = decode_cap) ...
    decode_cache_iters: tuple[int, ...]  # ... and against T (N = the anchor's)
    decode_iter_shape: tuple[int, int, int]   # (batch, prompt, new tokens) of the reference's iteration check,
    decode_iter_tols: tuple[float | None, ...]  # at these tols (None: the config's)


FULL = Plan(name="full", reference=REFERENCE, anchor=(1, 512, 16), batches=(1, 8), seqs=(128, 512, 2048),
            iters=(4, 16, 64), threads=(1, 2), grid="axes", reps=5, budget_s=20.0, size_caps=(4, 64),
            depth_iters=(4, 16, 64), depth_shape=(1, 512), depth_reps=5, seq_sweep=(512, 1024, 2048, 4096), seq_iters=16,
            unroll_steps=16, session_reps=3, early_exit_tols=(0.0, 0.001, 0.003, 0.01, 0.0125, 0.02, 0.03, 0.1),
            early_exit_examples=256, early_exit_long_examples=64, early_exit_length=24, early_exit_long=(1023,), early_exit_batches=(1, 8, 32),
            early_exit_loops=("dense", "active", "active-only"), early_exit_models=("parity", "sum"),
            products=((2048, 2048, 2048), (4096, 512, 3072), (4096, 1536, 512)),
            decode_cap=16, decode_batches=(1, 8), decode_seqs=(512, 4096), decode_warmup=2, decode_steps=7, decode_recompute_reps=3,
            decode_recompute_budget_s=30.0, decode_eager_recompute_tokens=4096,
            decode_cache_seqs=(128, 256, 512, 1024, 2048, 4096), decode_cache_iters=(4, 8, 16, 32, 64),
            decode_iter_shape=(2, 512, 16), decode_iter_tols=(None, 0.1))

QUICK = Plan(name="quick", reference=QUICK_REFERENCE, anchor=(1, 64, 4), batches=(1, 2), seqs=(16, 64),
             iters=(2, 4, 8), threads=(1, 2), grid="axes", reps=1, budget_s=1.0, size_caps=(2, 8),
             depth_iters=(2, 8), depth_shape=(1, 64), depth_reps=1, seq_sweep=(32, 64, 128), seq_iters=4, unroll_steps=4,
             session_reps=1, early_exit_tols=(0.0, 0.003, 0.03), early_exit_examples=16, early_exit_long_examples=16, early_exit_length=12,
             early_exit_long=(), early_exit_batches=(1, 4), early_exit_loops=("dense", "active"), early_exit_models=("parity",),
             products=((512, 512, 512), (1024, 64, 256)),
             decode_cap=8, decode_batches=(1, 2), decode_seqs=(32, 128), decode_warmup=1, decode_steps=3, decode_recompute_reps=1,
             decode_recompute_budget_s=1.0, decode_eager_recompute_tokens=256, decode_cache_seqs=(16, 32, 64, 128),
             decode_cache_iters=(2, 4, 8), decode_iter_shape=(2, 32, 8), decode_iter_tols=(None, 0.1))

PLANS = {"full": FULL, "quick": QUICK}
