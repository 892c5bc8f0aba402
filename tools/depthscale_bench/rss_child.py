"""Run once in a fresh process and print its memory as JSON (used by depth.py; Linux only).

    python rss_child.py eager CHECKPOINT BATCH SEQ T THREADS
    python rss_child.py onnxruntime ARTIFACT BATCH SEQ T THREADS     (imports no torch)

Prints {"rss_after_load_mib", "peak_rss_mib", "run_s"}: the resident set once the model is loaded,
and the process's peak (VmHWM) after one run at tol 0 (every token runs all T iterations).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from depthscale_bench.timing import peak_rss_mib, rss_mib  # noqa: E402  (stdlib only: no torch)


def main() -> None:
    backend, source, batch, seq, iters, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    if backend == "eager":
        import torch

        from depthscale import load_checkpoint
        torch.set_num_threads(threads)
        model = load_checkpoint(source).packed()
        vocab = model.config.vocab_size

        def run(ids):
            with torch.no_grad():
                model(torch.from_numpy(ids), iters, 0.0)
    else:
        import depthscale_runtime
        rt = depthscale_runtime.load(source, backend="onnxruntime", providers=["CPUExecutionProvider"],
                                     intra_op_threads=threads, inter_op_threads=1)
        vocab = rt.artifact.vocab_size

        def run(ids):
            rt.run(ids, iters, 0.0)
    ids = np.random.default_rng(0).integers(0, vocab, (batch, seq), dtype=np.int64)
    after_load = rss_mib()
    start = time.perf_counter()
    run(ids)
    print(json.dumps({"rss_after_load_mib": after_load, "peak_rss_mib": peak_rss_mib(),
                      "run_s": time.perf_counter() - start, "torch_imported": "torch" in sys.modules}))


if __name__ == "__main__":
    main()
