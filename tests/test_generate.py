"""Runtime.generate() / stream(): exact against eager, torch-free, streaming, sampling, bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import depthscale_runtime as dr
from depthscale import demo_checkpoint, load_checkpoint
from depthscale_runtime import DecodingUnavailableError
from test_runtime import BLOCK_TORCH

PROMPTS = [np.array([0, 1, 2, 2, 1, 2]), np.array([0, 2]), np.array([0, 1, 1, 2, 1, 2, 2, 1, 1])]


@pytest.fixture(scope="module")
def runtime(demo_artifact):
    return dr.load(demo_artifact)


def eager_greedy(model, prompt, new, max_iters, tol):
    """Greedy generation by re-running the whole-sequence forward for every token."""
    seq, tokens, iterations = list(prompt), [], []
    for _ in range(new):
        with torch.no_grad():
            out = model(torch.tensor([seq]), max_iters, tol)
        tokens.append(int(out.logits[0, -1].argmax()))
        iterations.append(int(out.iterations[0, -1]))
        seq.append(tokens[-1])
    return tokens, iterations


def test_greedy_generation_equals_eager_recompute(runtime):
    model = load_checkpoint(demo_checkpoint()).packed()
    result = runtime.generate(PROMPTS, 20, max_iters=[16, 16, 12], tol=[0.003, 0.003, 0.0])
    assert result.tokens.shape == (3, 20) and result.tokens.dtype == np.int64
    assert result.iterations.shape == (3, 20) and result.iterations.dtype == np.int64
    assert (result.lengths == 20).all()
    for b, (prompt, T, tol) in enumerate(zip(PROMPTS, (16, 16, 12), (0.003, 0.003, 0.0))):
        tokens, iterations = eager_greedy(model, prompt, 20, T, tol)
        assert result.tokens[b].tolist() == tokens, f"row {b}"
        assert result.iterations[b].tolist() == iterations, f"row {b}"
    assert (result.iterations[:2] < 16).any()                    # early exit happened


def test_streaming_yields_the_same_tokens(runtime):
    options = dict(temperature=0.8, top_k=2, seed=11, stop_ids=[1])
    result = runtime.generate(PROMPTS, 12, **options)
    steps = list(runtime.stream(PROMPTS, 12, **options))
    streamed = np.stack([s.tokens for s in steps], axis=1)
    assert np.array_equal(streamed, result.tokens[:, :streamed.shape[1]])
    assert (result.tokens[:, streamed.shape[1]:] == -1).all()
    for b in range(3):                                          # a row ends at its first stop id, which is kept
        row = result.tokens[b, :result.lengths[b]].tolist()
        assert (1 not in row[:-1]) and (row[-1] == 1 or len(row) == 12)
        assert (result.tokens[b, result.lengths[b]:] == -1).all()
    assert steps[-1].finished.all()


def test_sampling_is_seeded(runtime):
    a = runtime.generate(PROMPTS, 16, temperature=100.0, seed=1)    # the demo's logits are peaked: flatten them
    b = runtime.generate(PROMPTS, 16, temperature=100.0, seed=1)
    c = runtime.generate(PROMPTS, 16, temperature=100.0, seed=2)
    assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)
    nucleus = runtime.generate(PROMPTS, 16, temperature=1.0, top_p=1e-9, seed=5)   # top_p that small: the argmax
    assert np.array_equal(nucleus.tokens, runtime.generate(PROMPTS, 16).tokens)


def test_one_prompt_gives_a_batch_of_one(runtime):
    result = runtime.generate([0, 1, 2], 5)
    assert result.tokens.shape == (1, 5) and result.lengths.tolist() == [5]


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt_ids=[], max_new_tokens=3), "prompt_ids"),
    (dict(prompt_ids=[[0, 1], []], max_new_tokens=3), r"prompt_ids seq must be in \[1, 1024\], got 0"),
    (dict(prompt_ids=[0, 7], max_new_tokens=3), r"prompt_ids must be in \[0, 3\), got 7"),
    (dict(prompt_ids=[0.5, 1.0], max_new_tokens=3), "prompt_ids must be int32 or int64"),
    (dict(prompt_ids=[[0, 1], [0, "a"]], max_new_tokens=3), r"prompt_ids\[1\] must be int32 or int64"),
    (dict(prompt_ids=[0] * 1000, max_new_tokens=25), "must fit max_seq_len"),
    (dict(prompt_ids=[0, 1], max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (dict(prompt_ids=[0, 1], max_new_tokens=2.0), "max_new_tokens must be an int >= 1"),
    (dict(prompt_ids=[0, 1], max_new_tokens=True), "max_new_tokens must be an int >= 1"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, temperature=-1.0), "temperature"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, temperature=float("nan")), "temperature"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, top_k=0), "top_k"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, top_k=4), "top_k"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, top_p=0.0), "top_p"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, top_p=1.5), "top_p"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, seed=-1), "seed"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, stop_ids=[3]), "stop_ids"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, max_iters=17), r"max_iters must be in \[0, 16\]"),
    (dict(prompt_ids=[[0, 1], [0]], max_new_tokens=3, max_iters=[4]), "max_iters must be one value or one per row"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, tol=-0.1), "tol must be a finite number"),
    (dict(prompt_ids=[0, 1], max_new_tokens=3, tol=1e39), "tol must be a finite number"),
])
def test_bad_input_is_refused_before_generating(runtime, kwargs, message):
    with pytest.raises(ValueError, match=message):
        runtime.stream(**kwargs)                                # raised at the call, not at the first next()


def test_generate_where_torch_cannot_be_imported(demo_artifact):
    code = BLOCK_TORCH + f"""
import depthscale_runtime
rt = depthscale_runtime.load({str(demo_artifact)!r})
result = rt.generate([[0, 1, 2], [0, 2, 2, 1]], 6)
assert result.tokens.shape == (2, 6)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", result.tokens.tolist())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_artifact_without_decode_graphs_refuses_clearly(tmp_path):
    from depthscale_export import export
    report = export(demo_checkpoint(), tmp_path / "a", shapes=[(1, 3)], iters=[2], tols=[0.0], decode=False, quiet=True,
                    engines=False)
    assert report["decode"] == {"available": False, "why": "not asked for (decode=False)"}
    rt = dr.load(tmp_path / "a")
    assert rt.run([0, 1]).iterations.shape == (2,)
    with pytest.raises(DecodingUnavailableError, match="no prefill/decode graphs"):
        rt.generate([0, 1], 3)


def test_depthscale_run_generates_text(demo_artifact):
    proc = subprocess.run([sys.executable, "-m", "depthscale_runtime.cli", str(demo_artifact), "--text", "0110",
                           "--generate", "8"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0110") and len(proc.stdout.strip().splitlines()[0]) == 12
