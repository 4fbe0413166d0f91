"""Sequence-number arithmetic: 32-bit numbers that wrap (RFC 9293 section 3.4)."""
from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number (RFC 1982 style)."""
    return ((a - b + HALF) & MASK) - HALF


def seq_add(a: int, n: int) -> int:
    return (a + n) & MASK
