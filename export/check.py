"""depthscale-check: re-run the parity comparison of an artifact against its checkpoint, on fresh
seeded inputs, for users' CI. A thin CLI over check_artifact(); assert_artifact_matches() is the
pytest helper.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from depthscale import CheckpointError, load_checkpoint
from depthscale_runtime import ArtifactError, open_artifact
from depthscale_runtime.interrupt import interruptible

from .gate.parity import Tolerances, make_samples, run_gate

DEFAULT_SEED = 20261123      # differs from the export's, so the inputs are fresh


def check_artifact(artifact_dir, checkpoint, shapes=((1, 7), (2, 33)), iters=None, tols=None,
                   seed: int = DEFAULT_SEED, allow_failed: bool = False, verify=None) -> dict:
    """Verify the artifact (hashes, status; its signature with the public key `verify`, a PEM path, when
    given), then compare it with eager on new seeded inputs using the tolerances it was exported with.
    The comparison runs the bytes that were verified (a private copy), never the directory again.
    Returns a report with "passed". Raises ArtifactError or CheckpointError for unusable inputs."""
    artifact = open_artifact(artifact_dir, allow_failed=allow_failed, verify=verify)
    model = load_checkpoint(checkpoint).packed().to_precision(artifact.manifest.get("precision", "fp32"))
    if model.config.to_dict() != artifact.config:
        raise ArtifactError(f"{artifact_dir}: its config.json is not {checkpoint}'s config")
    tolerances = Tolerances(**artifact.manifest["parity"]["tolerances"])
    cap = artifact.max_iters_cap
    iters = iters if iters is not None else sorted({0, 1, min(4, cap), cap})
    tols = tols if tols is not None else sorted({0.0, float(artifact.config["tol"])})
    samples = make_samples(list(shapes), [min(t, cap) for t in iters], list(tols))
    with tempfile.TemporaryDirectory(prefix="depthscale-check-") as private:
        for name, content in artifact.files.items():
            (Path(private) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(private) / name).write_bytes(content)
        gate = run_gate(model, str(Path(private) / artifact.manifest["graphs"]["model"]["file"]), samples,
                        tolerances, seed)
    return {"artifact": str(artifact_dir), "checkpoint": str(checkpoint), "seed": seed, **gate["summary"],
            "rows": gate["samples"]}


def assert_artifact_matches(artifact_dir, checkpoint, **kwargs) -> dict:
    """pytest helper: `assert_artifact_matches("model-onnx", "model.pt")` fails the test with the
    parity summary when the artifact no longer matches eager. Returns the report."""
    report = check_artifact(artifact_dir, checkpoint, **kwargs)
    if not report["passed"]:
        raise AssertionError(
            f"{artifact_dir} does not match {checkpoint}: {report['samples_failed']}/{report['samples']} samples "
            f"failed, logits max abs err {report['logits_max_abs_err']:.3g}, iteration counts equal: "
            f"{report['iterations_equal']}, first diverging iteration: {report['first_diverging_iteration']}")
    return report


def main(argv=None) -> int:
    return interruptible("depthscale-check", _main, argv)


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="depthscale-check", description=__doc__.split("\n\n")[0],
                                epilog="exit codes: 0 parity holds, 1 parity failed, 2 bad usage or unusable input, 130 interrupted")
    p.add_argument("artifact")
    p.add_argument("--against", required=True, help="the checkpoint the artifact was exported from")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--allow-failed", action="store_true", help="check an artifact whose export gate failed")
    p.add_argument("--verify", metavar="PUB.pem", default=None,
                   help="refuse the artifact unless it is signed with this public key's private key and unchanged")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        report = check_artifact(args.artifact, args.against, seed=args.seed, allow_failed=args.allow_failed,
                                verify=args.verify)
    except (ArtifactError, CheckpointError) as e:
        print(f"depthscale-check: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    print(f"{'PASSED' if report['passed'] else 'FAILED'}: {report['samples'] - report['samples_failed']}/"
          f"{report['samples']} samples; logits max abs err {report['logits_max_abs_err']:.3g}; iteration counts "
          f"equal: {report['iterations_equal']}; first diverging iteration: {report['first_diverging_iteration']}",
          file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
