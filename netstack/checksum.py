"""The Internet checksum (RFC 1071), computed with one big-integer reduction.

The ones'-complement sum of 16-bit big-endian words is congruent to the whole
buffer, read as one big-endian integer, modulo 0xFFFF (because 0x10000 = 1 mod
0xFFFF). CPython reduces a bytes-sized integer in C, so this is many times
faster than summing words in a Python loop.
"""


def ones_sum(data: bytes | bytearray, initial: int = 0) -> int:
    """The ones'-complement sum, as a residue in 0..0xFFFE (0xFFFF == 0)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return (int.from_bytes(data, "big") + initial) % 0xFFFF


def checksum(data: bytes | bytearray, initial: int = 0) -> int:
    """The value for a checksum field: never 0 (0xFFFF stands for zero), which
    is also what UDP wants, where 0 means "no checksum"."""
    return 0xFFFF - ones_sum(data, initial)


def verify(data: bytes | bytearray, initial: int = 0) -> bool:
    """True when data (checksum field included) sums to ones'-complement zero."""
    return ones_sum(data, initial) == 0


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    """The IPv4 pseudo-header's contribution to a UDP or TCP checksum."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + protocol + length
