"""Counters named for the path a packet took, e.g. ``ipv4.bad_checksum.drop``.

Every outcome and every drop reason increments one counter, so tests can pin
which branch ran, and an operator can see why traffic disappeared.
"""
from collections import Counter


class Counters(Counter):
    """A Counter with a stable text dump; keys are dotted path names."""

    def dump(self) -> str:
        return "\n".join(f"{k} {v}" for k, v in sorted(self.items()))


class DropError(ValueError):
    """Input a layer must drop. Each protocol has its own subclass (raised by
    its parser); ``reason`` is the counter that says why, e.g.
    ``ipv4.bad_checksum.drop``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
