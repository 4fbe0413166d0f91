"""ARP (RFC 826) for IPv4 over Ethernet: answer for our address, resolve next
hops, and keep a bounded cache.

No I/O: methods take the time and return what to send. Resolution keeps a
bounded queue of IP packets per unresolved next hop, retries the request, and
drops the queue (counted) when the next hop never answers.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from .counters import Counters, DropError

PACKET_LEN = 28
OP_REQUEST = 1
OP_REPLY = 2
_PACKET = struct.Struct("!HHBBH6sI6sI")
_ZERO_MAC = b"\0" * 6


class ArpError(DropError):
    """An ARP packet we cannot use (short, not Ethernet/IPv4, unknown op); all
    of them are counted under one reason."""

    def __init__(self, detail: str) -> None:
        super().__init__("arp.malformed.drop", detail)


@dataclass(frozen=True, slots=True)
class ArpPacket:
    op: int
    sender_mac: bytes
    sender_ip: int
    target_mac: bytes
    target_ip: int

    @classmethod
    def parse(cls, data: bytes) -> ArpPacket:
        if len(data) < PACKET_LEN:
            raise ArpError(f"{len(data)} bytes, an ARP packet needs {PACKET_LEN}")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _PACKET.unpack_from(data)
        if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
            raise ArpError("not Ethernet/IPv4 ARP")
        if op not in (OP_REQUEST, OP_REPLY):
            raise ArpError(f"unknown op {op}")
        if sha[0] & 1:
            raise ArpError("multicast sender address")
        return cls(op, sha, spa, tha, tpa)

    def emit(self) -> bytes:
        return _PACKET.pack(1, 0x0800, 6, 4, self.op, self.sender_mac, self.sender_ip,
                            self.target_mac, self.target_ip)


@dataclass(slots=True)
class _Pending:
    packets: list[bytes] = field(default_factory=list)
    attempts: int = 1
    retry_at: float = 0.0


@dataclass(slots=True)
class ArpInput:
    """What an incoming ARP packet calls for: a reply to send, and, when it
    resolved a next hop we were waiting for, the packets now ready for it."""
    reply: bytes | None = None
    resolved_mac: bytes | None = None
    released: list[bytes] = field(default_factory=list)


class Arp:
    def __init__(self, mac: bytes, ip: int, counters: Counters, *, cache_size: int = 512,
                 entry_lifetime: float = 120.0, max_pending: int = 64, queue_limit: int = 16,
                 retries: int = 3, retry_interval: float = 1.0) -> None:
        self.mac, self.ip, self.counters = mac, ip, counters
        self.cache: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self.cache_size = cache_size
        self.entry_lifetime = entry_lifetime
        self.pending: dict[int, _Pending] = {}
        self.max_pending, self.queue_limit = max_pending, queue_limit
        self.retries, self.retry_interval = retries, retry_interval

    # -- packets we make ------------------------------------------------------
    def request(self, target_ip: int) -> bytes:
        return ArpPacket(OP_REQUEST, self.mac, self.ip, _ZERO_MAC, target_ip).emit()

    def announcement(self) -> bytes:
        """A gratuitous ARP request (RFC 5227 announcement) for our address."""
        return ArpPacket(OP_REQUEST, self.mac, self.ip, _ZERO_MAC, self.ip).emit()

    # -- the cache --------------------------------------------------------------
    def lookup(self, ip: int, now: float) -> bytes | None:
        entry = self.cache.get(ip)
        if entry is None:
            return None
        if entry[1] <= now:
            del self.cache[ip]
            self.counters["arp.cache.expired"] += 1
            return None
        return entry[0]

    def _learn(self, ip: int, mac: bytes, now: float) -> None:
        if ip in self.cache:
            self.cache.move_to_end(ip)
        elif len(self.cache) >= self.cache_size:
            self.cache.popitem(last=False)
            self.counters["arp.cache.evicted"] += 1
        self.cache[ip] = (mac, now + self.entry_lifetime)

    # -- input --------------------------------------------------------------------
    def input(self, now: float, data: bytes) -> ArpInput:
        """Raises ArpError on a malformed packet (the stack counts and drops it)."""
        packet = ArpPacket.parse(data)
        outcome = ArpInput()
        if packet.sender_ip == self.ip and packet.sender_mac != self.mac:
            # Someone else claims our address; keep ours, but say so.
            self.counters["arp.address_conflict"] += 1
            return outcome
        for_us = packet.target_ip == self.ip
        waiting = packet.sender_ip in self.pending
        # RFC 826: update an entry we have; add one when the packet is for us.
        if packet.sender_ip and (for_us or waiting or packet.sender_ip in self.cache):
            self._learn(packet.sender_ip, packet.sender_mac, now)
        if waiting:
            outcome.resolved_mac = packet.sender_mac
            outcome.released = self.pending.pop(packet.sender_ip).packets
            self.counters["arp.resolved"] += 1
        if packet.op == OP_REQUEST and for_us:
            outcome.reply = ArpPacket(OP_REPLY, self.mac, self.ip,
                                      packet.sender_mac, packet.sender_ip).emit()
            self.counters["arp.request.replied"] += 1
        elif not for_us and not waiting:
            self.counters["arp.not_for_us.drop"] += 1
        return outcome

    # -- resolution -----------------------------------------------------------------
    def resolve(self, now: float, ip: int, packet: bytes) -> bytes | None:
        """Queue `packet` until `ip` answers; returns a request to send when this
        starts a new resolution."""
        pending = self.pending.get(ip)
        if pending is None:
            if len(self.pending) >= self.max_pending:
                self.counters["arp.pending_full.drop"] += 1
                return None
            self.pending[ip] = _Pending([packet], 1, now + self.retry_interval)
            self.counters["arp.request.sent"] += 1
            return self.request(ip)
        if len(pending.packets) >= self.queue_limit:
            self.counters["arp.queue_full.drop"] += 1
        else:
            pending.packets.append(packet)
        return None

    def tick(self, now: float) -> list[bytes]:
        """Retries due requests and gives up on next hops that never answered."""
        requests = []
        for ip, pending in list(self.pending.items()):
            if pending.retry_at > now:
                continue
            if pending.attempts >= self.retries:
                del self.pending[ip]
                self.counters["arp.timeout.drop"] += len(pending.packets)
                continue
            pending.attempts += 1
            pending.retry_at = now + self.retry_interval
            requests.append(self.request(ip))
            self.counters["arp.request.sent"] += 1
        return requests
