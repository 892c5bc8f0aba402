"""depthscale-bench: eager PyTorch against ONNX Runtime, side by side (see README "Performance").

    python tools/bench.py [--quick] [-o OUT] [--force]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthscale_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
