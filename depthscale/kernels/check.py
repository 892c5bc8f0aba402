"""Kernel correctness against the eager ops on fresh random inputs; prints JSON, exit 1 on a mismatch.

    TRITON_INTERPRET=1 python -m depthscale.kernels.check      # on CPU, Triton's interpreter
    python -m depthscale.kernels.check --device cuda             # on a GPU (not verified here)
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..bitlinear import bitlinear_op, gated_bitlinear_op, pack_ternary, ternarize
from ..exact_math import exact_linear_op
from ..window_attention import cached_attention, window_attention_op
from .bitlinear_triton import bitlinear_fused, bitlinear_triton
from .exact_linear_triton import exact_linear_triton
from .window_attention_triton import cached_attention_triton, window_attention_triton


def check(device: str, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    results = []
    for lead, in_f, out_f in (((1,), 64, 96), ((1, 1), 200, 50), ((3, 17), 64, 40), ((2, 40), 130, 72)):
        x = torch.randn(*lead, in_f, generator=g) * 2
        w_t, gamma = ternarize(torch.randn(out_f, in_f, generator=g))
        packed = pack_ternary(w_t)
        expected = bitlinear_op(x, packed, gamma, in_f)
        got = bitlinear_triton(x.to(device), packed.to(device), gamma.to(device), in_f).cpu()
        results.append(_exact("bitlinear", f"x{list(x.shape)} W[{out_f},{in_f}]", got, expected,
                              path="decode" if x.numel() == in_f else "prefill"))
    # the fused kernel (TensorRT AOT plugins, which get the packed weight as int32, one byte per element,
    # as TensorRT's ONNX parser delivers it): bfloat16 is left out on CPU, because Triton's interpreter
    # truncates float32 -> bfloat16 where a GPU rounds to nearest even
    for i, (lead, in_f, out_f, gated, dtype) in enumerate((
            ((1,), 64, 96, False, torch.float32), ((3, 17), 70, 40, False, torch.float32),
            ((2, 5), 37, 11, True, torch.float32), ((1, 1), 64, 130, True, torch.float16),
            ((2, 9), 48, 20, False, torch.float16))):
        x = (torch.randn(*lead, 2 * in_f if gated else in_f, generator=g) * 3).to(dtype)
        x[..., 0, :] = 0                                   # an all-zero token exercises the clamp
        w_t, gamma = ternarize(torch.randn(out_f, in_f, generator=g))
        packed = pack_ternary(w_t)
        expected = (gated_bitlinear_op if gated else bitlinear_op)(x, packed, gamma, in_f)
        w = packed.to(torch.int32) if i % 2 else packed
        got = bitlinear_fused(x.to(device), w.to(device), gamma.to(device), in_f, gated).cpu()
        results.append(_exact("bitlinear_fused", f"{'gated ' if gated else ''}{str(dtype)[6:]} x{list(x.shape)} "
                              f"W[{out_f},{in_f}] {str(w.dtype)[6:]}", got, expected, path="fused"))
    for B, H, Hkv, n, D, window in ((1, 2, 1, 1, 16, 4), (2, 4, 2, 37, 16, 5), (1, 4, 4, 70, 32, 16), (1, 2, 1, 50, 16, 64),
                                    (1, 2, 1, 300, 16, 4096)):
        q, k, v = (torch.randn(B, h, n, D, generator=g) for h in (H, Hkv, Hkv))
        expected = window_attention_op(q, k, v, window)
        shape = f"q[{B},{H},{n},{D}] kv heads {Hkv} window {window}"
        for f64, tolerance in ((True, 0.0), (False, 1e-5)):
            got = window_attention_triton(q.to(device), k.to(device), v.to(device), window, f64=f64).cpu()
            err = float((got - expected).abs().max())
            results.append({"kernel": "window_attention", "shape": shape, "f64": f64, "max_abs_err": err,
                            "tolerance": tolerance, "passed": err <= tolerance})
    # decode-step attention: a window cache (keys from q_start - P, some before position 0) and the global KV
    for B, H, Hkv, c, S, D, window, global_kv in ((3, 4, 2, 1, 4, 16, 4, False), (2, 4, 1, 3, 10, 16, 8, False),
                                                  (2, 4, 2, 2, 33, 16, 4096, True), (1, 4, 4, 1, 64, 32, 4096, True)):
        q = torch.randn(B, H, c, D, generator=g)
        k, v = (torch.randn(B, Hkv, S, D, generator=g) for _ in range(2))
        q_start = torch.randint(0, 2 * S, (B,), generator=g)
        k_start = torch.zeros(B, dtype=torch.int64) if global_kv else q_start - (S - c)
        expected = cached_attention(q, k, v, q_start, k_start, window)
        got = cached_attention_triton(*(t.to(device) for t in (q, k, v, q_start, k_start)), window).cpu()
        results.append(_exact("cached_attention", f"q[{B},{H},{c},{D}] keys {S} window {window}", got, expected,
                              path="decode"))
    for lead, in_f, out_f, dtype in (((2, 5), 37, 11, torch.float32), ((1, 1), 64, 3, torch.float32),
                                     ((3, 40), 512, 256, torch.float32), ((2, 9), 48, 20, torch.float16)):
        x = (torch.randn(*lead, in_f, generator=g) * 3).to(dtype)
        w = torch.randn(out_f, in_f, generator=g).to(dtype)
        got = exact_linear_triton(x.to(device), w.to(device)).cpu()
        results.append(_exact("exact_linear", f"{str(dtype)[6:]} x{list(x.shape)} W[{out_f},{in_f}]", got,
                              exact_linear_op(x, w), path="head"))
    return results


def _exact(kernel: str, shape: str, got: torch.Tensor, expected: torch.Tensor, path: str) -> dict:
    same = got.dtype == expected.dtype and torch.equal(got, expected)
    return {"kernel": kernel, "shape": shape, "path": path, "bit_exact": bool(same),
            "max_abs_err": float((got.float() - expected.float()).abs().max()), "passed": bool(same)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    results = check(args.device, args.seed)
    print(json.dumps(results, indent=2))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
