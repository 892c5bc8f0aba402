"""The generative `sum` task and its bundled demo: labels against Python's integers, depth pays on the
bundled checkpoint, and tools/generate_demo.py generating sums through an exported artifact, torch-free."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from depthscale import demo_checkpoint, load_checkpoint
from depthscale.tasks import IGNORE, get_task
from depthscale_runtime.tokenizer import BOS_ID
from test_runtime import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("length", [1, 6, 12, 24, 31])
def test_sum_labels_are_the_next_digits_of_the_integer_sum(length):
    task = get_task("sum")
    tok = task.tokenizer
    n = max(1, (length - 3) // 3)
    data = task.sample(64, length, torch.Generator().manual_seed(length))
    assert data.ids.shape == (64, 1 + 3 * n + 3)
    for ids, labels in zip(data.ids.tolist(), data.labels.tolist()):
        assert ids[0] == BOS_ID
        text = tok.decode(ids)
        left, s = text.split("=")
        a, b = left.split("+")
        assert len(a) == len(b) == n and len(s) == n + 1
        assert int(s[::-1]) == int(a[::-1]) + int(b[::-1])                 # least significant digit first
        assert task.labels_for(text) == s and task.labels_for(left + "=") == s
        eq = ids.index(tok.encode("=")[1])
        for i, label in enumerate(labels):                                # the next token, on '=' and s_0..s_{n-1}
            assert label == (ids[i + 1] if eq <= i < len(ids) - 1 else IGNORE)


def test_sum_labels_for_random_operands():
    task, rng = get_task("sum"), random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        a, b = rng.randrange(10 ** n), rng.randrange(10 ** n)
        text = f"{a:0{n}d}"[::-1] + "+" + f"{b:0{n}d}"[::-1] + "="
        assert task.labels_for(text) == f"{a + b:0{n + 1}d}"[::-1]


def test_sum_demo_checkpoint_is_small_and_depth_pays():
    path = demo_checkpoint("sum")
    assert path.stat().st_size < 1_000_000
    model = load_checkpoint(path)
    assert model.config.task == "sum" and model.config.tokenizer == get_task("sum").chars
    data = get_task("sum").sample(160, 24, torch.Generator().manual_seed(0))   # 7-digit operands
    mask = data.labels != IGNORE
    exact, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)                          # a small batch: threads only contend on a loaded machine
    try:
        with torch.no_grad():
            for T in (1, 4, 16):
                pred = model(data.ids, max_iters=T, tol=0.0).logits.argmax(-1)
                exact[T] = float(((pred == data.labels) | ~mask).all(1).float().mean())  # = greedy generation right
    finally:
        torch.set_num_threads(threads)
    # measured on 500 such prompts: T=1 0.054, T=2 0.046, T=4 0.456, T=8 0.996, T=16 0.998
    assert exact[1] < 0.2 and exact[1] < exact[4] - 0.2 and exact[4] < exact[16] - 0.3 and exact[16] > 0.95, exact


def test_demo_checkpoint_names_its_task():
    assert demo_checkpoint() == demo_checkpoint("parity") and demo_checkpoint("sum").name == "sum.pt"
    with pytest.raises(ValueError, match="no bundled demo for task 'sorting'"):
        demo_checkpoint("sorting")


def test_generate_demo_prints_right_sums_torch_free(sum_artifact):
    code = BLOCK_TORCH + f"""
import runpy
sys.argv = ["generate_demo.py", {str(sum_artifact)!r}, "--examples", "4", "--prompts", "25", "--iters", "1,16"]
try:
    runpy.run_path({str(ROOT / "tools" / "generate_demo.py")!r}, run_name="__main__")
finally:
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    examples = [line.split() for line in lines if line.count("+") == 2 and "=" in line.split()[0]]
    assert len(examples) == 4
    task = get_task("sum")
    for prompt, generated, expected, mark, *rest in examples:
        assert expected == task.labels_for(prompt) and len(rest) == 8 + 5     # 8 exit iterations, "(a + b = s)"
        assert mark == ("ok" if generated == expected else "xx")
        assert all(1 <= int(i) <= 16 for i in rest[:8])
    assert sum(e[3] == "ok" for e in examples) >= 3                          # 0.998 exact at the defaults
    table = {int(line.split()[0][2:]): float(line.split()[1]) for line in lines if line.startswith("  T=")}
    assert set(table) == {1, 16} and table[16] >= 0.9 and table[1] <= 0.3, table
