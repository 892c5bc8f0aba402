"""Timing and memory measurement: interleaved repetitions with medians, and the peak RSS of a fresh
process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def interleaved(calls: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                budget_s: float | None = None) -> dict[str, dict]:
    """Time each callable `reps` times, one repetition of each in turn (the order rotating every
    round, so that no callable always runs first), after `warmup` untimed rounds. With budget_s, stops
    adding rounds past 3 once the timed rounds so far took budget_s.
    Returns {name: {"median_s", "min_s", "times_s"}}."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
        if budget_s is not None and r + 1 >= 3 and time.perf_counter() - start > budget_s:
            break
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": [round(x, 6) for x in t]}
            for name, t in times.items()}


def rss_mib() -> float:
    """This process's current resident set size in MiB (Linux)."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux)."""
    return _status_mib("VmHWM")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (the bench needs Linux)")


def fresh_process(script: Path, args: list[str], timeout_s: float = 900) -> dict:
    """Run `python script args...` in a fresh process; it prints one JSON object, which is returned."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
