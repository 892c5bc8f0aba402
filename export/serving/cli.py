"""depthscale-serve: a thin CLI over depthscale_export.serving (docs/serving.md)."""

from __future__ import annotations

import argparse
import json
import sys

from depthscale_runtime.interrupt import EXIT_INTERRUPTED

from .triton import RepositoryError, write_repository
from .triton_config import Batching, ServingUnavailable

EXIT_OK, EXIT_BAD_INPUT, EXIT_WRITE = 0, 2, 3

EPILOG = """exit codes:
  0  written
  2  bad usage, an artifact that does not verify, an OUT that may not be written, or no tritonclient
     (the serve extra) here; nothing written
  3  the write failed (disk full, ...; nothing left at OUT)
  130  interrupted (Ctrl-C; nothing left at OUT)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthscale-serve", description="Serve a DepthScale artifact on a serving engine.")
    sub = p.add_subparsers(dest="engine", required=True)
    t = sub.add_parser("triton", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="write a Triton Inference Server model repository",
                       description="Write a Triton model repository for an artifact: a python-backend model around "
                                   "depthscale_runtime (ragged dynamic batching, per-request max_iters and tol) and a "
                                   "decoupled generation model; on request an onnxruntime-backend model and, where "
                                   "full-TensorRT plans exist, tensorrt-backend models (docs/serving.md).")
    t.add_argument("artifact", help="artifact directory (made by depthscale-export)")
    t.add_argument("out", help="repository directory to write")
    t.add_argument("--name", default="depthscale", help="model name (default depthscale)")
    t.add_argument("--force", action="store_true", help="replace OUT if it is a repository written by depthscale-serve")
    d = Batching()
    t.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help=f"rows per execution (default {d.max_batch_size})")
    t.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us,
                   help=f"how long a request waits for others to batch with (default {d.max_queue_delay_us})")
    t.add_argument("--instances", type=int, default=d.instances, help=f"model instances (default {d.instances})")
    t.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per instance")
    t.add_argument("--no-generate", action="store_true", help="no decoupled generation model")
    t.add_argument("--onnxruntime", action="store_true",
                   help="also an onnxruntime-backend model on the graph (needs a Triton whose ONNX Runtime is >= 1.26)")
    t.add_argument("--tensorrt", action="store_true",
                   help="also a tensorrt-backend model per full-TensorRT plan (not verified here)")
    t.add_argument("--json", action="store_true", help="print the repository's description as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        description = write_repository(
            args.artifact, args.out, args.name, force=args.force, intra_op_threads=args.threads,
            batching=Batching(args.max_batch_size, args.max_queue_delay_us, args.instances),
            generate=not args.no_generate, onnxruntime=args.onnxruntime, tensorrt=args.tensorrt)
    except (RepositoryError, ServingUnavailable) as e:
        print(f"depthscale-serve: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"depthscale-serve: writing {args.out} failed: {e}", file=sys.stderr)
        return EXIT_WRITE
    except KeyboardInterrupt:
        print(f"depthscale-serve: interrupted; nothing written to {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        skipped = "".join(f"; skipped {m}: {why}" for m, why in description["skipped"].items())
        print(f"wrote {args.out}: models {', '.join(description['models'])}{skipped}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
