import pytest
import torch

from depthscale.window_attention import CHUNKED_FROM, band_mask, blocked_window_attention, window_attention


def masked_full_attention(q, k, v, window):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~band_mask(q.shape[2], window), float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 40])
@pytest.mark.parametrize("window", [1, 3, 8, 64])
def test_blocked_equals_full_attention_with_band_mask(n, window):
    torch.manual_seed(n * 100 + window)
    q = torch.randn(2, 4, n, 8)
    k, v = torch.randn(2, 2, n, 8), torch.randn(2, 2, n, 8)
    out = blocked_window_attention(q, k, v, window)
    assert out.shape == q.shape
    torch.testing.assert_close(out, masked_full_attention(q, k, v, window), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [CHUNKED_FROM - 1, CHUNKED_FROM, 300, 2 * CHUNKED_FROM + 1])
def test_full_window_causal_chunks_equal_masked_full_attention(n):
    """window >= n: one [n, n] block below CHUNKED_FROM positions, causal query chunks from there on."""
    torch.manual_seed(n)
    q, k, v = torch.randn(1, 4, n, 8), torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    torch.testing.assert_close(blocked_window_attention(q, k, v, 4096), masked_full_attention(q, k, v, 4096),
                               rtol=1e-5, atol=1e-6)


def test_window_one_is_identity_on_values():
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    torch.testing.assert_close(blocked_window_attention(q, k, v, 1), v)


def test_custom_op_equals_plain_function_and_grad_path():
    q, k, v = torch.randn(1, 4, 9, 8), torch.randn(1, 1, 9, 8), torch.randn(1, 1, 9, 8)
    with torch.no_grad():
        op = window_attention(q, k, v, 4)
    assert torch.equal(op, blocked_window_attention(q, k, v, 4))
    qg = q.clone().requires_grad_()
    out = window_attention(qg, k, v, 4)
    out.sum().backward()
    assert qg.grad is not None
    assert torch.equal(out.detach(), op)
