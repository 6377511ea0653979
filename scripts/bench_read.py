"""Reading results at ImageNet size: a synthetic run file of ImageNet val's size (50,000 images,
ResNet50's 16 blocks, k=16; marked synthetic in its attributes) and the time and peak memory
of what a user does with it in the morning.

    python scripts/bench_read.py [--images 50000] [--file /tmp/cnnviz-synthetic-val.h5]

Each operation runs in a fresh process (so page cache is warm after the first read of the file,
as it is for a user who opens the file twice; the first line reads the whole file once to say
what a cold read costs here). Prints seconds and peak RSS per operation, and for
``channel_maxima`` the speed against reading the same dataset raw with h5py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_OPS = {
    "top_patches(run)": "cnnviz.top_patches(RUN)",
    "channel_stats(run)": "cnnviz.channel_stats(RUN)",
    "channel_maxima(run, 'layer4.2')": "cnnviz.channel_maxima(RUN, 'layer4.2')",
    "channel_maxima(run, 'layer1.0')": "cnnviz.channel_maxima(RUN, 'layer1.0')",
    "raw h5py read of layer1.0/maxima": "h5py.File(RUN)['layers/layer1.0/maxima'][()]",
    "report, 64 channels x 16 layers": "cnnviz.write_report(RUN, OUT, channels=64, progress=False)",
}


def measure(code: str, run: Path, out: Path) -> dict:
    prog = f"""
import json, time, warnings
warnings.simplefilter('ignore')
import h5py
import cnnviz
import cnnviz.run, cnnviz.report  # imports (pandas, jinja2) are not what is measured
RUN, OUT = {str(run)!r}, {str(out)!r}
t = time.perf_counter()
{code}
seconds = time.perf_counter() - t
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"seconds": seconds, "peak_mb": hwm / 1024}}))
"""
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--file", type=Path, default=Path(tempfile.gettempdir()) / "cnnviz-synthetic-val.h5")
    args = p.parse_args()
    if not args.file.exists():
        from cnnviz import load_model
        from cnnviz.model import default_layers
        from cnnviz.scanner.synthetic import write_synthetic_run

        t = time.perf_counter()
        write_synthetic_run(args.file, default_layers(load_model("resnet50", None)), args.images)
        gb = args.file.stat().st_size / 1e9
        print(f"wrote {args.file} ({gb:.2f} GB) in {time.perf_counter() - t:.0f} s")
    size = args.file.stat().st_size
    t = time.perf_counter()
    with open(args.file, "rb") as f:
        while f.read(64 << 20):
            pass
    print(f"{'read the whole file once':<36s} {time.perf_counter() - t:7.2f} s  ({size / 1e9:.2f} GB)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_read_") as out:
        for name, code in _OPS.items():
            r = measure(code, args.file, Path(out) / "report")
            results[name] = r
            print(f"{name:<36s} {r['seconds']:7.2f} s   peak {r['peak_mb']:6.0f} MB")
    raw = results["raw h5py read of layer1.0/maxima"]["seconds"]
    ours = results["channel_maxima(run, 'layer1.0')"]["seconds"]
    print(f"channel_maxima / raw h5py read     : {ours / raw:7.2f}x the time")
    print(f"(the synthetic file stays in {args.file} for the next run; delete it when done)")


if __name__ == "__main__":
    main()
