"""Optimization on a CPU against the number of torch threads, on an idle machine and beside other
busy processes: seconds per step of a batched channel visualization (the modern recipe), each
setting in a fresh process, settings alternating.

    python scripts/bench_threads.py [--threads 1,2] [--busy 0,1,2] [--steps 8] [--batch 8]

``--busy N`` starts N processes that spin on the CPU meanwhile (another scan, another user).
What it showed on 2 cores is in the README (*Threads*); cnnviz's default for optimization on
a CPU (:func:`cnnviz.optim.threads.default_threads`) follows from it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

CHILD = """
import json, sys, time, torch
torch.set_num_threads({threads})
from cnnviz import load_model
from cnnviz.optim import objectives, render
model = load_model("squeezenet1_1", {weights!r})
obj = objectives.channels("features.7", range({batch}))
render(model, obj, batch={batch}, steps=2, progress=False, redirected_relu=False)
t = time.perf_counter()
render(model, obj, batch={batch}, steps={steps}, progress=False, redirected_relu=False)
print(json.dumps((time.perf_counter() - t) / {steps}))
"""


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483648


def seconds_per_step(threads: int, busy: int, args) -> float:
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for s in spinners:
        s.start()
    try:
        code = CHILD.format(threads=threads, weights=args.weights, batch=args.batch, steps=args.steps)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             check=True, timeout=3600)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        stop.set()
        for s in spinners:
            s.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_weights = SHARED / "weights" / "squeezenet1_1-imagenet.pt"
    p.add_argument("--weights", default=str(default_weights) if default_weights.is_file() else "none")
    p.add_argument("--threads", default="1,2", help="thread counts to compare")
    p.add_argument("--busy", default="0,1", help="numbers of busy processes beside it")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    threads = [int(v) for v in args.threads.split(",")]
    busy = [int(v) for v in args.busy.split(",")]
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} before; SqueezeNet features.7, {args.batch} "
          f"channels batched; seconds per step, median of {args.repeat} alternating rounds")
    results: dict[tuple[int, int], list[float]] = {}
    for _ in range(args.repeat):
        for b in busy:
            for t in threads:
                results.setdefault((b, t), []).append(seconds_per_step(t, b, args))
    for b in busy:
        cells = "   ".join(f"{t} thread{'s' if t > 1 else ''}: {statistics.median(results[b, t]):6.2f} s"
                           for t in threads)
        print(f"{b} busy process{'es' if b != 1 else ''} beside it: {cells}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
