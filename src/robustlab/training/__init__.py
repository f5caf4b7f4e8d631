"""The training loop: SGD with a learning-rate schedule, resumable after a kill.

Schedules (``TrainConfig.schedule``), the learning rate as a function of progress
``t`` in epochs (``epoch + step / steps``), with ``T = epochs``:

- ``paper``: step decay, ×``gamma`` at each milestone (default 150/350 and 250/350 of
  ``T``), constant within an epoch: the Defective-CNN paper's CIFAR-10 recipe (350 epochs).
- ``cosine``: linear warm-up over the first 10 % of ``T``, then ``lr · (1 + cos πu) / 2``
  with ``u`` the fraction of the rest done.
- ``onecycle``: Smith's one-cycle policy as ``torch.optim.lr_scheduler.OneCycleLR`` with
  its defaults: cosine rise from ``lr / 25`` to ``lr`` over 30 % of ``T``, then cosine
  decay to ``lr / 25 / 1e4`` (momentum is not cycled).

Step decay scaled to a few epochs leaves whole epochs at the full rate and converges
poorly (3 epochs: rates 0.05, 0.005, 0.0005); the per-step schedules converge in few epochs.

After every epoch the full training state (weights, optimizer buffers, RNG) is
written atomically to ``train_state.safetensors``, then the model and
``meta.json``. ``resume=True`` continues from the last finished epoch; the data
order of an epoch depends only on the seed and the epoch, so a resumed run ends
with the same weights as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from robustlab import distributed
from robustlab.assemble import create, training_bytes
from robustlab.attacks.pgd import PGD
from robustlab.data import Augment, Dataset, batches
from robustlab.io import RobustlabError, load_tensors, save_tensors, writes_output
from robustlab.models.base import accuracy, place
from robustlab.models.config import ModelConfig
from robustlab.models.cost import device_memory
from robustlab.models.meta import DatasetMeta, EpochStats, RunMeta
from robustlab.runs import META_FILE, MODEL_FILE, read_meta, save_run
from robustlab.seeding import derive_seed
from robustlab.training.config import SCHEDULES, FastPath, TrainConfig

STATE_FILE = "train_state.safetensors"


@writes_output("run_dir", "robustlab train")  # one writer: a second one stops, naming the first
def train(
    model_config: ModelConfig,
    train_data: Dataset,
    test_data: Dataset,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    dataset_meta: DatasetMeta | None = None,
    fast: FastPath | None = None,
    init: Mapping[str, torch.Tensor] | None = None,
) -> RunMeta:
    """Train a model into ``run_dir`` and return its metadata (with the per-epoch history).

    ``init``: start from these weights (a state dict of the same model) instead of a fresh
    initialisation: fine-tuning, e.g. a classifier on purified images.
    """
    fast = fast or FastPath()
    run_dir = Path(run_dir)
    if fast.channels_last and torch.device(device).type == "cpu":  # before the folder is touched
        raise RobustlabError(
            "--channels-last does not train reproducibly on the CPU (torch 2.13's "
            "channels-last weight gradients differ run to run); drop it, or train on a GPU"
        )
    check_fits(model_config, config.batch_size, device)  # before the folder is touched
    start = _prepare_run_dir(run_dir, resume, force)
    if start:
        _check_same_settings(run_dir, start, model_config, config)
        done = int(start.get("epoch", 0))
        if done > config.epochs:  # "epoch 28/10" would describe nothing that happened
            raise RobustlabError(
                f"{run_dir} has trained {done} epochs already, more than the {config.epochs} "
                f"asked; resume with --epochs {done} or more, or --force to start over"
            )
        if done == config.epochs:
            return start
    loop = _Loop.build(model_config, config, device=device, fast=fast, quiet=quiet, init=init)
    history: list[EpochStats] = []
    if start is not None and (run_dir / STATE_FILE).is_file():
        history = _load_state(run_dir / STATE_FILE, loop.model, loop.optimizer)
    meta = _run_meta(train_data, dataset_meta, fast)
    for epoch in range(len(history), config.epochs):
        _epoch(loop, epoch, train_data, test_data, history, quiet=quiet)
        _save_state(run_dir / STATE_FILE, loop.model, loop.optimizer, history)
        meta["train"], meta["history"], meta["epoch"] = config.to_dict(), history, epoch + 1
        meta["complete"] = epoch + 1 == config.epochs
        meta["test_accuracy"] = history[-1]["test_accuracy"]
        save_run(run_dir, loop.model, model_config, meta)
    return read_meta(run_dir)


def check_fits(model_config: ModelConfig, batch_size: int, device: str | torch.device) -> None:
    """Refuse a model whose training cannot fit in the device's memory (one line, with the
    estimate), before anything is allocated or written: a width or a batch far too large
    otherwise ends in the out-of-memory killer or a traceback hours later."""
    needed = training_bytes(model_config, batch_size)
    available = device_memory(torch.device(device))
    if needed is None or available is None or needed <= available:
        return
    width = model_config.options.get("width")
    what = f"{model_config.arch}" + (f" of width {width}" if width is not None else "")
    raise RobustlabError(
        f"training {what} at batch size {batch_size} needs about {needed / 2**30:.1f} GiB, "
        f"more than the {available / 2**30:.1f} GiB of {device}; use a smaller width or batch size"
    )


def _epoch(
    loop: _Loop,
    epoch: int,
    train_data: Dataset,
    test_data: Dataset,
    history: list[EpochStats],
    *,
    quiet: bool,
) -> None:
    """One epoch, its test accuracy appended to ``history`` (and printed unless ``quiet``)."""
    stats = loop.epoch(train_data, epoch)
    stats["test_accuracy"] = accuracy(loop.model, test_data, batch_size=512)
    history.append(stats)
    if not quiet:
        tqdm.write(
            f"epoch {epoch + 1}/{loop.config.epochs}: loss {stats['train_loss']:.4f} "
            f"train acc {stats['train_accuracy']:.4f} test acc {stats['test_accuracy']:.4f}"
        )


def _run_meta(train_data: Dataset, dataset_meta: DatasetMeta | None, fast: FastPath) -> RunMeta:
    """The metadata a run starts with: its dataset (merged with the caller's) and fast path."""
    classes = list(train_data.classes)
    dataset: DatasetMeta = {"name": train_data.name, "data_dir": None, "classes": classes}
    dataset.update(dataset_meta or {})
    return {"dataset": dataset, "fast_path": asdict(fast)}


def _prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> RunMeta | None:
    """Return the existing metadata when resuming, None for a fresh run; refuse to overwrite."""
    exists = any((run_dir / f).exists() for f in (META_FILE, MODEL_FILE, STATE_FILE))
    if not exists:
        return None
    if force:
        for name in (META_FILE, MODEL_FILE, STATE_FILE):
            (run_dir / name).unlink(missing_ok=True)
        return None
    if resume:
        if (run_dir / META_FILE).is_file():
            return read_meta(run_dir)
        return {} if (run_dir / STATE_FILE).is_file() else None
    raise RobustlabError(
        f"{run_dir} already holds a run; pass --resume to continue or --force to replace it"
    )


def _check_same_settings(
    run_dir: Path, meta: RunMeta, model_config: ModelConfig, config: TrainConfig
) -> None:
    """Refuse to resume a run with a different model or recipe (only ``epochs`` may grow)."""
    # runs from before schedules existed used the paper's
    old = {"schedule": "paper", **meta.get("train", {})} if meta.get("train") else {}
    if old and config.schedule != "paper" and old.get("epochs") != config.epochs:
        raise RobustlabError(
            f"{run_dir} was trained for {old.get('epochs')} epochs with the {config.schedule} "
            "schedule, which depends on the number of epochs; keep --epochs, or --force"
        )
    old = {k: v for k, v in old.items() if k != "epochs"}
    new = {k: v for k, v in config.to_dict().items() if k != "epochs"}
    if meta.get("model") != model_config.to_dict() or (old and old != new):
        raise RobustlabError(
            f"{run_dir} was trained with other settings; use the same ones to resume, or --force"
        )


def _data_parallel(model: nn.Module, device: str | torch.device) -> nn.Module:
    if not distributed.is_distributed():
        return model
    device = torch.device(device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@dataclass
class _Loop:
    """What every epoch of one training run shares: the model (saved and evaluated), what
    the steps run (the model, DDP-wrapped and/or compiled), the optimizer and the recipe."""

    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    device: str | torch.device
    fast: FastPath
    quiet: bool

    @classmethod
    def build(
        cls,
        model_config: ModelConfig,
        config: TrainConfig,
        *,
        device: str | torch.device,
        fast: FastPath,
        quiet: bool,
        init: Mapping[str, torch.Tensor] | None,
    ) -> _Loop:
        torch.manual_seed(config.seed)  # the initialisation depends on the seed only
        model = create(model_config)
        if init is not None:
            model.load_state_dict(init)
        model = place(model, device, channels_last=fast.channels_last)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        # Under torchrun: DDP averages the gradients of every process's share of each batch
        trained = _data_parallel(model, device)
        if fast.compile:
            trained = torch.compile(trained)  # type: ignore[assignment]
        return cls(model, trained, optimizer, config, device, fast, quiet)

    def epoch(self, data: Dataset, epoch: int) -> EpochStats:
        """One epoch over ``data`` (its order depends on the seed and the epoch only)."""
        config = self.config
        self.model.train()
        started = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        stream = batches(
            data,
            config.batch_size,
            shuffle=True,
            augmentation=Augment(config.pad, config.flip),
            seed=config.seed * 100_003 + epoch,
            device=self.device,
        )
        steps = -(-len(data) // config.batch_size)
        # disable=None: no bar when stderr is not a terminal (logs, CI), unless quiet
        bar = tqdm(
            stream,
            total=steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=True if self.quiet else None,
            leave=False,
        )
        share = slice(distributed.rank(), None, distributed.world_size())
        for step, (x, y) in enumerate(bar):
            for group in self.optimizer.param_groups:
                group["lr"] = config.lr_at(epoch, step / steps)
            x, y = x[share], y[share]  # this process's rows of the global batch
            loss, logits = self._step(x, y, derive_seed(config.seed, epoch, step))
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        total_loss, right, count = distributed.sum_over_processes(total_loss, correct, seen)
        return {
            "epoch": epoch + 1,
            "lr": config.lr_at(epoch),
            "lr_end": config.lr_at(epoch, (steps - 1) / steps),
            "train_loss": total_loss / max(1, count),
            "train_accuracy": right / max(1, count),
            "seconds": round(time.perf_counter() - started, 2),
        }

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the loss and logits of the batch trained on."""
        config = self.config
        if config.adv_eps > 0:  # Madry et al.: train on PGD adversarials of the current model
            attack = PGD(
                self.model, config.adv_eps, config.adv_step, config.adv_steps, True, seed=seed
            )
            x = attack(x, y)  # the attack restores train mode after itself
        if self.fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(self.device).type, torch.bfloat16, enabled=self.fast.bf16):
            logits = self.trained(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return loss, logits


def _save_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, history: list[EpochStats]
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        tensors.update({f"optim.{index}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_tensors(path, tensors, {"history": history, "param_groups": opt["param_groups"]})


def _load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[EpochStats]:
    tensors, meta = load_tensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    history: list[EpochStats] = meta["history"]
    return history


__all__ = ["SCHEDULES", "STATE_FILE", "EpochStats", "FastPath", "TrainConfig", "train"]
