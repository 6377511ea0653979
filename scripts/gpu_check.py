"""Every GPU path of cnnviz, checked in one run: a PASS or FAIL line for each.

    python scripts/gpu_check.py                  # on a machine with CUDA (about 5 minutes on an H100/H200)
    python scripts/gpu_check.py --skip-bench     # the checks without the throughput benchmark
    python scripts/gpu_check.py --device cpu     # the script itself, tested on a CPU (CPU vs CPU)

Without CUDA (and without ``--device``) it says so in one line and exits 0. The checks use the
real SqueezeNet weights and photos of ``../shared`` (skipped when absent):

1. precision: a scan on the device in fp32, tf32 and amp against the CPU scan (fp32 must give
   the same top-k lists and maxima to 1e-5 relative);
2. optimization: render, channel-vis and class-vis (both recipes, one image and a batch) are
   deterministic for a seed on the device and start from the CPU's image;
3. explain, the report's activation maps, attributions, featuremaps and classify against the CPU;
4. ``scan --compile`` against the eager scan;
5. a scan started on the device and resumed on the CPU, and the reverse, against the CPU scan;
   the ranking by relevance (a backward pass per batch) and ``explain --why`` against the CPU;
6. ``torchrun`` with one process (NCCL on a GPU) against the single-process scan;
7. a CUDA out-of-memory error: named with the batch size, the checkpoint kept, a smaller batch
   resumes it;
7b. the views on the device against the CPU: the ranking by mean, the bottom-k, the quantile
   histograms (the same counts but for values within float rounding of a bucket's edge), and
   what they add to the device scan's time;
8. the throughput benchmark (``bench_scan.py``: ResNet50, 16 blocks, k=16, batch 256) in amp
   (with ``--compile``), fp32 and tf32, and the host-only benchmark.

Exit status: 0 when every check passed (or was skipped), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CNNVIZ_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "weights" / "squeezenet1_1-imagenet.pt"
PHOTOS = SHARED / "images" / "imagen"
LAYERS = "features.5,features.9,features.12,logits"
RESULTS: list[tuple[str, str, str]] = []


def report(name: str, ok: bool | None, detail: str = "") -> None:
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    RESULTS.append((name, status, detail))
    print(f"{status} {name}{': ' + detail if detail else ''}", flush=True)


def check(name: str):
    """Run a check; an exception is its FAIL line (with the last lines of the traceback)."""
    def wrap(fn):
        def run(*args, **kw):
            started = time.monotonic()
            try:
                fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - one failing check must not stop the others
                tail = " | ".join(traceback.format_exc().strip().splitlines()[-3:])
                report(name, False, f"{type(exc).__name__}: {exc} [{tail}]"[:600])
            finally:
                print(f"     ({name}: {time.monotonic() - started:.1f} s)", flush=True)
        return run
    return wrap


# -- helpers ---------------------------------------------------------------------------------

def squeezenet(device: str):
    from cnnviz import load_model

    return load_model("squeezenet1_1", str(WEIGHTS), device=device)


def library(tmp: Path, n: int) -> Path:
    photos = sorted(PHOTOS.glob("*.jpg"))[:n]
    lst = tmp / f"photos{n}.txt"
    lst.write_text("\n".join(str(p) for p in photos) + "\n")
    return lst


def scan_to(lib: Path, out: Path, device: str, **kw) -> Path:
    from cnnviz import scan

    opts = dict(layers=LAYERS, top_k=16, batch_size=64, progress=False, overwrite=True)
    opts.update(kw)
    return scan(lib, squeezenet(device), out, device=device, **opts)


def compare_runs(a: Path, b: Path) -> dict:
    """Per layer: share of channels whose top-k lists are identical, share of top-k entries
    shared, and the largest maxima difference relative to the layer's largest maximum."""
    import h5py
    import numpy as np

    out = {}
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for layer in json.loads(fa.attrs["layers"]):
            ia, ib = fa[f"layers/{layer}/topk/image_id"][()], fb[f"layers/{layer}/topk/image_id"][()]
            same = float((ia == ib).all(axis=1).mean())
            shared = float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(ia, ib, strict=True)]))
            ma, mb = fa[f"layers/{layer}/maxima"][()], fb[f"layers/{layer}/maxima"][()]
            scale = float(np.nanmax(np.abs(ma))) or 1.0
            out[layer] = (same, shared, float(np.nanmax(np.abs(ma - mb))) / scale)
    return out


def same_results(a: Path, b: Path, tol: float = 1e-5) -> tuple[bool, str]:
    cmp = compare_runs(a, b)
    worst = min(v[0] for v in cmp.values())
    diff = max(v[2] for v in cmp.values())
    return worst == 1.0 and diff <= tol, f"identical top-k lists {worst:.1%} of channels (worst layer), " \
                                         f"maxima to {diff:.1e} of the layer's maximum"


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnviz", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# -- the checks ------------------------------------------------------------------------------

@check("precision table")
def precision_table(device: str, tmp: Path, n: int) -> None:
    lib = library(tmp, n)
    started = time.monotonic()
    ref = scan_to(lib, tmp / "cpu.h5", "cpu")
    print(f"     CPU fp32 scan of {n} photos: {time.monotonic() - started:.1f} s")
    print("     precision | layer | identical top-k lists | top-k entries shared | "
          "max |Δ maximum| / layer max")
    fp32_ok = True
    for precision in ("fp32", "tf32", "amp"):
        started = time.monotonic()
        run = scan_to(lib, tmp / f"{device.replace(':', '')}-{precision}.h5", device, precision=precision)
        secs = time.monotonic() - started
        for layer, (same, shared, diff) in compare_runs(ref, run).items():
            print(f"     {precision:9s} | {layer:12s} | {same:7.1%} | {shared:7.2%} | {diff:.1e}")
        print(f"     ({precision}: {secs:.1f} s)")
        if precision == "fp32":
            fp32_ok, detail = same_results(ref, run)
    report("fp32 scan on the device equals the CPU scan", fp32_ok, detail)


@check("optimization")
def optimization(device: str, tmp: Path) -> None:
    import torch

    from cnnviz.optim import cs231n_class_visualization, render
    from cnnviz.optim import objectives as obj

    model = squeezenet(device)
    cpu = squeezenet("cpu")
    cases = {
        "render, one channel": lambda m: render(m, obj.channel("features.9", 3), steps=12, seed=1,
                                                progress=False),
        "channel-vis, batch of 4": lambda m: render(m, obj.channels("features.9", [0, 1, 2, 3]), batch=4,
                                                    steps=12, seed=1, progress=False),
        "class-vis modern, batch of 2": lambda m: render(m, obj.class_logits([76, 130]), batch=2, steps=12,
                                                         seed=1, progress=False),
        "class-vis cs231n, one class": lambda m: cs231n_class_visualization(m, 76, steps=12, seed=1,
                                                                            progress=False),
        "class-vis cs231n, batch of 2": lambda m: cs231n_class_visualization(m, [76, 130], steps=12, seed=1,
                                                                             progress=False),
    }
    for name, run in cases.items():
        a, b = run(model), run(model)
        same = torch.equal(a.images, b.images)
        first = run_steps_zero(name, cpu, model)
        report(f"{name} on {device}: deterministic, starts from the CPU's image", same and first,
               f"same seed same images: {same}; same start as the CPU: {first}")
    for args in (["channel-vis", "--layer", "features.9", "--channels", "0-3", "--steps", "8"],
                 ["class-vis", "--target", "76", "--recipe", "modern", "--steps", "8"],
                 ["class-vis", "--target", "76,130", "--steps", "8"]):
        res = cli(*args, "--model", "squeezenet1_1", "--weights", str(WEIGHTS), "--device", device,
                  "--no-progress", "--out", str(tmp / f"{args[0]}-{len(args)}.png"))
        report(f"cnnviz {' '.join(args[:3])} --device {device}", res.returncode == 0,
               (res.stdout + res.stderr).strip().splitlines()[-1][:200])


def run_steps_zero(name: str, cpu, model) -> bool:
    """The starting image (step 0) on the device equals the CPU's: one CPU generator."""
    import torch

    from cnnviz.optim import cs231n_class_visualization, render
    from cnnviz.optim import objectives as obj

    if "cs231n" in name:
        a = cs231n_class_visualization(cpu, 76, steps=0, seed=1, progress=False).images
        b = cs231n_class_visualization(model, 76, steps=0, seed=1, progress=False).images
    else:
        a = render(cpu, obj.channel("features.9", 3), steps=0, seed=1, progress=False).images
        b = render(model, obj.channel("features.9", 3), steps=0, seed=1, progress=False).images
    return bool(torch.allclose(a, b.cpu(), atol=1e-6))


@check("explain, report maps, attributions, featuremaps, classify")
def analysis_paths(device: str, tmp: Path, n: int) -> None:
    import numpy as np

    import cnnviz
    from cnnviz.analysis.attribution import neuron_attributions
    from cnnviz.report.context import gather_context
    from cnnviz.run.reader import RunReader

    run = tmp / "cpu.h5"
    if not run.exists():
        scan_to(library(tmp, n), run, "cpu")
    photos = sorted(PHOTOS.glob("*.jpg"))[n: n + 4]
    key = ["image", "layer", "channel"]
    a = cnnviz.explain(photos, run, device="cpu").sort_values(key, ignore_index=True)
    b = cnnviz.explain(photos, run, device=device).sort_values(key, ignore_index=True)
    diff = float(np.nanmax(np.abs(a["value"].to_numpy() - b["value"].to_numpy())
                           / np.maximum(1e-6, np.abs(a["value"].to_numpy()))))
    ranks = float((a["rank"].fillna(-1) == b["rank"].fillna(-1)).mean())
    report(f"explain on {device} equals the CPU", diff <= 1e-5, f"values to {diff:.1e} relative, "
           f"{ranks:.2%} of the ranks equal")
    with RunReader(run) as reader:
        ca = gather_context(reader, {"features.9": [0, 1]}, squeezenet("cpu"), "cpu", workers=2)
        cb = gather_context(reader, {"features.9": [0, 1]}, squeezenet(device), device, workers=2)
    diff = max(float(np.abs(ca.maps[k] - cb.maps[k]).max()) for k in ca.maps)
    report(f"report's activation maps on {device} equal the CPU's", diff <= 1e-4, f"to {diff:.1e}")
    cnnviz.write_report(run, tmp / "report", layers=["features.9"], channels=2,
                        attributions={"features.9": [0]}, model=squeezenet(device), progress=False)
    report(f"report with photos and attributions on {device}", (tmp / "report" / "index.html").exists())
    at_a = neuron_attributions(squeezenet("cpu"), run, "features.9", 0)
    at_b = neuron_attributions(squeezenet(device), run, "features.9", 0)
    diff = max(float(np.abs(x - y).max()) for x, y in zip(at_a, at_b, strict=True) if x is not None)
    report(f"attributions on {device} equal the CPU's", diff <= 1e-4, f"to {diff:.1e}")
    from cnnviz.images.decoding import load_rgb
    from cnnviz.viz.featuremaps import layer_activation

    img = load_rgb(photos[0])
    fa = layer_activation(squeezenet("cpu"), img, "features.9")
    fb = layer_activation(squeezenet(device), img, "features.9").cpu()
    diff = float((fa - fb).abs().max() / fa.abs().max())
    report(f"featuremaps on {device} equal the CPU's", diff <= 1e-5, f"to {diff:.1e} of the maximum")
    ta = squeezenet("cpu").classify([img])[0]
    tb = squeezenet(device).classify([img])[0]
    same = [i for i, _, _ in ta] == [i for i, _, _ in tb] and np.allclose(
        [p for *_, p in ta], [p for *_, p in tb], atol=1e-5)
    report(f"classify on {device} equals the CPU", same, f"top-1 {ta[0][1]} {ta[0][2]:.3f} / {tb[0][2]:.3f}")


@check("scan --compile")
def compiled(device: str, tmp: Path, n: int) -> None:
    lib = library(tmp, n)
    eager = tmp / f"{device.replace(':', '')}-fp32.h5"
    if not eager.exists():
        scan_to(lib, eager, device)
    started = time.monotonic()
    run = scan_to(lib, tmp / "compiled.h5", device, compile=True)
    ok, detail = same_results(eager, run, tol=1e-4)
    report(f"scan --compile on {device} equals the eager scan", ok,
           f"{detail} ({time.monotonic() - started:.0f} s with compiling)")


def interrupted_then_resumed(lib: Path, out: Path, first: str, then: str) -> subprocess.CompletedProcess:
    """A CLI scan on ``first`` stopped by Ctrl-C after its first checkpoint, resumed on ``then``."""
    import numpy as np

    args = ["scan", str(lib), "--model", "squeezenet1_1", "--weights", str(WEIGHTS), "--layers", LAYERS,
            "--top-k", "16", "--batch-size", "16", "--checkpoint-images", "32", "--no-progress",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "cnnviz", *args, "--device", first],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = Path(str(out) + ".work") / "state.npz"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if int(np.load(state)["next_image"]) > 0:
                break
        except (OSError, ValueError, KeyError, EOFError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    return cli(*args, "--device", then, "--resume")


@check("resume across devices")
def resume_across(device: str, tmp: Path, n: int) -> None:
    lib = library(tmp, n)
    ref = tmp / "cpu.h5"
    if not ref.exists():
        scan_to(lib, ref, "cpu")
    for i, (first, then) in enumerate(((device, "cpu"), ("cpu", device))):
        out = tmp / f"resumed{i}-{first}-{then}.h5".replace(":", "")
        res = interrupted_then_resumed(lib, out, first, then)
        if res.returncode != 0:
            report(f"scan on {first} resumed on {then}", False, (res.stdout + res.stderr)[-300:])
            continue
        ok, detail = same_results(ref, out)
        report(f"scan on {first} resumed on {then} equals the CPU scan", ok, detail)


@check("torchrun")
def torchrun(device: str, tmp: Path, n: int) -> None:
    lib = library(tmp, n)
    out = tmp / "torchrun.h5"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                          "-m", "cnnviz", "scan", str(lib), "--model", "squeezenet1_1",
                          "--weights", str(WEIGHTS),
                          "--layers", LAYERS, "--top-k", "16", "--batch-size", "64", "--no-progress",
                          "--device", device, "--out", str(out)], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        errors = [line for line in (res.stdout + res.stderr).splitlines() if "error" in line.lower()]
        report("torchrun, one process", False, " | ".join(errors[:3])[:400])
        return
    ref = tmp / "cpu.h5"
    ok, detail = same_results(ref, out)
    backend = "NCCL" if device.startswith("cuda") else "gloo"
    report(f"torchrun --nproc_per_node=1 ({backend}) equals the CPU scan", ok, detail)


@check("out of memory")
def out_of_memory(device: str, tmp: Path) -> None:
    if not device.startswith("cuda"):
        report("CUDA out of memory", None, "needs CUDA")
        return
    lib = library(tmp, 600)
    out = tmp / "oom.h5"
    code = f"""
import sys, torch, cnnviz
from cnnviz.errors import ScanError
torch.cuda.set_per_process_memory_fraction(0.02)
m = cnnviz.load_model("resnet50", None, device={device!r})
kw = dict(top_k=4, progress=False, device={device!r}, maxima_dtype="none")
try:
    cnnviz.scan({str(lib)!r}, m, {str(out)!r}, batch_size=512, **kw)
    print("NO ERROR")
except ScanError as exc:
    print("ERROR", exc)
cnnviz.scan({str(lib)!r}, m, {str(out)!r}, batch_size=16, resume=True, **kw)
print("RESUMED")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    text = res.stdout + res.stderr
    named = "ran out of memory for a batch of 512" in text and "batch_size=256" in text
    report("CUDA out of memory: named, checkpoint kept, a smaller batch resumes", named and "RESUMED" in text,
           text.strip().splitlines()[-1][:300] if text.strip() else "")


@check("views")
def views(device: str, tmp: Path, n: int) -> None:
    import h5py
    import numpy as np

    lib = library(tmp, n)
    kw = dict(layers="features.9,classifier.1", bottom_k=8, bottom_layers="classifier.1")
    ref = scan_to(lib, tmp / "views-cpu.h5", "cpu", **kw)
    started = time.monotonic()
    run = scan_to(lib, tmp / "views-dev.h5", device, **kw)
    with_views = time.monotonic() - started
    started = time.monotonic()
    scan_to(lib, tmp / "plain-dev.h5", device, layers=kw["layers"], rank_by="max", quantiles=False)
    plain = time.monotonic() - started
    ok, lines = True, []
    with h5py.File(ref, "r") as a, h5py.File(run, "r") as b:
        for layer in ("features.9", "classifier.1"):
            for group in ("topk_mean", "bottomk") if layer == "classifier.1" else ("topk_mean",):
                key = f"layers/{layer}/{group}/image_id"
                same = float((a[key][()] == b[key][()]).all(axis=1).mean())
                ok &= same == 1.0
                lines.append(f"{layer} {group}: identical lists {same:.1%}")
            key = f"layers/{layer}/quantiles/histogram"
            ha, hb = a[key][()], b[key][()]
            moved = float(np.abs(ha - hb).sum() / 2 / max(1, ha.sum()))
            ok &= (ha.sum(axis=1) == hb.sum(axis=1)).all() and moved < 1e-4
            lines.append(f"{layer} histogram: {moved:.1e} of the counts in another bucket")
    report("views on the device equal the CPU's", ok, "; ".join(lines))
    report("views on the device: scan time with them / without", True,
           f"{with_views:.1f} s / {plain:.1f} s = {with_views / plain:.2f} ({n} photos, batch 64)")


@check("relevance")
def relevance(device: str, tmp: Path, n: int) -> None:
    """rank_by relevance (a backward pass per batch) and explain --why on the device, against
    the CPU in fp32."""
    import time as _time

    import numpy as np

    from cnnviz.analysis.relevance import explain_prediction

    lib = library(tmp, n)
    kw = dict(layers="features.9,features.12", rank_by="max,relevance")
    started = _time.monotonic()
    on_cpu = scan_to(lib, tmp / "rel-cpu.h5", "cpu", **kw)
    cpu_s = _time.monotonic() - started
    started = _time.monotonic()
    on_dev = scan_to(lib, tmp / "rel-dev.h5", device, **kw)
    dev_s = _time.monotonic() - started
    import h5py

    with h5py.File(on_cpu, "r") as a, h5py.File(on_dev, "r") as b:
        same = min(float((a[f"layers/{k}/topk_relevance/image_id"][()] ==
                          b[f"layers/{k}/topk_relevance/image_id"][()]).all(axis=1).mean())
                   for k in ("features.9", "features.12"))
    report(f"relevance ranking on {device} equals the CPU's", same == 1.0,
           f"identical lists {same:.1%} (worst layer); scans {cpu_s:.0f} s (CPU), {dev_s:.0f} s ({device})")
    photo = sorted(PHOTOS.glob("*.jpg"))[n]
    ta = explain_prediction(photo, on_cpu, model=squeezenet("cpu"), top=5)
    tb = explain_prediction(photo, on_cpu, model=squeezenet(device), device=device, top=5)
    diff = float(np.max(np.abs(ta.relevance.to_numpy() - tb.relevance.to_numpy())))
    report(f"explain --why on {device} equals the CPU", ta.channel.tolist() == tb.channel.tolist(),
           f"relevance to {diff:.1e}")


@check("throughput")
def throughput(device: str, images: int, workers: int) -> None:
    bench = REPO / "scripts" / "bench_scan.py"
    runs = {"amp": ["--precision", "amp", "--compile"], "fp32": ["--precision", "fp32"],
            "tf32": ["--precision", "tf32"]}
    for name, extra in runs.items():
        res = subprocess.run([sys.executable, str(bench), "--device", device, "--batch-size", "256",
                              "--images", str(images), "--workers", str(workers), "--skip-memory", *extra],
                             capture_output=True, text=True, timeout=900)
        print("\n".join("     " + line for line in res.stdout.strip().splitlines()))
        if res.returncode:
            report(f"benchmark {name}", False, res.stderr.strip()[-300:])
            continue
        ratio = _number(res.stdout, r"scan / best bare\s*:\s*([\d.]+)")
        pipe = _number(res.stdout, r"scan / bare pipeline:\s*([\d.]+)")
        report(f"benchmark {name}: scan / bare channels_last network >= 0.85, / bare pipeline >= 0.95",
               ratio >= 0.85 and pipe >= 0.95, f"{ratio:.2f} and {pipe:.2f}")
        if "--compile" in extra:
            eager = _number(res.stdout, r"scan \(\d+ layers, k=\d+\):\s*([\d.]+)")
            comp = _number(res.stdout, r"scan --compile\s*:\s*([\d.]+)")
            report("benchmark: scan --compile >= 1.3x the eager scan", comp >= 1.3 * eager,
                   f"{comp / eager:.2f}x ({comp:.0f} vs {eager:.0f} img/s)")
    res = subprocess.run([sys.executable, str(bench), "--host-only"], capture_output=True, text=True,
                         timeout=300)
    print("\n".join("     " + line for line in res.stdout.strip().splitlines()))
    us = _number(res.stdout, r"host work per image:\s*([\d.]+)")
    report("host work per image <= 30 µs (this machine's CPU)", us <= 30, f"{us:.1f} µs")


def _number(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda when there is one")
    p.add_argument("--photos", type=int, default=334, help="photos in the comparison scans (default 334)")
    p.add_argument("--bench-images", type=int, default=8192, help="images in the benchmark (default 8192)")
    p.add_argument("--workers", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)))
    p.add_argument("--skip-bench", action="store_true")
    args = p.parse_args()
    import torch

    if args.device is None:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False): nothing "
                  "to check; `--device cpu` tests this script on the CPU")
            return 0
        args.device = "cuda"
    env_line(args.device)
    if not (WEIGHTS.is_file() and PHOTOS.is_dir()):
        report("checks on real weights and photos", None, f"{SHARED} is absent")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    started = time.monotonic()
    try:
        precision_table(args.device, tmp, args.photos)
        optimization(args.device, tmp)
        analysis_paths(args.device, tmp, args.photos)
        compiled(args.device, tmp, args.photos)
        resume_across(args.device, tmp, args.photos)
        torchrun(args.device, tmp, args.photos)
        out_of_memory(args.device, tmp)
        relevance(args.device, tmp, args.photos)
        views(args.device, tmp, args.photos)
        if not args.skip_bench:
            throughput(args.device, args.bench_images, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [name for name, status, _ in RESULTS if status == "FAIL"]
    print(f"gpu_check: {len(RESULTS) - len(failed)} passed or skipped, {len(failed)} failed, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if failed else 0


def env_line(device: str) -> None:
    import torch

    import cnnviz

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    cudnn = torch.backends.cudnn.version() if device.startswith("cuda") else None
    print(f"cnnviz {cnnviz.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {cudnn}, "
          f"device {device} ({name}), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    sys.exit(main())
