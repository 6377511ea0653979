"""What a scan is asked to do, checked before any image is read.

:class:`ScanConfig` holds every option of :func:`cnnviz.scan`; :meth:`ScanConfig.validate`
and :func:`check_output` refuse what would fail later (a value out of range, a layer without a
receptive field, an existing run file, a missing device), so an overnight job never fails at
the end for something knowable at the start.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScanError, UsageError
from ..run.format import RANK_BY

__all__ = ["ScanConfig", "check_output", "check_scan_device"]


def default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class ScanConfig:
    """Options of a scan.

    Attributes:
        layers: tap names (list or comma-separated); ``None``: the model's block outputs.
        top_k: images kept per channel.
        batch_size: images per forward pass.
        workers: decoding processes (``None``: CPU count - 1, at most 8; 0 decodes inline).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"`` (IEEE float32: a GPU scan equals the CPU scan), ``"tf32"`` (TF32
            convolutions and matrix products on GPUs that have them: faster, maxima to about
            1e-3) or ``"amp"`` (float16 autocast on CUDA, bfloat16 on a CPU); ``None``: ``amp``
            decides (see :mod:`cnnviz.model.precision`). Maxima and top-k are computed in float32
            from the activations the network produced, whatever the precision.
        amp: the older spelling of ``precision="amp"``.
        resume: continue from the output's work folder after an interruption.
        overwrite: replace an existing output and discard an existing work folder.
        maxima_dtype: dtype of the stored images x channels maxima (``float32``, ``float16``), or
            ``none`` to keep none (top-k, patches and statistics are kept all the same).
        maxima_layers: the layers whose per-image maxima are kept (names or comma-separated;
            ``None``: every scanned layer).
        patch_size: largest side of a stored patch; larger receptive fields are downsampled.
        checkpoint_seconds: checkpoint this often (and at the end). The per-image rows go to
            disk as they are made, whatever this is: a checkpoint only makes them durable and
            records the reducers.
        checkpoint_images: also checkpoint after this many images (``None``: by time only).
        rank_by: the rankings kept per channel, each an exact top-k with patches: ``"max"``
            (images by their spatial maximum: a small strong part, textures) and ``"mean"`` (by
            their spatial mean: the whole map, whole objects); a list or ``"max,mean"``. ``max``
            is always kept. A mean-ranked image's patch is cut around its maximum. ``"relevance"``
            ranks by each channel's contribution to the image's class logit (activation x
            gradient summed over positions: ``docs/relevance.md``; the class is the image's label
            where it names one of the model's classes, else the model's top-1), its patch cut
            where the relevance peaks; it costs a backward pass per batch.
        bottom_k: also keep the ``bottom_k`` images with the most negative spatial minimum per
            channel, with patches around that minimum (0: none), for signed units (logits,
            ``Linear`` layers, taps before a ReLU); layers whose output cannot be negative are
            left out (with a note), or refused when named in ``bottom_layers``.
        bottom_layers: the layers given a bottom-k (names or comma-separated; ``None``: every
            scanned layer that can be negative).
        quantiles: count, per channel, the activations at every sampled position in a fixed
            log-spaced histogram (``cnnviz.channel_quantiles``, the masks' level).
        quantile_positions: positions per image counted for the quantiles: maps with more are
            sampled (the same positions for an image in any scan); 0 counts every position
            (exact to the bucket; ResNet50's 16 blocks on 2 CPU cores: 41 % of the forward
            pass, against 8 % for the default).
        maxima_means: keep the per-image spatial mean beside each kept maximum (the ``means``
            dataset, in ``maxima_dtype``: two thirds more than the maxima and positions take;
            the ranking by mean needs none).
        progress: show a tqdm progress bar.
        compile: compile the network, its taps traced by torch.fx instead of hooked
            (``torch.compile``; the model must be traceable, as torchvision's are). Compiling
            takes seconds to a minute before the first batch; the top-k and positions equal an
            eager scan's, the maxima to float rounding.
    """

    layers: tuple[str, ...] | str | None = None
    top_k: int = 16
    batch_size: int = 32
    workers: int | None = None
    device: str = "cpu"
    precision: str | None = None
    amp: bool = False
    resume: bool = False
    overwrite: bool = False
    maxima_dtype: str = "float32"
    maxima_layers: tuple[str, ...] | str | None = None
    patch_size: int = 64
    checkpoint_seconds: float = 60.0
    checkpoint_images: int | None = None
    progress: bool = True
    compile: bool = False
    rank_by: tuple[str, ...] | str = ("max", "mean")
    bottom_k: int = 0
    bottom_layers: tuple[str, ...] | str | None = None
    quantiles: bool = True
    quantile_positions: int = 100
    maxima_means: bool = False

    @classmethod
    def from_options(cls, options: dict) -> ScanConfig:
        """A config from keyword options, naming any unknown one."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"unknown scan option(s) {', '.join(unknown)}; the options are: "
                             f"{', '.join(sorted(known))}")
        for key in ("layers", "maxima_layers", "rank_by", "bottom_layers"):
            if isinstance(options.get(key), list):
                options = {**options, key: tuple(options[key])}
        return cls(**options)

    def kept_maxima(self, taps) -> set[str]:
        """Names of the taps whose per-image maxima are kept (checked against the taps)."""
        if self.maxima_dtype == "none":
            return set()
        if self.maxima_layers is None:
            return {t.name for t in taps}
        return _named_layers(self.maxima_layers, taps, "maxima_layers")

    def kept_means(self, taps) -> set[str]:
        """Names of the taps whose per-image means are kept (those keeping maxima, on request)."""
        return self.kept_maxima(taps) if self.maxima_means else set()

    @property
    def rankings(self) -> tuple[str, ...]:
        """``rank_by`` as a checked tuple in the order ``max``, ``mean``."""
        asked = self.rank_by.split(",") if isinstance(self.rank_by, str) else list(self.rank_by)
        asked = [str(r).strip() for r in asked if str(r).strip()]
        unknown = [r for r in asked if r not in RANK_BY]
        if unknown:
            raise UsageError(f"`rank_by` {','.join(unknown)}: choose among {', '.join(RANK_BY)} (e.g. "
                             "max,mean)")
        if "max" not in asked:
            raise UsageError(f"`rank_by` {','.join(asked) or repr(self.rank_by)}: the ranking by max is "
                             "always kept (the run's topk); ask for max,mean")
        if "relevance" in asked and self.compile:
            raise UsageError("`rank_by` relevance needs a backward pass, which `compile=True` does not "
                             "run: scan without `compile=True`")
        return tuple(r for r in RANK_BY if r in asked)

    def bottom_named(self, taps) -> set[str] | None:
        """The layers named in ``bottom_layers`` (checked against the taps), ``None`` if none."""
        if self.bottom_layers is None:
            return None
        return _named_layers(self.bottom_layers, taps, "bottom_layers")

    @property
    def resolved_precision(self) -> str:
        """``fp32``, ``tf32`` or ``amp``: what ``precision`` and ``amp`` ask for together."""
        from ..model.precision import resolve_precision

        return resolve_precision(self.precision, self.amp)

    @property
    def num_workers(self) -> int:
        return default_workers() if self.workers is None else self.workers

    def validate(self) -> None:
        """Refuse values out of range and a device this machine does not have."""
        at_least_one = {"top_k": self.top_k, "batch_size": self.batch_size,
                        "patch_size": self.patch_size}
        for name in ("bottom_k", "quantile_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UsageError(f"`{name}` {value!r}: must be a whole number of at least 0")
        _ = self.rankings
        if self.checkpoint_images is not None:
            at_least_one["checkpoint_images"] = self.checkpoint_images
        for name, value in at_least_one.items():
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"`{name}` {value!r}: must be a whole number of at least 1")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"`workers` {self.workers}: must be 0 (decode in the main process) or more")
        if not self.checkpoint_seconds > 0:
            raise UsageError(f"`checkpoint_seconds` {self.checkpoint_seconds}: must be positive")
        if self.maxima_dtype not in ("float32", "float16", "none"):
            raise UsageError(f"`maxima_dtype` {self.maxima_dtype!r}: choose float32, float16 or none")
        _ = self.resolved_precision
        check_scan_device(self.device)


def _named_layers(spec, taps, param: str) -> set[str]:
    wanted = spec.split(",") if isinstance(spec, str) else spec
    wanted = [w.strip().replace("[", ".").replace("]", "") for w in wanted if w.strip()]
    logits = [t.name for t in taps if t.logits]
    wanted = [logits[0] if w == "logits" and logits else w for w in wanted]
    names = {t.name for t in taps}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise UsageError(f"`{param}` {', '.join(unknown)}: not among the scanned layers "
                         f"({', '.join(t.name for t in taps)})")
    return set(wanted)


def check_scan_device(device: str) -> None:
    """A device this machine has (:func:`cnnviz.model.device.check_device`), and one a scan runs
    on: the CPU or a CUDA GPU."""
    from ..model.device import check_device

    if check_device(device).type not in ("cpu", "cuda"):
        raise UsageError(f"`device` {device}: scans run on cpu or cuda")


def check_output(out: Path, overwrite: bool) -> None:
    """The run file may be written: it is not there (or may be replaced) and its folder is.

    Checked by every rank of a distributed scan too, before it scans its share."""
    if out.is_dir():
        raise UsageError(f"`out` {out} is a directory; name the run file to write, e.g. {out / 'run.h5'}")
    if out.exists() and not overwrite:
        raise ScanError(f"`out` {out} exists; pass `overwrite=True` to replace it, or choose another "
                        "file (a finished run is never overwritten silently)")
    check_folder(out)


def check_folder(out: Path) -> None:
    """The run file's folder exists (checked before its lock file is made beside it)."""
    if not out.parent.is_dir():
        raise UsageError(f"`out` {out}: folder {out.parent} does not exist; create it first, or "
                         "choose another place for the run file")
