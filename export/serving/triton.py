"""A Triton Inference Server model repository from an artifact (docs/serving.md).

    from depthscale_export.serving.triton import write_repository
    report = write_repository("model-onnx", "model-repo", name="depthscale")

writes, atomically (built in a hidden sibling and renamed into place, like the export):

    depthscale-repository.json    what was written, from which artifact, what was skipped and why
    NAME/                         python backend, depthscale_runtime's Runtime.run, ragged dynamic batching
        config.pbtxt
        1/model.py                triton_model.py
        1/artifact/               the artifact's verified bytes (the repository is self-contained)
    NAME_generate/                python backend, decoupled: Runtime.stream, one response per token
                                  (artifacts with decode graphs); its artifact/ hard-links NAME's files
    NAME_onnx/                    with onnxruntime=True: onnxruntime backend on model.onnx (+ its external
                                  weights), hard links (not served here: needs ONNX Runtime >= 1.26)
    NAME_trt_<engine dir>/        with tensorrt=True: tensorrt backend, one per full-TensorRT plan of the
                                  whole-pass graph (not verified here: no GPU, and Triton must load the plugins)

The artifact is verified (depthscale_runtime.open_artifact) before anything is written, and the copy is
made from the bytes that were verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from depthscale.atomic_dir import staging_dir
from depthscale_runtime import ArtifactError, open_artifact
from depthscale_runtime.artifact import MANIFEST

from .triton_config import Batching, graph_config, python_generate_config, python_run_config, schema, to_pbtxt

MARKER = "depthscale-repository.json"
REPOSITORY_FORMAT = "depthscale-triton-repository"
TEMPLATE = Path(__file__).with_name("triton_model.py")


class RepositoryError(ValueError):
    """Bad input: an artifact that does not verify, an OUT that may not be written or replaced."""


def _check_out(artifact: Path, out: Path, force: bool) -> None:
    a, o = artifact.resolve(), out.resolve()
    if o == a or a in o.parents:
        raise RepositoryError(f"{out} is inside the artifact {artifact}; write the repository elsewhere")
    if o in a.parents:
        raise RepositoryError(f"{out} holds the artifact {artifact}; it cannot be replaced by a repository")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RepositoryError(f"{out} exists and is not a directory")
    if out.exists():
        if not (out / MARKER).is_file():
            raise RepositoryError(f"{out} exists and is not a model repository written by depthscale-serve "
                                  f"(no {MARKER}); choose another OUT")
        if not force:
            raise RepositoryError(f"{out} exists (use --force to replace it)")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_repository(artifact, out, name: str = "depthscale", *, force: bool = False,
                     batching: Batching = Batching(), intra_op_threads: int | None = None,
                     generate: bool = True, onnxruntime: bool = False, tensorrt: bool = False) -> dict:
    """Write the repository (see the module docstring) and return its description (also written to
    depthscale-repository.json). Raises RepositoryError on bad input (nothing written), OSError when a
    write fails (nothing left at OUT), ServingUnavailable without tritonclient."""
    artifact, out = Path(artifact), Path(out)
    schema()                                      # the serve extra, before anything is read or staged
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise RepositoryError(f"the model name must be letters, digits, '_' and '-', got {name!r}")
    for field, value, low in (("max_batch_size", batching.max_batch_size, 1), ("instances", batching.instances, 1),
                              ("max_queue_delay_us", batching.max_queue_delay_us, 0)):
        if value < low:
            raise RepositoryError(f"{field} must be >= {low}, got {value}")
    if intra_op_threads is not None and intra_op_threads < 1:
        raise RepositoryError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    try:
        art = open_artifact(artifact)
    except ArtifactError as e:
        raise RepositoryError(f"the artifact does not verify: {e}") from None
    _check_out(artifact, out, force)
    manifest_bytes = (artifact / MANIFEST).read_bytes()
    if json.loads(manifest_bytes) != art.manifest:
        raise RepositoryError(f"{artifact / MANIFEST} changed while the artifact was being read")
    params = {"artifact": "artifact"}
    if intra_op_threads is not None:
        params["intra_op_threads"] = str(intra_op_threads)
    manifest = art.manifest
    models, skipped = {}, {}
    with staging_dir(out, force) as tmp:
        copy = tmp / name / "1" / "artifact"
        for rel, data in [*art.files.items(), (MANIFEST, manifest_bytes)]:
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            (copy / rel).write_bytes(data)
        shutil.copyfile(TEMPLATE, tmp / name / "1" / "model.py")
        models[name] = python_run_config(name, art.vocab_size, batching, params)

        if not generate:
            skipped[f"{name}_generate"] = "not asked for (generate=False, --no-generate)"
        elif not art.decodes:
            skipped[f"{name}_generate"] = f"the artifact has no decode graphs ({manifest['decode'].get('why')})"
        else:
            gen = f"{name}_generate"
            for path in sorted(copy.rglob("*")):
                if path.is_file():
                    _link(path, tmp / gen / "1" / "artifact" / path.relative_to(copy))
            _link(tmp / name / "1" / "model.py", tmp / gen / "1" / "model.py")
            models[gen] = python_generate_config(gen, batching.instances, params)

        graph_files = [manifest["graphs"]["model"]["file"], *art.external_files("model")]
        if not onnxruntime:
            skipped[f"{name}_onnx"] = "not asked for (onnxruntime=True, --onnxruntime)"
        elif manifest["precision"] == "bf16":
            skipped[f"{name}_onnx"] = "a bfloat16 graph has no ONNX Runtime CPU kernels"
        else:
            for rel in graph_files:
                _link(copy / rel, tmp / f"{name}_onnx" / "1" / ("model.onnx" if rel == graph_files[0] else rel))
            models[f"{name}_onnx"] = graph_config(f"{name}_onnx", manifest["graphs"]["model"], batching,
                                                  platform="onnxruntime_onnx", filename="model.onnx")

        for engine in manifest.get("tensorrt", {}).get("engines", []):
            directory, graph = engine["dir"], engine.get("graph", "model.onnx")
            model = f"{name}_trt_{directory.split('/')[-1].replace('.', '_')}"
            if graph != "model.onnx":
                continue
            if not directory.split("/")[-1].startswith("sm") or not tensorrt:
                skipped[model] = ("not asked for (tensorrt=True, --tensorrt)" if not tensorrt else
                                  "a TensorRT-RTX plan: Triton's tensorrt backend runs full-TensorRT plans only")
                continue
            _link(copy / directory / "model.plan", tmp / model / "1" / "model.plan")
            models[model] = graph_config(model, manifest["graphs"]["model"], batching, platform="tensorrt_plan",
                                         filename="model.plan")

        for model, config in models.items():
            (tmp / model / "config.pbtxt").write_text(to_pbtxt(config))
        description = {"format": REPOSITORY_FORMAT, "format_version": 1, "artifact": str(artifact.resolve()),
                       "artifact_manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "models": sorted(models),
                       "skipped": skipped,
                       "batching": {"max_batch_size": batching.max_batch_size,
                                    "max_queue_delay_us": batching.max_queue_delay_us,
                                    "instances": batching.instances}}
        (tmp / MARKER).write_text(json.dumps(description, indent=2) + "\n")
    return description
