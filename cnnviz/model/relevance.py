"""One forward and one backward pass that give, for every tap, activation x gradient of a
target logit: the map ``A_c * dy_t/dA_c`` whose sum over positions is channel ``c``'s relevance
(Captum's ``LayerGradientXActivation`` convention; ``docs/relevance.md``). Used by the scan
(``rank_by=relevance``) and by :func:`cnnviz.analysis.relevance.explain_prediction`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UsageError

__all__ = ["RelevancePass", "relevance_pass"]


@dataclass
class RelevancePass:
    """Per tap its activation and activation x gradient (both detached, the tap's shape), the
    target of each image and the logits."""

    activations: dict[str, torch.Tensor]
    products: dict[str, torch.Tensor]
    targets: torch.Tensor
    logits: torch.Tensor


def relevance_pass(net: torch.nn.Module, x: torch.Tensor, layers: Sequence[str],
                   targets: torch.Tensor | None = None) -> RelevancePass:
    """Forward ``x`` through ``net`` (run it without in-place activations:
    :func:`cnnviz.model.copying.without_inplace`) and back from the logit of ``targets``
    (``(N,)`` class indices; ``None`` or a negative entry: the image's top-1 class).

    Raises:
        UsageError: a tap whose output the network changes in place afterwards (its gradient
            would not be the output's): tap the enclosing block instead.
    """
    outputs: dict[str, tuple[torch.Tensor, int]] = {}
    handles = []
    try:
        for name in layers:
            handles.append(net.get_submodule(name).register_forward_hook(_keeper(outputs, name)))
        with torch.enable_grad():
            logits = net(x.detach().requires_grad_(True))  # the model's weights are frozen
            _check_unchanged(outputs)
            top1 = logits.argmax(dim=1)
            chosen = top1 if targets is None else torch.where(targets >= 0, targets.to(top1.device), top1)
            score = logits.gather(1, chosen[:, None]).sum()
            grads = torch.autograd.grad(score, [outputs[n][0] for n in layers])
    finally:
        for h in handles:
            h.remove()
    acts = {n: outputs[n][0].detach() for n in layers}
    products = {n: acts[n] * g.detach() for n, g in zip(layers, grads, strict=True)}
    return RelevancePass(acts, products, chosen.detach(), logits.detach())


def _keeper(outputs: dict, name: str):
    def hook(mod, inputs, output):
        outputs[name] = (output, output._version)
    return hook


def _check_unchanged(outputs: dict) -> None:
    changed = [n for n, (out, version) in outputs.items() if out._version != version]
    if changed:
        raise UsageError(f"`layers` {', '.join(changed)}: the network changes this output in place after it "
                         "is made (a residual sum?), so its relevance is not defined; use the enclosing "
                         "block's output")
