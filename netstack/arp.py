"""ARP (RFC 826) for IPv4 over Ethernet: answer for our address, resolve next
hops, and keep a bounded cache.

No I/O: methods take the time and return what to send. Resolution keeps a
bounded queue of IP packets per unresolved next hop, retries the request, and
drops the queue (counted) when the next hop never answers. An entry still in
use near the end of its lifetime is refreshed by unicast requests to the MAC
it names (Linux's STALE -> DELAY -> PROBE), so a busy next hop, the gateway
above all, never lapses into a broadcast re-resolution with packets queued.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from .counters import Counters, DropError
from .ethernet import BROADCAST

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
class _Refresh:
    probes: int = 0
    probe_at: float = 0.0


@dataclass(slots=True)
class ArpInput:
    """What an incoming ARP packet calls for: a reply to send, and, when it
    resolved a next hop we were waiting for, the packets now ready for it."""
    reply: bytes | None = None
    resolved_ip: int | None = None
    resolved_mac: bytes | None = None
    released: list[bytes] = field(default_factory=list)


class Arp:
    def __init__(self, mac: bytes, ip: int, counters: Counters, *, gateway: int | None = None, cache_size: int = 512,
                 entry_lifetime: float = 120.0, max_pending: int = 64, queue_limit: int = 16,
                 retries: int = 3, retry_interval: float = 1.0, refresh_lead: float = 5.0) -> None:
        self.mac, self.ip, self.counters = mac, ip, counters
        # the gateway's MAC as last learned (kept past its entry's expiry): the
        # stack's spoof rule compares every datagram's source MAC with it
        self.gateway = gateway
        self.gateway_mac: bytes | None = None
        self.cache: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self.cache_size = cache_size
        self.entry_lifetime = entry_lifetime
        self.pending: dict[int, _Pending] = {}
        self.max_pending, self.queue_limit = max_pending, queue_limit
        self.retries, self.retry_interval = retries, retry_interval
        # entries in use whose lifetime ends within refresh_lead: probed by unicast
        self.refresh_lead = refresh_lead
        self.refreshing: dict[int, _Refresh] = {}

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
        mac, expires_at = entry
        if expires_at <= now:
            del self.cache[ip]
            self.refreshing.pop(ip, None)
            self.counters["arp.cache.expired"] += 1
            return None
        if expires_at - now < self.refresh_lead and ip not in self.refreshing:
            self.refreshing[ip] = _Refresh(0, now)   # the next tick probes it
        return mac

    def _learn(self, ip: int, mac: bytes, now: float) -> None:
        if ip in self.cache:
            self.cache.move_to_end(ip)
        elif len(self.cache) >= self.cache_size:
            self.cache.popitem(last=False)
            self.counters["arp.cache.evicted"] += 1
        self.cache[ip] = (mac, now + self.entry_lifetime)
        self.refreshing.pop(ip, None)
        if ip == self.gateway:
            self.gateway_mac = mac

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
            outcome.resolved_ip, outcome.resolved_mac = packet.sender_ip, packet.sender_mac
            outcome.released = self.pending.pop(packet.sender_ip).packets
            self.counters["arp.resolved"] += 1
        if packet.op == OP_REQUEST and for_us:
            outcome.reply = ArpPacket(OP_REPLY, self.mac, self.ip,
                                      packet.sender_mac, packet.sender_ip).emit()
            self.counters["arp.request.replied"] += 1
        elif not for_us and not waiting:
            self.counters["arp.not_for_us.drop"] += 1
        elif not waiting:
            self.counters["arp.reply.learned"] += 1   # a reply nobody awaited: RFC 826 learns it all the same
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

    def probe(self, now: float, ip: int) -> bytes | None:
        """Asks who holds `ip`, with nothing queued for it; returns the request
        to send, or None when it is known, already being asked or the pending
        table is full (the bound that keeps probes from becoming a flood)."""
        if ip in self.cache or ip in self.pending:
            return None
        if len(self.pending) >= self.max_pending:
            self.counters["arp.pending_full.drop"] += 1
            return None
        self.pending[ip] = _Pending([], 1, now + self.retry_interval)
        self.counters["arp.request.sent"] += 1
        return self.request(ip)

    def tick(self, now: float) -> list[tuple[bytes, bytes]]:
        """Retries due requests, gives up on next hops that never answered, and
        probes entries due for refresh. Returns (destination MAC, request) pairs."""
        requests = []
        for ip, refresh in list(self.refreshing.items()):
            entry = self.cache.get(ip)
            if entry is None or entry[1] <= now:
                del self.refreshing[ip]      # evicted, or lapsed unanswered: resolved afresh when next used
                continue
            if refresh.probes >= self.retries or refresh.probe_at > now:
                continue
            refresh.probes += 1
            refresh.probe_at = now + self.retry_interval
            # unicast on Ethernet, target hardware left zero, as Linux's arp_solicit sends it
            requests.append((entry[0], self.request(ip)))
            self.counters["arp.refresh.sent"] += 1
        for ip, pending in list(self.pending.items()):
            if pending.retry_at > now:
                continue
            if pending.attempts >= self.retries:
                del self.pending[ip]
                self.counters["arp.timeout.drop"] += len(pending.packets)
                continue
            pending.attempts += 1
            pending.retry_at = now + self.retry_interval
            requests.append((BROADCAST, self.request(ip)))
            self.counters["arp.request.sent"] += 1
        return requests
