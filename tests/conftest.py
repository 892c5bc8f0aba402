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


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory):
    """The bundled demo exported once, with its prefill and decode graphs, for the runtime tests (copy it
    before changing anything in it)."""
    from depthscale import demo_checkpoint
    from depthscale_export import export
    out = tmp_path_factory.mktemp("demo-artifact") / "demo-onnx"
    report = export(demo_checkpoint(), out, shapes=[(1, 5), (2, 9)], decode_shapes=[(2, 6, 12)], quiet=True,
                    engines=False)
    assert report["status"] == "passed", report["parity"]
    return out


@pytest.fixture(scope="session")
def sum_artifact(tmp_path_factory):
    """The bundled sum demo exported once, with small parity and decoding grids and no engines (the
    export itself, three graphs, is most of the cost)."""
    from depthscale import demo_checkpoint
    from depthscale_export import export
    out = tmp_path_factory.mktemp("sum-artifact") / "sum-onnx"
    report = export(demo_checkpoint("sum"), out, shapes=[(1, 5)], iters=[16], tols=[0.0],
                    decode_shapes=[(1, 4, 4)], engines=False, quiet=True)
    assert report["status"] == "passed", report["parity"]
    return out
