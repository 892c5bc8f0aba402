import json

import pytest

from depthscale import DepthScaleConfig

CONTRACT = ["vocab_size", "d_model", "n_heads", "n_kv_heads", "d_ff", "window", "prelude_layers", "core_layers",
            "cross_layers", "max_iters", "min_iters", "tol", "mixer", "bitnet", "reason_tokens", "max_seq_len",
            "tie_embeddings", "rope_theta", "norm_eps"]


def test_contract_fields_and_json_round_trip():
    cfg = DepthScaleConfig(d_model=48, n_heads=6, n_kv_heads=3, mixer="retention", bitnet=False, tol=0.25,
                           reason_tokens=2, tokenizer="01", vocab_size=3, task="parity")
    d = cfg.to_dict()
    for name in CONTRACT:
        assert name in d
    again = DepthScaleConfig.from_dict(json.loads(json.dumps(d)))
    assert again == cfg
    assert DepthScaleConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("fields, named", [
    (dict(d_model=30, n_heads=4), "d_model"),
    (dict(n_heads=4, n_kv_heads=3), "n_heads"),
    (dict(window=0), "window"),
    (dict(min_iters=5, max_iters=4), "min_iters"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(mixer="mamba"), "mixer"),
    (dict(tol=-1.0), "tol"),
    (dict(tol=float("nan")), "tol"),
    (dict(core_layers=0), "core_layers"),
    (dict(d_model="64"), "d_model"),
    (dict(bitnet=1), "bitnet"),
    (dict(d_model=36, n_heads=4, n_kv_heads=2), "head dim"),
    (dict(tokenizer="0123", vocab_size=4), "vocab_size"),
    (dict(rope_theta=float("inf")), "rope_theta must be a finite number"),
    (dict(norm_eps=float("nan")), "norm_eps must be a finite number"),
    (dict(max_seq_len=10**8), r"max_seq_len must be <= 1048576"),
    (dict(core_layers=10**6), r"core_layers must be <= 256"),
    (dict(d_model=2**64), r"d_model must be <= 32768"),
    (dict(max_iters=10**9), r"max_iters must be <= 1024"),
    (dict(d_model=16384, n_heads=128, n_kv_heads=8, d_ff=65536, core_layers=8), "parameters, over the"),
])
def test_impossible_values_raise_naming_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        DepthScaleConfig(**fields)


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match="d_modle"):
        DepthScaleConfig.from_dict({"d_modle": 64})
