"""ICMP (RFC 792): echo replies, port-unreachable errors, and their rate limit.
Everything else is counted and ignored."""
from __future__ import annotations

import struct

from . import checksum as cksum
from .counters import DropError

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_ECHO_REQUEST = 8
CODE_PORT_UNREACHABLE = 3
# RFC 1812 4.3.2.3: quote as much of the offending datagram as fits in 576 bytes.
MAX_QUOTE = 576 - 20 - 8

_HEADER = struct.Struct("!BBH")


class IcmpError(DropError):
    """An ICMP message we must drop."""


def parse(message: bytes) -> tuple[int, int]:
    """(type, code) of a checksummed ICMP message."""
    if len(message) < 8:
        raise IcmpError("icmp.truncated.drop")
    if not cksum.verify(message):
        raise IcmpError("icmp.bad_checksum.drop")
    icmp_type, code, _ = _HEADER.unpack_from(message)
    return icmp_type, code


def _with_checksum(body: bytes) -> bytes:
    return body[:2] + cksum.checksum(body).to_bytes(2, "big") + body[4:]


def echo_reply(request: bytes) -> bytes:
    """The reply to an echo request: same identifier, sequence and data."""
    return _with_checksum(bytes([TYPE_ECHO_REPLY, 0, 0, 0]) + request[4:])


def port_unreachable(original_ip_packet: bytes) -> bytes:
    return _with_checksum(bytes([TYPE_DEST_UNREACHABLE, CODE_PORT_UNREACHABLE, 0, 0, 0, 0, 0, 0])
                          + original_ip_packet[:MAX_QUOTE])


class RateLimiter:
    """A token bucket: `rate` per second, bursts of `burst`. Time is an argument."""

    def __init__(self, rate: float = 10.0, burst: int = 10) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated: float | None = None

    def allow(self, now: float) -> bool:
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
