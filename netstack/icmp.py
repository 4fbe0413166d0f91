"""ICMP (RFC 792): echo replies, port-unreachable errors, and their rate limit;
"fragmentation needed" read for path MTU discovery (RFC 1191). Everything
else is counted and ignored."""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import checksum as cksum
from .counters import DropError

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_ECHO_REQUEST = 8
CODE_PORT_UNREACHABLE = 3
CODE_FRAGMENTATION_NEEDED = 4
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


class Quoted(NamedTuple):
    """The datagram an ICMP error quotes: its addresses, protocol, total
    length, and the start of its payload (at least 8 bytes: ports and, for
    TCP, the sequence number)."""
    src: int
    dst: int
    protocol: int
    total_len: int
    payload: bytes


# RFC 1191 section 7: MTU plateaus, for a router that reports no next-hop MTU
_PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)


def fragmentation_needed(message: bytes) -> tuple[int, Quoted]:
    """(next-hop MTU, quoted datagram) of a checked type 3 code 4 message. A
    router that leaves the MTU zero (before RFC 1191) gets the plateau below
    the quoted datagram's length."""
    if len(message) < 8 + 20 or message[8] >> 4 != 4:
        raise IcmpError("icmp.bad_quote.drop")
    header_len = (message[8] & 0x0F) * 4
    if header_len < 20 or len(message) < 8 + header_len + 8:
        raise IcmpError("icmp.bad_quote.drop")
    total_len, protocol, src, dst = (struct.unpack_from("!H", message, 10)[0], message[17],
                                     *struct.unpack_from("!II", message, 20))
    mtu = struct.unpack_from("!H", message, 6)[0]
    if mtu == 0 or mtu >= total_len:
        mtu = next((p for p in _PLATEAUS if p < total_len), _PLATEAUS[-1])
    return mtu, Quoted(src, dst, protocol, total_len, message[8 + header_len:])


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
