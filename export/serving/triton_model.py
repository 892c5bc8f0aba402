"""Triton python-backend model around depthscale_runtime, copied as model.py into each python model of a
repository written by depthscale_export.serving.triton (imported by Triton's stub, never by this package).

The interpreter running the stub needs depthscale_runtime (numpy + onnxruntime). At initialize the
artifact in the version directory (parameter "artifact") is loaded with the runtime's full verification
(manifest, sha256 of every file, parity status); a failure there fails the model's load.

Non-decoupled (the run model): each execution takes every request the dynamic batcher gathered
(different lengths: ragged), checks each alone (a bad request gets its own error response), then runs
the good rows as right-padded batches with per-row lengths and tol, one batch per distinct max_iters.
Right padding is exact: the model is causal and each token exits on its own. Decoupled (the generate model): each request's
prompt is generated with Runtime.stream, one response per token, then a final empty response.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

import depthscale_runtime
from depthscale_runtime.validation import MAX_TOKENS_PER_CALL, validate_ids, validate_max_iters, validate_tol


def _optional(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _calls(rows):
    """The runtime calls for a batch of rows (key, ids [n], max_iters, tol): one per distinct max_iters (a
    batch runs until its slowest row is done, so rows with smaller budgets are cheaper apart: measured in
    docs/serving.md), split where rows x longest would pass the runtime's per-call token budget."""
    calls = []
    for budget in sorted({row[2] for row in rows}):
        call, longest = [], 0
        for row in (row for row in rows if row[2] == budget):
            if call and (len(call) + 1) * max(longest, len(row[1])) > MAX_TOKENS_PER_CALL:
                calls.append(call)
                call, longest = [], 0
            call.append(row)
            longest = max(longest, len(row[1]))
        calls.append(call)
    return calls


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params["artifact"])
        threads = int(params.get("intra_op_threads", "0")) or None
        self.runtime = depthscale_runtime.load(path, backend="onnxruntime", intra_op_threads=threads)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                self._generate(request)
            return None
        return self._run(requests)

    def _rows(self, request):
        """(ids int64 [k, n], max_iters int64 [k], tol float32 [k]) of one request, validated."""
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        rt = self.runtime
        ids, _, _ = validate_ids(ids, rt.artifact.vocab_size, rt.artifact.max_seq_len)
        max_iters, tol = _optional(request, "max_iters"), _optional(request, "tol")
        max_iters = validate_max_iters(rt.default_max_iters if max_iters is None else list(max_iters),
                                       rt.artifact.max_iters_cap, len(ids))
        tol = validate_tol(rt.default_tol if tol is None else [float(t) for t in tol], len(ids))
        return ids, max_iters, tol

    def _run(self, requests):
        responses, rows, counts = [None] * len(requests), [], {}
        for i, request in enumerate(requests):
            try:
                ids, max_iters, tol = self._rows(request)
            except ValueError as e:
                responses[i] = _error(str(e))
                continue
            counts[i] = len(ids)
            rows += [((i, r), ids[r], int(max_iters[r]), float(tol[r])) for r in range(len(ids))]
        outputs = {}
        for call in _calls(rows):
            out = self.runtime.run([row[1] for row in call], max_iters=[row[2] for row in call],
                                   tol=[row[3] for row in call])
            for j, (key, ids, _, _) in enumerate(call):
                outputs[key] = (out.logits[j, :len(ids)], out.iterations[j, :len(ids)])
        for i, k in counts.items():
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("logits", np.stack([outputs[i, r][0] for r in range(k)])),
                pb_utils.Tensor("iterations", np.stack([outputs[i, r][1] for r in range(k)]))])
        return responses

    def _generate(self, request):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        options = {}
        for name, cast in (("max_iters", int), ("tol", float), ("temperature", float), ("top_k", int),
                           ("top_p", float), ("seed", int)):
            value = _optional(request, name)
            if value is not None:
                options[name] = cast(value[0])
        stop_ids = _optional(request, "stop_ids")
        try:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
            new = int(_optional(request, "max_new_tokens")[0])
            steps = self.runtime.stream(ids, new, stop_ids=[] if stop_ids is None else stop_ids.tolist(), **options)
            for step in steps:
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("token", step.tokens[:1].astype(np.int64)),
                    pb_utils.Tensor("iteration", step.iterations[:1].astype(np.int64))]))
        except ValueError as e:                       # bad input: the runtime's one-line message
            sender.send(_error(str(e)), flags=final)
            return
        except Exception as e:                        # anything else still ends the stream, with its error
            sender.send(_error(f"{type(e).__name__}: {e}"), flags=final)
            return
        sender.send(flags=final)
