"""Counters named for the path a packet took, e.g. ``ipv4.bad_checksum.drop``.

Every outcome and every drop reason increments one counter, so tests can pin
which branch ran, and an operator can see why traffic disappeared.

The few counters every answered packet moves (``udp.delivered``...) are
tallies: plain integers (``tally.count += 1``, a fifth of a Counter update's
cost, measured), which the mapping reads as counters like any other. A
tallied name never lives in the dict itself, so every increment of it must
go through its tally.
"""
from collections import Counter
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any

from .tally import Tally

__all__ = ["Counters", "DropError", "Tally"]


class Counters(Counter[str]):
    """A Counter with a stable text dump; keys are dotted path names. Reads
    (``[]``, ``get``, iteration, ``items``, ``dump``...) see the tallies'
    counts as counters (those still at zero are absent, as an untouched
    counter is); writes are for names that are not tallied."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._tallies: dict[str, Tally] = {}
        super().__init__(counts or {})

    def tally(self, name: str) -> Tally:
        """The plain-integer counter for ``name`` (the same one on every call),
        starting from what the mapping held for it."""
        tally = self._tallies.get(name)
        if tally is None:
            tally = self._tallies[name] = Tally(dict.pop(self, name, 0))
        return tally

    def __missing__(self, key: str) -> int:
        tally = self._tallies.get(key)
        return 0 if tally is None else tally.count

    def _snapshot(self) -> Counter[str]:
        """Every counter, tallies folded in, as a plain Counter."""
        whole = Counter(dict(super().items()))
        for name, tally in self._tallies.items():
            if tally.count:
                whole[name] = tally.count
        return whole

    # one name's reads look at its tally or the dict, not at a snapshot of all
    def get(self, key: str, default: Any = None) -> Any:
        tally = self._tallies.get(key)
        if tally is not None:
            return tally.count if tally.count else default
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        tally = self._tallies.get(key) if isinstance(key, str) else None
        if tally is not None:
            return tally.count != 0
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot())

    def __len__(self) -> int:
        return len(self._snapshot())

    # views of a snapshot, not of the dict: what they show includes the tallies
    def keys(self) -> KeysView[str]:              # type: ignore[override]
        return self._snapshot().keys()

    def values(self) -> ValuesView[int]:          # type: ignore[override]
        return self._snapshot().values()

    def items(self) -> ItemsView[str, int]:       # type: ignore[override]
        return self._snapshot().items()

    def copy(self) -> "Counters":
        return Counters(self._snapshot())

    def __repr__(self) -> str:
        return f"Counters({dict(self._snapshot())!r})"

    def dump(self) -> str:
        return "\n".join(f"{k} {v}" for k, v in sorted(self.items()))


class DropError(ValueError):
    """Input a layer must drop. Each protocol has its own subclass (raised by
    its parser); ``reason`` is the counter that says why, e.g.
    ``ipv4.bad_checksum.drop``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
