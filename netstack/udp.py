"""UDP (RFC 768): header parsing and building, and the table of bound ports."""
from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Final

from . import checksum as cksum
from .counters import Counters, DropError

# Final: inlined by mypyc where they are read (see ipv4.py)
HEADER_LEN: Final = 8
PROTO_UDP: Final = 17
EPHEMERAL = (1024, 65535)
_HEADER = struct.Struct("!HHHH")

OnDatagram = Callable[[bytes, int, int, int, int], None]
# (payload, src_ip, src_port, dst_ip, dst_port, ip_ttl): for a protocol that
# must see how far a datagram came (mDNS: TTL 255 means no router forwarded it)
OnDatagramWithTtl = Callable[[bytes, int, int, int, int, int], None]
# (payload, src_ip, src_port, dst_ip, dst_port) -> the reply to send back to
# the datagram's source from the port it came to, as (reply payload, its sum),
# or None for none (yet). The sum is any integer congruent, mod 0xFFFF, to the
# ones'-complement sum of the payload's 16-bit words (an odd length padded with
# a zero): a responder that memoises replies keeps what they have in common, so
# the stack patches the UDP checksum (RFC 1624) instead of summing the payload.
Responder = Callable[[bytes, int, int, int, int], "tuple[bytes, int] | None"]


class UdpError(DropError):
    """A datagram UDP must drop."""


def parse(segment: bytes, src_ip: int, dst_ip: int) -> tuple[int, int, bytes]:
    """(src_port, dst_port, payload); a zero checksum means "none sent"."""
    if len(segment) < HEADER_LEN:
        raise UdpError("udp.truncated.drop")
    src_port, dst_port, length, checksum = _HEADER.unpack_from(segment)
    if length < HEADER_LEN or length > len(segment):
        raise UdpError("udp.bad_length.drop")
    if length != len(segment):
        segment = segment[:length]
    if checksum and not cksum.verify(segment, cksum.pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length)):
        raise UdpError("udp.bad_checksum.drop")
    return src_port, dst_port, segment[HEADER_LEN:]


def build(src_ip: int, src_port: int, dst_ip: int, dst_port: int, payload: bytes) -> bytes:
    length = HEADER_LEN + len(payload)
    # The payload read as one integer is congruent to the sum of its 16-bit
    # words mod 0xFFFF (see checksum.py); an odd length is padded with a zero.
    body = int.from_bytes(payload, "big")
    if len(payload) & 1:
        body <<= 8
    words = cksum.pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length) + src_port + dst_port + length
    return _HEADER.pack(src_port, dst_port, length, 0xFFFF - (words + body) % 0xFFFF) + payload


# transmit(src_port, dst_ip, dst_port, payload, ttl): the datagram, not yet a
# segment, so the stack can build UDP, IPv4 and Ethernet headers in one go
Transmit = Callable[[int, int, int, bytes, "int | None"], None]


class UdpLayer:
    """Bound ports and their handlers. Sending goes through `transmit(src_port,
    dst_ip, dst_port, payload, ttl)`, which the stack wires to its output (ttl
    None: its default); the stack builds the segment (:func:`build`, or the
    same bytes packed with the lower headers at once).

    Ports bound with ``with_ttl`` live in their own table, so the stack's hot
    path (which reads only `responders` and `bindings`) leaves them to the
    general path, the one that knows the IP header.

    A port bound with ``bind_responder`` hands its reply back instead of
    calling ``sendto``: the stack then builds the reply frame at once from the
    query's addresses, with the checksum patched from the responder's sum."""

    def __init__(self, local_ip: int, transmit: Transmit, counters: Counters,
                 rng: random.Random | None = None) -> None:
        self.local_ip = local_ip
        self.transmit = transmit
        self.counters = counters
        # counted on every reply: a plain integer (Counters.tally)
        self.sent = counters.tally("udp.sent")
        self.rng = rng or random.SystemRandom()
        self.bindings: dict[int, OnDatagram] = {}
        self.bindings_with_ttl: dict[int, OnDatagramWithTtl] = {}
        self.responders: dict[int, Responder] = {}

    def _free(self, port: int) -> bool:
        return port not in self.bindings and port not in self.bindings_with_ttl and port not in self.responders

    def _check_free(self, port: int) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        if not self._free(port):
            raise OSError(f"UDP port {port} is already bound")

    def bind(self, port: int, on_datagram: OnDatagram) -> None:
        self._check_free(port)
        self.bindings[port] = on_datagram

    def bind_responder(self, port: int, responder: Responder) -> None:
        self._check_free(port)
        self.responders[port] = responder

    def bind_with_ttl(self, port: int, on_datagram: OnDatagramWithTtl) -> None:
        self._check_free(port)
        self.bindings_with_ttl[port] = on_datagram

    def bind_ephemeral(self, on_datagram: OnDatagram) -> int:
        """Binds a random free port from a wide range (RFC 6056, RFC 5452)."""
        port = self._ephemeral_port()
        self.bindings[port] = on_datagram
        return port

    def bind_ephemeral_with_ttl(self, on_datagram: OnDatagramWithTtl) -> int:
        port = self._ephemeral_port()
        self.bindings_with_ttl[port] = on_datagram
        return port

    def _ephemeral_port(self) -> int:
        low, high = EPHEMERAL
        for _ in range(64):
            port = self.rng.randint(low, high)
            if self._free(port):
                return port
        raise OSError("no free ephemeral UDP port")

    def unbind(self, port: int) -> None:
        self.bindings.pop(port, None)
        self.bindings_with_ttl.pop(port, None)
        self.responders.pop(port, None)

    def sendto(self, payload: bytes, src_port: int, dst_ip: int, dst_port: int, *, ttl: int | None = None) -> None:
        self.sent.count += 1
        self.transmit(src_port, dst_ip, dst_port, payload, ttl)
