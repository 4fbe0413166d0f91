"""TCP segments on the wire (RFC 9293 section 3.1): parse and build.

Two levels, as for the other protocols: ``TcpView`` is a view over a received
segment whose lengths were checked once (after ``TcpView.checked`` no accessor
can fail), and ``TcpSegment`` is the small value the state machine works with,
with ``parse`` and ``emit``. Parsing checks in one order: integrity (can the
header and options be read?), then the checksum over the IPv4 pseudo-header,
then sanity (values the protocol forbids). Every failure is a ``TcpError``
whose ``reason`` is the counter the layer increments before dropping.

Options understood: MSS (kind 2), window scale (kind 3, RFC 7323), and the
padding kinds 0/1. Others (SACK-permitted, timestamps, ...) are skipped by
their length, which is how RFC 9293 asks unknown options to be treated.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .. import checksum as cksum
from ..counters import DropError

PROTO_TCP = 6
MIN_HEADER_LEN = 20
MAX_WSCALE = 14  # RFC 7323 2.3: larger shifts are taken as 14

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

OPT_END = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3

_HEADER = struct.Struct("!HHIIBBHHH")


class TcpError(DropError):
    """A segment the TCP layer must drop."""


def flag_names(flags: int) -> str:
    """``"SA"``-style text, for reprs and test failure messages."""
    return "".join(c for bit, c in ((SYN, "S"), (ACK, "A"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U"))
                   if flags & bit) or "."


class TcpView:
    """A received segment, its header length checked against its size."""

    __slots__ = ("buf", "header_len")

    def __init__(self, buf: bytes, header_len: int) -> None:
        self.buf = buf
        self.header_len = header_len

    @classmethod
    def checked(cls, buf: bytes) -> TcpView:
        if len(buf) < MIN_HEADER_LEN:
            raise TcpError("tcp.truncated.drop")
        header_len = (buf[12] >> 4) * 4
        if header_len < MIN_HEADER_LEN:
            raise TcpError("tcp.bad_offset.drop")
        if header_len > len(buf):
            raise TcpError("tcp.truncated.drop")
        return cls(buf, header_len)

    @property
    def options(self) -> bytes:
        return bytes(self.buf[MIN_HEADER_LEN:self.header_len])

    @property
    def payload(self) -> bytes:
        return bytes(self.buf[self.header_len:])


def _parse_options(raw: bytes) -> tuple[int | None, int | None]:
    """(mss, wscale) from the option bytes; a malformed list is a TcpError."""
    mss = wscale = None
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise TcpError("tcp.bad_option.drop", "option length missing")
        length = raw[i + 1]
        if length < 2 or i + length > n:
            raise TcpError("tcp.bad_option.drop", f"option {kind} length {length}")
        if kind == OPT_MSS:
            if length != 4:
                raise TcpError("tcp.bad_option.drop", "MSS length")
            mss = (raw[i + 2] << 8) | raw[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise TcpError("tcp.bad_option.drop", "window scale length")
            wscale = min(raw[i + 2], MAX_WSCALE)
        i += length
    return mss, wscale


@dataclass(frozen=True, slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None      # only meaningful on SYN segments
    wscale: int | None = None   # only meaningful on SYN segments
    urgent: int = 0

    @property
    def seq_len(self) -> int:
        """Sequence space the segment occupies: its data, plus one for SYN and for FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    def __repr__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in (("mss", self.mss), ("ws", self.wscale)) if v is not None)
        return (f"<TCP {self.src_port}>{self.dst_port} [{flag_names(self.flags)}] seq={self.seq} "
                f"ack={self.ack} win={self.window} len={len(self.payload)}{extra}>")

    # -- parse -----------------------------------------------------------------
    @classmethod
    def parse(cls, src_ip: int, dst_ip: int, buf: bytes, *, verify_checksum: bool = True) -> TcpSegment:
        view = TcpView.checked(buf)
        if verify_checksum and not cksum.verify(buf, cksum.pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, len(buf))):
            raise TcpError("tcp.bad_checksum.drop")
        src_port, dst_port, seq, ack, _off, flags, window, _sum, urgent = _HEADER.unpack_from(buf)
        mss, wscale = _parse_options(view.options) if view.header_len > MIN_HEADER_LEN else (None, None)
        if src_port == 0 or dst_port == 0:
            raise TcpError("tcp.bad_port.drop")
        if flags & SYN and flags & (FIN | RST):
            raise TcpError("tcp.bad_flags.drop", "SYN with FIN or RST")
        return cls(src_port, dst_port, seq, ack, flags & 0x3F, window, view.payload, mss, wscale, urgent)

    # -- emit ------------------------------------------------------------------
    def options_bytes(self) -> bytes:
        opts = b""
        if self.mss is not None:
            opts += struct.pack("!BBH", OPT_MSS, 4, self.mss)
        if self.wscale is not None:
            opts += struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, self.wscale)
        return opts

    def emit(self, src_ip: int, dst_ip: int) -> bytes:
        """The segment's bytes, checksum filled in for src_ip -> dst_ip."""
        opts = self.options_bytes()
        header_len = MIN_HEADER_LEN + len(opts)
        head = _HEADER.pack(self.src_port, self.dst_port, self.seq & 0xFFFFFFFF, self.ack & 0xFFFFFFFF,
                            (header_len // 4) << 4, self.flags, self.window, 0, self.urgent)
        raw = bytearray(head + opts + self.payload)
        total = len(raw)
        value = cksum.checksum(raw, cksum.pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, total))
        raw[16] = value >> 8
        raw[17] = value & 0xFF
        return bytes(raw)
