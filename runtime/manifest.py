"""The manifest's schema: every field the runtime reads has a type and a range, checked before anything
else reads the manifest. Informational sections (versions, the parity summary, TensorRT reports,
timings) are checked as bounded, finite JSON. A problem raises InvalidManifestError naming the field.

Fields that drive behaviour (the T cap, max_seq_len, the defaults, the precision) are also checked
against the hashed files by the loader (artifact.py): a manifest edited after export can change none of
them without a hash or consistency error.
"""

from __future__ import annotations

import json
import math
import re

from .errors import InvalidManifestError, UnsupportedFormatError

ARTIFACT_FORMAT = "depthscale-artifact"
ARTIFACT_FORMAT_VERSION = 2
MAX_MANIFEST_BYTES = 16 << 20
MAX_JSON_DEPTH = 32
MAX_ITERS_CAP = 4096            # the largest T an artifact may run (a recurrence of more is not a model)
MAX_SEQ_LEN = 1 << 20
GRAPH_ROLES = ("model", "prefill", "decode")
PRECISIONS = ("fp32", "fp16", "bf16")
SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"\d{1,4}\.\d{1,4}\.\d{1,4}")
DTYPES = ("int64", "float32", "float16", "bfloat16", "int32", "bool", "uint8")


def parse_json(data: bytes, what: str):
    """Strict JSON: UTF-8, no NaN or Infinity, nesting at most MAX_JSON_DEPTH. Raises
    UnsupportedFormatError (the document is not JSON) or InvalidManifestError (it nests too deeply)."""
    def refuse(name):
        raise ValueError(f"non-finite number {name}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=refuse)
    except RecursionError:
        raise InvalidManifestError(f"{what}: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise UnsupportedFormatError(f"{what}: not valid JSON ({e})") from None
    _depth(obj, what, 0)
    return obj


def _depth(obj, where: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InvalidManifestError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    for child in children:
        _depth(child, where, depth + 1)


def _fail(where: str, expected: str, value) -> None:
    shown = repr(value)
    raise InvalidManifestError(f"manifest field {where} must be {expected}, got {shown[:80]}")


def integer(obj: dict, key: str, lo: int, hi: int, where: str = "") -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(where + key, f"an integer in [{lo}, {hi}]", value)
    return value


def number(obj: dict, key: str, lo: float, hi: float, where: str = "") -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        _fail(where + key, f"a finite number in [{lo:g}, {hi:g}]", value)
    return float(value)


def string(obj: dict, key: str, where: str = "", choices=None, max_len: int = 4096, optional: bool = False):
    value = obj.get(key)
    if optional and value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len or (choices is not None and value not in choices):
        _fail(where + key, f"one of {list(choices)}" if choices is not None else f"a string of at most {max_len} characters",
              value)
    return value


def mapping(obj: dict, key: str, where: str = "", optional: bool = False) -> dict | None:
    value = obj.get(key)
    if optional and value is None:
        return None
    if not isinstance(value, dict):
        _fail(where + key, "an object", value)
    return value


def relative_path(name, where: str) -> str:
    """A normalised relative path inside the artifact: components separated by '/', none empty, '.', '..'
    or hidden by a backslash or NUL."""
    if not isinstance(name, str) or not 0 < len(name) <= 1024:
        _fail(where, "a relative path", name)
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p or len(p) > 255 for p in parts):
        raise InvalidManifestError(f"manifest {where} {name!r} is not a normalised path inside the artifact")
    return name


def _value_list(obj: dict, key: str, where: str) -> list[dict]:
    values = obj.get(key)
    if not isinstance(values, list) or not 0 < len(values) <= 16:
        _fail(where + key, "a list of 1 to 16 tensors", values)
    for i, v in enumerate(values):
        at = f"{where}{key}[{i}]."
        if not isinstance(v, dict):
            _fail(at[:-1], "an object", v)
        string(v, "name", at, max_len=256)
        string(v, "dtype", at, choices=DTYPES)
        shape = v.get("shape")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and len(d) <= 64)
                for d in shape):
            _fail(at + "shape", "a list of at most 8 dims (non-negative ints or names)", shape)
    return values


def validate(manifest) -> dict:
    """Check every field's type and range; returns the manifest. Raises InvalidManifestError (or
    UnsupportedFormatError for another format or version)."""
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise UnsupportedFormatError("not a DepthScale artifact manifest")
    if manifest.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise UnsupportedFormatError(f"format_version {manifest.get('format_version')!r} is not supported; this "
                                     f"runtime reads {ARTIFACT_FORMAT_VERSION} (re-export the model)")
    known = {"format", "format_version", "status", "versions", "opset", "precision", "custom_domain", "graphs",
             "weights", "decode", "max_seq_len", "max_iters_cap", "recursion", "defaults", "parity",
             "tensorrt_readiness", "tensorrt", "command", "timings_s", "files", "runtime"}
    unknown = sorted(set(manifest) - known)
    if unknown:
        raise InvalidManifestError(f"unknown manifest field(s): {', '.join(unknown)[:200]}")
    string(manifest, "status", choices=("passed", "failed"))
    versions = mapping(manifest, "versions")
    if len(versions) > 32 or not all(isinstance(v, str) and len(v) <= 200 for v in versions.values()):
        _fail("versions", "an object of at most 32 version strings", versions)
    integer(manifest, "opset", 1, 1000)
    string(manifest, "precision", choices=PRECISIONS)
    domain = mapping(manifest, "custom_domain")
    string(domain, "domain", "custom_domain.", choices=("depthscale",))
    integer(domain, "version", 1, 1, "custom_domain.")
    runtime = mapping(manifest, "runtime", optional=True)         # absent in artifacts exported before it
    if runtime is not None and (set(runtime) != {"onnxruntime_min"} or not isinstance(runtime["onnxruntime_min"], str)
                                or not VERSION.fullmatch(runtime["onnxruntime_min"])):
        _fail("runtime", '{"onnxruntime_min": "X.Y.Z"}', runtime)
    cap = integer(manifest, "max_iters_cap", 0, MAX_ITERS_CAP)
    integer(manifest, "max_seq_len", 1, MAX_SEQ_LEN)
    recursion = mapping(manifest, "recursion", optional=True)       # informational (older artifacts lack it)
    if recursion is not None:
        if not isinstance(recursion.get("active_set"), bool):
            _fail("recursion.active_set", "true or false", recursion.get("active_set"))
        if recursion["active_set"]:
            number(recursion, "crossover", 0.0, 1.0, "recursion.")
        else:
            string(recursion, "why", "recursion.", max_len=1000)
    defaults = mapping(manifest, "defaults")
    integer(defaults, "max_iters", 0, cap, "defaults.")
    number(defaults, "tol", 0.0, 3.0e38, "defaults.")
    graphs = mapping(manifest, "graphs")
    if "model" not in graphs or set(graphs) - set(GRAPH_ROLES) or ("prefill" in graphs) != ("decode" in graphs):
        _fail("graphs", "model, and optionally both prefill and decode", sorted(graphs))
    for role, graph in graphs.items():
        if not isinstance(graph, dict):
            _fail(f"graphs.{role}", "an object", graph)
        relative_path(graph.get("file"), f"graphs.{role}.file")
        _value_list(graph, "inputs", f"graphs.{role}.")
        _value_list(graph, "outputs", f"graphs.{role}.")
    relative_path(manifest.get("weights"), "weights")
    decode = mapping(manifest, "decode")
    if decode.get("available") is not ("decode" in graphs):
        _fail("decode.available", f"{'decode' in graphs} (whether the graphs include decode)", decode.get("available"))
    string(decode, "why", "decode.", optional=True, max_len=1000)
    parity = mapping(manifest, "parity")
    tolerances = mapping(parity, "tolerances", "parity.")
    for key in ("atol", "rtol", "state_atol"):
        number(tolerances, key, 0.0, 1e6, "parity.tolerances.")
    mapping(manifest, "tensorrt_readiness")
    tensorrt = mapping(manifest, "tensorrt")
    if not isinstance(tensorrt.get("built"), bool):
        _fail("tensorrt.built", "true or false", tensorrt.get("built"))
    for i, engine in enumerate(tensorrt.get("engines", []) if tensorrt["built"] else []):
        relative_path(engine.get("dir") if isinstance(engine, dict) else None, f"tensorrt.engines[{i}].dir")
    string(manifest, "command", optional=True, max_len=100_000)
    timings = mapping(manifest, "timings_s", optional=True) or {}
    for key in timings:
        number(timings, key, 0.0, 1e9, "timings_s.")
    files = mapping(manifest, "files")
    if len(files) > 10_000:
        _fail("files", "at most 10000 entries", f"{len(files)} entries")
    for name, entry in files.items():
        relative_path(name, "files key")
        if name == "manifest.json":
            raise InvalidManifestError("manifest files lists manifest.json itself")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not SHA256.fullmatch(entry["sha256"]):
            _fail(f"files[{name!r}].sha256", "64 lowercase hex digits", entry.get("sha256") if isinstance(entry, dict) else entry)
        integer(entry, "bytes", 0, 1 << 40, f"files[{name!r}].")
    for required in ["config.json", manifest["weights"], *(g["file"] for g in graphs.values())]:
        if required not in files:
            raise InvalidManifestError(f"the manifest's files do not list {required}")
    return manifest
