"""The distribution of a channel's activations over all positions: fixed log-spaced buckets.

A scan counts, per channel, how many activations fall in each bucket of one fixed scale (the
same for every channel, layer, shard and scan), so histograms merge by addition: shards merge
exactly and a resumed scan counts what an uninterrupted one counts. The buckets follow the
float32 bits of the value: ``mantissa_bits`` bits after the exponent, i.e. ``2**mantissa_bits``
buckets per octave, each ``[m, m + 2**(e - mantissa_bits))`` for magnitudes in the octave
``[2**e, 2**(e+1))``. Magnitudes below ``2**min_exponent`` (zeros included) share one bucket
around 0; magnitudes of ``2**max_exponent`` and more share one overflow bucket per sign. NaN
is not counted.

A level ``q`` is read as the bucket holding the ``ceil(q * n)``-th smallest counted value (the
inverted-CDF quantile, numpy's ``method="inverted_cdf"``), reported as the bucket's midpoint:
it is within ``2**-(mantissa_bits + 1)`` of the exact quantile of the counted values,
relatively (3 bits: 6.25 %), or within ``2**min_exponent`` of it in the bucket around 0, and
``+-inf`` in an overflow bucket. Numpy only: readers use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import format as fmt

__all__ = ["BucketScale", "SCALE", "LEVELS", "MASK_LEVEL", "quantiles_from_histogram"]

#: The levels a run stores per channel (``quantiles/value``).
LEVELS = (0.5, 0.9, 0.99, 0.995, 0.999)
#: NetDissect's convention: a unit's mask is where it exceeds its top-0.5 % level.
MASK_LEVEL = 0.995


@dataclass(frozen=True)
class BucketScale:
    """The fixed bucket scale (recorded in the run file as attributes of ``quantiles``)."""

    mantissa_bits: int = 3
    min_exponent: int = -16
    max_exponent: int = 20

    @property
    def per_sign(self) -> int:
        """Log-spaced buckets on each side of 0."""
        return (self.max_exponent - self.min_exponent) << self.mantissa_bits

    @property
    def n_buckets(self) -> int:
        """Overflow, negative buckets, the one around 0, positive buckets, overflow."""
        return 2 * self.per_sign + 3

    @property
    def zero(self) -> int:
        """Index of the bucket around 0."""
        return self.per_sign + 1

    def magnitude_edges(self) -> np.ndarray:
        """``per_sign + 1`` ascending magnitudes: positive bucket ``j`` spans
        ``[edges[j], edges[j+1])``."""
        m = self.mantissa_bits
        steps = np.arange(self.per_sign + 1, dtype=np.float64)
        octave, sub = np.divmod(steps, 1 << m)
        return np.ldexp(1.0 + sub / (1 << m), (octave + self.min_exponent).astype(np.int64))

    def edges(self) -> np.ndarray:
        """``n_buckets + 1`` ascending value edges from ``-inf`` to ``+inf``: bucket ``i`` holds
        the values between ``edges[i]`` and ``edges[i+1]`` (a positive bucket includes its lower
        edge, a negative one its upper edge: magnitudes are bucketed)."""
        mag = self.magnitude_edges()
        return np.concatenate([[-np.inf], -mag[::-1], mag, [np.inf]])

    def midpoints(self) -> np.ndarray:
        """Each bucket's reported value: its midpoint; 0 for the bucket around 0, ``+-inf`` for
        the overflow buckets."""
        e = self.edges()
        mid = (e[:-1] + e[1:]) / 2
        mid[self.zero] = 0.0
        mid[0], mid[-1] = -np.inf, np.inf
        return mid

    def attrs(self) -> dict:
        return {fmt.QUANTILE_MANTISSA_BITS: self.mantissa_bits, fmt.QUANTILE_MIN_EXPONENT: self.min_exponent,
                fmt.QUANTILE_MAX_EXPONENT: self.max_exponent}

    @classmethod
    def from_attrs(cls, attrs) -> BucketScale:
        return cls(int(attrs[fmt.QUANTILE_MANTISSA_BITS]), int(attrs[fmt.QUANTILE_MIN_EXPONENT]),
                   int(attrs[fmt.QUANTILE_MAX_EXPONENT]))

    def bucket_of(self, values: np.ndarray) -> np.ndarray:
        """The bucket of each float32 value (``n_buckets`` for NaN): what the scan computes on
        the device (:func:`cnnviz.scanner.reducers.bucket_keys`), for tests and readers."""
        bits = np.asarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
        mag = bits & 0x7FFFFFFF
        e = np.clip((mag >> (23 - self.mantissa_bits)) - ((127 + self.min_exponent) << self.mantissa_bits),
                    -1, self.per_sign)
        key = np.where(bits < 0, self.per_sign - e, self.per_sign + 2 + e)
        return np.where(mag > 0x7F800000, self.n_buckets, key)


SCALE = BucketScale()


def quantiles_from_histogram(counts: np.ndarray, levels, scale: BucketScale = SCALE) -> np.ndarray:
    """Per row of ``counts`` (``(C, n_buckets)``), the value of each level (``(C, L)`` float64):
    the midpoint of the bucket holding the ``ceil(q * n)``-th smallest value; NaN for a row that
    counted nothing."""
    counts = np.asarray(counts, dtype=np.int64)
    levels = np.asarray(levels, dtype=np.float64)
    cum = np.cumsum(counts, axis=1)
    total = cum[:, -1:]
    rank = np.maximum(np.ceil(levels[None, :] * total), 1)  # (C, L): the rank-th smallest value
    bucket = (cum[:, None, :] < rank[:, :, None]).sum(axis=2)
    values = scale.midpoints()[np.minimum(bucket, counts.shape[1] - 1)]
    return np.where(total > 0, values, np.nan)
