"""The active-set recursion (model.py): the core step over the tokens still running equals the dense step
(every position, done ones' results discarded) bit for bit, step by step and over whole passes; and the
exported artifact, a dense Loop then an active-set Loop, passes the export gate."""

import json

import numpy as np
import pytest
import torch

import depthscale_runtime
from conftest import small_model
from depthscale_export import export


def forced(model, sparse: bool):
    """The model computing every step by active set (sparse) or densely."""
    model.active_set, model.active_crossover = sparse, (1, 1)
    return model


def ragged_ids(model, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (len(lengths), max(lengths)), generator=g), torch.tensor(lengths)


def assert_same_state(a, b):
    for name in ("s", "done", "iterations", "delta"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for layer_a, layer_b in zip(a.memory, b.memory):
        for item_a, item_b in zip(layer_a, layer_b):
            assert torch.equal(item_a, item_b)


@pytest.mark.parametrize("overrides", [{}, {"reason_tokens": 2}, {"window": 8, "core_layers": 3}],
                         ids=["window", "reasoning-tokens", "wider-window"])
@pytest.mark.parametrize("tol", [0.0, 0.05, 0.3])
def test_active_step_equals_dense_step(overrides, tol):
    """Step by step over a ragged batch: state, exits and every layer's memory identical."""
    model = small_model(**overrides).packed()
    ids, lengths = ragged_ids(model, [33, 17, 4])
    with torch.no_grad():
        dense = active = model.init(ids, 8, tol, lengths)
        for _ in range(8):
            dense = forced(model, False).step(dense)
            active = forced(model, True).step(active)
            assert_same_state(dense, active)
    assert 0 < int(dense.done[:, :4].sum()) or tol == 0.0                  # tokens did exit at tol > 0


@pytest.mark.parametrize("tol,expected", [(1e9, 1), (0.0, 6)], ids=["all-exit-at-1", "none-exits"])
def test_everyone_exits_at_once_or_never(tol, expected):
    model = small_model(min_iters=1).packed()
    ids, lengths = ragged_ids(model, [20, 9])
    with torch.no_grad():
        dense = forced(model, False)(ids, 6, tol, lengths)
        active = forced(model, True)(ids, 6, tol, lengths)
    real = torch.arange(20)[None] < lengths[:, None]
    assert (active.iterations[real] == expected).all()
    assert torch.equal(dense.iterations, active.iterations)
    assert torch.equal(dense.logits[real], active.logits[real])


def test_step_with_nothing_running_changes_nothing():
    model = forced(small_model().packed(), True)
    ids, lengths = ragged_ids(model, [7, 3])
    with torch.no_grad():
        state = model.init(ids, 3, 1e9, lengths)
        state = model.step(model.step(state))
        assert bool(state.done.all())
        after = model.step(state)
    assert_same_state(state, after)


def test_crossover_switches_once_and_matches_dense():
    """The default model: dense steps while more than 4/5 of the positions run, then active-set ones."""
    model = small_model().packed()
    assert model.active_set and model.active_crossover == (4, 5)
    ids, lengths = ragged_ids(model, [40, 40, 40])
    tol = 0.2
    with torch.no_grad():
        auto = model(ids, 8, tol, lengths)
        kinds, state = [], model.init(ids, 8, tol, lengths)
        while not bool(state.done.all()) and state.t < 8:
            kinds.append(bool(model._sparse(state.done)))
            state = model.step(state)
        dense = forced(model, False)(ids, 8, tol, lengths)
    assert kinds[0] is False and True in kinds and kinds == sorted(kinds)   # dense first, then active, once
    assert torch.equal(auto.iterations, dense.iterations) and torch.equal(auto.logits, dense.logits)


def test_models_the_active_set_would_not_be_exact_for_stay_dense():
    assert not small_model(mixer="retention").active_set
    assert not small_model(bitnet=False).active_set


def test_exported_active_set_loop_passes_the_gate_and_equals_the_dense_export(tmp_path):
    """One export with the active set (two Loops), one with --dense-loop semantics (one): both pass the
    gate, and ONNX Runtime gives them identical outputs where tokens exit at different iterations."""
    model = small_model()
    reports = {}
    for name, active in (("active", True), ("dense", False)):
        reports[name] = export(model, tmp_path / name, shapes=[(1, 5), (3, 24)], iters=[6], tols=[0.0, 0.05, 0.3],
                               decode=False, engines=False, active_set=active, quiet=True)
        assert reports[name]["status"] == "passed", reports[name]["parity"]
    manifest = json.loads((tmp_path / "active" / "manifest.json").read_text())
    assert manifest["recursion"] == {"active_set": True, "crossover": 0.8}
    assert json.loads((tmp_path / "dense" / "manifest.json").read_text())["recursion"]["active_set"] is False
    runtimes = {name: depthscale_runtime.load(tmp_path / name) for name in reports}
    ids, lengths = ragged_ids(model, [40, 31, 12], seed=3)
    for tol in (0.0, 0.1, 0.3):
        seqs = [ids[b, :n].numpy() for b, n in enumerate(lengths.tolist())]
        out = {name: rt.run(seqs, 6, tol) for name, rt in runtimes.items()}
        assert np.array_equal(out["active"].iterations, out["dense"].iterations)
        real = np.arange(40)[None] < lengths.numpy()[:, None]
        assert np.array_equal(out["active"].logits[real], out["dense"].logits[real])
    assert len(set(out["active"].iterations[real].tolist())) > 1              # exits vary at tol 0.3


@pytest.mark.parametrize("crossover", [1.5, -0.1, float("nan")])
def test_a_crossover_outside_0_1_is_refused(tmp_path, crossover):
    from depthscale_export.api import BadInput
    with pytest.raises(BadInput, match="active_crossover must be in"):
        export(small_model(), tmp_path / "out", active_crossover=crossover, engines=False, quiet=True)
    assert not (tmp_path / "out").exists()
