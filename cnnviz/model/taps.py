"""Layer taps: which outputs of a network can be read, and reading them correctly.

A *tap* is a named submodule whose output is a 4-D feature map, or a *whole-image unit*: an
output without spatial extent (a global pool's ``N x C x 1 x 1``, a ``Linear`` layer's
``N x C``, the class logits), read as a 1x1 map whose receptive field is the whole input.
:func:`list_layers` describes every one with its output shape, channel count, stride and
receptive field; :func:`resolve_layer` turns a user's spelling (``layer2.0.conv3``,
``layer2[0].conv3``, ``logits``) into a module name.

Assumption (as in timm's feature extraction): a tapped module runs once per forward pass.
Modules called several times — torchvision ResNet's shared in-place ``relu``, EfficientNet-Lite's
shared ``_swish`` — are listed with ``calls > 1`` and refused as taps; tap the block output
(``layer2.0``) or the preceding op (``layer2.0.bn3``) instead. Captured outputs are cloned in the
hook, so later in-place operations (ResNet's ``out += identity``, in-place ReLU) cannot change
what was captured.
"""

from __future__ import annotations

import difflib
import re
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CnnvizWarning, UsageError, user_level
from .receptive_field import AxisField, ReceptiveField, trace_fields

__all__ = ["LayerTap", "list_layers", "resolve_layer", "resolve_layers", "default_layers",
           "capture", "Capture", "forward_crops", "require_fields"]


@dataclass(frozen=True)
class LayerTap:
    """One tappable layer.

    Attributes:
        name: module name as in ``model.named_modules()``.
        type: module class name.
        shape: output shape ``(C, H, W)`` for the model's input size.
        stride: ``(sy, sx)`` input pixels between neighbouring units.
        rf: receptive field (``None`` when an op on the path has no fixed mapping).
        calls: how often the module runs in one forward pass (must be 1 to tap).
        unit: ``"map"`` (a spatial map) or ``"image"`` (a whole-image unit: one value per
            image and channel; its field is the whole input, its patches are thumbnails).
        logits: the module's output is the network's output (for a classifier, channel ``c``
            is class ``c``).
    """

    name: str
    type: str
    shape: tuple[int, int, int]
    rf: ReceptiveField | None
    calls: int
    unit: str = "map"
    logits: bool = False

    @property
    def whole_image(self) -> bool:
        return self.unit == "image"

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def stride(self) -> tuple[int, int] | None:
        return self.rf.stride if self.rf else None

    @property
    def tappable(self) -> bool:
        return self.calls == 1


# per module (weakly held: a new module never inherits a dead one's entry), per input size
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def list_layers(model, input_size: tuple[int, int] | None = None) -> dict[str, LayerTap]:
    """Every submodule with a 4-D output or a whole-image output (``N x C``, or a global
    pool's ``N x C x 1 x 1``), in module order.

    Args:
        model: a :class:`~cnnviz.models.LoadedModel` or an ``nn.Module``.
        input_size: ``(H, W)`` of the input; defaults to the loaded model's crop size.
    """
    module = getattr(model, "module", model)
    if input_size is None:
        input_size = tuple(model.input_size) if hasattr(model, "input_size") else (224, 224)
    per_size = _cache.setdefault(module, {})
    size = tuple(input_size)
    if size not in per_size:
        traced = trace_fields(module, size)
        per_size[size] = {name: tap for name, rec in traced.items()
                          if (tap := _tap_of(rec, size)) is not None}
    return per_size[size]


def _tap_of(rec, input_size: tuple[int, int]) -> LayerTap | None:
    if rec.shape is None:
        return None
    whole = len(rec.shape) == 2 or (len(rec.shape) == 4 and rec.is_global and rec.shape[2:] == (1, 1))
    if whole:
        return LayerTap(rec.name, rec.type, (rec.shape[1], 1, 1), whole_input_field(input_size),
                        rec.calls, unit="image", logits=rec.is_output)
    if len(rec.shape) == 4:
        return LayerTap(rec.name, rec.type, tuple(rec.shape[1:]), rec.field, rec.calls)
    return None


def whole_input_field(input_size: tuple[int, int]) -> ReceptiveField:
    """The field of a whole-image unit: every input pixel (its patch is a thumbnail)."""
    h, w = input_size
    return ReceptiveField(AxisField(h, h, 0), AxisField(w, w, 0))


_INDEX = re.compile(r"\[(\w+)\]")


def _normalize_name(name: str) -> str:
    return _INDEX.sub(r".\1", name.strip()).strip(".")


def resolve_layer(model, name: str) -> LayerTap:
    """The tap called ``name`` (``layer2.0.conv3``, ``layer2[0].conv3``, ``features[12]``).

    Raises:
        UsageError: unknown name (the message lists the closest valid names), a module without
            a 4-D output, or a module that runs more than once per forward pass.
    """
    layers = list_layers(model)
    key = _normalize_name(name)
    if key == "logits" and key not in layers:
        key = _logits_name(model, layers)
    if key not in layers:
        module = getattr(model, "module", model)
        known = dict(module.named_modules())
        close = difflib.get_close_matches(key, list(layers), n=5, cutoff=0.4)
        why = ("has neither a 4-D feature map nor a whole-image output" if key in known
               else "is not a module of this model")
        hint = f" Closest valid names: {', '.join(close)}." if close else ""
        arch = getattr(model, "name", None)
        where = f"`cnnviz layers --model {arch}` (Python: " if arch else "("
        raise UsageError(f"layer {name!r} {why}.{hint} {where}cnnviz.list_layers(model)) lists them all.")
    tap = layers[key]
    if not tap.tappable:
        raise UsageError(
            f"layer {name!r} ({tap.type}) runs {tap.calls} times per forward pass (a shared "
            "module), so it has no single output; tap the enclosing block or the op before it."
        )
    return tap


def _logits_name(model, layers: Mapping[str, LayerTap]) -> str:
    """``logits``: the innermost tappable module whose output is the network's output."""
    found = [n for n, t in layers.items() if t.logits and t.tappable]
    if not found:
        raise UsageError("layer 'logits': no module's output is this network's output (it is "
                         "computed outside a module); name a layer, cnnviz.list_layers(model) "
                         "lists them")
    return found[-1]


def resolve_layers(model, names: Sequence[str] | str | None) -> list[LayerTap]:
    """Several taps: a list, a comma-separated string, or ``None`` for :func:`default_layers`.
    A layer named twice (``layer2.0,layer2[0]``) is tapped once, where it first appears."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not names:
        return default_layers(model)
    taps: dict[str, LayerTap] = {}
    spelled: dict[str, list[str]] = {}
    for n in names:
        tap = resolve_layer(model, n)
        taps.setdefault(tap.name, tap)
        spelled.setdefault(tap.name, []).append(n.strip())
    for name, spellings in spelled.items():
        if len(spellings) > 1:
            warnings.warn(f"layer {name} is named {len(spellings)} times ({', '.join(spellings)}); it is "
                          "tapped once", CnnvizWarning, stacklevel=user_level())
    return list(taps.values())


def default_layers(model) -> list[LayerTap]:
    """The block outputs of a network: what a scan taps when no layer is named.

    Blocks are the outermost composite modules (modules with children that are not plain
    ``nn.Sequential``/``nn.ModuleList``/``nn.ModuleDict`` containers) with a receptive field:
    ResNet's ``layer1.0`` ... ``layer4.2``, MobileNet's inverted residuals, GoogLeNet's
    inception modules, SqueezeNet's fire modules. A network of plain ops (VGG) gets the
    outputs of its activations instead.
    """
    module = getattr(model, "module", model)
    layers = list_layers(model)
    usable = {n: t for n, t in layers.items() if t.tappable and t.rf is not None and not t.whole_image}
    composite = {n for n in usable if _is_composite(_get(module, n))}
    outermost = [t for n, t in usable.items() if n in composite
                 and not any(a in composite for a in _ancestors(n))]
    if outermost:
        return outermost
    return [t for n, t in usable.items() if isinstance(_get(module, n), _ACTIVATIONS)]


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU)


def _is_composite(m: nn.Module) -> bool:
    """A module with children that is not a plain container (subclasses such as torchvision's
    ``Conv2dNormActivation`` or DenseNet's ``_DenseBlock`` are blocks)."""
    plain = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return type(m) not in plain and any(True for _ in m.children())


def _ancestors(name: str):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _get(module: nn.Module, name: str) -> nn.Module:
    return module.get_submodule(name)


def require_fields(taps: Sequence[LayerTap]) -> None:
    """Refuse taps without a receptive field (a map cut by an op with no fixed spatial mapping):
    a scan cuts a patch around every top unit, so it needs one. Whole-image units have the whole
    input as their field. Checked before any image is read."""
    bad = [t for t in taps if t.rf is None]
    if bad:
        names = ", ".join(f"{t.name} ({t.type}, {t.shape[1]}x{t.shape[2]})" for t in bad)
        raise UsageError(f"`layers`: {names} has no receptive field (no spatial map to cut a patch "
                         "from); choose layers with a spatial map (cnnviz.list_layers(model) shows "
                         "the fields)")


class _StopForward(Exception):
    """Raised by the last hook of a ``stop_early`` capture: the rest of the network is not
    needed."""


class Capture:
    """What :func:`capture` yields: ``outputs`` filled by each :meth:`forward`."""

    def __init__(self, module: nn.Module, stop_early: bool, expected: int):
        self.module = module
        self.outputs: dict = {}
        self._stop_early = stop_early
        self._expected = expected

    def _store(self, key: str, value) -> None:
        self.outputs[key] = value
        if self._stop_early and len(self.outputs) == self._expected:
            raise _StopForward

    def forward(self, x: torch.Tensor):
        """Run the module on ``x`` with fresh ``outputs``; returns its output, or ``None``
        when the pass stopped after the last tapped layer."""
        self.outputs = {}
        try:
            return self.module(x)
        except _StopForward:
            return None


def forward_crops(cap, crops: torch.Tensor, preprocessing) -> dict:
    """The one forward path of the package for images (the scan, ``reduce_images``, the
    report's maps, ``unit_maps``): uint8 ``(N, H, W, 3)`` network-input crops, on the module's
    device, normalised by ``preprocessing``, in the channels_last layout (the fastest on CPUs
    and GPUs alike), without gradients, through ``cap`` (a :class:`Capture`, or the scan's
    compiled or relevance taps, which offer the same ``forward`` and ``outputs``). Returns its
    ``outputs``; runs in the precision of the enclosing
    :func:`~cnnviz.model.precision.precision_scope`."""
    x = preprocessing.normalize(crops).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        cap.forward(x)
    return cap.outputs


def _clone(name: str, output: torch.Tensor) -> torch.Tensor:
    return output.clone()


@contextmanager
def capture(module, names: Sequence[str] | Mapping[str, str], reduce=None,
            stop_early: bool = False) -> Iterator[Capture]:
    """Forward hooks on the named submodules, removed on exit (whatever happens inside).

    Args:
        module: an ``nn.Module`` or a :class:`~cnnviz.model.LoadedModel`.
        names: module names, or ``{key: module name}`` to store outputs under other keys.
        reduce: ``reduce(key, output)`` computes what is kept from each output (default: a
            clone, so later in-place operations such as ResNet's residual ``+=`` cannot change
            it; autograd flows through the clone).
        stop_early: stop the forward pass once every tap has fired (a scan does not need the
            rest of the network); :meth:`Capture.forward` then returns ``None``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True))
        >>> with capture(net, ["0"]) as cap:
        ...     _ = cap.forward(torch.randn(1, 3, 8, 8))
        >>> bool((cap.outputs["0"] < 0).any())  # the in-place ReLU did not touch the clone
        True
    """
    module = getattr(module, "module", module)
    keyed = dict(names) if isinstance(names, Mapping) else {n: n for n in names}
    reduce = reduce or _clone
    cap = Capture(module, stop_early, len(keyed))
    handles = []
    try:
        for key, name in keyed.items():
            def hook(mod, inputs, output, key=key):
                cap._store(key, reduce(key, output))
            handles.append(module.get_submodule(name).register_forward_hook(hook))
        yield cap
    finally:
        for h in handles:
            h.remove()
