"""A Ray Serve deployment of an artifact: replicas each holding a depthscale_runtime.Runtime, requests of
different lengths and budgets batched by @serve.batch into one Runtime.run (right-padded, with each
row's length, max_iters and tol: exact, as the model is causal with per-token exit).

    from ray import serve
    from depthscale_export.serving.ray_serve import app
    serve.run(app("demo-onnx", num_replicas=2), route_prefix="/depthscale")
    # POST {"input_ids": [0, 1, 2], "max_iters": 8, "tol": 0.003} (budgets optional)
    # -> {"logits": [[...] * vocab] * n, "iterations": [...] * n, "batch_size": rows run together}

or `serve run depthscale_export.serving.ray_serve:build_app artifact=demo-onnx`. Bad input is answered
with HTTP 400 and {"error": one line}; the other requests of its batch are unaffected.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

import depthscale_runtime
from depthscale_runtime.validation import MAX_TOKENS_PER_CALL, validate_ids, validate_max_iters, validate_tol

# replicas follow the load: about AUTOSCALING["target_ongoing_requests"] requests in flight per replica
AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16,
               "upscale_delay_s": 5.0, "downscale_delay_s": 60.0}
MAX_BATCH_SIZE = 16
BATCH_WAIT_S = 0.01


@dataclass(frozen=True)
class Query:
    """One validated request: ids int64 [n], its budgets."""
    ids: np.ndarray
    max_iters: int
    tol: float


@serve.deployment(max_ongoing_requests=64)
class DepthScaleDeployment:
    """One replica: a Runtime on the artifact (ONNX Runtime, intra_op_threads threads per call)."""

    def __init__(self, artifact: str, max_batch_size: int = MAX_BATCH_SIZE, batch_wait_s: float = BATCH_WAIT_S,
                 intra_op_threads: int | None = None):
        self.runtime = depthscale_runtime.load(artifact, backend="onnxruntime", intra_op_threads=intra_op_threads)
        longest = self.runtime.artifact.max_seq_len
        if not 1 <= max_batch_size * longest <= MAX_TOKENS_PER_CALL:
            raise ValueError(f"max_batch_size must be in [1, {MAX_TOKENS_PER_CALL // longest}] for this artifact (a batch "
                             f"of max_seq_len ({longest}) rows must fit {MAX_TOKENS_PER_CALL} tokens per call)")
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_s)

    def _query(self, body) -> Query:
        """A request body -> Query; ValueError naming the field on bad input."""
        if not isinstance(body, dict) or "input_ids" not in body:
            raise ValueError('the body must be a JSON object with "input_ids" (and optionally "max_iters", "tol")')
        unknown = sorted(set(body) - {"input_ids", "max_iters", "tol"})
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)[:200]}")
        if not isinstance(body["input_ids"], list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in body["input_ids"]):
            raise ValueError("input_ids must be a list of integer token ids")
        art, rt = self.runtime.artifact, self.runtime
        ids, _, _ = validate_ids(np.asarray(body["input_ids"], dtype=np.int64), art.vocab_size, art.max_seq_len)
        max_iters = validate_max_iters(body.get("max_iters", rt.default_max_iters), art.max_iters_cap)
        tol = validate_tol(body.get("tol", rt.default_tol))
        return Query(ids[0], int(max_iters[0]), float(tol[0]))

    async def __call__(self, request: Request):
        try:
            query = self._query(await request.json())
        except (ValueError, OverflowError) as e:     # json.JSONDecodeError is a ValueError; ids past int64 overflow
            return JSONResponse({"error": str(e).splitlines()[0]}, status_code=400)
        return await self.run_batch(query)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def run_batch(self, queries: list[Query]) -> list[dict]:
        """One Runtime.run over the batch (in a thread, so the replica keeps queueing the next batch)."""
        out = await asyncio.to_thread(self.runtime.run, [q.ids for q in queries],
                                      max_iters=[q.max_iters for q in queries], tol=[q.tol for q in queries])
        return [{"logits": out.logits[i, :len(q.ids)].tolist(), "iterations": out.iterations[i, :len(q.ids)].tolist(),
                 "batch_size": len(queries)} for i, q in enumerate(queries)]


def app(artifact: str, num_replicas: int | None = None, autoscaling: dict | None = None,
        max_batch_size: int = MAX_BATCH_SIZE, batch_wait_s: float = BATCH_WAIT_S,
        intra_op_threads: int | None = None, cpus_per_replica: float = 1.0) -> serve.Application:
    """The deployment bound to an artifact (its absolute path, which every node must have): num_replicas
    fixed replicas, or autoscaling (a Ray Serve autoscaling_config; AUTOSCALING when neither is given)."""
    if num_replicas is not None and autoscaling is not None:
        raise ValueError("give num_replicas or autoscaling, not both")
    options = {"num_replicas": num_replicas} if num_replicas is not None else {
        "autoscaling_config": autoscaling or AUTOSCALING}
    return DepthScaleDeployment.options(**options, ray_actor_options={"num_cpus": cpus_per_replica}).bind(
        str(Path(artifact).resolve()), max_batch_size, batch_wait_s, intra_op_threads)


def build_app(args: dict) -> serve.Application:
    """For `serve run depthscale_export.serving.ray_serve:build_app artifact=DIR [num_replicas=N]`."""
    if "artifact" not in args:
        raise ValueError("build_app needs artifact=DIR")
    replicas = args.get("num_replicas")
    return app(args["artifact"], num_replicas=int(replicas) if replicas is not None else None)
