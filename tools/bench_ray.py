"""Ray Serve load and fault measurement (depthscale_bench.ray_load).

    python tools/bench_ray.py ARTIFACT [--clients 8] [--seconds 20] [--kill-at 10] [-o OUT.json]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthscale_bench.ray_load import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
