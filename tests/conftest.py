import os

# One torch thread in the tests and the CLIs they start: on a loaded 2-core CI machine, torch's
# default of two threads contends with everything else (a small evaluation ran 15x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from depthscale import DepthScaleConfig, DepthScaleModel


def small_config(**overrides) -> DepthScaleConfig:
    base = dict(vocab_size=17, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, window=3, prelude_layers=1,
                core_layers=2, cross_layers=1, max_iters=6, min_iters=1, tol=1e-3, max_seq_len=512)
    base.update(overrides)
    return DepthScaleConfig(**base)


def small_model(seed: int = 0, **overrides) -> DepthScaleModel:
    torch.manual_seed(seed)
    return DepthScaleModel(small_config(**overrides)).eval()


@pytest.fixture
def model() -> DepthScaleModel:
    return small_model()


@pytest.fixture(autouse=True)
def _no_grad_default():
    torch.manual_seed(0)
    yield


def _shared_artifact(tmp_path_factory, name: str, export_it) -> "Path":
    """The artifact export_it(out) writes (it returns the export's report), made once per test run: under
    pytest-xdist the first worker to ask exports it into the run's shared temporary directory, under a
    file lock, and the others reuse it."""
    from pathlib import Path

    from filelock import FileLock
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp(name) / name
        report = export_it(out)
        assert report["status"] == "passed", report["parity"]
        return out
    root = Path(tmp_path_factory.getbasetemp().parent) / name
    with FileLock(f"{root}.lock"):
        status = root / "status"
        if not status.exists():
            root.mkdir(exist_ok=True)
            report = export_it(root / name)
            status.write_text(report["status"] if report["status"] == "passed" else f"{report['parity']}")
    assert status.read_text() == "passed", status.read_text()
    return root / name


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory):
    """The bundled demo exported once, with its prefill and decode graphs, for the runtime tests (copy it
    before changing anything in it)."""
    from depthscale import demo_checkpoint
    from depthscale_export import export
    return _shared_artifact(tmp_path_factory, "demo-onnx", lambda out: export(
        demo_checkpoint(), out, shapes=[(1, 5), (2, 9)], decode_shapes=[(2, 6, 12)], quiet=True, engines=False))


@pytest.fixture(scope="session")
def sum_artifact(tmp_path_factory):
    """The bundled sum demo exported once, with small parity and decoding grids and no engines (the
    export itself, three graphs, is most of the cost; copy it before changing anything in it)."""
    from depthscale import demo_checkpoint
    from depthscale_export import export
    return _shared_artifact(tmp_path_factory, "sum-onnx", lambda out: export(
        demo_checkpoint("sum"), out, shapes=[(1, 5)], iters=[16], tols=[0.0], decode_shapes=[(1, 4, 4)],
        engines=False, quiet=True))
