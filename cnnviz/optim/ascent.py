"""The render loop: optimize an image parameterization so that an objective is maximal.

Two recipes share the taps of :mod:`cnnviz.taps` and the objectives of
:mod:`cnnviz.optim.objectives`:

* :func:`render` — the modern recipe (Olah et al., Distill 2017): Fourier parameterization with
  decorrelated colour and a sigmoid, transformation robustness, Adam (lr 0.05, Lucid's default);
* :func:`cs231n_class_visualization` — Stanford cs231n's class visualization, faithfully:
  ``randn`` start in normalized pixel space, gradient of ``score - l2_reg * ||I||^2`` (the class
  score's gradient from Captum's ``Saliency``), step ``lr * g / ||g||``, jitter up to 16 px
  before each step and undone after, clamp to valid pixels, Gaussian blur (sigma 0.5) every 10
  steps.

Both are deterministic: the same seed on the same device gives the same image. No global device
or state: everything comes from the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import Saliency

from ..model.copying import copy_module
from ..model.precision import precision_scope
from ..model.taps import capture, resolve_layer
from . import seeding
from .objectives import Objective, class_logits
from .param import FourierImage, PixelImage
from .transforms import centre_fit, gaussian_blur, roll, standard_transforms

__all__ = ["RenderResult", "render", "cs231n_class_visualization", "REDIRECT_STEPS"]


@dataclass
class RenderResult:
    """Optimized images (RGB in [0, 1], ``(batch, 3, H, W)``), snapshots ``[(step, images)]``
    and the objective's value per image at each step ``(steps, batch)``."""

    images: torch.Tensor
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    history: np.ndarray | None = None


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image where the plain ReLU passes none, lets through every
    component that would *raise* a negative input (Lucid's ``redirected_relu_grad``). Without
    it a unit that is off everywhere at the start never gets a gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        relu_grad = torch.where(x < 0, torch.zeros_like(grad), grad)
        # grad is d(loss)/d(out) with loss = -objective: grad > 0 pushes the input lower
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        passed = relu_grad.flatten(1).norm(dim=1) > 0
        return torch.where(passed.view(-1, *[1] * (x.dim() - 1)), relu_grad, redirected)


class _RedirectedReLUModule(torch.nn.Module):
    """Stands in for an ``nn.ReLU`` (``cap=None``) or ``nn.ReLU6`` (``cap=6``) in a render copy;
    once ``active`` is off it is the plain op (the redirected backward costs 35-55 % of a step)."""

    def __init__(self, cap: float | None):
        super().__init__()
        self.cap = cap
        self.active = True

    def forward(self, x):
        y = _RedirectedReLU.apply(x) if self.active else F.relu(x)
        return y if self.cap is None else y.clamp_max(self.cap)


def _render_module(module: torch.nn.Module, redirected_relu: bool) -> torch.nn.Module:
    """The module to optimize through: the caller's own, or with ``redirected_relu`` a copy
    whose ReLUs are :class:`_RedirectedReLUModule` (same names, so taps still resolve). The
    caller's modules are never patched."""
    relus = (torch.nn.ReLU, torch.nn.ReLU6)
    if not redirected_relu or not any(isinstance(m, relus) for m in module.modules()):
        return module
    copied = copy_module(module)
    for name, m in list(copied.named_modules()):
        if isinstance(m, relus):
            replacement = _RedirectedReLUModule(6.0 if isinstance(m, torch.nn.ReLU6) else None)
            if name:
                parent, _, leaf = name.rpartition(".")
                setattr(copied.get_submodule(parent) if parent else copied, leaf, replacement)
    return copied


# Redirected ReLU gradients for this many first steps (see render): measured on SqueezeNet's
# features.7 channels and five classes, more steps changed neither the reached activations nor
# the class probabilities (scripts/check_optim_quality.py; docs/optimization.md).
REDIRECT_STEPS = 32


@torch.enable_grad()
def render(model, objective: Objective, *, batch: int = 1, steps: int = 256, lr: float = 0.05,
           size: tuple[int, int] | None = None, transforms="standard", seed: int = 0,
           snapshot_every: int | None = None, progress: bool = True, device=None,
           redirected_relu: bool | int = REDIRECT_STEPS, fixed_size: bool = True) -> RenderResult:
    """The modern recipe.

    Args:
        model: a :class:`~cnnviz.models.LoadedModel`.
        objective: what to maximize (per image of the batch).
        batch: images optimized together (a batched objective gives each its own target).
        steps, lr: Adam steps and learning rate.
        size: image size (default: the model's input size).
        transforms: ``"standard"`` (pad, jitter, scale, rotate, jitter), ``None``, or a callable
            ``(img, generator) -> img``.
        seed: seeds the initialization and every random transform.
        snapshot_every: keep the images every N steps.
        redirected_relu: for the first ``redirected_relu`` steps (``True``: all of them, as
            Lucid does; ``False``: none) ReLUs pass a gradient that raises units that are off
            everywhere, so a channel silent on the starting image can still be reached. Once
            the image excites its objective the redirection changes nothing but costs a third
            of each step, hence a limited number by default (``docs/optimization.md``).
        fixed_size: after the transforms, cut (or pad with grey) the image to ``size`` about
            its centre, so the network always sees one size at the image's own scale; the
            transforms alone give 214-262 px, and larger inputs cost more per step.

    Example:
        >>> from cnnviz.optim import objectives as obj          # doctest: +SKIP
        >>> res = render(model, obj.channels("layer3.1", range(64)), batch=64)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else model.device
    size = tuple(size or model.input_size)
    gen = seeding.generator(seed)
    param = FourierImage(batch, size, device, gen)
    tf = standard_transforms() if transforms == "standard" else transforms
    opt = torch.optim.Adam(param.parameters(), lr=lr)
    modules = {n: resolve_layer(model, n).name for n in objective.layers}
    result = RenderResult(images=param.image().detach())
    history = []
    redirect_steps = steps if redirected_relu is True else int(redirected_relu)
    module = _render_module(model.module, redirect_steps > 0)
    redirected = [m for m in module.modules() if isinstance(m, _RedirectedReLUModule)]
    with precision_scope("fp32", device), torch.enable_grad(), \
            capture(module, modules, stop_early=not objective.needs_logits) as cap:
        for step in tqdm(range(1, steps + 1), desc=objective.name, disable=not progress, leave=False,
                         unit="step"):
            if step == redirect_steps + 1:
                for m in redirected:
                    m.active = False
            history.append(_step(model, objective, cap, param, opt, tf, gen, size if fixed_size else None))
            if snapshot_every and step % snapshot_every == 0:
                result.snapshots.append((step, param.image().detach().cpu()))
    result.images = param.image().detach()
    result.history = np.stack(history) if history else None
    return result


def _step(model, objective: Objective, cap, param, opt, tf, gen, size) -> np.ndarray:
    """One Adam step of the modern recipe; returns the objective's values before it."""
    opt.zero_grad(set_to_none=True)
    img = param.image()
    seen = tf(img, gen) if tf is not None else img
    if size is not None and tuple(seen.shape[-2:]) != size:
        seen = centre_fit(seen, size)
    x = model.preprocessing.standardize(seen)
    logits = cap.forward(x)
    values = objective(cap.outputs, logits, x)
    (-values.sum()).backward()
    opt.step()
    return values.detach().cpu().numpy()


@torch.enable_grad()
def cs231n_class_visualization(model, targets: int | Sequence[int], *, l2_reg: float = 1e-3,
                               lr: float = 25.0, steps: int = 100, blur_every: int = 10,
                               max_jitter: int = 16, sigma: float = 0.5, seed: int = 0,
                               snapshot_every: int | None = 25, progress: bool = True,
                               device=None) -> RenderResult:
    """Stanford cs231n's class visualization (defaults are the assignment's).

    Args:
        model: a :class:`~cnnviz.models.LoadedModel`.
        targets: one class index, or one per image (a batch optimized together).
        l2_reg, lr, steps, blur_every, max_jitter, sigma: the recipe's parameters.
        seed: seeds the ``randn`` start and the jitter.

    Returns:
        :class:`RenderResult` with RGB images in [0, 1] and ``history`` holding, per step, the
        class score of the (jittered) image the step started from — read from the forward pass
        Captum runs for the gradient, so it costs nothing extra.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else model.device
    targets = [targets] if isinstance(targets, int) else list(targets)
    gen = seeding.generator(seed)
    param = PixelImage(model.preprocessing, len(targets), tuple(model.input_size), device, gen)
    img = param.tensor
    seen: dict[str, torch.Tensor] = {}

    def forward(x):
        seen["logits"] = out = model.module(x)
        return out

    saliency = Saliency(forward)
    score = class_logits(targets)
    result = RenderResult(images=param.image().detach())
    history = []
    with precision_scope("fp32", device):
        for t in tqdm(range(steps), desc=f"class {targets[0]}", disable=not progress, leave=False,
                      unit="step"):
            ox, oy = seeding.randint(max_jitter + 1, 2, gen)
            with torch.no_grad():
                img.copy_(roll(img, ox, oy))
            # d(score)/dI from Captum; the L2 penalty's gradient is 2 * l2_reg * I.
            grad = saliency.attribute(img, target=targets, abs=False).detach()
            history.append(score({}, seen["logits"].detach(), img).cpu().numpy())
            with torch.no_grad():
                grad -= 2.0 * l2_reg * img
                norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                img += lr * grad / norms
                img.copy_(roll(img, -ox, -oy))
            param.clamp_()
            if t % blur_every == 0:
                with torch.no_grad():
                    img.copy_(gaussian_blur(img, sigma))
            if snapshot_every and (t + 1) % snapshot_every == 0:
                result.snapshots.append((t + 1, param.image().detach().cpu()))
    result.images = param.image().detach()
    result.history = np.stack(history) if history else None
    return result
