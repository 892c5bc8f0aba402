import subprocess
import sys
from pathlib import Path

import torch

from depthscale import demo_checkpoint, load_checkpoint
from depthscale.tasks import get_task
from depthscale.train import evaluate

ROOT = Path(__file__).resolve().parents[1]


def test_demo_checkpoint_is_small_and_depth_helps():
    path = demo_checkpoint()
    assert path.stat().st_size < 4_000_000
    model = load_checkpoint(path)
    acc = evaluate(model, get_task(model.config.task), iters=(1, 4, 16), batch=128)
    assert acc[1] < acc[4] < acc[16]
    assert acc[16] > 0.9


def test_demo_early_exit_spends_more_iterations_further_along():
    model = load_checkpoint(demo_checkpoint())
    data = get_task(model.config.task).sample(64, 24, torch.Generator().manual_seed(0))
    with torch.no_grad():
        its = model(data.ids).iterations.float().mean(0)
    assert its[:4].mean() < its[-4:].mean() <= model.config.max_iters


def test_demo_script_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--text", "0110"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "expected  0100" in proc.stdout and "exit iter" in proc.stdout


def test_demo_script_points_a_generative_model_to_the_generative_demo():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--checkpoint", str(demo_checkpoint("sum"))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "tools/generate_demo.py" in proc.stderr and "Traceback" not in proc.stderr
