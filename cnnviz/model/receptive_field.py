"""Receptive fields computed by tracing a real forward pass.

Every aten operation of one forward pass is intercepted (``TorchDispatchMode``) and each
tensor is given, per spatial axis, the map from an index ``i`` along that axis to the
half-open interval of input pixels it depends on::

    [offset + i * stride, offset + i * stride + size)

Convolutions, pooling (ceil mode included), explicit padding (``F.pad``, "same" padding),
concatenation, residual additions and element-wise operations are handled from their
arguments, so the result holds for functional code and modules alike. Where several inputs
meet (a residual sum, a concatenation) the field is the union of theirs.

Conventions, documented in ``docs/receptive-fields.md``:

* coordinates are pixels of the *preprocessed* input tensor (after resize and crop), row
  ``y`` first; boxes are half-open ``(y0, x0, y1, x1)`` and may extend past the image border
  (padding) — nothing is clipped here;
* a layer's field is the union over its channels: where branches of different fields are
  concatenated (Inception, SqueezeNet's fire modules, DenseNet) some channels see less;
* global context that only rescales channels (squeeze-and-excitation: a global average pool
  multiplied back in) is ignored: such a tensor carries no spatial information, so a unit's
  field is that of its local path. Without this rule every unit after the first SE block
  would "see" the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["AxisField", "ReceptiveField", "ReceptiveFieldError", "GLOBAL", "trace_fields"]


class ReceptiveFieldError(RuntimeError):
    """An operation whose spatial mapping cannot be expressed as (size, stride, offset)."""


@dataclass(frozen=True)
class AxisField:
    """Receptive field along one axis: index ``i`` sees ``[offset + i*stride, +size)``."""

    size: int
    stride: int
    offset: int

    def through_window(self, kernel: int, stride: int, padding: int, dilation: int = 1):
        """The field after a sliding window (convolution or pooling) on this axis."""
        return AxisField(
            size=self.size + dilation * (kernel - 1) * self.stride,
            stride=self.stride * stride,
            offset=self.offset - padding * self.stride,
        )

    def union(self, other: AxisField) -> AxisField:
        if self.stride != other.stride:
            raise ReceptiveFieldError(
                f"cannot combine fields of strides {self.stride} and {other.stride}"
            )
        lo = min(self.offset, other.offset)
        hi = max(self.offset + self.size, other.offset + other.size)
        return AxisField(size=hi - lo, stride=self.stride, offset=lo)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a 2-D feature map: one :class:`AxisField` for rows, one for columns."""

    y: AxisField
    x: AxisField

    @property
    def size(self) -> tuple[int, int]:
        return (self.y.size, self.x.size)

    @property
    def stride(self) -> tuple[int, int]:
        return (self.y.stride, self.x.stride)

    @property
    def offset(self) -> tuple[int, int]:
        return (self.y.offset, self.x.offset)

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """Half-open box ``(y0, x0, y1, x1)`` in input pixels seen by the unit at ``(y, x)``."""
        y0 = self.y.offset + y * self.y.stride
        x0 = self.x.offset + x * self.x.stride
        return (y0, x0, y0 + self.y.size, x0 + self.x.size)

    def center(self, y: int, x: int) -> tuple[float, float]:
        """Centre of the unit's box in input pixels (may be a half pixel)."""
        y0, x0, y1, x1 = self.box(y, x)
        return ((y0 + y1) / 2, (x0 + x1) / 2)

    def union(self, other: ReceptiveField) -> ReceptiveField:
        return ReceptiveField(self.y.union(other.y), self.x.union(other.x))


class _Global:
    """Marker: a tensor pooled over all positions (carries no spatial information)."""

    def __repr__(self) -> str:
        return "GLOBAL"


GLOBAL = _Global()
IDENTITY = ReceptiveField(AxisField(1, 1, 0), AxisField(1, 1, 0))

_WINDOW_OPS = {"convolution", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d",
               "mkldnn_convolution", "_convolution", "cudnn_convolution"}
_ADAPTIVE_OPS = {"_adaptive_avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}
_REDUCE_OPS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm"}


def _pair(v) -> tuple[int, int]:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        raise ReceptiveFieldError("missing window argument")
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[-1]))


def _window_params(name: str, args: tuple) -> tuple:
    """(kernel, stride, padding, dilation) pairs for a convolution or pooling call."""
    if "convolution" in name:
        _, weight, _, stride, padding, dilation = args[:6]
        if name in ("convolution", "_convolution") and args[6]:
            raise ReceptiveFieldError("transposed convolutions are not supported")
        kernel = tuple(weight.shape[-2:])
        return kernel, _pair(stride), _pair(padding), _pair(dilation)
    kernel = _pair(args[1])
    stride = _pair(args[2]) if len(args) > 2 and args[2] else kernel
    padding = _pair(args[3]) if len(args) > 3 else (0, 0)
    dilation = _pair(args[4]) if name.startswith("max_pool") and len(args) > 4 else (1, 1)
    return kernel, stride, padding, dilation


class _FieldTracer(TorchDispatchMode):
    """Propagates receptive fields through every aten op of a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def field_of(self, t: torch.Tensor):
        return self.fields.get(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat_in, _ = tree_flatten((args, kwargs))
        out = func(*args, **kwargs)
        if not any(isinstance(t, torch.Tensor) and t in self.fields for t in flat_in):
            return out
        name = func._schema.name.split("::")[-1]
        field = self._propagate(name, args, kwargs, flat_in, out)
        flat_out, _ = tree_flatten(out)
        for t in flat_out:
            if isinstance(t, torch.Tensor) and t.dim() >= 2:
                if field is None:
                    self.fields.pop(t, None)
                else:
                    self.fields[t] = field
        return out

    def _propagate(self, name, args, kwargs, flat_in, out):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        first_field = self.fields.get(first) if first is not None else None
        if name in _WINDOW_OPS:
            if first_field is GLOBAL:
                return GLOBAL
            kernel, stride, padding, dilation = _window_params(name, args)
            return ReceptiveField(
                first_field.y.through_window(kernel[0], stride[0], padding[0], dilation[0]),
                first_field.x.through_window(kernel[1], stride[1], padding[1], dilation[1]),
            )
        if name in _ADAPTIVE_OPS:
            return self._adaptive(first, first_field, args[1])
        if name == "constant_pad_nd":
            if first_field is GLOBAL:
                return GLOBAL
            pad = list(args[1]) + [0, 0, 0, 0]
            left, top = pad[0], pad[2]
            return ReceptiveField(
                AxisField(first_field.y.size, first_field.y.stride,
                          first_field.y.offset - top * first_field.y.stride),
                AxisField(first_field.x.size, first_field.x.stride,
                          first_field.x.offset - left * first_field.x.stride),
            )
        out_t = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out_t, torch.Tensor):
            return None
        if name in _REDUCE_OPS and first is not None and first.dim() >= 3:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            if dims is None:
                return None
            dims = [dims] if isinstance(dims, int) else list(dims)
            nd = first.dim()
            if {d % nd for d in dims} >= {nd - 2, nd - 1}:
                return GLOBAL if out_t.dim() >= 2 else None
        return self._elementwise(flat_in, out_t)

    def _adaptive(self, x, field, output_size):
        out_h, out_w = _pair(output_size)
        in_h, in_w = x.shape[-2:]
        if field is GLOBAL or (out_h == 1 and out_w == 1):
            return GLOBAL
        if (out_h, out_w) == (in_h, in_w):
            return field
        if in_h % out_h or in_w % out_w:
            return None  # windows of varying size: no single (size, stride, offset)
        kh, kw = in_h // out_h, in_w // out_w
        return ReceptiveField(field.y.through_window(kh, kh, 0), field.x.through_window(kw, kw, 0))

    def _elementwise(self, flat_in, out_t):
        """Ops that keep the spatial grid: the union of the spatially-tracked inputs."""
        if out_t.dim() < 3:
            return None
        local = []
        any_global = False
        for t in flat_in:
            if not isinstance(t, torch.Tensor):
                continue
            f = self.fields.get(t)
            if f is GLOBAL:
                any_global = True
            elif f is not None:
                if t.dim() < 3 or tuple(t.shape[-2:]) != tuple(out_t.shape[-2:]):
                    return None  # the grid changed in a way no rule describes
                local.append(f)
        if not local:
            return GLOBAL if any_global else None
        result = local[0]
        for f in local[1:]:
            result = result.union(f)
        return result


@dataclass
class TracedModule:
    """What one traced forward pass records about a module's output."""

    name: str
    type: str
    calls: int
    shape: tuple[int, ...] | None
    field: ReceptiveField | None
    is_global: bool = False  # pooled over all positions (its field is the whole input)
    is_output: bool = False  # its output is the network's output (class logits)


def trace_fields(model: torch.nn.Module, input_size: tuple[int, int]) -> dict[str, TracedModule]:
    """Run one forward pass on a zero image and record every module's output field.

    Args:
        model: the network (left unchanged; the pass runs under ``torch.no_grad``).
        input_size: ``(height, width)`` of the preprocessed input.

    Returns:
        ``{module_name: TracedModule}`` for every named submodule, in definition order.
        ``calls`` counts how often the module ran: a module called more than once (a reused
        activation) has no single output to tap.
    """
    records: dict[str, TracedModule] = {
        name: TracedModule(name, type(m).__name__, 0, None, None)
        for name, m in model.named_modules() if name
    }
    tracer = _FieldTracer()
    storage: dict[str, tuple[int, int]] = {}

    def make_hook(name):
        def hook(module, inputs, output):
            rec = records[name]
            rec.calls += 1
            if rec.calls > 1 or not isinstance(output, torch.Tensor):
                return
            rec.shape = tuple(output.shape)
            f = tracer.field_of(output)
            rec.field = f if isinstance(f, ReceptiveField) else None
            rec.is_global = f is GLOBAL
            storage[name] = (output.data_ptr(), output.numel())
        return hook

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, 3, *input_size, device=device, dtype=dtype)
    handles = []
    try:
        for n, m in model.named_modules():
            if n:
                handles.append(m.register_forward_hook(make_hook(n)))
        with torch.no_grad(), tracer:
            tracer.fields[x] = IDENTITY
            final = model(x)
    finally:
        for h in handles:
            h.remove()
    if isinstance(final, torch.Tensor):  # a flatten of the last module's output is still its output
        for name, key in storage.items():
            records[name].is_output = key == (final.data_ptr(), final.numel())
    return records

