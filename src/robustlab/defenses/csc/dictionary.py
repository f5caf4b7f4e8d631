r"""Convolutional dictionary learning and dictionary files.

Learning alternates, for ``iterations`` rounds, over a fixed set of training
images (their high-pass parts, see :mod:`.tikhonov`):

1. sparse coding: a few CBPDN ADMM iterations, warm-started from the previous round;
2. dictionary update: accelerated projected gradient (FISTA) steps on
   :math:`\tfrac12 \sum_k \|\sum_m d_m * x_{k,m} - s_k\|_2^2`, the projection being
   sporco's constraint set: support P × P, zero mean per channel, unit norm per filter.

The step size is ``1/L`` with :math:`L = \max_f \lambda_{\max}(\hat X(f)^H \hat X(f))`,
the Lipschitz constant of the data term's gradient over all frequencies.

A dictionary file is safetensors (``filters``: M × C × P × P) whose JSON
metadata records how it was learned (λ, sizes, training images, seed, command).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from robustlab.defenses.csc.cbpdn import (
    CBPDNOptions,
    CBPDNState,
    FourierDictionary,
    cbpdn,
    image_size,
    objective,
)
from robustlab.defenses.csc.stratified import ClusterModel
from robustlab.io import (
    RobustlabError,
    check_array,
    load_npy,
    load_tensors,
    save_tensors,
)
from robustlab.models.cost import device_memory

DICTIONARY_FILE = "dictionary.safetensors"
DICTIONARY_FORMAT = "robustlab-csc-dictionary/1"


@dataclass(frozen=True)
class LearnOptions:
    """Settings of :func:`learn_dictionary`."""

    iterations: int = 50
    coding_steps: int = 10  # ADMM iterations per round
    dictionary_steps: int = 5  # FISTA steps per round
    seed: int = 0


@dataclass
class LearnedDictionary:
    filters: torch.Tensor  # (M, C, P, P)
    lmbda: float
    metadata: dict[str, object] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # mean objective per round


def project_filters(full: torch.Tensor, size: int) -> torch.Tensor:
    """Constraint set of the dictionary update: crop to P × P, zero mean per channel, unit norm."""
    filters = full[..., :size, :size]
    filters = filters - filters.mean(dim=(-2, -1), keepdim=True)
    norms: torch.Tensor = filters.flatten(1).norm(dim=1)
    return filters / norms.clamp_min(1e-12).view(-1, 1, 1, 1)


def random_dictionary(
    n_filters: int, channels: int, size: int, seed: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Gaussian filters projected onto the constraint set, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return project_filters(
        torch.randn(n_filters, channels, size, size, generator=generator, dtype=dtype), size
    )


def learn_dictionary(
    signals: torch.Tensor,
    n_filters: int,
    size: int,
    lmbda: float,
    options: LearnOptions | None = None,
) -> LearnedDictionary:
    """Learn M = ``n_filters`` filters of ``size`` × ``size`` from ``signals`` (K, C, H, W).

    ``signals`` are what the dictionary must represent: for the purifier, the
    high-pass parts of training images.
    """
    options = options or LearnOptions()
    check_learning_fits(signals, n_filters)
    filters = random_dictionary(n_filters, signals.shape[1], size, options.seed, signals.dtype).to(
        signals.device
    )
    coding = CBPDNOptions(max_iter=options.coding_steps, rel_tol=0.0)
    state: CBPDNState | None = None
    history: list[float] = []
    for _ in range(options.iterations):
        result = cbpdn(filters, signals, lmbda, coding, state)
        state = result.state
        filters = _update_filters(filters, result.coefficients, signals, options.dictionary_steps)
        fourier = FourierDictionary(filters, image_size(signals))
        history.append(float(objective(fourier, result.coefficients, signals, lmbda).mean()))
    return LearnedDictionary(filters, lmbda, history=history)


def learning_bytes(images: int, height: int, width: int, filters: int) -> int:
    """Memory :func:`learn_dictionary` needs, estimated from its largest arrays: the ADMM
    state and coefficient maps of every image (4 real K × M × H × W arrays), their spectra
    in the filter update (2 complex K × M × H × W/2+1) and the per-frequency Gram matrices
    with their eigen-solver's copy (2 complex H × W/2+1 × M × M)."""
    half = width // 2 + 1
    maps = images * filters * height * width * 4 * 4
    spectra = images * filters * height * half * 8 * 2
    grams = height * half * filters * filters * 8 * 2
    return maps + spectra + grams


def check_learning_fits(signals: torch.Tensor, filters: int) -> None:
    """Refuse, before anything is allocated, a dictionary whose learning cannot fit in the
    device's memory (a filter count far too large otherwise ends in the OOM killer)."""
    height, width = signals.shape[-2:]
    needed = learning_bytes(len(signals), height, width, filters)
    available = device_memory(signals.device)
    if available is not None and needed > available:
        raise RobustlabError(
            f"learning {filters} filters on {len(signals)} images of {height} × {width} needs "
            f"about {needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of "
            f"{signals.device}; use fewer filters or images"
        )


def _update_filters(
    filters: torch.Tensor, coefficients: torch.Tensor, signals: torch.Tensor, steps: int
) -> torch.Tensor:
    """FISTA on the data term over the constraint set, coefficients fixed."""
    size_hw = image_size(signals)
    coef_freq = torch.fft.rfft2(coefficients)  # (K, M, H, Wf)
    signal_freq = torch.fft.rfft2(signals)  # (K, C, H, Wf)
    gram = torch.einsum("kmhw,knhw->hwmn", coef_freq.conj(), coef_freq)
    lipschitz = float(torch.linalg.eigvalsh(gram).max().clamp_min(1e-12))
    size = filters.shape[-1]
    current, momentum_point, t = filters, filters, 1.0
    for _ in range(steps):
        dict_freq = torch.fft.rfft2(momentum_point, s=size_hw)
        residual = torch.einsum("mchw,kmhw->kchw", dict_freq, coef_freq) - signal_freq
        gradient = torch.fft.irfft2(
            torch.einsum("kmhw,kchw->mchw", coef_freq.conj(), residual), s=size_hw
        )
        stepped = momentum_point - gradient[..., :size, :size] / lipschitz
        following = project_filters(stepped, size)
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        momentum_point = following + ((t - 1.0) / t_next) * (following - current)
        current, t = following, t_next
    return current


@dataclass
class StratifiedDictionary:
    """One dictionary per image cluster, and the model that assigns the clusters."""

    clusters: ClusterModel
    members: list[LearnedDictionary]

    @property
    def lmbda(self) -> float:
        return self.members[0].lmbda


def save_dictionary(
    directory: str | Path, learned: LearnedDictionary | StratifiedDictionary, **metadata: Any
) -> Path:
    """Write ``directory/dictionary.safetensors`` (atomically) with its metadata.

    A stratified dictionary stores ``filters.<k>`` per cluster and the cluster
    model's tensors beside them.
    """
    members = learned.members if isinstance(learned, StratifiedDictionary) else [learned]
    first = members[0].filters
    meta: dict[str, object] = {
        "format": DICTIONARY_FORMAT,
        "filters": first.shape[0],
        "channels": first.shape[1],
        "size": first.shape[-1],
        "lmbda": learned.lmbda,
        "history": [m.history for m in members],
        **members[0].metadata,
        **metadata,
    }
    tensors: dict[str, torch.Tensor]
    if isinstance(learned, StratifiedDictionary):
        meta["clusters"] = len(members)
        tensors = {f"filters.{k}": m.filters.float() for k, m in enumerate(members)}
        tensors.update(learned.clusters.tensors())
    else:
        tensors = {"filters": first.float()}
    path = Path(directory) / DICTIONARY_FILE
    save_tensors(path, tensors, meta)
    return path


ChannelOrder = Literal["bgr", "rgb"]
RELEASE_LMBDA = 0.2  # the CSC release's λ, when the file name does not give one (lm0.2)


def load_dictionary(
    path: str | Path, channel_order: ChannelOrder | None = None
) -> LearnedDictionary | StratifiedDictionary:
    """Read a dictionary: a robustlab folder/file (:func:`save_dictionary`), or a ``.npy``
    file in the CSC release's layout (:func:`load_released_dictionary`)."""
    path = Path(path)
    if path.suffix == ".npy":
        return load_released_dictionary(path, channel_order or "bgr")
    if channel_order is not None:
        raise RobustlabError(
            f"{path}: --channel-order applies to .npy dictionaries only; "
            "robustlab dictionaries are RGB"
        )
    if path.is_dir():
        path = path / DICTIONARY_FILE
    if not path.is_file():
        raise RobustlabError(f"{path}: no dictionary here; learn one with `robustlab csc learn`")
    tensors, meta = load_tensors(path)
    if meta.get("format") != DICTIONARY_FORMAT:
        raise RobustlabError(
            f"{path}: not a robustlab CSC dictionary (format {meta.get('format')!r})"
        )
    try:
        lmbda = float(meta["lmbda"])
        count = int(meta.get("clusters", 1))
    except (KeyError, TypeError, ValueError) as err:
        problem = f"{path}: malformed dictionary metadata ({err}); re-learn it"
        raise RobustlabError(problem) from None
    if not (math.isfinite(lmbda) and lmbda > 0):
        raise RobustlabError(f"{path}: lmbda = {lmbda} must be a positive number; re-learn it")
    names = ["filters"] if "clusters" not in meta else [f"filters.{k}" for k in range(count)]
    for name in names:
        filters = tensors.get(name)
        if filters is None or filters.ndim != 4 or filters.shape[-1] != filters.shape[-2]:
            found = "missing" if filters is None else f"shape {tuple(filters.shape)}"
            raise RobustlabError(
                f"{path}: {name} is {found}, not (M, C, P, P); re-learn it with robustlab csc learn"
            )
        _check_filters(filters, f"{path} {name}")
    history = meta.get("history") or [[]]
    if "clusters" not in meta:
        return LearnedDictionary(tensors["filters"], lmbda, meta, list(history[0]))
    members = [
        LearnedDictionary(tensors[f"filters.{k}"], lmbda, meta, list(history[k]))
        for k in range(int(meta["clusters"]))
    ]
    return StratifiedDictionary(ClusterModel.from_tensors(tensors, int(meta["channels"])), members)


def _check_filters(filters: torch.Tensor, what: str) -> None:
    """Finite float filters, none all zero (a zero filter codes nothing: purified images
    would silently lose what it should have carried)."""
    check_array(filters, what, kinds="f", ndim=4, fix="re-learn it with robustlab csc learn")
    if bool((filters.flatten(1).abs().amax(1) == 0).any()):
        raise RobustlabError(f"{what} has an all-zero filter; re-learn it with robustlab csc learn")


def load_released_dictionary(path: Path, channel_order: ChannelOrder = "bgr") -> LearnedDictionary:
    """A dictionary as the CSC authors release it: ``.npy``, (P, P, C, M) in sporco's layout
    (P × P filters, C channels, M filters) or (P, P, M) for grey images, channels in BGR
    order (their code reads images with OpenCV; ``channel_order="rgb"`` for files that are
    not), every filter zero-mean and unit-norm. λ comes from an ``lm<λ>`` in the file name
    (``64_p8_lm0.2.npy``), else the release's 0.2. Returned as robustlab's (M, C, P, P), RGB.
    """
    if channel_order not in ("bgr", "rgb"):
        raise RobustlabError(f"channel order {channel_order!r} must be 'bgr' or 'rgb'")
    array = load_npy(path)
    found = f"found shape {array.shape}, dtype {array.dtype}"
    if array.dtype.kind != "f" or array.ndim not in (3, 4) or array.shape[0] != array.shape[1]:
        raise RobustlabError(
            f"{path}: expected float filters (P, P, C, M) or (P, P, M) in sporco's layout; {found}"
        )
    if array.ndim == 3:
        array = array[:, :, None, :]
    if array.shape[2] not in (1, 3):
        raise RobustlabError(
            f"{path}: the third axis should be 1 or 3 channels; {found} (is it (P, P, C, M)?)"
        )
    filters = torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1))).float()
    if filters.shape[1] == 3 and channel_order == "bgr":
        filters = filters.flip(1)
    flat = filters.flatten(1)
    norms, means = flat.norm(dim=1), flat.mean(dim=1)
    if (norms - 1).abs().max() > 1e-3 or means.abs().max() > 1e-3:
        raise RobustlabError(
            f"{path}: filters are not zero-mean and unit-norm as in sporco's dictionaries "
            f"(norms {float(norms.min()):.3g}..{float(norms.max()):.3g}, largest |mean| "
            f"{float(means.abs().max()):.3g}); {found}; is this a CSC dictionary?"
        )
    named = re.search(r"lm([0-9]*\.?[0-9]+)", path.name)
    lmbda = float(named.group(1)) if named else RELEASE_LMBDA
    meta = {
        "source": str(path),
        "layout": "sporco (P, P, C, M)",
        "channel_order": channel_order,
        "lmbda": lmbda,
    }
    return LearnedDictionary(filters, lmbda, meta)
