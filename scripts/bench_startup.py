"""How long the command line takes before it does anything, and reading results.

    python scripts/bench_startup.py [RUN.h5]

Prints the wall time (median of 5 fresh processes) of ``import cnnviz``, ``cnnviz --help`` and,
given a run file, ``cnnviz top RUN.h5``, next to ``import torch`` alone on the same machine
(what the first two used to pay).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def wall(argv: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    py = sys.executable
    rows = [("python -c pass", [py, "-c", "pass"]),
            ("import torch (reference)", [py, "-c", "import torch"]),
            ("import cnnviz", [py, "-c", "import cnnviz"]),
            ("cnnviz --help", [py, "-m", "cnnviz", "--help"])]
    if len(sys.argv) > 1:
        top = [py, "-m", "cnnviz", "top", sys.argv[1], "--max-rows", "5"]
        rows.append((f"cnnviz top {sys.argv[1]}", top))
    for name, argv in rows:
        print(f"{name:<40s} {wall(argv):6.2f} s")


if __name__ == "__main__":
    main()
