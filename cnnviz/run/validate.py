"""A run file from someone else is data, not instructions: every count, shape and id that a
reader indexes or allocates with is checked against the others when the file is opened, so a
damaged or crafted file is refused in one line before anything its attributes size is
allocated, and no id can pick the wrong image (numpy reads ``paths[-7]`` silently).

What holds in every run file cnnviz writes:

* ``n_images`` rows in every ``images/*`` dataset; failure ids in ``[0, n_images)``;
* per layer, ``channels`` rows and ``top_k`` columns in every ``topk/*`` and ``topk_mean/*``
  dataset (``bottom_k`` in ``bottomk/*``), ``channels`` entries in every ``stats/*``,
  ``(n_images, channels)`` maxima, positions and means; patches of ``patch_shape``; an optimized
  image per channel; a quantile histogram with the buckets its scale's attributes give, and one
  value per level;
* in every ranking, ids in ``[-1, n_images)``, the filled slots first; their ``y``, ``x`` inside
  the map;
* sizes a reader allocates with (the crop, map and patch sides) at most :data:`MAX_SIDE`, and no
  dataset claiming more data than the file could hold (an HDF5 dataset may declare any shape).

Pure h5py and numpy (no torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import RunFileError
from . import format as fmt

__all__ = ["validate_run", "MAX_SIDE"]

#: Largest network input, feature map or patch side a run file may declare.
MAX_SIDE = 8192


class _Bad(Exception):
    pass


def validate_run(f: h5py.File, path: Path) -> None:
    """Raise :class:`RunFileError` unless the open run file ``f`` holds together (see above)."""
    try:
        _Checker(f, path).check()
    except _Bad as exc:
        raise RunFileError(f"{path} is damaged or was not written by cnnviz ({exc}); it is not "
                           "read") from None
    except (KeyError, ValueError, TypeError) as exc:  # a missing attribute, a string where a number goes
        raise RunFileError(f"{path} is damaged or was not written by cnnviz ({type(exc).__name__}: "
                           f"{exc}); it is not read") from None


class _Checker:
    def __init__(self, f: h5py.File, path: Path):
        self.f = f
        self.limit = 2 * path.stat().st_size + (16 << 20)  # bytes a dataset may claim

    def check(self) -> None:
        a = self.f.attrs
        n = self.n = _count(a[fmt.ATTR_N_IMAGES], "n_images")
        _count(a.get(fmt.ATTR_N_FAILED, 0), "n_failed", n)
        self.k = _count(a[fmt.ATTR_TOP_K], "top_k", n, low=1) if n else _count(a[fmt.ATTR_TOP_K], "top_k")
        self.bottom_k = _count(a.get(fmt.ATTR_BOTTOM_K, 0), "bottom_k", max(n, 1))
        rank_by = json.loads(a.get(fmt.ATTR_RANK_BY, '["max"]'))
        if not isinstance(rank_by, list) or "max" not in rank_by or not set(rank_by) <= set(fmt.RANK_BY):
            raise _Bad(f"its rank_by {rank_by!r} is not a list of {', '.join(fmt.RANK_BY)}")
        layers = json.loads(a[fmt.ATTR_LAYERS])
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise _Bad("its layer list is not a list of names")
        pre = json.loads(a[fmt.ATTR_PREPROCESSING])
        crop = pre["crop"]
        if not isinstance(crop, list) or len(crop) != 2:
            raise _Bad(f"preprocessing crop {crop!r} is not [height, width]")
        for side in crop:
            _count(side, "a crop side", MAX_SIDE, low=1)
        if pre.get("resize") is not None:
            _count(pre["resize"], "the resize", MAX_SIDE, low=1)
        self._images()
        for name in layers:
            self._layer(name)

    def dataset(self, key: str, shape: tuple, required: bool = True) -> h5py.Dataset | None:
        """The dataset ``key`` of ``shape`` (``None``: any length on that axis), or ``None``."""
        if key not in self.f:
            if required:
                raise _Bad(f"{key} is missing")
            return None
        ds = self.f[key]
        if not isinstance(ds, h5py.Dataset):
            raise _Bad(f"{key} is not a dataset")
        if len(ds.shape) != len(shape) or any(w is not None and s != w
                                              for s, w in zip(ds.shape, shape, strict=True)):
            expected = tuple("?" if w is None else w for w in shape)
            raise _Bad(f"{key} has shape {ds.shape}, expected {expected}")
        if ds.size * max(ds.dtype.itemsize, 1) > self.limit:
            raise _Bad(f"{key} declares {ds.size:,} values, more than the file holds")
        return ds

    def _images(self) -> None:
        n = self.n
        self.dataset(fmt.IMAGE_PATH, (n,))
        self.dataset(fmt.IMAGE_OK, (n,))
        self.dataset(fmt.IMAGE_GEOMETRY, (n, 6))
        for key in (fmt.IMAGE_LABEL, fmt.IMAGE_PATCH_ERROR):
            self.dataset(key, (n,), required=False)
        self.dataset(fmt.IMAGE_IDENTITY, (n, 3), required=False)
        self.dataset(fmt.CLASS_NAMES, (None,), required=False)
        ids = self.dataset(fmt.FAILURE_ID, (None,), required=False)
        if ids is not None:
            for key in (fmt.FAILURE_PATH, fmt.FAILURE_REASON):
                self.dataset(key, (len(ids),))
            values = ids[()]
            if values.size and (values.min() < 0 or values.max() >= n):
                raise _Bad(f"{fmt.FAILURE_ID} holds ids outside 0..{n - 1}")

    def _layer(self, name: str) -> None:
        key = fmt.layer_group(name)
        if not isinstance(self.f.get(key), h5py.Group):
            raise _Bad(f"its layer {name!r} has no group {key}")
        g = self.f[key]
        a = g.attrs
        c = _count(a[fmt.LAYER_CHANNELS], f"{name}: channels", low=1)
        h = _count(a[fmt.LAYER_HEIGHT], f"{name}: height", MAX_SIDE, low=1)
        w = _count(a[fmt.LAYER_WIDTH], f"{name}: width", MAX_SIDE, low=1)
        ph, pw = (_count(v, f"{name}: patch side", MAX_SIDE, low=1)
                  for v in _pair(a[fmt.LAYER_PATCH_SHAPE], name))
        _count(a[fmt.LAYER_PATCH_FACTOR], f"{name}: patch_factor", MAX_SIDE, low=1)
        for attr in ("rf_size", "rf_stride", "rf_offset"):
            _pair(a[attr], name)
        at = f"{key}/"
        for rank_by, group in fmt.RANKING_GROUPS.items():
            if rank_by == "max" or group in g:
                k = self.bottom_k if rank_by == "min" else self.k
                if rank_by == "min" and k < 1:
                    raise _Bad(f"{at}{group} is there but bottom_k is {k}")
                self._ranking(f"{at}{group}/", c, k, ph, pw)
                self._slots(g[group], name if rank_by == "max" else f"{name} {group}", h, w)
        stats = g.get(fmt.STATS)
        if not isinstance(stats, h5py.Group):
            raise _Bad(f"{at}{fmt.STATS} is missing")
        for stat in stats:
            self.dataset(f"{at}{fmt.STATS}/{stat}", (c,))
        if fmt.MAXIMA in g or fmt.POSITION in g or fmt.MEANS in g or fmt.RELEVANCE in g:
            self.dataset(at + fmt.MAXIMA, (self.n, c))
            self.dataset(at + fmt.POSITION, (self.n, c))
            self.dataset(at + fmt.MEANS, (self.n, c), required=False)
            self.dataset(at + fmt.RELEVANCE, (self.n, c), required=False)
        self._optimized(g, at, c)
        self._quantiles(g, at, c)

    def _ranking(self, at: str, c: int, k: int, ph: int, pw: int) -> None:
        for sub in (fmt.ACTIVATION, fmt.IMAGE_ID, fmt.Y, fmt.X):
            self.dataset(at + sub, (c, k))
        for sub in (fmt.RF_BOX, fmt.PATCH_BOX, fmt.ORIG_BOX):
            self.dataset(at + sub, (c, k, 4))
        self.dataset(at + fmt.PATCHES, (c, k, ph, pw, 3))

    def _quantiles(self, g: h5py.Group, at: str, c: int) -> None:
        if fmt.QUANTILES not in g:
            return
        q = g[fmt.QUANTILES]
        if not isinstance(q, h5py.Group):
            raise _Bad(f"{at}{fmt.QUANTILES} is not a group")
        bits = _count(q.attrs[fmt.QUANTILE_MANTISSA_BITS], "quantiles: mantissa_bits", 10)
        low = _count(q.attrs[fmt.QUANTILE_MIN_EXPONENT] + 150, "quantiles: min_exponent + 150", 280)
        high = _count(q.attrs[fmt.QUANTILE_MAX_EXPONENT] + 150, "quantiles: max_exponent + 150", 280,
                      low=low + 1)
        _count(q.attrs[fmt.QUANTILE_POSITIONS], "quantiles: positions")
        levels = np.asarray(q.attrs[fmt.QUANTILE_LEVELS], dtype=np.float64)
        if levels.ndim != 1 or not 1 <= len(levels) <= 64 or not ((levels >= 0) & (levels <= 1)).all():
            raise _Bad(f"{at}{fmt.QUANTILES}: its levels are not up to 64 numbers in [0, 1]")
        if float(q.attrs[fmt.QUANTILE_MASK_LEVEL]) not in levels.tolist():
            raise _Bad(f"{at}{fmt.QUANTILES}: its mask_level is none of its levels")
        self.dataset(at + fmt.QUANTILE_HISTOGRAM, (c, 2 * ((high - low) << bits) + 3))
        self.dataset(at + fmt.QUANTILE_VALUE, (c, len(levels)))

    def _optimized(self, g: h5py.Group, at: str, c: int) -> None:
        if fmt.OPTIMIZED not in g:
            return
        images = g.get(fmt.OPTIMIZED_IMAGES)
        if not isinstance(images, h5py.Dataset) or len(images.shape) != 4 or images.shape[0] != c \
                or images.shape[3] != 3 or not all(1 <= s <= MAX_SIDE for s in images.shape[1:3]):
            raise _Bad(f"{at}{fmt.OPTIMIZED_IMAGES} is not one RGB image per channel")
        self.dataset(at + fmt.OPTIMIZED_DONE, (c,))

    def _slots(self, g: h5py.Group, name: str, h: int, w: int) -> None:
        """The ids and positions of one ranking group (``topk/``...)."""
        ids = g[fmt.IMAGE_ID][()]
        if ids.dtype.kind not in "iu":
            raise _Bad(f"{name}: top-k ids are not integers")
        filled = ids >= 0
        if (ids < -1).any() or (ids >= self.n).any():
            bad = ids[(ids < -1) | (ids >= self.n)][0]
            raise _Bad(f"{name}: top-k id {bad} is not an image (0..{self.n - 1}, or -1 for none)")
        if (filled[:, 1:] & ~filled[:, :-1]).any():
            raise _Bad(f"{name}: a top-k slot is filled after an empty one")
        for sub, side in ((fmt.Y, h), (fmt.X, w)):
            v = g[sub][()]
            if ((v < 0) | (v >= side))[filled].any():
                raise _Bad(f"{name}: a top-k position lies outside its {h}x{w} map")


def _count(value, what: str, high: int | None = None, low: int = 0) -> int:
    """An integer attribute in ``[low, high]``."""
    v = np.asarray(value)
    if v.shape != () or v.dtype.kind not in "iu":
        raise _Bad(f"{what} is {value!r}, not a whole number")
    v = int(v)
    if v < low or (high is not None and v > high):
        raise _Bad(f"{what} is {v}, outside {low}..{'' if high is None else high}")
    return v


def _pair(value, name: str) -> tuple:
    v = np.asarray(value)
    if v.shape != (2,) or v.dtype.kind not in "iu":
        raise _Bad(f"{name}: {value!r} is not a pair of whole numbers")
    return tuple(int(x) for x in v)
