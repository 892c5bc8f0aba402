"""Rotary position embedding (rotate-half form).

The cos/sin tables are computed once per model (rope_tables) and stored as buffers, so the exported
graph slices the same float32 values eager uses: torch and ONNX Runtime compute cos/sin differently
in the last bit.
"""

from __future__ import annotations

import torch


def rope_tables(n: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [n, head_dim/2] for positions 0..n-1."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.arange(n, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., n, head_dim] rotated by position; cos/sin [n, head_dim/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
