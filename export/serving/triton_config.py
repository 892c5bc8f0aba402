"""Triton model configurations as typed messages: `inference.ModelConfig` from Triton's own schema (the
model_config_pb2 module tritonclient ships), serialised to config.pbtxt with protobuf's text_format.

Each builder takes the artifact's facts (vocabulary size, the graph's interface) and returns a
ModelConfig message; `to_pbtxt` and `parse_pbtxt` convert with the same schema, so a config that does
not fit Triton's schema cannot be written or read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from google.protobuf import text_format


class ServingUnavailable(RuntimeError):
    """What writing a Triton repository needs is not installed here."""


def schema() -> ModuleType:
    """Triton's model_config_pb2 (from tritonclient[grpc], the `serve` extra)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ServingUnavailable(f"writing Triton configs needs tritonclient[grpc] (pip install "
                                 f"'depthscale[serve]'): {e}") from None
    return model_config_pb2


# the manifest's dtype names -> Triton's DataType names
DTYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16",
          "bfloat16": "TYPE_BF16", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: at most max_batch_size rows per execution, a request waiting at most
    max_queue_delay_us for others; `instances` model instances on CPU."""
    max_batch_size: int = 16
    max_queue_delay_us: int = 2000
    instances: int = 1


def _tensor(mc, cls, name: str, dtype: str, dims: list[int], **fields):
    return cls(name=name, data_type=mc.DataType.Value(DTYPES[dtype]), dims=dims, **fields)


def _batching(mc, config, batching: Batching) -> None:
    config.max_batch_size = batching.max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=batching.instances))


def python_run_config(name: str, vocab_size: int, batching: Batching, parameters: dict[str, str]):
    """The python-backend model around depthscale_runtime's Runtime.run.

    Per request (the batch dimension first, k rows of one length n): input_ids int64 [k, n] (ragged
    across requests), optional max_iters int64 [k, 1] and tol float32 [k, 1] (the artifact's defaults when
    absent) -> logits float32 [k, n, vocab], iterations int64 [k, n]."""
    mc = schema()
    config = mc.ModelConfig(name=name, backend="python")
    _batching(mc, config, batching)
    config.input.extend([
        _tensor(mc, mc.ModelInput, "input_ids", "int64", [-1], allow_ragged_batch=True),
        _tensor(mc, mc.ModelInput, "max_iters", "int64", [1], optional=True),
        _tensor(mc, mc.ModelInput, "tol", "float32", [1], optional=True)])
    config.output.extend([_tensor(mc, mc.ModelOutput, "logits", "float32", [-1, vocab_size]),
                          _tensor(mc, mc.ModelOutput, "iterations", "int64", [-1])])
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def python_generate_config(name: str, instances: int, parameters: dict[str, str]):
    """The decoupled python-backend model around Runtime.stream: one request, one prompt; one response
    per generated token, then an empty final one.

    Inputs: input_ids int64 [n], max_new_tokens int64 [1]; optional max_iters int64 [1], tol float32 [1],
    temperature float32 [1], top_k int64 [1], top_p float32 [1], seed int64 [1], stop_ids int64 [m].
    Outputs per response: token int64 [1], iteration int64 [1] (the exit iteration that chose it)."""
    mc = schema()
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.model_transaction_policy.decoupled = True
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances))
    config.input.extend([_tensor(mc, mc.ModelInput, "input_ids", "int64", [-1]),
                         _tensor(mc, mc.ModelInput, "max_new_tokens", "int64", [1])])
    for field, dtype, dims in (("max_iters", "int64", [1]), ("tol", "float32", [1]), ("temperature", "float32", [1]),
                               ("top_k", "int64", [1]), ("top_p", "float32", [1]), ("seed", "int64", [1]),
                               ("stop_ids", "int64", [-1])):
        config.input.append(_tensor(mc, mc.ModelInput, field, dtype, dims, optional=True))
    config.output.extend([_tensor(mc, mc.ModelOutput, "token", "int64", [1]),
                          _tensor(mc, mc.ModelOutput, "iteration", "int64", [1])])
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def graph_config(name: str, graph: dict, batching: Batching, *, platform: str, filename: str):
    """A model Triton runs from the graph itself (platform "onnxruntime_onnx" or "tensorrt_plan"), with
    the graph's interface (the manifest's graphs.model: input_ids [batch, seq], lengths, max_iters, tol
    [batch]; logits [batch, seq, vocab], iterations [batch, seq]). The batch dimension is Triton's; the
    [batch] inputs are sent as [1] per row and reshaped to [] (Triton's idiom for per-row scalars).
    Dynamic batching joins requests of one shape only (rows right-padded to a common length, with their
    lengths, batch exactly: the model is causal)."""
    mc = schema()
    config = mc.ModelConfig(name=name, platform=platform, default_model_filename=filename)
    _batching(mc, config, batching)
    for kind, cls, values in (("input", mc.ModelInput, graph["inputs"]), ("output", mc.ModelOutput, graph["outputs"])):
        for value in values:
            dims = [d if isinstance(d, int) else -1 for d in value["shape"][1:]]
            tensor = _tensor(mc, cls, value["name"], value["dtype"], dims or [1])
            if not dims:
                tensor.reshape.shape[:] = []
                tensor.reshape.SetInParent()
            getattr(config, kind).append(tensor)
    return config


def to_pbtxt(config) -> str:
    """config.pbtxt text of a ModelConfig."""
    return text_format.MessageToString(config)


def parse_pbtxt(text: str):
    """A ModelConfig from config.pbtxt text (text_format.ParseError on anything Triton's schema refuses)."""
    return text_format.Parse(text, schema().ModelConfig())
