"""Model zoo: ``build(arch, ...)``, ``available()``; every model takes pixels in [0, 1]."""

from robustlab.models.base import BlockNet, Normalize
from robustlab.models.registry import available, build

__all__ = ["BlockNet", "Normalize", "available", "build"]
