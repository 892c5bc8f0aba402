"""The prefill and decode graphs (depthscale.decode in ONNX). Cache layouts as depthscale/decode.py,
with the iteration axis T = the artifact's max_iters cap:

    prefill.onnx  input_ids int64 [batch, seq], lengths int64 [batch], max_iters int64 [batch],
                  tol float32 [batch]
               -> logits float32 [batch, seq, vocab], iterations int64 [batch, seq],
                  prelude_kv [batch, L_p, 2, Hkv, P, dh], core_kv [batch, L_c, T, 2, Hkv, P, dh],
                  global_kv [batch, 2, Hkv, seq·(1+R), dh]   (all caches in the model's precision)
    decode.onnx   input_ids int64 [batch, new], lengths int64 [batch] (real tokens already cached),
                  max_iters, tol (as at the prefill), past_prelude_kv, past_core_kv,
                  past_global_kv [batch, 2, Hkv, capacity, dh]
               -> logits [batch, new, vocab], iterations [batch, new], and the three caches updated:
                  prelude_kv, core_kv, global_kv (the same shapes as their past_ inputs)

The caller sizes global_kv's capacity (positions, reasoning tokens included) for the whole generation
by padding the prefill's along axis 3; a decode step writes positions lengths·(1+R) .. + new·(1+R) - 1,
which must lie below the capacity.
"""

from __future__ import annotations

import torch

from depthscale import DepthScaleModel
from depthscale.decode import DecodeCache, check_decodable, decode, prefill

from ..graph.export import BUDGET_NAMES, GraphSpec, example_budgets

CACHE_NAMES = ["prelude_kv", "core_kv", "global_kv"]           # graph outputs
PAST_NAMES = [f"past_{name}" for name in CACHE_NAMES]           # the decode graph's inputs


def decode_unavailable(model: DepthScaleModel) -> str | None:
    """Why the artifact gets no prefill/decode graphs for this model, or None."""
    try:
        check_decodable(model)
    except NotImplementedError as e:
        return str(e)
    if model.precision == "bf16":
        return ("a bfloat16 artifact gets no decode graphs: ONNX Runtime has no bfloat16 kernels to gate them "
                "with, and TensorRT engines run the whole-sequence graph")
    return None


class PrefillWrapper(torch.nn.Module):
    def __init__(self, model: DepthScaleModel, cap: int):
        super().__init__()
        self.model, self.cap = model, cap

    def forward(self, input_ids, lengths, max_iters, tol):
        out, cache = prefill(self.model, input_ids, lengths, torch.clamp(max_iters, 0, self.cap), tol,
                             cache_iters=self.cap)
        return out.logits.float(), out.iterations, cache.prelude, cache.core, cache.global_kv


class DecodeWrapper(torch.nn.Module):
    def __init__(self, model: DepthScaleModel, cap: int):
        super().__init__()
        self.model, self.cap = model, cap

    def forward(self, input_ids, lengths, max_iters, tol, past_prelude_kv, past_core_kv, past_global_kv):
        cache = DecodeCache(past_prelude_kv, past_core_kv, past_global_kv, lengths,
                            torch.clamp(max_iters, 0, self.cap), tol)
        out, cache = decode(self.model, cache, input_ids)
        return out.logits.float(), out.iterations, cache.prelude, cache.core, cache.global_kv


def prefill_spec(model: DepthScaleModel, cap: int) -> GraphSpec:
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    return GraphSpec("prefill", PrefillWrapper(model, cap), (ids, *example_budgets(2, 8)),
                     ["input_ids", *BUDGET_NAMES], ["logits", "iterations", *CACHE_NAMES],
                     {"input_ids": {0: "batch", 1: "seq"}, **{name: {0: "batch"} for name in BUDGET_NAMES}})


def decode_spec(model: DepthScaleModel, cap: int) -> GraphSpec:
    """Example: a batch of 2 with 8 real tokens cached, decoding 2 new ones, capacity for 16 tokens."""
    cfg = model.config
    with torch.no_grad():
        _, cache = prefill(model, torch.randint(0, cfg.vocab_size, (2, 8)), max_iters=min(cap, 2), cache_iters=cap,
                           capacity=16 * (1 + cfg.reason_tokens))
    lengths, max_iters, tol = example_budgets(2, 8)
    ids = torch.randint(0, cfg.vocab_size, (2, 2))
    batch = {0: "batch"}
    return GraphSpec("decode", DecodeWrapper(model, cap),
                     (ids, lengths, max_iters, tol, cache.prelude, cache.core, cache.global_kv),
                     ["input_ids", *BUDGET_NAMES, *PAST_NAMES], ["logits", "iterations", *CACHE_NAMES],
                     {"input_ids": {0: "batch", 1: "new"}, **{name: batch for name in BUDGET_NAMES},
                      "past_prelude_kv": batch, "past_core_kv": batch, "past_global_kv": {0: "batch", 3: "capacity"}})
