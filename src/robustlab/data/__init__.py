"""Datasets by name, cached as uint8 arrays, and seeded batches with augmentation."""

from robustlab.data.batches import Augment, augment, batches
from robustlab.data.datasets import (
    Dataset,
    available,
    cache_dir,
    load_dataset,
    sample,
    sample_indices,
)

__all__ = [
    "Augment",
    "Dataset",
    "augment",
    "available",
    "batches",
    "cache_dir",
    "load_dataset",
    "sample",
    "sample_indices",
]
