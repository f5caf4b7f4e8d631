"""robustlab: defenses against adversarial perturbations, and the attacks and evaluations
that test them.

``robustlab.load(run_dir)`` rebuilds a trained model; ``robustlab.evaluate(model, x, y,
eps=8/255)`` gives the verdict on any model (:mod:`robustlab.evaluation.escalation`); the
parts live in
``robustlab.data``, ``robustlab.models``, ``robustlab.defenses``,
``robustlab.attacks`` and ``robustlab.evaluation``.
"""

from __future__ import annotations

from typing import Any

from robustlab.version import __version__

__all__ = ["__version__", "evaluate", "load"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `robustlab --help` does not wait for torch.
    if name == "load":
        from robustlab.runs import load

        return load
    if name == "evaluate":
        from robustlab.evaluation.escalation import evaluate

        return evaluate
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
