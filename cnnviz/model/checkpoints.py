"""Weights files as people save them, read safely and fitted to an architecture.

Accepted: a plain ``state_dict``; a checkpoint dict holding it under ``state_dict``, ``model``,
``model_state_dict``, ``net``, ``network``, ``ema`` or ``model_ema`` (what training scripts
and Lightning write); keys under a prefix every key shares (``module.`` from DataParallel,
``model.`` from Lightning, ``_orig_mod.`` from ``torch.compile``). Missing
``num_batches_tracked`` counters (files of older PyTorch) are fine: an eval-mode network does
not read them.

Refused in one line each: a file that is not a PyTorch file or is cut short; pickled Python
objects (a whole model saved with ``torch.save(model)``: unpickling could run code, so cnnviz
loads with ``weights_only=True`` only); a TorchScript archive; weights of another architecture,
naming the keys that are missing, unexpected or of another shape, and the architecture the
file fits when one does.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["read_state_dict", "fit_state_dict"]

_CONTAINERS = ("state_dict", "model", "model_state_dict", "net", "network", "ema", "model_ema")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a ``state_dict`` or a checkpoint holding one).

    Raises:
        UsageError: unreadable, not tensors, or pickled objects (see the module docstring).
    """
    try:
        with warnings.catch_warnings():  # torch announces TorchScript archives before refusing them
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a readable state_dict"
        raise UsageError(f"`weights` {path}: cannot read it as a PyTorch state_dict ({_why(exc)})") from None
    found = _unwrap(obj)
    if found is None:
        keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
        raise UsageError(f"`weights` {path}: expected a state_dict (a dict of tensors), got a "
                         f"{type(obj).__name__}{keys}")
    return found


def _unwrap(obj) -> dict | None:
    """The dict of tensors in ``obj``: itself, or one of the containers checkpoints use."""
    if not isinstance(obj, dict):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
        return {str(k): v for k, v in obj.items()}
    for key in _CONTAINERS:
        inner = _unwrap(obj.get(key))
        if inner:
            return inner
    return None


def _why(exc: Exception) -> str:
    """One line for a failed ``torch.load``: PyTorch's own are pages long, with ANSI codes."""
    text = _ANSI.sub("", str(exc))
    culprit = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if culprit:
        return (f"it holds a pickled {culprit.group(1)} (a whole model saved with torch.save(model)?), "
                "which cnnviz does not unpickle because unpickling can run any code; save the "
                "weights with torch.save(model.state_dict(), FILE)")
    if "TorchScript" in text:
        return ("it is a TorchScript archive; save the weights with torch.save(model.state_dict(), FILE) "
                "instead")
    if not text.strip():
        return f"{type(exc).__name__}: empty or cut short?"
    first = text.strip().splitlines()[0].split(". ")[0].rstrip(".")  # torch's first sentence
    if len(first) > 200:
        first = first[:200].rsplit(" ", 1)[0] + "…"
    return f"{type(exc).__name__}: {first}; is the file complete?"


def fit_state_dict(state: dict[str, torch.Tensor], module: nn.Module, path: Path, name: str,
                   candidates: Callable[[], list[tuple[str, Callable[[], nn.Module]]]] | None = None
                   ) -> dict[str, torch.Tensor]:
    """``state`` with its keys as ``module`` names them (a shared prefix removed), checked to
    fit ``module`` exactly: same keys (``num_batches_tracked`` aside) and shapes.

    Args:
        candidates: ``(name, build)`` of other architectures, tried (on the meta device, so
            without memory) to name the one the file fits when it does not fit this one.

    Raises:
        UsageError: one line naming what does not fit, and what the file fits.
    """
    own = module.state_dict()
    state = _strip_prefix(state, own)
    missing, unexpected, shapes = _differences(state, own)
    if not (missing or unexpected or shapes):
        return state
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing{_examples(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected{_examples(unexpected)}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, "
                     f"{list(own[k].shape)} in {name})")
    hint = _head_hint(state, own, missing, unexpected, shapes) or _fits_other(state, name, candidates)
    raise UsageError(f"`weights` {path} does not fit the {name!r} architecture: {', '.join(parts)}. {hint}")


def _strip_prefix(state: dict, own: dict) -> dict:
    """Remove the first key component every key shares (``module.``, ``model.``...) while that
    makes more keys match the module's."""
    best = state
    while best and all("." in k for k in best):
        first = {k.split(".", 1)[0] for k in best}
        if len(first) != 1:
            break
        stripped = {k.split(".", 1)[1]: v for k, v in best.items()}
        if len(stripped.keys() & own.keys()) <= len(best.keys() & own.keys()):
            break
        best = stripped
    return best


def _differences(state: dict, own: dict) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``own`` missing from ``state``, keys of ``state`` not in ``own``, and shared keys
    of another shape (values: tensors or shapes)."""
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and _shape(state[k]) != _shape(own[k])]
    return missing, unexpected, shapes


def _shape(v) -> tuple:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)


def _examples(keys: list[str]) -> str:
    return f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else ""


def _head_hint(state: dict, own: dict, missing, unexpected, shapes) -> str:
    """A network fine-tuned to other classes: everything fits but the last layer's shape."""
    if missing or unexpected or not shapes:
        return ""
    last = list(own)[-2:]
    if set(shapes) <= set(last) and state[shapes[0]].dim() >= 1:
        n = int(state[shapes[0]].shape[0])
        return (f"It is this architecture with a classifier of {n} outputs (fine-tuned?): load it in Python "
                "with torchvision.models.get_model(..., num_classes=N) and cnnviz.from_module.")
    return ""


def _fits_other(state: dict, name: str, candidates) -> str:
    """Which other architecture the file fits (tried most similar name first), or nearly fits."""
    if candidates is None:
        return "Is it a state_dict of another model?"
    best, best_share = None, 0.0
    similar = sorted(candidates(), key=lambda c: -difflib.SequenceMatcher(None, c[0], name).ratio())
    for other, build in similar:
        own = _meta_shapes(build) if other != name else None
        if own is None:
            continue
        fitted = _strip_prefix(state, own)
        missing, unexpected, shapes = _differences(fitted, own)
        if not (missing or unexpected or shapes):
            return f"It fits {other}: use `model={other}`."
        share = (len(fitted) - len(unexpected) - len(shapes)) / max(len(fitted), len(own))
        if share > best_share:
            best, best_share = other, share
    if best is not None and best_share >= 0.9:
        return f"It nearly fits {best} ({best_share:.0%} of its tensors): is it {best}, modified?"
    return ("It fits none of the architectures cnnviz knows; a network of your own loads with "
            "cnnviz.from_module.")


def _meta_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple] | None:
    """The state_dict shapes of an architecture, built on the meta device (no memory, no init)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = build()
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta is not named
        return None
