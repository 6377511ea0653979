"""Shared fixtures and helpers (plain functions, imported as ``from ..conftest import ...``).
Tests that need ../shared (real weights and photos) skip without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")  # no display in CI; the library leaves backends alone
SHARED = Path(os.environ.get("CNNVIZ_SHARED", REPO.parent / "shared"))
SQUEEZENET_WEIGHTS = SHARED / "weights" / "squeezenet1_1-imagenet.pt"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pt"
IMAGEN = SHARED / "images" / "imagen"

needs_shared = pytest.mark.skipif(
    not SQUEEZENET_WEIGHTS.is_file() or not IMAGEN.is_dir(),
    reason="../shared (real ImageNet weights and photos) is not present",
)


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Real photos shipped with scikit-image/matplotlib, in two class folders, plus variety:
    a grayscale PNG, an RGBA PNG, a tiny image and a corrupt file."""
    from cnnviz.demo import demo_photos

    root = tmp_path_factory.mktemp("library")
    photos = demo_photos(root / "_src")
    (root / "animals").mkdir()
    (root / "things").mkdir()
    animals = {"chelsea.png", "horse.png", "astronaut.png"}
    for p in photos:
        shutil.copy(p, root / ("animals" if p.name in animals else "things") / p.name)
    shutil.rmtree(root / "_src")
    gray = np.asarray(Image.open(root / "animals" / "chelsea.png").convert("L"))
    Image.fromarray(gray).save(root / "things" / "gray.png")
    rgba = np.dstack([np.asarray(Image.open(root / "things" / "coffee.png").convert("RGB")),
                      np.full((400, 600), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "things" / "rgba.png")
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(root / "things" / "tiny.jpg")
    (root / "things" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    """A small CNN with in-place ReLUs, a residual sum and ceil-mode pooling."""

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
            self.relu = torch.nn.ReLU(inplace=True)

        def forward(self, x):
            out = self.conv(x)
            out += x
            return self.relu(out)

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=2, padding=2),
        torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Block(8),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(inplace=True),
        Block(16),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )


def make_tiny_model(seed: int = 0):
    """``tiny_cnn(seed)`` as a loaded model: 64x64 crops of images resized to 72, classes c0-c9."""
    from cnnviz import Preprocessing, from_module

    return from_module(tiny_cnn(seed), Preprocessing(resize=72, crop=(64, 64)),
                       class_names=[f"c{i}" for i in range(10)], name="tiny")


@pytest.fixture
def tiny_model():
    return make_tiny_model()


class StopsOnce(torch.nn.Module):
    """``tiny_cnn(seed)``, out of memory once at its third forward pass, counted in
    ``StopsOnce.calls`` across copies (the scan runs a copy): set it before the scan."""

    calls = 0

    def __init__(self, seed: int = 0):
        super().__init__()
        self.net = tiny_cnn(seed)

    def forward(self, x):
        StopsOnce.calls += 1
        if StopsOnce.calls == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.net(x)


class Payload:
    """Unpickling this creates a file: proof that a weights file ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# -- the command line -----------------------------------------------------------------------

def one_line_error(text: str) -> None:
    """A refusal: no traceback, exactly one line that says ``error:``."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text


@pytest.fixture
def cli(capsys):
    """A command run in this process (no interpreter start): its output (stdout and stderr),
    its exit code checked; a refusal (exit 2) is one line without a traceback."""
    from cnnviz.cli import main

    def run(*args, code: int) -> str:
        assert main([str(a) for a in args]) == code
        out = capsys.readouterr()
        if code == 2:
            one_line_error(out.err)
        return out.out + out.err
    return run


def start_cli(*args, **kw) -> subprocess.Popen:
    """``python -m cnnviz ARGS`` in a new process, stdout and stderr together, unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "cnnviz", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def run_cli(*args, code: int) -> str:
    """``start_cli`` waited for: its output, its exit code checked (a refusal is one line)."""
    proc = start_cli(*args)
    text = proc.stdout.read()
    assert proc.wait(timeout=300) == code, text
    if code == 2:
        one_line_error(text)
    return text


def wait_for(predicate, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def checkpointed(work: Path, batches: int):
    """Whether the scan in ``work`` has checkpointed ``batches`` batches (a state being replaced
    or half read counts as not yet)."""
    def done() -> bool:
        try:
            with np.load(work / "state.npz") as z:
                return int(z["next_batch"]) >= batches
        except (OSError, ValueError, KeyError, EOFError):
            return False
    return done


# -- scans and run files --------------------------------------------------------------------

# a small scan of resnet18 with random weights, as keyword arguments and as flags
RESNET_KW = dict(layers="layer1.1,layer3.0", top_k=3, batch_size=2, workers=0, progress=False)
RESNET_ARGS = ["--model", "resnet18", "--weights", "none", "--layers", "layer1.1,layer3.0", "--top-k", "3",
               "--batch-size", "2", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="session")
def resnet_run(photo_dir, tmp_path_factory) -> Path:
    """The photos scanned with ``RESNET_KW``: read it, or copy it to change it."""
    from cnnviz import load_model, scan

    return scan(photo_dir, load_model("resnet18", None), tmp_path_factory.mktemp("resnet") / "run.h5",
                **RESNET_KW)


def big_library(photo_dir: Path, root: Path, copies: int = 4) -> Path:
    """``copies`` copies of the photos in ``root/lib`` (a scan long enough to interrupt)."""
    lib = root / "lib"
    for c in range(copies):
        for p in sorted(photo_dir.rglob("*")):
            if p.is_file():
                dst = lib / f"copy{c}" / p.relative_to(photo_dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(p.read_bytes())
    return lib


def run_contents(path: Path) -> dict:
    """Every dataset and attribute of a run file, timings aside."""
    out = {}
    with h5py.File(path, "r") as f:
        def keep(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]

        f.visititems(keep)
        for k, v in f.attrs.items():
            if k not in ("created", "finished") and not k.endswith("_seconds"):  # timings
                out[f"@{k}"] = v
    return out


def assert_same_file(a: Path, b: Path) -> None:
    ca, cb = run_contents(a), run_contents(b)
    assert sorted(ca) == sorted(cb)
    for k in ca:
        x, y = np.asarray(ca[k]), np.asarray(cb[k])
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=k)  # NaNs compare equal here
        else:
            assert (x == y).all(), k


def assert_equal_runs(a, b):
    """Same top-k, maxima, positions, failures, images; statistics to float64 rounding (their
    sums run in another order); bookkeeping attributes aside."""
    ca, cb = run_contents(a), run_contents(b)
    skip = {"@world_size"}
    assert sorted(ca) == sorted(cb)
    for k in ca:
        if k in skip:
            continue
        x, y = np.asarray(ca[k]), np.asarray(cb[k])
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if "/stats/" in k:
            np.testing.assert_allclose(x, y, rtol=1e-12, err_msg=k)
        elif x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            assert (x == y).all(), k


# -- a full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs, where the test may mount one (root on Linux); else skipped."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(disk: Path, leave: int) -> Path:
    """A file that fills ``disk`` but for ``leave`` bytes; unlink it to free the space."""
    free = shutil.disk_usage(disk).free
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


# -- every view of a channel, and brute force to check it -----------------------------------

VIEW_LAYERS = ["0", "3", "6", "9"]  # a signed map (before an in-place ReLU), two maps after one, the logits
VIEW_K = 3
VIEW_BATCH = 4
TOL = 1e-5


def scan_every_view(library, out, model=None, **kw):
    """A scan of the tiny network (or ``model``) keeping every view: rankings by max and mean,
    the bottom-k, quantiles over every position, the per-image means; ``kw`` overrides."""
    from cnnviz import scan
    from cnnviz.errors import CnnvizWarning

    options = dict(layers=",".join(VIEW_LAYERS), top_k=VIEW_K, batch_size=VIEW_BATCH, workers=0,
                   progress=False, rank_by="max,mean", bottom_k=2, quantile_positions=0, maxima_means=True)
    options.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CnnvizWarning)  # "no bottom-k for 3, 6": tested in scanner/
        return scan(library, model or make_tiny_model(), out, **options)


@pytest.fixture(scope="session")
def views_run(photo_dir, tmp_path_factory):
    """The photos scanned with ``scan_every_view``: read it, or copy it to change it."""
    return scan_every_view(photo_dir, tmp_path_factory.mktemp("views") / "run.h5")


def activations(library, model, layers, batch_size=VIEW_BATCH) -> dict[int, dict[str, np.ndarray]]:
    """Per readable image, each layer's whole activation map ``(C, H, W)`` float32, from the same
    decoded batches and layout as a scan (so that the reductions, not the convolutions, are what
    the tests compare)."""
    from cnnviz import ImageLibrary
    from cnnviz.images.dataset import LibraryDataset, batch_ranges, collate
    from cnnviz.model.taps import capture

    lib = ImageLibrary.open(library) if not isinstance(library, ImageLibrary) else library
    ds = LibraryDataset(lib, model.preprocessing)
    out = {}
    module = model.module.to(memory_format=torch.channels_last)
    for ids in batch_ranges(len(lib), batch_size):
        _, crops, _, _, errors = collate([ds[i] for i in ids])
        ok = [i for i, e in zip(ids, errors, strict=True) if not e]
        if not ok:
            continue
        x = model.preprocessing.normalize(crops[[j for j, e in enumerate(errors) if not e]])
        with capture(module, layers) as rec, torch.no_grad():
            module(x.contiguous(memory_format=torch.channels_last))
        for row, i in enumerate(ok):
            maps = {}
            for name in layers:
                a = rec.outputs[name][row].float()
                maps[name] = (a[:, None, None] if a.dim() == 1 else a).numpy().copy()
            out[i] = maps
    return out


def brute_ranking(values: dict[int, np.ndarray], c: int, k: int, ascending: bool = False) -> list[int]:
    """The k image ids of a full sort by (-value, id) (ascending: (value, id)); NaN never enters."""
    cand = [(float(v[c]), i) for i, v in values.items() if not np.isnan(v[c])]
    cand.sort(key=lambda p: (p[0] if ascending else -p[0], p[1]))
    return [i for _, i in cand[:k]]


def assert_ranking(group, values: dict[int, np.ndarray], k: int, ascending: bool = False) -> None:
    """A stored ranking (``topk/``, ``topk_mean/``, ``bottomk/``) equals a full sort: the same
    images in the same order (an image may trade places only with one whose brute-force value is
    within float rounding of its own), its activation the image's value."""
    ids, acts = group["image_id"][()], group["activation"][()]
    for c in range(ids.shape[0]):
        want = brute_ranking(values, c, k, ascending)
        got = [int(i) for i in ids[c] if i >= 0]
        assert len(got) == len(want), c
        for g, w in zip(got, want, strict=True):
            assert g == w or abs(values[g][c] - values[w][c]) <= TOL, (c, got, want)
        np.testing.assert_allclose(acts[c][: len(got)], [values[i][c] for i in got], rtol=1e-5, atol=TOL)
        assert (ids[c][len(got):] == -1).all() and np.isnan(acts[c][len(got):]).all()
