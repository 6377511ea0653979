"""Image parameterizations: what the optimizer changes, and how it becomes an image.

Every parameterization has ``parameters()`` (what the optimizer updates) and ``image()``:
RGB in [0, 1], ``(batch, 3, H, W)``. ``PixelImage`` is the cs231n one (the normalized network
input itself); ``FourierImage`` is the modern one (Olah et al., Distill 2017).
"""

from __future__ import annotations

import torch

from .seeding import randn

__all__ = ["PixelImage", "FourierImage", "COLOR_CORRELATION_SVD_SQRT"]

# Square root of the colour correlation of ImageNet photos (from Lucid's
# optvis/param/color.py): sampling independent "decorrelated" channels and mixing them with this
# matrix gives images with natural colour statistics.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                           [0.27, 0.00, -0.05],
                                           [0.27, -0.09, 0.03]])


class PixelImage:
    """The normalized network input, optimized directly (cs231n).

    Args:
        preprocessing: the model's :class:`~cnnviz.model.Preprocessing` (mean/std).
        batch, size: shape.
        generator: seeds the ``randn`` initialization (a CPU generator: :mod:`.seeding`).
    """

    def __init__(self, preprocessing, batch: int, size: tuple[int, int], device, generator: torch.Generator):
        self.preprocessing = preprocessing
        self.tensor = randn((batch, 3, *size), generator, device).requires_grad_()

    def parameters(self) -> list[torch.Tensor]:
        return [self.tensor]

    def image(self) -> torch.Tensor:
        return self.preprocessing.denormalize(self.tensor).clamp(0, 1)

    def clamp_(self) -> None:
        """Keep every channel in the range of valid pixels, in normalized units."""
        with torch.no_grad():
            for c in range(3):
                lo = -self.preprocessing.mean[c] / self.preprocessing.std[c]
                hi = (1.0 - self.preprocessing.mean[c]) / self.preprocessing.std[c]
                self.tensor[:, c].clamp_(lo, hi)


class FourierImage:
    """Fourier-space parameterization with 1/f scaling and decorrelated colour (Lucid's
    ``fft_image`` + ``to_valid_rgb``).

    The spectrum of each decorrelated channel is the parameter; each frequency is scaled by
    ``1 / max(f, 1/size) ** decay_power`` so that all frequencies learn at a similar rate
    (``decay_power`` 1, Lucid's default). The inverse FFT (divided by 4, as Lucid does) is mixed
    into RGB with :data:`COLOR_CORRELATION_SVD_SQRT` (normalized by its largest column norm) and
    squashed into [0, 1] with a sigmoid. Initialization: spectrum ~ N(0, 0.01^2).
    """

    def __init__(self, batch: int, size: tuple[int, int], device, generator: torch.Generator,
                 decay_power: float = 1.0, sd: float = 0.01):
        h, w = size
        self.size = size
        fy = torch.fft.fftfreq(h, device=device)[:, None]
        fx = torch.fft.rfftfreq(w, device=device)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power
        # Lucid multiplies by sqrt(h*w) but its TF inverse FFT divides by h*w; with the
        # orthonormal inverse used here the two cancel, leaving the scale alone.
        self.scale = scale[None, None, :, :, None]
        shape = (batch, 3, h, w // 2 + 1, 2)
        self.spectrum = (randn(shape, generator, device) * sd).requires_grad_()
        cc = COLOR_CORRELATION_SVD_SQRT.to(device)
        self.color = cc / cc.norm(dim=0).max()

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def image(self) -> torch.Tensor:
        spec = torch.view_as_complex((self.spectrum * self.scale).contiguous())
        decorrelated = torch.fft.irfft2(spec, s=self.size, norm="ortho") / 4.0
        rgb = torch.einsum("ij,bjhw->bihw", self.color, decorrelated)
        return torch.sigmoid(rgb)
