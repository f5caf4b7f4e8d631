r"""Low-pass / high-pass split of images by Tikhonov regularisation.

The low-pass part solves

.. math::
   \mathrm{argmin}_x \tfrac12 \|x - s\|_2^2 + \tfrac{\lambda}{2} \sum_i \|G_i x\|_2^2,

with :math:`G_i` forward differences along each image axis. In the DFT domain
this is a pointwise division, :math:`\hat x = \hat s / (1 + \lambda(|\hat g_r|^2 +
|\hat g_c|^2))`. The image is padded symmetrically first so that the circular
boundary of the DFT does not leak the opposite edge into the low-pass part; the
high-pass part is ``s - low``. Same definition as sporco's ``tikhonov_filter``.
"""

from __future__ import annotations

import torch


def symmetric_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two axes by mirroring, edge sample included (numpy's ``'symmetric'``).

    Works for any ``pad``, also wider than the image, by reflecting repeatedly.
    """
    height, width = images.shape[-2:]
    rows = _symmetric_index(height, pad, images.device)
    cols = _symmetric_index(width, pad, images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


def _symmetric_index(size: int, pad: int, device: torch.device) -> torch.Tensor:
    positions = torch.arange(-pad, size + pad, device=device) % (2 * size)
    return torch.where(positions < size, positions, 2 * size - 1 - positions)


def tikhonov_split(
    images: torch.Tensor, lmbda: float = 5.0, pad: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split images (…, H, W) into ``(low, high)`` with ``low + high == images``.

    Parameters
    ----------
    images : Tensor
        Real images; the filter acts on the last two axes, each channel alone.
    lmbda : float
        Weight of the gradient penalty; larger keeps less in the low-pass part.
    pad : int
        Samples of symmetric padding on every side before the DFT.
    """
    padded = symmetric_pad(images, pad)
    size = padded.shape[-2:]
    dtype = images.dtype
    row_diff = torch.tensor([[-1.0], [1.0]], dtype=dtype, device=images.device)
    col_diff = torch.tensor([[-1.0, 1.0]], dtype=dtype, device=images.device)
    gain = 1.0 + lmbda * (
        torch.fft.rfft2(row_diff, s=size).abs() ** 2 + torch.fft.rfft2(col_diff, s=size).abs() ** 2
    )
    low = torch.fft.irfft2(torch.fft.rfft2(padded) / gain, s=size)
    low = low[..., pad : pad + images.shape[-2], pad : pad + images.shape[-1]]
    return low, images - low
