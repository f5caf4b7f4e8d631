"""Library functions behind ``robustlab csc learn`` and ``robustlab purify``."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from tqdm import tqdm

from robustlab.data import load_dataset, sample
from robustlab.data.readers import IMAGE_SUFFIXES, decode_image
from robustlab.defenses.csc import (
    CSCPurifier,
    LearnedDictionary,
    LearnOptions,
    StratifiedDictionary,
    fit_clusters,
    learn_dictionary,
    save_dictionary,
    tikhonov_split,
)
from robustlab.defenses.csc.dictionary import DICTIONARY_FILE
from robustlab.io import (
    RobustlabError,
    atomic_write,
    check_writable,
    prepare_output,
    read_json,
    write_json,
    writes_output,
)
from robustlab.seeding import derive_seed

# ``antialias``: bilinear with antialiasing on [0, 1] floats (robustlab's default: no aliasing
# when shrinking); ``authors``: the CSC release's resize, OpenCV's INTER_LINEAR on uint8
# images without antialiasing, rounded back to uint8. They agree when the size is kept or
# grows and differ by 23-35 dB PSNR when shrinking (every ImageNet input is shrunk).
Resize = Literal["antialias", "authors"]
RESIZES: tuple[Resize, ...] = ("antialias", "authors")


@writes_output("out", "robustlab csc learn")
def learn_csc_dictionary(
    dataset: str,
    out: str | Path,
    filters: int = 64,
    *,
    size: int = 8,
    lmbda: float = 0.2,
    images: int = 256,
    options: LearnOptions | None = None,
    clusters: int = 1,
    data_dir: str | Path | None = None,
    download: bool = False,
    device: torch.device | str = "cpu",
    force: bool = False,
    command: str = "",
) -> Path:
    """Learn a dictionary (one per cluster if ``clusters`` > 1) from training images.

    ``images`` training images are drawn with the options' seed; each cluster's
    dictionary is learned from the high-pass parts of its members.
    """
    if lmbda <= 0 or filters < 1 or size < 2:
        raise RobustlabError("need lmbda > 0, filters >= 1 and size >= 2 (paper: 64 filters, 8)")
    if clusters < 1 or clusters > images:
        raise RobustlabError(f"--clusters {clusters} must lie between 1 and --images {images}")
    prepare_output(Path(out) / DICTIONARY_FILE, force)
    options = options or LearnOptions()
    data = sample(load_dataset(dataset, "train", data_dir, download), images, options.seed)
    pixels, _ = data.tensors()
    meta = {
        "dataset": dataset,
        "images": len(data),
        "seed": options.seed,
        "iterations": options.iterations,
        "command": command,
    }
    if clusters == 1:
        learned = _learn(pixels, filters, size, lmbda, options, device)
        return save_dictionary(out, learned, **meta)
    model = fit_clusters(pixels, clusters=clusters, seed=options.seed)
    assignment = model.assign(pixels)
    members = []
    for k in range(clusters):
        own = pixels[assignment == k]
        if len(own) == 0:
            raise RobustlabError(f"cluster {k} is empty; use fewer --clusters or more --images")
        seeded = replace(options, seed=derive_seed(options.seed, "cluster", k))
        members.append(_learn(own, filters, size, lmbda, seeded, device))
    sizes = [int((assignment == k).sum()) for k in range(clusters)]
    return save_dictionary(out, StratifiedDictionary(model, members), cluster_sizes=sizes, **meta)


def _learn(
    pixels: torch.Tensor,
    filters: int,
    size: int,
    lmbda: float,
    options: LearnOptions,
    device: torch.device | str,
) -> LearnedDictionary:
    _, high = tikhonov_split(pixels.to(device))
    learned = learn_dictionary(high, filters, size, lmbda, options)
    learned.filters = learned.filters.cpu()
    return learned


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), as sorted relative paths."""
    if not folder.is_dir():
        raise RobustlabError(f"{folder}: no such folder; give the folder of images to purify")
    found = [
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]
    return sorted(found)


@writes_output("out_dir", "robustlab purify")
def purify_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    purifier: CSCPurifier,
    *,
    size: int | None = None,
    resize: Resize = "antialias",
    grey: bool = False,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    quiet: bool = False,
    force: bool = False,
) -> tuple[int, int]:
    """Purify every image of ``in_dir`` into ``out_dir`` under the same relative name.

    Images already in ``out_dir`` (and readable) are skipped, so an interrupted run resumes,
    losing at most one chunk of ``batch_size`` images (the solver iterates a few images at
    a time anyway, so small chunks cost little);
    every file is written atomically; inputs are never written. ``size``
    resizes images to ``size`` × ``size`` first, as the method's reconstruction script
    does, by ``resize`` (:data:`Resize`: antialiased bilinear by default, or the authors'
    uint8 INTER_LINEAR). A colour image and a grey dictionary are refused unless ``grey``
    (convert the images to grey on purpose). Returns (purified, skipped).
    """
    if resize not in RESIZES:
        raise RobustlabError(f"resize {resize!r} must be one of {', '.join(RESIZES)}")
    source, target = Path(in_dir).resolve(), Path(out_dir).resolve()
    if target == source or source in target.parents:
        raise RobustlabError(f"{out_dir}: must not be inside {in_dir}; choose another OUT_DIR")
    names = image_files(source)
    if not names:
        raise RobustlabError(f"{in_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    check_writable(target)
    settings = _settings(purifier, size)
    if resize != "antialias":  # the default stays out: folders purified before keep their key
        settings["resize"] = resize
    _claim(target, settings, force)
    todo = [n for n in names if force or not _readable_image(target / n)]
    purifier = purifier.to(device)
    bar = tqdm(total=len(todo), desc="purify", unit="img", disable=True if quiet else None)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        pixels = torch.stack(
            [_read(source / n, purifier.channels, size, resize, grey) for n in chunk]
        )
        with torch.no_grad():
            cleaned = purifier(pixels.to(device)).cpu()
        for name, image in zip(chunk, cleaned, strict=True):
            _write(target / name, image)
        bar.update(len(chunk))
    bar.close()
    return len(todo), len(names) - len(todo)


MANIFEST = ".robustlab-purify.json"


def _settings(purifier: CSCPurifier, size: int | None) -> dict[str, object]:
    """Everything the outputs depend on: the filters' bytes, λ, solver options, sizes."""
    if not isinstance(purifier, CSCPurifier):  # any other image-to-image module
        return {"module": repr(purifier), "size": size}
    loaded = purifier.dictionary
    members = loaded.members if isinstance(loaded, StratifiedDictionary) else [loaded]
    digest = hashlib.sha256()
    for member in members:
        digest.update(member.filters.detach().cpu().numpy().tobytes())
    return {
        "filters_sha256": digest.hexdigest()[:16],
        "lmbda": purifier.lmbda,
        "options": asdict(purifier.options),
        "rescale": purifier.rescale,
        "tikhonov_lmbda": purifier.tikhonov_lmbda,
        "size": size,
    }


def _claim(target: Path, settings: dict[str, object], force: bool) -> None:
    """Outputs already in ``target`` are reused only if made with the same settings."""
    manifest = target / MANIFEST
    if manifest.is_file() and not force:
        found, wanted = read_json(manifest), json.loads(json.dumps(settings))  # as JSON
        if wanted != found:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise RobustlabError(
                f"{target} holds images purified with other settings ({', '.join(changed)}); "
                "choose another OUT_DIR or pass --force to redo them"
            )
    write_json(manifest, settings)


def _readable_image(path: Path) -> bool:
    """A finished output: an image file that decodes (not empty, not cut short)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def _read(path: Path, channels: int, size: int | None, resize: Resize, grey: bool) -> torch.Tensor:
    decoded = decode_image(path.read_bytes(), str(path), channels, grey_ok=grey)
    pixels = torch.from_numpy(decoded.copy())
    if size is None or pixels.shape[-2:] == (size, size):
        return pixels.float() / 255
    if resize == "authors":
        return authors_resize(pixels, size).float() / 255
    return torch.nn.functional.interpolate(
        pixels.float()[None] / 255,
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0].clamp(0, 1)


def authors_resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, H, W) uint8 image at ``size`` × ``size`` as the CSC release resizes it:
    OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing), rounded to uint8 (OpenCV's
    fixed-point weights may put a pixel one level off)."""
    out = torch.nn.functional.interpolate(
        pixels.float()[None], size=(size, size), mode="bilinear", align_corners=False
    )[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def _write(path: Path, image: torch.Tensor) -> None:
    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    suffix = path.suffix.lower()
    kind = Image.registered_extensions().get(suffix, "PNG")
    picture.save(buffer, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
