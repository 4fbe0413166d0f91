"""One counter as a plain integer, for the hot path (see counters.py).

A module of its own so that build/compiled.py can compile it: compiled, a
Tally is a native class, and the compiled hot path's ``tally.count += 1``
is a load and a store of a field instead of two attribute lookups through
CPython's object protocol. counters.py itself stays interpreted (Counters
subclasses collections.Counter)."""
from __future__ import annotations


class Tally:
    """One counter as a plain integer, for the hot path."""

    __slots__ = ("count",)

    def __init__(self, count: int = 0) -> None:
        self.count = count
