"""The whole plan of a spec checked against its data and device before any model trains:
a mistake found after an hour of training is an hour lost (issue #26, class 3)."""

from __future__ import annotations

import torch

from robustlab.data import Dataset
from robustlab.experiments.models import ModelStore
from robustlab.experiments.spec import Spec
from robustlab.io import RobustlabError
from robustlab.training import check_fits


def check_plan(spec: Spec, test: Dataset, models: ModelStore, device: torch.device) -> None:
    """What the spec asks of the data: an explicit n no larger than the test split (the
    default, 500, takes what there is), each protocol's own, each defense's own (a CSC
    dictionary's channels and filter size), and every model that trains fitting in the
    device's memory; one line naming the spec entry otherwise."""
    asked = spec.source.get("experiment", {}).get("n")
    if asked is not None and asked > len(test):
        raise RobustlabError(
            f"[experiment] n = {asked}, but {spec.dataset}'s test split has "
            f"{len(test)} images; use n <= {len(test)}"
        )
    where = spec.path or "spec"
    for protocol in spec.protocols:
        try:
            protocol.check_data(images=len(test), size=test.image_size, classes=len(test.classes))
        except ValueError as err:
            raise RobustlabError(f"{where}: {err}") from None
    for name, entry in spec.models.items():
        try:
            if entry.defense is not None:
                entry.defense.check_data(channels=test.channels, size=test.image_size)
            if entry.base is None and not entry.members and entry.weights is None:
                check_fits(models.model_config(entry), entry.recipe().batch_size, device)
        except (ValueError, RobustlabError) as err:
            raise RobustlabError(f"{where}: [models.{name}] {err}") from None
