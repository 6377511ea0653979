"""What ranking by spatial mean shows that ranking by spatial max does not, on real photos.

    python scripts/measure_views.py [--library ../shared/images/imagen] [--keep DIR] [--run RUN.h5]

Scans the 1,000 labelled ImageNet photos of ../shared with the real SqueezeNet 1.1 (its fire
modules and the class map ``classifier.1``, 1000 channels of 13x13, channel c = class c) keeping
both rankings, then prints from the run file:

* for the class map: the share of the classes present in the library whose channel has a photo
  of its own class as top-1 (and among its top-5), ranked by max and by mean;
* per layer: how label-pure the top-k are (the share of the most frequent label among a
  channel's top-k, averaged over channels) by max and by mean, and how many of the two top-k
  share an image;
* the scan's own timing and the file's size by dataset group.

The run file (about 500 MB) is written to a temporary folder and removed at the end, or kept in
``--keep DIR``; ``--run`` reuses a run file made by this script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def labelled_list(library: Path, folder: Path) -> Path:
    """A list file naming each photo with its WordNet id (``<wnid>_<id>_<name>.jpg``)."""
    lst = folder / "imagen.csv"
    rows = ["path,label"] + [f"{p},{p.name.split('_')[0]}" for p in sorted(library.glob("*.jpg"))]
    lst.write_text("\n".join(rows) + "\n")
    return lst


def scan_run(library: Path, out: Path) -> Path:
    from cnnviz import load_model, scan

    model = load_model("squeezenet1_1", str(SHARED / "weights" / "squeezenet1_1-imagenet.pt"))
    lst = labelled_list(library, out.parent)
    started = time.perf_counter()
    layers = ",".join([*(f"features.{i}" for i in (3, 4, 6, 7, 9, 10, 11, 12)), "classifier.1"])
    scan(lst, model, out, layers=layers, top_k=8, batch_size=32, rank_by="max,mean", bottom_k=8,
         bottom_layers="classifier.1", maxima_means=True, progress=False, overwrite=True)
    print(f"scanned in {time.perf_counter() - started:.0f} s: {out}")
    return out


def class_map(run: Path) -> None:
    from cnnviz.labels import imagenet_classes

    wnids = [c.wnid for c in imagenet_classes()]
    with h5py.File(run, "r") as f:
        labels = np.array([v.decode() for v in f["images/label"][()]])
        present = sorted({wnids.index(w) for w in set(labels) if w in wnids})
        g = f["layers/classifier.1"]
        for group, what in (("topk", "max"), ("topk_mean", "mean")):
            ids = g[f"{group}/image_id"][()]
            top1 = np.mean([labels[ids[c, 0]] == wnids[c] for c in present])
            top5 = np.mean([(labels[ids[c, :5]] == wnids[c]).any() for c in present])
            print(f"classifier.1 by {what:4s}: own class top-1 for {top1:5.1%} of the {len(present)} classes "
                  f"in the library, among the top-5 for {top5:5.1%}")


def purity(run: Path) -> None:
    with h5py.File(run, "r") as f:
        labels = np.array([v.decode() for v in f["images/label"][()]])
        for name in json.loads(f.attrs["layers"]):
            g = f[f"layers/{name}"]
            out = []
            for group in ("topk", "topk_mean"):
                ids = g[f"{group}/image_id"][()]
                shares = [np.unique(labels[row[row >= 0]], return_counts=True)[1].max() / (row >= 0).sum()
                          for row in ids]
                out.append(np.mean(shares))
            a, b = g["topk/image_id"][()], g["topk_mean/image_id"][()]
            shared = np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)])
            print(f"{name:13s} top-8 label purity by max {out[0]:.3f}, by mean {out[1]:.3f}; "
                  f"images in both lists {shared:.0%}")


def sizes(run: Path) -> None:
    totals: dict[str, int] = {}
    with h5py.File(run, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                key = name.split("/")[2] if name.startswith("layers/") else name.split("/")[0]
                totals[key] = totals.get(key, 0) + obj.id.get_storage_size()
        f.visititems(visit)
        print(f"scan {float(f.attrs['scan_seconds']):.0f} s, patches cut in "
              f"{float(f.attrs['assemble_seconds']):.0f} s")
    print("bytes on disk by group: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(totals.items())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", type=Path, default=SHARED / "images" / "imagen")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR", help="keep the run file in DIR")
    p.add_argument("--run", type=Path, default=None, help="a run file this script made before")
    args = p.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="measure_views_"))
    try:
        run = args.run
        if run is None:
            folder.mkdir(parents=True, exist_ok=True)
            run = scan_run(args.library, folder / "views.h5")
        class_map(run)
        purity(run)
        sizes(run)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
