"""The CSC purifier: reconstruct every image from a convolutional dictionary.

``output = low + Σ_m d_m * x_m`` where ``low`` is the Tikhonov low-pass part of
the image and ``x`` the CBPDN code of its high-pass part. Adversarial noise is
mostly high-frequency and not sparse in a dictionary learned from clean
images, so the reconstruction drops much of it.

Output range: by default the reconstruction is clipped to [0, 1]. ``rescale="max"``
instead divides each image by its maximum (then clips negatives), which is what
the method's released reconstruction script does before saving images.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from robustlab.defenses.csc.cbpdn import (
    CBPDNOptions,
    FourierDictionary,
    cbpdn,
    image_size,
    reconstruct,
)
from robustlab.defenses.csc.dictionary import (
    ChannelOrder,
    LearnedDictionary,
    StratifiedDictionary,
    load_dictionary,
)
from robustlab.defenses.csc.tikhonov import tikhonov_split
from robustlab.defenses.csc.warm import SolveCounts, WarmStarts
from robustlab.io import RobustlabError

DictionaryLike = torch.Tensor | str | Path | LearnedDictionary | StratifiedDictionary
WARM_CAPACITY = 512  # solves remembered under attack (200 MB at 64 maps of 28 × 28)


class CSCPurifier(nn.Module):
    """Map [0, 1] images to their CSC reconstruction, in [0, 1].

    Parameters
    ----------
    dictionary : Tensor (M, C, P, P), path of a saved dictionary, or a loaded one
        A stratified dictionary purifies each image with its cluster's filters.
    lmbda : float, optional
        Sparsity weight λ; defaults to the λ the dictionary was learned with.
    options : CBPDNOptions
        Solver settings (200 iterations, relative tolerance 5e-3 by default).
    bpda : bool
        If true, the backward pass is the identity (straight-through), so that
        gradient attacks can go through the purifier (BPDA). If false,
        autograd differentiates through the unrolled solver.
    rescale : "clip" or "max"
    batch_size : int
        Images handed to the solver at once. It iterates ``options.batch_size`` of them
        together and replaces each converged image by the next, so larger chunks leave
        fewer slow images running alone at the end of a chunk.

    warm_capacity : int
        Solves :meth:`warm_start` remembers (0: none, every solve starts cold). Under
        attack each solve then starts from the nearest earlier converged solve of the same
        image (:mod:`robustlab.defenses.csc.warm`); ``counts`` keeps the solves and ADMM
        iterations run.
    """

    def __init__(
        self,
        dictionary: DictionaryLike,
        lmbda: float | None = None,
        options: CBPDNOptions | None = None,
        bpda: bool = False,
        rescale: Literal["clip", "max"] = "clip",
        tikhonov_lmbda: float = 5.0,
        batch_size: int = 256,
        channel_order: ChannelOrder | None = None,
        warm_capacity: int = WARM_CAPACITY,
    ) -> None:
        super().__init__()
        if rescale not in ("clip", "max"):
            raise ValueError(f"rescale must be 'clip' or 'max', got {rescale!r}")
        loaded = _as_dictionary(dictionary, channel_order)
        self.dictionary = loaded
        self.lmbda = float(lmbda if lmbda is not None else loaded.lmbda)
        if self.lmbda <= 0:
            raise RobustlabError(f"lmbda must be positive, got {self.lmbda}; try 0.1 to 0.3")
        self.options = options or CBPDNOptions()
        self.bpda = bpda
        self.rescale = rescale
        self.tikhonov_lmbda = tikhonov_lmbda
        self.batch_size = batch_size
        members = loaded.members if isinstance(loaded, StratifiedDictionary) else [loaded]
        self.channels = int(members[0].filters.shape[1])
        self.filter_size = int(members[0].filters.shape[-1])
        self._fourier: dict[tuple[int, int, int, str, torch.dtype], FourierDictionary] = {}
        if warm_capacity < 0:
            raise ValueError(f"warm_capacity must be >= 0 (0: cold starts), got {warm_capacity}")
        self.warm_capacity = warm_capacity
        self._warm: WarmStarts | None = None
        self.counts = SolveCounts()

    @contextmanager
    def warm_start(self) -> Iterator[None]:
        """Within the block, start every solve without autograd from the nearest earlier
        solve of the block (the same stopping rule; the result equals the cold solve's
        within ``options.rel_tol``). Solves autograd differentiates through (the exact,
        unrolled view) stay cold. A nested block shares the outer one's memory."""
        if self._warm is not None or not self.warm_capacity:
            yield
            return
        self._warm = WarmStarts(self.warm_capacity)
        try:
            yield
        finally:
            self._warm = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise RobustlabError(
                f"images of shape {tuple(images.shape)} do not match the dictionary's "
                f"{self.channels} channel(s); use a dictionary learned on this kind of image"
            )
        if not self.bpda:
            return self._purify(images)
        with torch.no_grad():
            purified = self._purify(images)
        return images + (purified - images).detach()

    def _purify(self, images: torch.Tensor) -> torch.Tensor:
        clusters = self._clusters(images)
        output = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            output.append(self._reconstruct(chunk, clusters[start : start + self.batch_size]))
        return torch.cat(output) if output else images.clone()

    def _clusters(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.dictionary, StratifiedDictionary):
            return self.dictionary.clusters.assign(images.detach())
        return torch.zeros(len(images), dtype=torch.long, device=images.device)

    def _reconstruct(self, images: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        low, high = tikhonov_split(images, self.tikhonov_lmbda)
        sparse_part = torch.zeros_like(high)
        for cluster in torch.unique(clusters).tolist():
            members = clusters == cluster
            fourier = self._fourier_dictionary(int(cluster), high)
            code = self._code(int(cluster), fourier, high[members])
            sparse_part = sparse_part.index_put((members,), reconstruct(fourier, code))
        output = low + sparse_part
        if self.rescale == "max":
            peak = output.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            output = output / peak
        return output.clamp(0.0, 1.0)

    def _code(self, cluster: int, fourier: FourierDictionary, high: torch.Tensor) -> torch.Tensor:
        """The CBPDN code of ``high``: warm-started inside :meth:`warm_start` (no autograd)."""
        warm = self._warm if not (torch.is_grad_enabled() and high.requires_grad) else None
        if warm is None:
            result = cbpdn(fourier, high, self.lmbda, self.options)
            self.counts.add(
                result.iterations, torch.zeros_like(result.iterations, dtype=torch.bool)
            )
            return result.coefficients
        key = (cluster, high.shape[-2], high.shape[-1], str(high.device), high.dtype)
        rho0 = self.options.initial_rho(self.lmbda)
        state, started, source = warm.start(key, high, rho0, int(fourier.freq.shape[0]))
        result = cbpdn(fourier, high, self.lmbda, self.options, state=state)
        warm.remember(key, high, source, result, max_iter=self.options.max_iter)
        self.counts.add(result.iterations, started)
        return result.coefficients

    def _fourier_dictionary(self, cluster: int, like: torch.Tensor) -> FourierDictionary:
        key = (cluster, like.shape[-2], like.shape[-1], str(like.device), like.dtype)
        if key not in self._fourier:
            loaded = self.dictionary
            learned = (
                loaded.members[cluster] if isinstance(loaded, StratifiedDictionary) else loaded
            )
            filters = learned.filters.to(device=like.device, dtype=like.dtype)
            self._fourier[key] = FourierDictionary(filters, image_size(like))
        return self._fourier[key]

    def extra_repr(self) -> str:
        kind = "stratified" if isinstance(self.dictionary, StratifiedDictionary) else "single"
        return f"{kind} dictionary, lmbda={self.lmbda}, bpda={self.bpda}, rescale={self.rescale}"


def _as_dictionary(
    dictionary: DictionaryLike, channel_order: ChannelOrder | None = None
) -> LearnedDictionary | StratifiedDictionary:
    if isinstance(dictionary, LearnedDictionary | StratifiedDictionary):
        return dictionary
    if isinstance(dictionary, str | Path):
        return load_dictionary(dictionary, channel_order)
    if isinstance(dictionary, torch.Tensor):
        if dictionary.ndim != 4:
            raise RobustlabError(
                f"dictionary tensor must be (M, C, P, P), got {tuple(dictionary.shape)}"
            )
        return LearnedDictionary(dictionary, lmbda=0.2)
    raise TypeError(f"cannot use {type(dictionary).__name__} as a dictionary")
