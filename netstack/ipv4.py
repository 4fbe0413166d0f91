"""IPv4 (RFC 791): header parsing and building, fragmentation, reassembly.

Parsing checks in one order: integrity (can the lengths be read safely?),
then the values (version, checksum, TTL). Reassembly keeps a bounded number of
datagrams, each bounded in size and in fragments, and drops the whole datagram
on overlapping or inconsistent fragments (the safe reading of RFC 5722, as
Linux does for IPv4 since 4.19) or on timeout.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from . import checksum as cksum
from .counters import Counters, DropError

# Final: mypyc inlines these where they are read, in every module compiled
# with this one, rather than looking up a module attribute each time
MIN_HEADER_LEN: Final = 20
PROTO_ICMP: Final = 1
PROTO_IGMP: Final = 2
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
FLAG_DF: Final = 0x4000
FLAG_MF: Final = 0x2000
OFFSET_MASK: Final = 0x1FFF
MAX_DATAGRAM: Final = 65535
DEFAULT_TTL: Final = 64
# Fragments kept per datagram (mirage-tcpip's bound); a 1500-byte MTU needs 45 for
# the largest datagram, but DNS over UDP fits in a few and TCP sends with DF.
MAX_FRAGMENTS = 16

_HEADER = struct.Struct("!BBHHHBBHII")


class Ipv4Error(DropError):
    """A packet the IPv4 layer must drop."""


class Ipv4Header(NamedTuple):
    header_len: int
    total_len: int
    ident: int
    flags_offset: int
    ttl: int
    protocol: int
    src: int
    dst: int

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags_offset & (FLAG_MF | OFFSET_MASK))


def parse(packet: bytes) -> Ipv4Header:
    """Validates an IPv4 header at the start of `packet` (options are skipped).
    The payload is packet[header_len:total_len]; trailing bytes (Ethernet
    padding) are ignored."""
    if len(packet) < MIN_HEADER_LEN:
        raise Ipv4Error("ipv4.truncated.drop")
    ver_ihl, _tos, total_len, ident, flags_offset, ttl, proto, _sum, src, dst = _HEADER.unpack_from(packet)
    if ver_ihl >> 4 != 4:
        raise Ipv4Error("ipv4.bad_version.drop")
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < MIN_HEADER_LEN:
        raise Ipv4Error("ipv4.bad_ihl.drop")
    if total_len < header_len or total_len > len(packet):
        raise Ipv4Error("ipv4.bad_length.drop")
    if not cksum.verify(packet[:header_len]):
        raise Ipv4Error("ipv4.bad_checksum.drop")
    if ttl == 0:
        raise Ipv4Error("ipv4.ttl_zero.drop")
    if flags_offset & 0x8000:
        raise Ipv4Error("ipv4.reserved_flag.drop")
    return Ipv4Header(header_len, total_len, ident, flags_offset, ttl, proto, src, dst)


def header(src: int, dst: int, protocol: int, payload_len: int, ident: int,
           flags_offset: int = 0, ttl: int = DEFAULT_TTL) -> bytes:
    """A 20-byte header, checksum filled in. The checksum is summed from the
    field values (the words are known), so the header is packed only once."""
    total = MIN_HEADER_LEN + payload_len
    words = (0x4500 + total + ident + flags_offset + (ttl << 8 | protocol)
             + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF))
    return _HEADER.pack(0x45, 0, total, ident, flags_offset, ttl, protocol,
                        0xFFFF - words % 0xFFFF, src, dst)


def header_with_options(src: int, dst: int, protocol: int, payload_len: int, ident: int,
                        options: bytes, ttl: int = DEFAULT_TTL) -> bytes:
    """A header carrying IP options (padded to 32 bits), e.g. IGMP's Router
    Alert (RFC 2113). Rare, so it is packed plainly and checksummed after."""
    options = options + b"\0" * (-len(options) % 4)
    header_len = MIN_HEADER_LEN + len(options)
    raw = _HEADER.pack(0x40 | header_len // 4, 0, header_len + payload_len, ident, 0, ttl, protocol,
                       0, src, dst) + options
    return raw[:10] + cksum.checksum(raw).to_bytes(2, "big") + raw[12:]


def fragment(src: int, dst: int, protocol: int, payload: bytes, ident: int, mtu: int,
             dont_fragment: bool = False, ttl: int = DEFAULT_TTL) -> list[bytes]:
    """The payload as one packet, or as fragments that each fit `mtu`.
    Raises Ipv4Error when it does not fit and DF is asked for."""
    if MIN_HEADER_LEN + len(payload) <= mtu:
        df = FLAG_DF if dont_fragment else 0
        return [header(src, dst, protocol, len(payload), ident, df, ttl) + payload]
    if dont_fragment:
        raise Ipv4Error("ipv4.needs_fragmentation_df.drop")
    if len(payload) + MIN_HEADER_LEN > MAX_DATAGRAM:
        raise Ipv4Error("ipv4.too_big.drop")
    step = (mtu - MIN_HEADER_LEN) // 8 * 8
    if step <= 0:
        raise Ipv4Error("ipv4.mtu_too_small.drop")
    packets = []
    for start in range(0, len(payload), step):
        chunk = payload[start:start + step]
        more = FLAG_MF if start + step < len(payload) else 0
        packets.append(header(src, dst, protocol, len(chunk), ident, more | (start // 8), ttl) + chunk)
    return packets


@dataclass(slots=True)
class _Datagram:
    expires_at: float
    starts: list[int] = field(default_factory=list)     # fragment offsets, sorted
    pieces: list[bytes] = field(default_factory=list)   # pieces[i] starts at starts[i]
    received: int = 0
    total: int | None = None    # payload length, known once the last fragment arrived


class Reassembler:
    """Bounded reassembly buffers keyed by (src, dst, protocol, ident).

    Each datagram keeps its pieces sorted by offset, so a fragment costs one
    bisection and two neighbour comparisons (O(log n)), and at most
    `max_fragments` of them (mirage-tcpip's bound: 16): a sender cannot make
    every arrival slower by splitting a datagram into thousands of 8-byte
    pieces. Every piece must end within the total length once that is known,
    and pieces never overlap, so "bytes received == total" means no holes."""

    def __init__(self, counters: Counters, *, max_datagrams: int = 64, max_bytes: int = 1 << 20,
                 max_fragments: int = MAX_FRAGMENTS, timeout: float = 30.0) -> None:
        self.counters = counters
        self.max_datagrams, self.max_bytes, self.timeout = max_datagrams, max_bytes, timeout
        self.max_fragments = max_fragments
        self.buffers: dict[tuple[int, int, int, int], _Datagram] = {}
        self.held_bytes = 0

    def input(self, now: float, hdr: Ipv4Header, payload: bytes) -> bytes | None:
        """Adds a fragment; returns the whole payload once complete."""
        key = (hdr.src, hdr.dst, hdr.protocol, hdr.ident)
        offset = (hdr.flags_offset & OFFSET_MASK) * 8
        more = bool(hdr.flags_offset & FLAG_MF)
        end = offset + len(payload)
        if (more and len(payload) % 8) or end + MIN_HEADER_LEN > MAX_DATAGRAM or (more and not payload):
            self._discard(key, "ipv4.frag.bad_fragment.drop")
            return None
        datagram = self.buffers.get(key)
        if datagram is None:
            if len(self.buffers) >= self.max_datagrams:
                self.counters["ipv4.frag.table_full.drop"] += 1
                return None
            datagram = self.buffers[key] = _Datagram(now + self.timeout)
        if self.held_bytes + len(payload) > self.max_bytes:
            self.counters["ipv4.frag.memory_full.drop"] += 1
            return None
        starts, pieces = datagram.starts, datagram.pieces
        i = bisect.bisect_left(starts, offset)
        if i < len(starts) and starts[i] == offset and pieces[i] == payload:
            self.counters["ipv4.frag.duplicate"] += 1
            return None
        if not more:
            if datagram.total is not None and datagram.total != end:
                self._discard(key, "ipv4.frag.inconsistent.drop")
                return None
            # every piece already held must end within the total
            if starts and starts[-1] + len(pieces[-1]) > end:
                self._discard(key, "ipv4.frag.inconsistent.drop")
                return None
            datagram.total = end
        elif datagram.total is not None and end > datagram.total:
            self._discard(key, "ipv4.frag.inconsistent.drop")
            return None
        # sorted and never overlapping, so only the neighbours can overlap the newcomer
        if (i > 0 and starts[i - 1] + len(pieces[i - 1]) > offset) or (i < len(starts) and starts[i] < end) \
                or (i < len(starts) and starts[i] == offset):
            self._discard(key, "ipv4.frag.overlap.drop")
            return None
        if len(starts) >= self.max_fragments:
            self._discard(key, "ipv4.frag.too_many.drop")
            return None
        starts.insert(i, offset)
        pieces.insert(i, payload)
        datagram.received += len(payload)
        self.held_bytes += len(payload)
        if datagram.total is None or datagram.received != datagram.total:
            self.counters["ipv4.frag.held"] += 1
            return None
        del self.buffers[key]
        self.held_bytes -= datagram.received
        self.counters["ipv4.frag.reassembled"] += 1
        return b"".join(pieces)

    def _discard(self, key: tuple[int, int, int, int], reason: str) -> None:
        self.counters[reason] += 1
        datagram = self.buffers.pop(key, None)
        if datagram is not None:
            self.held_bytes -= datagram.received

    def tick(self, now: float) -> None:
        for key, datagram in list(self.buffers.items()):
            if datagram.expires_at <= now:
                self._discard(key, "ipv4.frag.timeout.drop")
