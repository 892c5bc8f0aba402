"""Exit means exit, per-row budgets, and eager incremental decoding: prefill then decode equals the
whole-sequence forward (iterations identical, logits within 1e-5; in practice to the bit)."""

import pytest
import torch

from conftest import small_model
from depthscale.decode import decode, prefill


def exit_tol(model, ids, quantile=0.5):
    """A tol at which about `quantile` of the tokens have exited after 3 iterations."""
    with torch.no_grad():
        state = model.init(ids, tol=0.0)
        for _ in range(3):
            state = model.step(state)
    return float(state.delta.quantile(quantile))


def generate_teacher_forced(model, prompts, continuation, max_iters, tol, chunk=1):
    """Prefill the ragged prompts, then decode `continuation` [B, K] `chunk` tokens at a time. Returns each
    row's logits [n, V] and iterations [n] over its prompt and continuation."""
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.int64)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
    with torch.no_grad():
        out, cache = prefill(model, ids, lengths, max_iters, tol)
        logits = [[out.logits[b, :lengths[b]]] for b in range(len(prompts))]
        iterations = [[out.iterations[b, :lengths[b]]] for b in range(len(prompts))]
        for k in range(0, continuation.shape[1], chunk):
            step, cache = decode(model, cache, continuation[:, k:k + chunk])
            for b in range(len(prompts)):
                logits[b].append(step.logits[b])
                iterations[b].append(step.iterations[b])
    return [torch.cat(x) for x in logits], [torch.cat(x) for x in iterations]


def assert_matches_whole_pass(model, prompts, continuation, max_iters, tol, chunk=1):
    got_logits, got_iterations = generate_teacher_forced(model, prompts, continuation, max_iters, tol, chunk)
    for b, prompt in enumerate(prompts):
        row = torch.cat([prompt, continuation[b]])[None]
        with torch.no_grad():
            ref = model(row, max_iters[b], tol[b])
        assert torch.equal(got_iterations[b], ref.iterations[0]), f"row {b}"
        torch.testing.assert_close(got_logits[b], ref.logits[0], rtol=0, atol=1e-5)
    return got_iterations


@pytest.mark.parametrize("overrides", [{"window": 4}, {"reason_tokens": 2}, {"window": 8, "prelude_layers": 2}])
def test_decode_equals_whole_pass_ragged_64_tokens(overrides):
    torch.manual_seed(1)
    model = small_model(**overrides).packed()
    prompts = [torch.randint(0, 17, (n,)) for n in (9, 4, 1)]
    continuation = torch.randint(0, 17, (3, 64))
    tol = exit_tol(model, torch.randint(0, 17, (2, 30)))
    iterations = assert_matches_whole_pass(model, prompts, continuation, torch.tensor([6, 3, 5]),
                                           torch.tensor([tol, tol, 0.0]))
    assert (iterations[0] < 6).any() and (iterations[0] > 1).any(), "exits should vary for this test to mean much"


def test_decode_several_tokens_per_step():
    torch.manual_seed(2)
    model = small_model(window=5).packed()
    tol = exit_tol(model, torch.randint(0, 17, (2, 30)))
    assert_matches_whole_pass(model, [torch.randint(0, 17, (n,)) for n in (6, 2)], torch.randint(0, 17, (2, 12)),
                              torch.tensor([6, 6]), torch.tensor([tol, tol]), chunk=3)


@pytest.mark.parametrize("tol,expected", [(1e9, 1), (0.0, 6)])
def test_every_token_exits_at_once_or_none_exits(tol, expected):
    model = small_model(window=4).packed()
    iterations = assert_matches_whole_pass(model, [torch.randint(0, 17, (5,))], torch.randint(0, 17, (1, 7)),
                                           torch.tensor([6]), torch.tensor([tol]))
    assert (iterations[0] == expected).all()


def test_done_tokens_freeze_their_keys_and_values():
    model = small_model(window=4, core_layers=2).packed()
    ids = torch.randint(0, 17, (2, 16))
    tol = exit_tol(model, ids)
    with torch.no_grad():
        state = model.init(ids, tol=tol)
        for _ in range(3):
            state = model.step(state)
        done = state.done.clone()
        assert 0 < int(done.sum()) < done.numel()
        memory = [[m.clone() for m in layer] for layer in state.memory]
        for _ in range(3):
            state = model.step(state)
    for layer, before in zip(state.memory, memory):                  # core layer 2's K/V included
        for item, old in zip(layer, before):
            frozen = done[:, None, :, None].expand_as(item)
            assert torch.equal(item[frozen], old[frozen])
            assert not torch.equal(item[~frozen], old[~frozen])


def test_per_row_budgets_equal_each_row_alone():
    model = small_model(window=3).packed()
    ids = torch.randint(0, 17, (3, 11))
    tol = exit_tol(model, ids)
    budgets = (torch.tensor([0, 2, 6]), torch.tensor([tol, 0.0, tol]))
    with torch.no_grad():
        batch = model(ids, *budgets)
        for b in range(3):
            alone = model(ids[b:b + 1], int(budgets[0][b]), float(budgets[1][b]))
            assert torch.equal(alone.iterations, batch.iterations[b:b + 1])
            assert torch.equal(alone.logits, batch.logits[b:b + 1])
    assert (batch.iterations[0] == 0).all() and (batch.iterations[1] == 2).all()


def test_padding_never_iterates_and_changes_nothing():
    model = small_model(window=3).packed()
    ids = torch.randint(0, 17, (2, 10))
    with torch.no_grad():
        padded = model(ids, 6, 0.0, lengths=torch.tensor([10, 4]))
        alone = model(ids[1:, :4], 6, 0.0)
    assert (padded.iterations[1, 4:] == 0).all()
    assert torch.equal(padded.iterations[1, :4], alone.iterations[0])
    assert torch.equal(padded.logits[1, :4], alone.logits[0])


def test_eager_decode_grows_its_capacity_and_stops_at_max_seq_len():
    model = small_model(window=3, max_seq_len=12).packed()
    with torch.no_grad():
        out, cache = prefill(model, torch.randint(0, 17, (1, 10)), max_iters=4, tol=0.0)
        assert cache.capacity == 10 and cache.core.shape[2] == 4
        _, cache = decode(model, cache, torch.tensor([[3, 4]]))
        assert cache.capacity == 12 and int(cache.lengths) == 12
        with pytest.raises(ValueError, match="max_seq_len"):
            decode(model, cache, torch.tensor([[5]]))


def test_retention_has_no_incremental_form():
    model = small_model(mixer="retention").packed()
    with pytest.raises(NotImplementedError, match="window mixer"):
        prefill(model, torch.randint(0, 17, (1, 4)))


def test_training_at_tol_zero_is_unaffected_by_freezing():
    """Training runs at tol 0, where nothing exits: the semantics change cannot change training."""
    model = small_model(window=3).train()
    ids = torch.randint(0, 17, (2, 8))
    out = model(ids, max_iters=4, tol=0.0)
    assert (out.iterations == 4).all()
    out.logits.sum().backward()
    assert model.inject.weight.grad.abs().sum() > 0
