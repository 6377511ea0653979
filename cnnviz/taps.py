"""Layer taps: which outputs of a network can be read, and reading them correctly.

A *tap* is a named submodule whose output is a 4-D feature map. :func:`list_layers` describes
every one with its output shape, channel count, stride and receptive field; :func:`resolve_layer`
turns a user's spelling (``layer2.0.conv3`` or ``layer2[0].conv3``) into a module name.

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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .receptive_field import ReceptiveField, trace_fields

__all__ = ["LayerTap", "list_layers", "resolve_layer", "resolve_layers", "default_layers",
           "ActivationRecorder"]


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
    """

    name: str
    type: str
    shape: tuple[int, int, int]
    rf: ReceptiveField | None
    calls: int

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
    """Every submodule with a 4-D output, in module order.

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
        per_size[size] = {
            name: LayerTap(name, rec.type, tuple(rec.shape[1:]), rec.field, rec.calls)
            for name, rec in traced.items()
            if rec.shape is not None and len(rec.shape) == 4
        }
    return per_size[size]


_INDEX = re.compile(r"\[(\w+)\]")


def _normalize_name(name: str) -> str:
    return _INDEX.sub(r".\1", name.strip()).strip(".")


def resolve_layer(model, name: str) -> LayerTap:
    """The tap called ``name`` (``layer2.0.conv3``, ``layer2[0].conv3``, ``features[12]``).

    Raises:
        KeyError: unknown name (the message lists the closest valid names), a module without a
            4-D output, or a module that runs more than once per forward pass.
    """
    layers = list_layers(model)
    key = _normalize_name(name)
    if key not in layers:
        module = getattr(model, "module", model)
        known = dict(module.named_modules())
        close = difflib.get_close_matches(key, list(layers), n=5, cutoff=0.4)
        why = ("has no 4-D feature-map output" if key in known
               else "is not a module of this model")
        hint = f" Closest valid names: {', '.join(close)}." if close else ""
        raise KeyError(f"layer {name!r} {why}.{hint} `cnnviz layers --model ...` lists them all.")
    tap = layers[key]
    if not tap.tappable:
        raise KeyError(
            f"layer {name!r} ({tap.type}) runs {tap.calls} times per forward pass (a shared "
            "module), so it has no single output; tap the enclosing block or the op before it."
        )
    return tap


def resolve_layers(model, names: Sequence[str] | str | None) -> list[LayerTap]:
    """Several taps: a list, a comma-separated string, or ``None`` for :func:`default_layers`."""
    if names is None or names == "" or names == []:
        return default_layers(model)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return [resolve_layer(model, n) for n in names]


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
    usable = {n: t for n, t in layers.items() if t.tappable and t.rf is not None}
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


class ActivationRecorder:
    """Forward hooks that keep a clone of each tapped layer's output.

    Use as a context manager; after a forward pass ``recorder.outputs[name]`` holds the
    activation. ``reduce`` (optional) maps each captured tensor before it is stored (for
    example to its spatial maximum), so a scan keeps only what it needs.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True))
        >>> with ActivationRecorder(net, ["0"]) as rec:
        ...     _ = net(torch.randn(1, 3, 8, 8))
        >>> bool((rec.outputs["0"] < 0).any())  # the in-place ReLU did not touch the clone
        True
    """

    def __init__(self, module: nn.Module, names: Sequence[str], reduce=None, detach: bool = True):
        self.module = getattr(module, "module", module)
        self.names = list(names)
        self.reduce = reduce
        self.detach = detach
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            out = output.detach() if self.detach else output
            if self.reduce is not None:
                self.outputs[name] = self.reduce(name, out)
            else:
                self.outputs[name] = out.clone()
        return hook

    def __enter__(self) -> ActivationRecorder:
        for name in self.names:
            sub = self.module.get_submodule(name)
            self._handles.append(sub.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
