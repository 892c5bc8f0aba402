import pytest
import torch

from conftest import small_model
from depthscale import DepthScaleModel


def run(model, ids, T=None, tol=None):
    with torch.no_grad():
        return model(ids, max_iters=T, tol=tol)


def test_shapes_and_dtypes(model):
    ids = torch.randint(0, 17, (3, 10))
    out = run(model, ids)
    assert out.logits.shape == (3, 10, 17) and out.logits.dtype == torch.float32
    assert out.iterations.shape == (3, 10) and out.iterations.dtype == torch.int64
    assert torch.isfinite(out.logits).all()


def test_T0_runs_no_iteration_and_T1_runs_one(model):
    ids = torch.randint(0, 17, (2, 7))
    out0 = run(model, ids, T=0, tol=0.0)
    assert (out0.iterations == 0).all()
    state = model.init(ids)
    with torch.no_grad():
        expected0 = model.finish(state).logits
        assert torch.equal(out0.logits, expected0)
        out1 = run(model, ids, T=1, tol=0.0)
        assert (out1.iterations == 1).all()
        assert torch.equal(out1.logits, model.finish(model.step(state, tol=0.0)).logits)
        assert not torch.equal(out1.logits, out0.logits)


def test_tol_zero_runs_all_T(model):
    out = run(model, torch.randint(0, 17, (2, 9)), T=13, tol=0.0)
    assert (out.iterations == 13).all()


def test_exited_tokens_stop_changing():
    model = small_model(min_iters=2)
    ids = torch.randint(0, 17, (2, 12))
    with torch.no_grad():
        state = model.init(ids)
        state = model.step(state, tol=1e9)                    # t=1 < min_iters: nobody may exit yet
        assert not state.done.any() and (state.iterations == 1).all()
        probe = model.step(state, tol=0.0)
        tol = float(probe.delta.median())                     # about half the tokens are under it
        state = model.step(state, tol=tol)
        assert torch.equal(state.done, probe.delta < tol)
        done, frozen_s = state.done.clone(), state.s.clone()
        assert 0 < int(done.sum()) < done.numel()
        for t in range(3, 7):
            state = model.step(state, tol=0.0)                # no new exits: watch the old ones
            assert torch.equal(state.s[done], frozen_s[done])
            assert (state.iterations[done] == 2).all()
            assert (state.iterations[~done] == t).all()
            assert not torch.equal(state.s[~done], frozen_s[~done])


def test_forward_is_init_steps_finish(model):
    ids = torch.randint(0, 17, (2, 8))
    with torch.no_grad():
        probe = model.step(model.step(model.init(ids), tol=0.0), tol=0.0)
        tol = float(probe.delta.quantile(0.3))
        state = model.init(ids)
        for _ in range(5):
            state = model.step(state, tol)
        manual = model.finish(state)
        out = model(ids, max_iters=5, tol=tol)
    assert torch.equal(out.logits, manual.logits) and torch.equal(out.iterations, manual.iterations)
    assert (out.iterations < 5).any()


def early_exit_tol(model, ids):
    """A tol at which some, not all, tokens exit before T=6."""
    with torch.no_grad():
        state = model.init(ids)
        for _ in range(3):
            state = model.step(state, tol=0.0)
    return float(state.delta.quantile(0.5))


@pytest.mark.parametrize("mixer", ["window", "retention"])
def test_batch_invariance(mixer):
    model = small_model(mixer=mixer)
    ids = torch.randint(0, 17, (5, 21))
    tol = early_exit_tol(model, ids)
    batch = run(model, ids, T=6, tol=tol)
    assert (batch.iterations < 6).any()
    for i in range(5):
        alone = run(model, ids[i:i + 1], T=6, tol=tol)
        assert torch.equal(alone.iterations, batch.iterations[i:i + 1])
        torch.testing.assert_close(alone.logits, batch.logits[i:i + 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"mixer": "retention"}, {"reason_tokens": 2}])
def test_prefix_consistency(overrides):
    model = small_model(**overrides)
    ids = torch.randint(0, 17, (2, 19))
    tol = early_exit_tol(model, ids)
    full = run(model, ids, T=6, tol=tol)
    for n in (1, 4, 11):
        part = run(model, ids[:, :n], T=6, tol=tol)
        assert torch.equal(part.iterations, full.iterations[:, :n])
        torch.testing.assert_close(part.logits, full.logits[:, :n], rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"mixer": "retention", "reason_tokens": 1}])
def test_while_loop_path_equals_python_path(overrides):
    model = small_model(**overrides)
    ids = torch.randint(0, 17, (2, 9))
    tol = early_exit_tol(model, ids)
    for T, t in ((6, tol), (4, 0.0), (0, 0.0)):
        model.loop = "python"
        ref = run(model, ids, T=T, tol=t)
        model.loop = "while"
        got = run(model, ids, T=torch.tensor(T), tol=torch.tensor(t))
        assert torch.equal(got.iterations, ref.iterations)
        assert torch.equal(got.logits, ref.logits)


def test_packed_model_is_bit_identical_and_smaller(model):
    ids = torch.randint(0, 17, (2, 9))
    ref = run(model, ids, T=5, tol=0.0)
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    model.packed()
    packed_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    got = run(model, ids, T=5, tol=0.0)
    assert torch.equal(got.logits, ref.logits)
    assert packed_bytes < float_bytes / 3


def test_reasoning_tokens_read_real_positions_only():
    model = small_model(reason_tokens=3)
    ids = torch.randint(0, 17, (2, 5))
    out = run(model, ids)
    assert out.logits.shape == (2, 5, 17)
    assert model.init(ids).e.shape == (2, 20, 32)


def test_float_linears_and_tied_head():
    model = small_model(bitnet=False, tie_embeddings=True)
    assert model.head.weight is model.embed.weight
    assert run(model, torch.randint(0, 17, (1, 4))).logits.shape == (1, 4, 17)


def test_training_backpropagates_through_last_k_iterations_only():
    model = small_model(grad_iters=2).train()
    ids = torch.randint(0, 17, (2, 6))
    seen = []
    hook = model.inject.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    model(ids, max_iters=5, tol=0.0).logits.sum().backward()
    hook.remove()
    assert seen == [False, False, False, True, True]
    assert model.inject.weight.grad.abs().sum() > 0 and model.embed.weight.grad.abs().sum() > 0


def test_bad_loop_mode():
    with pytest.raises(ValueError, match="loop"):
        DepthScaleModel(small_model().config, loop="scan")
