import torch

from depthscale.bitlinear import (BitLinear, PackedBitLinear, bitlinear_int, pack_ternary, quantize_activations,
                                  ternarize, unpack_ternary)


def test_hand_computed_example():
    # W: mean|W| = (0.4+0.2+0.1+0.5+0.3+0.9)/6 = 0.4
    w = torch.tensor([[0.4, -0.2, 0.1], [-0.5, 0.3, 0.9]])
    w_t, gamma = ternarize(w)
    assert torch.isclose(gamma, torch.tensor(0.4))
    # W/γ = [[1, -0.5, 0.25], [-1.25, 0.75, 2.25]] -> round half to even, clamp
    assert w_t.tolist() == [[1, 0, 0], [-1, 1, 1]]
    x = torch.tensor([[2.0, -1.0, 0.5]])
    x_q, s = quantize_activations(x)
    # s = 127 / 2; x·s = [127, -63.5, 31.75] -> [127, -64, 32] (half to even)
    assert x_q.tolist() == [[127.0, -64.0, 32.0]]
    y = bitlinear_int(x, w_t.float(), gamma)
    # x_q·W_tᵀ = [127, -127 - 64 + 32] = [127, -159]; times γ/s = 0.4 · 2 / 127
    expected = torch.tensor([[127.0, -159.0]]) * 0.4 * 2.0 / 127.0
    assert torch.allclose(y, expected, rtol=1e-6, atol=0)


def test_activation_range_and_zero_rows():
    x = torch.randn(5, 9) * 100
    x[2] = 0
    x_q, s = quantize_activations(x)
    assert x_q.min() >= -128 and x_q.max() <= 127
    assert torch.equal(x_q, x_q.round())
    assert x_q[2].abs().sum() == 0
    assert torch.equal(x_q.abs().amax(-1)[[0, 1, 3, 4]], torch.full((4,), 127.0))


def test_pack_unpack_round_trip_and_size():
    for in_f in (1, 4, 7, 64):
        w_t = torch.randint(-1, 2, (5, in_f), dtype=torch.int8)
        packed = pack_ternary(w_t)
        assert packed.dtype == torch.uint8 and packed.shape == (5, -(-in_f // 4))
        assert torch.equal(unpack_ternary(packed, in_f), w_t.float())


def test_eval_and_packed_forms_are_bit_identical():
    torch.manual_seed(3)
    lin = BitLinear(37, 11).eval()
    packed = lin.packed()
    assert isinstance(packed, PackedBitLinear)
    x = torch.randn(2, 5, 37)
    with torch.no_grad():
        assert torch.equal(lin(x), packed(x))
        assert torch.equal(torch.ops.depthscale.bitlinear(x, packed.w_packed, packed.gamma, 37), lin(x))


def test_integer_accumulation_is_order_independent():
    torch.manual_seed(0)
    w_t, gamma = ternarize(torch.randn(8, 512))
    x = torch.randn(3, 512)
    perm = torch.randperm(512)
    full = bitlinear_int(x, w_t.float(), gamma)
    assert torch.equal(bitlinear_int(x[:, perm], w_t[:, perm].float(), gamma), full)


def test_straight_through_gradients_reach_float_weights():
    torch.manual_seed(0)
    lin = BitLinear(16, 4).train()
    x = torch.randn(3, 16, requires_grad=True)
    lin(x).square().sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():     # training forward values are the quantised ones
        assert torch.allclose(lin(x), lin.eval()(x), atol=1e-5)
