"""Evaluation protocols of specs: one module each, one contract (:mod:`.base`).

``PROTOCOLS`` holds them by type; importing this package registers every one.
"""

from robustlab.evaluation.protocols import (
    adaptive,
    curve,
    decision,
    probes,
    strong,
    transfer,
    universal,
    verdict,
    whitebox,
)
from robustlab.evaluation.protocols.base import (
    PROTOCOLS,
    Context,
    Protocol,
    Record,
    Schema,
    SpecView,
    parse_protocol,
)

MODULES = (adaptive, curve, decision, probes, strong, transfer, universal, verdict, whitebox)

__all__ = ["PROTOCOLS", "Context", "Protocol", "Record", "Schema", "SpecView", "parse_protocol"]
