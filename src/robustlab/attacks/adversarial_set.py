"""Adversarial sets on disk: generate once, evaluate against many targets.

A set is one ``.npz`` file (read with ``allow_pickle=False``) holding the adversarial
images (uint8 by default, quantised like the paper's PNG files, or float32), labels,
dataset indices, the source's clean and adversarial predictions (so "fooled the source"
is known), per-example ℓ∞ and ℓ2 norms of the stored perturbation, query counts where
the attack reports them, and the full config as JSON.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robustlab.attacks import distances
from robustlab.attacks.base import AttackConfig, AttackResult, Params
from robustlab.data import Dataset
from robustlab.distributed import in_batch_order, my_batches
from robustlab.io import RobustlabError, arrays_digest, atomic_write, check_array
from robustlab.models.base import model_device, predict
from robustlab.models.cost import CostRecord, Meter
from robustlab.seeding import derive_seed
from robustlab.version import __version__

SET_FORMAT = "robustlab-adversarial-set/1"
_ARRAYS = ("images", "labels", "indices", "clean_pred", "adv_pred", "linf", "l2")


class SetConfig(TypedDict, total=False):
    """How a set was made, as its file stores it (``config_json``; what the report reads)."""

    attack: str
    params: Params
    seed: int
    batch_size: int
    quantized: bool
    target: int | None
    dataset: str
    split: str
    version: str
    sources: list[str]  # the source runs' folders
    n: int
    data_dir: str | None  # the folder its images came from (older sets: the source run's)
    cost: CostRecord  # what making it took, counted (older sets: absent)


@dataclass
class AdversarialSet:
    """Adversarial examples of one attack on one source, with what is known about them."""

    images: np.ndarray  # uint8 (N, C, H, W), or float32 in [0, 1]
    labels: np.ndarray
    indices: np.ndarray  # positions in the dataset split
    clean_pred: np.ndarray  # the source's predictions on the clean images
    adv_pred: np.ndarray  # ... and on the stored adversarial images
    linf: np.ndarray  # per-example norms of (stored adversarial − clean), in [0, 1] units
    l2: np.ndarray
    config: SetConfig
    queries: np.ndarray | None = None
    path: str | None = None  # where it was read from (messages only; never written)

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self) -> torch.Tensor:
        """The adversarial images as float pixels in [0, 1]."""
        x = torch.from_numpy(self.images)
        return x.float() / 255 if self.images.dtype == np.uint8 else x.float()

    @property
    def fooled_source(self) -> np.ndarray:
        """Whether each adversarial example changed the source's answer away from the label."""
        target = self.config.get("target")
        if target is not None:
            return np.asarray(self.adv_pred == np.asarray(target))
        return np.asarray(self.adv_pred != self.labels)


def save_set(path: str | Path, adv_set: AdversarialSet) -> None:
    """Write a set atomically (no pickles: arrays plus the config as a JSON string)."""
    arrays = {name: getattr(adv_set, name) for name in _ARRAYS}
    if adv_set.queries is not None:
        arrays["queries"] = adv_set.queries
    config = {"format": SET_FORMAT, **adv_set.config}
    checksum = np.array(arrays_digest(arrays))  # checked by load_set: edits are caught
    with atomic_write(path) as handle:
        np.savez_compressed(
            handle, config_json=np.array(json.dumps(config)), sha256=checksum, **arrays
        )


def load_set(path: str | Path) -> AdversarialSet:
    """Read a set written by :func:`save_set`, refusing anything that needs unpickling."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise RobustlabError(
            f"{path}: file not found; generate it with `robustlab attack`"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise RobustlabError(
            f"{path}: not a readable adversarial set ({err}); re-generate it"
        ) from None
    missing = [n for n in (*_ARRAYS, "config_json") if n not in arrays]
    if missing:
        raise RobustlabError(f"{path}: adversarial set lacks {missing[0]!r}; re-generate it")
    try:
        config = json.loads(str(arrays.pop("config_json")))
    except json.JSONDecodeError as err:
        problem = f"{path}: its config is not JSON ({err.msg}); re-generate it"
        raise RobustlabError(problem) from None
    checksum = arrays.pop("sha256", None)  # sets written before checksums carry none
    _check_arrays(path, arrays)
    if checksum is not None and str(checksum) != arrays_digest(arrays):
        raise RobustlabError(
            f"{path}: its arrays do not match the checksum robustlab wrote with them (edited "
            "or damaged since); re-generate it (or delete it: `robustlab run` remakes it)"
        )
    if not isinstance(config, dict):
        raise RobustlabError(f"{path}: its config is not a JSON object; re-generate it")
    if config.pop("format", None) != SET_FORMAT:
        raise RobustlabError(f"{path}: unknown adversarial set format; re-generate it")
    names = [config.get(k) for k in ("attack", "dataset", "split")]
    sources = config.get("sources", [])
    if not all(isinstance(v, str) for v in names) or not (
        isinstance(sources, list) and all(isinstance(s, str) for s in sources)
    ):
        raise RobustlabError(
            f"{path}: its config lacks the attack, data or sources; re-generate it"
        )
    queries = arrays.pop("queries", None)
    return AdversarialSet(config=cast(SetConfig, config), queries=queries, path=str(path), **arrays)


def _check_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Every array of a set as :func:`save_set` writes it: uint8 or [0, 1] float32 images
    (N, C, H, W), integer labels, indices and predictions, finite non-negative norms."""
    fix = "re-generate it with `robustlab attack` (or delete it: `robustlab run` remakes it)"
    images = arrays["images"]
    # uint8 in 0-255 or float32 in [0, 1]; any other dtype is refused (kinds "")
    kinds, high = {np.dtype(np.uint8): ("u", 255), np.dtype(np.float32): ("f", 1)}.get(
        images.dtype, ("", 1)
    )
    n = len(images) if images.ndim else -1
    check_array(images, f"{path} images", kinds=kinds, ndim=4, low=0, high=high, fix=fix)
    for name in ("labels", "indices", "clean_pred", "adv_pred"):
        check_array(arrays[name], f"{path} {name}", kinds="iu", ndim=1, length=n, low=0, fix=fix)
    for name in ("linf", "l2"):
        check_array(arrays[name], f"{path} {name}", kinds="f", ndim=1, length=n, low=0, fix=fix)
    if "queries" in arrays:
        check_array(arrays["queries"], f"{path} queries", kinds="iu", ndim=1, length=n, fix=fix)


def batch_seed(seed: int, start: int) -> int:
    """The attack seed of the batch starting at example ``start``: independent across batches."""
    return derive_seed(seed, start)


def attack_in_batches(
    attack: str,
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    quiet: bool = True,
) -> AttackResult:
    """Run ``attack`` batch by batch, each batch seeded by :func:`batch_seed`.

    Under torch.distributed the batches are shared among the processes; the
    result (adversarials on the CPU, query counts if any) is the same either way.
    """
    device = model_device(model)
    built = AttackConfig(attack, params).build(model, seed=seed)  # once: each batch is seeded
    # disable=None: no bar when stderr is not a terminal (logs, CI), unless quiet
    bar = tqdm(total=len(x), desc=attack, leave=False, disable=True if quiet else None)

    steps = int(getattr(built, "steps", 0)) if built.traced else 0

    def one_batch(start: int, stop: int) -> torch.Tensor:
        """Adversarials, flattened, then the query counts (or -1), then for a traced attack
        the success flags and the loss trace, as columns of one tensor."""
        xb, yb = x[start:stop].to(device), y[start:stop].to(device)
        goal = target[start:stop].to(device) if target is not None else None
        result = built.run(xb, yb, goal, seed=batch_seed(seed, start))
        counts = result.queries if result.queries is not None else torch.full_like(yb, -1)
        columns = [result.adv.flatten(1).double(), counts.double().view(-1, 1)]
        if steps:
            assert result.success is not None and result.trace is not None
            columns += [result.success.double().view(-1, 1), result.trace.double()]
        bar.update(stop - start)
        return torch.cat(columns, 1).cpu()

    if len(x) == 0:
        return AttackResult(x.detach().cpu().clone())
    pieces = [one_batch(start, stop) for start, stop in my_batches(len(x), batch_size)]
    packed = in_batch_order(pieces, len(x), batch_size)
    bar.close()
    width = x[0].numel()
    adv = packed[:, :width].float().view(x.shape)
    counts = packed[:, width].long()
    result = AttackResult(adv, counts if bool((counts >= 0).all()) else None)
    if steps:
        result.success = packed[:, width + 1].bool()
        result.trace = packed[:, width + 2 :].float()
    return result


def generate_set(
    source: nn.Module,
    data: Dataset,
    indices: np.ndarray,
    attack: str,
    params: Params,
    *,
    seed: int = 0,
    batch_size: int = 256,
    quantize: bool = True,
    target: int | None = None,
    config: SetConfig | None = None,
    quiet: bool = False,
) -> AdversarialSet:
    """Attack ``source`` on ``data[indices]`` batch by batch; return the set (not yet saved).

    Each batch is attacked with seed :func:`batch_seed` (seed, first index of the batch),
    so the set depends on ``seed`` and ``batch_size`` only.
    """
    subset = data.subset(indices)
    clean, labels = subset.tensors()
    goal = torch.full_like(labels, target) if target is not None else None
    with Meter() as cost:  # its own: a cell that reads the set does not pay for it
        result = attack_in_batches(
            attack, source, params, clean, labels, goal, seed, batch_size, quiet
        )
    adv = result.adv
    stored = (adv * 255).round().to(torch.uint8) if quantize else adv.float()
    stored_pixels = stored.float() / 255 if quantize else stored
    full_config: SetConfig = {
        "attack": attack,
        "params": params,
        "seed": seed,
        "batch_size": batch_size,
        "quantized": quantize,
        "target": target,
        "dataset": data.name,
        "split": data.split,
        "version": __version__,
        "cost": cost.to_dict(),
        **(config or {}),
    }
    return AdversarialSet(
        images=stored.numpy(),
        labels=labels.numpy(),
        indices=np.asarray(indices, dtype=np.int64),
        clean_pred=predict(source, clean, batch_size).numpy(),
        adv_pred=predict(source, stored_pixels, batch_size).numpy(),
        linf=distances.linf(clean, stored_pixels).numpy(),
        l2=distances.l2(clean, stored_pixels).numpy(),
        config=full_config,
        queries=result.queries.numpy() if result.queries is not None else None,
    )
