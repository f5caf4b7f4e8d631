"""Input transformations the CSC paper compares against (Guo et al. 2018; Xu et al. 2018).

- :class:`JPEG`: encode and decode each image at a JPEG quality (Pillow, 4:2:0 chroma).
- :class:`BitDepth`: keep ``bits`` bits per channel, ``round(x · (2^b − 1)) / (2^b − 1)``.
- :class:`MedianSmoothing`: the median of each k×k window (reflect padding).

JPEG and bit-depth reduction are piecewise constant or not differentiable at all: their
exact gradient is zero, which masks gradients rather than removes adversarial noise, so
they declare BPDA (identity backward). The median filter is differentiable almost
everywhere (the gradient flows to the median pixel) and is attacked exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustlab.defenses.base import PURIFIERS, Defended, Defense, Surface


class JPEGCompression(nn.Module):
    """JPEG round trip at ``quality``; zero gradient (connected graph, so attacks see it)."""

    def __init__(self, quality: int) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality {quality} must be in 1..100, e.g. 75")
        self.quality = quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        out = np.stack([self._round_trip(image) for image in pixels])
        decoded = torch.from_numpy(out).to(x.device, x.dtype) / 255
        return decoded + 0 * x

    def _round_trip(self, image: np.ndarray) -> np.ndarray:
        grey = image.shape[0] == 1
        picture = Image.fromarray(image[0] if grey else image.transpose(1, 2, 0))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=self.quality)
        decoded = np.asarray(Image.open(buffer).convert("L" if grey else "RGB"))
        return decoded[None] if grey else decoded.transpose(2, 0, 1)

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class BitDepthReduction(nn.Module):
    """Quantize each channel to ``bits`` bits (the gradient of rounding is zero)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bit depth {bits} must be in 1..8, e.g. 3")
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        quantized: torch.Tensor = torch.round(x * levels) / levels
        return quantized

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class Median(nn.Module):
    """k×k median filter with reflect padding (k odd)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 2 or size % 2 == 0:
            raise ValueError(f"median window {size} must be odd and at least 3, e.g. 3")
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pad = self.size // 2
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        windows = F.unfold(padded, self.size)  # (N, C·k², H·W)
        median = windows.view(n, c, self.size**2, h * w).median(dim=2).values
        return median.view(n, c, h, w)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class _TransformDefense(Defense):
    kind = "input"

    def transform(self) -> nn.Module:
        raise NotImplementedError

    def wrap(self, base: nn.Module, directory: Path | None = None) -> Defended:
        """Transforms keep nothing on disk: ``directory`` is not needed."""
        return Defended(base, self.surface, self.transform())


@PURIFIERS.register("jpeg")
@dataclass(frozen=True, repr=False)
class JPEGDefense(_TransformDefense):
    """JPEG compression at ``quality`` before the classifier. Spec: ``purify = { jpeg = 75 }``."""

    quality: int = 75
    name = "jpeg"
    main = "quality"  # purify = { jpeg = 75 }

    def __post_init__(self) -> None:
        JPEGCompression(self.quality)  # validates

    @property
    def surface(self) -> Surface:
        return Surface("bpda", part="JPEG compression")

    def transform(self) -> nn.Module:
        return JPEGCompression(self.quality)


@PURIFIERS.register("bits")
@dataclass(frozen=True, repr=False)
class BitDepthDefense(_TransformDefense):
    """Bit-depth reduction to ``bits`` bits. Spec: ``purify = { bits = 3 }``."""

    bits: int = 3
    name = "bits"
    main = "bits"  # purify = { bits = 3 }

    def __post_init__(self) -> None:
        BitDepthReduction(self.bits)

    @property
    def surface(self) -> Surface:
        return Surface("bpda", part="bit-depth quantization")

    def transform(self) -> nn.Module:
        return BitDepthReduction(self.bits)


@PURIFIERS.register("median")
@dataclass(frozen=True, repr=False)
class MedianDefense(_TransformDefense):
    """Median smoothing over ``size``×``size`` windows. Spec: ``purify = { median = 3 }``."""

    size: int = 3
    name = "median"
    main = "size"  # purify = { median = 3 }

    def __post_init__(self) -> None:
        Median(self.size)

    @property
    def surface(self) -> Surface:
        return Surface("differentiable")

    def transform(self) -> nn.Module:
        return Median(self.size)
