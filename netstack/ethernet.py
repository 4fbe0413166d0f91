"""Ethernet II framing: a 14-byte header, destination, source, EtherType."""
from __future__ import annotations

import struct
from typing import Final

# Final: inlined by mypyc where they are read (see ipv4.py)
HEADER_LEN: Final = 14
BROADCAST = b"\xff" * 6
TYPE_IPV4: Final = 0x0800
TYPE_ARP: Final = 0x0806

_HEADER = struct.Struct("!6s6sH")


def header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return _HEADER.pack(dst, src, ethertype)


def mac_from_str(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or any(not 1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"{text!r} is not six hex octets like 02:00:00:00:00:01")
    try:
        mac = bytes([int(p, 16) for p in parts])
    except ValueError:
        raise ValueError(f"{text!r} is not six hex octets like 02:00:00:00:00:01") from None
    if mac[0] & 1:
        raise ValueError(f"{text} is a multicast address, not usable as a station address")
    return mac


def stable_mac(ipv4: int) -> bytes:
    """A locally administered unicast MAC derived from our address, so the same
    configuration keeps the same MAC across restarts (peers' ARP caches stay right)."""
    return b"\x02\x00" + ipv4.to_bytes(4, "big")


def multicast_mac(group: int) -> bytes:
    """The MAC an IPv4 multicast group is sent to (RFC 1112 6.4): 01:00:5e
    and the group's low 23 bits."""
    return b"\x01\x00\x5e" + (group & 0x7FFFFF).to_bytes(3, "big")
