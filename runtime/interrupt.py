"""Ctrl-C in the command-line tools: one line on stderr and exit code 130, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable

EXIT_INTERRUPTED = 130          # 128 + SIGINT, what shells report for an interrupted command


def interruptible(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """main(argv), with KeyboardInterrupt turned into "PROG: interrupted" on stderr and EXIT_INTERRUPTED."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
