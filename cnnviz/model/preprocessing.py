"""Image preprocessing that remembers its geometry.

The network sees a resized, centre-cropped copy of each photo. Patches are cut from that copy
(as uint8, before normalization) and their boxes are mapped back to the original photo, so
the preprocessing here keeps the numbers needed for that: the resize factors and the crop
offset.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..images.patches import boxes_to_original

__all__ = ["Preprocessing", "Geometry", "boxes_to_original", "FULL_RESIZE_LIMIT"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: A photo is resized whole (torchvision's reference path) while its resized copy has at most
#: this many times the crop's pixels; beyond, only the region the crop keeps is resampled.
FULL_RESIZE_LIMIT = 16
_PIL_FILTERS = {InterpolationMode.BILINEAR: Image.BILINEAR, InterpolationMode.BICUBIC: Image.BICUBIC,
                InterpolationMode.NEAREST: Image.NEAREST, InterpolationMode.LANCZOS: Image.LANCZOS}


@dataclass(frozen=True)
class Geometry:
    """Where the network's input came from in the original photo."""

    orig_height: int
    orig_width: int
    resized_height: int
    resized_width: int
    crop_top: int
    crop_left: int

    def to_original(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        """Map a half-open box ``(y0, x0, y1, x1)`` in network-input pixels to original pixels."""
        row = np.array([astuple(self)], dtype=np.float64)
        return tuple(float(v) for v in boxes_to_original(np.array([box], dtype=np.float64), row)[0])


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, scale to [0, 1], normalize with mean/std.

    Matches torchvision's ``ImageClassification`` transform of a weights enum (on PIL images).

    Args:
        resize: length of the shorter side after resizing (``None``: no resize).
        crop: ``(height, width)`` of the centre crop: the network's input size.
        mean, std: per-channel normalization applied to the [0, 1] image.
        interpolation: ``"bilinear"`` or ``"bicubic"``.
    """

    resize: int | None = 256
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Inverse of :meth:`to_dict` (also of its JSON round trip, where tuples became lists)."""
        return cls(resize=d["resize"], crop=tuple(d["crop"]), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), interpolation=d["interpolation"])

    def describe(self) -> str:
        resize = f"Resize({self.resize}, {self.interpolation}), " if self.resize else ""
        return (f"{resize}CenterCrop({self.crop[0]}x{self.crop[1]}), ToTensor(), "
                f"Normalize(mean={list(self.mean)}, std={list(self.std)})")

    def crop_uint8(self, image: Image.Image,
                   original_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Geometry]:
        """The image as the network sees it, before normalization: uint8 ``(H, W, 3)``.

        ``original_size`` ``(width, height)``: the photo's size when ``image`` was decoded at a
        reduced scale (the geometry maps boxes back to the photo's own pixels).

        A photo whose resized copy stays within :data:`FULL_RESIZE_LIMIT` times the crop's
        pixels (any ordinary photo, panoramas included) goes through torchvision's own resize and
        centre crop, pixel for pixel. A longer or thinner one (1 x 20000 pixels would become 3 GB
        resized whole) is resampled in the region the crop keeps only, with the same filter and
        geometry (within a level or two of the whole resize), so memory stays bounded whatever
        its shape."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = original_size or image.size
        ch, cw = self.crop
        rw, rh = self.resized_size(*image.size)
        top = int(round((rh - ch) / 2.0))
        left = int(round((rw - cw) / 2.0))
        geometry = Geometry(h, w, rh, rw, top, left)
        mode = InterpolationMode(self.interpolation)
        if rw * rh <= FULL_RESIZE_LIMIT * ch * cw:
            if self.resize:
                image = TF.resize(image, self.resize, interpolation=mode, antialias=True)
            image = TF.center_crop(image, [ch, cw])
            return np.asarray(image, dtype=np.uint8).copy(), geometry
        return _resize_kept_region(image, (rw, rh), (top, left), (ch, cw), _PIL_FILTERS[mode]), geometry

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize, as torchvision computes it: the shorter side
        becomes ``resize``, the longer one its proportional length, rounded down."""
        if not self.resize:
            return width, height
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if width <= height else (new_long, self.resize)

    def normalize(self, batch_uint8: torch.Tensor, dtype: torch.dtype = torch.float32):
        """``(N, H, W, 3)`` or ``(N, 3, H, W)`` uint8 on any device -> normalized ``(N, 3, H, W)``."""
        if batch_uint8.shape[-1] == 3 and batch_uint8.dim() == 4:
            batch_uint8 = batch_uint8.permute(0, 3, 1, 2)
        return self.standardize(batch_uint8.to(dtype) / 255.0)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB in [0, 1] -> ``(x - mean) / std`` (differentiable)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``(N, 3, H, W)`` -> values in [0, 1] (unclamped)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * std + mean

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> normalized ``(1, 3, H, W)`` float tensor."""
        array, _ = self.crop_uint8(image)
        return self.normalize(torch.from_numpy(array).unsqueeze(0))


def _resize_kept_region(image: Image.Image, resized: tuple[int, int], offset: tuple[int, int],
                        crop: tuple[int, int], resample: int) -> np.ndarray:
    """The centre crop of ``image`` resized to ``resized`` ``(w, h)``, computed from the source
    region under the crop alone (Pillow's ``box``: the same filter taps as the whole resize);
    parts of the crop outside the resized picture are 0, as torchvision pads them."""
    (rw, rh), (top, left), (ch, cw) = resized, offset, crop
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + ch, rh), min(left + cw, rw)
    out = np.zeros((ch, cw, 3), dtype=np.uint8)
    if y1 <= y0 or x1 <= x0:
        return out
    if (rw, rh) == image.size:
        region = image.crop((x0, y0, x1, y1))
    else:
        sx, sy = image.width / rw, image.height / rh
        region = image.resize((x1 - x0, y1 - y0), resample, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    out[y0 - top: y1 - top, x0 - left: x1 - left] = np.asarray(region, dtype=np.uint8)
    return out
