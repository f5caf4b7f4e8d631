"""One way to derive independent seeds from a user's seed and a name or position."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text, e.g. ``derive_seed(seed, "blocks.0.unit.bn")``.

    Hashing keeps the derived seeds independent of one another and stable across runs,
    Python versions and machines (unlike ``hash()``).
    """
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
