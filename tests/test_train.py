import json
import signal
import subprocess
import sys

import pytest
import torch

from depthscale import DepthScaleConfig, load_checkpoint
from depthscale.tasks import IGNORE, TASKS, get_task
from depthscale_runtime.tokenizer import BOS_ID, CharTokenizer
from depthscale.train import TrainOptions, lr_at, train


@pytest.mark.parametrize("name", list(TASKS))
def test_task_labels_agree_with_reference_answers(name):
    task = get_task(name)
    data = task.sample(16, 12, torch.Generator().manual_seed(0))
    tok = task.tokenizer
    for ids, labels in zip(data.ids.tolist(), data.labels.tolist()):
        assert ids[0] == BOS_ID and labels[0] == IGNORE
        text = tok.decode(ids)
        assert tok.encode(text) == ids
        assert tok.decode([x for x in labels if x != IGNORE]) == task.labels_for(text)


def test_tokenizer_rejects_unknown_characters():
    with pytest.raises(ValueError, match="'x'"):
        CharTokenizer("01").encode("01x")


def test_lr_schedule_warms_up_and_decays():
    opts = TrainOptions(steps=100, warmup=10, lr=1.0)
    assert lr_at(0, opts) == pytest.approx(0.1) and lr_at(9, opts) == pytest.approx(1.0)
    assert lr_at(99, opts) < 0.15 and lr_at(50, opts) < lr_at(20, opts)


def test_training_lowers_the_loss():
    cfg = DepthScaleConfig(vocab_size=3, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, window=4, max_iters=4,
                           tokenizer="01", task="parity")
    result = train(cfg, TrainOptions(steps=120, batch_size=16, seq_len=8, eval_every=60, warmup=10, lr=3e-3),
                   progress=False)
    last = result.history[-1]
    assert len(result.history) == 2 and set(last["accuracy"]) == {1, 2, 4, 8, 16}
    assert last["loss"] < 0.69      # below chance for a two-way answer
    assert not result.model.training


def test_cli_trains_and_saves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "depthscale.train", "--task", "addition", "--steps", "6", "--batch-size", "4",
         "--seq-len", "6", "--d-model", "16", "--n-heads", "2", "--n-kv-heads", "1", "--d-ff", "16",
         "--max-iters", "3", "--eval-every", "3", "--json", "-q", "-o", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["task"] == "addition" and report["checkpoint"] == str(out)
    model = load_checkpoint(out)
    assert model.config.tokenizer == "0123456789" and model.config.task == "addition"


@pytest.mark.parametrize("args, message", [
    (["--task", "sorting"], "unknown task 'sorting'"),
    (["--d-model", "30", "--n-heads", "4"], "d_model"),
    (["--steps", "0"], "steps"),
    (["--min-seq-len", "30"], "--min-seq-len must be an int in [1, 24]"),
])
def test_cli_bad_arguments_exit_2(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "depthscale.train", "-q", "-o", str(tmp_path / "m.pt"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "m.pt").exists()


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """(SIGINT at its default disposition in the child: a background job's child inherits it ignored.)"""
    proc = subprocess.Popen([sys.executable, "-m", "depthscale.train", "--steps", "100000", "--threads", "1",
                             "-o", str(tmp_path / "m.pt")], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    buffered = ""
    while "it/s" not in buffered and "s/it" not in buffered:  # training has started (the progress bar)
        chunk = proc.stderr.read(1)
        assert chunk, buffered
        buffered += chunk
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "depthscale-train: interrupted" in rest and "Traceback" not in rest
    assert not (tmp_path / "m.pt").exists()
