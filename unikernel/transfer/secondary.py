"""The secondary role: zones pulled from a primary (RFC 5936 AXFR, RFC 1995
IXFR) and kept by the SOA's timers and by NOTIFY (RFC 1996).

:class:`SecondaryZone` is the state without I/O: the data last transferred,
and when to check again (``next_at``: the SOA's refresh after a success, its
retry after a failure, at once on NOTIFY) and when the data stops being
served (``expire_at``). An expired zone is answered SERVFAIL, never with
stale data; before the first transfer, too. :class:`SecondaryService` drives
it over the stack's TCP: IXFR when it has a version (dnspython's ``dns.xfr``
applies the differences, or a whole zone when the primary sends one), AXFR
otherwise; TSIG-signed with the key given; bounded in bytes, records and
time; the new version is swapped in only once it is whole.

``--secondary ZONE@ADDR[:PORT]`` (field ``secondary``) declares one.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.xfr
import dns.zone

from netstack.tcp.stream import open_connection
from unikernel import wire
from unikernel.config import ConfigError
from unikernel.process import Answer, Endpoint, single_in_question
from unikernel.sources.zone import AuthoritativeZone, Zones, zone_process

log = logging.getLogger("unikernel.transfer.secondary")

MAX_TRANSFER_BYTES = 64 * 1024 * 1024
MAX_TRANSFER_RECORDS = 1_000_000
# What a transferred record costs while it is held: as dnspython's zone (kept
# for the next IXFR) and in compact form (served), ~780 bytes measured, so a
# memory budget becomes a record bound (tests/unit/test_transfer.py holds it).
RECORD_BYTES = 1024


def records_within(budget: int, zones: int) -> int:
    """The record bound of each of `zones` secondary zones sharing `budget` bytes."""
    return max(1000, min(MAX_TRANSFER_RECORDS, budget // RECORD_BYTES // max(zones, 1)))
TRANSFER_TIMEOUT = 60.0        # seconds for a whole transfer
CONNECT_TIMEOUT = 5.0
FIRST_RETRY = 5.0              # before any SOA is known, retry this often


def parse_secondary(text: str) -> tuple[dns.name.Name, tuple[int, int]]:
    """``example.org@192.0.2.53[:PORT]`` -> (zone, (address, port))."""
    zone, _, primary = text.partition("@")
    address, _, port = primary.partition(":")
    try:
        origin = dns.name.from_text(zone).canonicalize()
        number = int(port) if port else 53
        if not zone or not 0 < number < 65536:
            raise ValueError("port out of range")
        return origin, (int(ipaddress.IPv4Address(address)), number)
    except (ValueError, dns.exception.DNSException) as e:
        raise ConfigError(f"secondary {text}: expected ZONE@ADDR[:PORT] ({e})") from None


@dataclass
class SecondaryZone:
    origin: dns.name.Name
    primary: tuple[int, int]
    data: dns.zone.Zone = field(init=False)
    served: AuthoritativeZone | None = None
    next_at: float = 0.0
    expire_at: float = 0.0
    expiry_noted: bool = False      # the expiry has been logged and kept answers forgotten

    def __post_init__(self) -> None:
        self.data = dns.zone.Zone(self.origin, relativize=False)

    @property
    def serial(self) -> int | None:
        return self.served.soa[0].serial if self.served is not None else None

    def expired(self, now: float) -> bool:
        return self.served is None or now >= self.expire_at

    def transferred(self, now: float, changed: bool) -> None:
        """A transfer (or a check that found us up to date) succeeded."""
        if changed or self.served is None:
            self.served = AuthoritativeZone(self.data)
        soa = self.served.soa[0]
        self.next_at = now + soa.refresh
        self.expire_at = now + soa.expire
        self.expiry_noted = False

    def failed(self, now: float) -> None:
        self.next_at = now + (self.served.soa[0].retry if self.served is not None else FIRST_RETRY)

    def notified(self, now: float) -> None:
        self.next_at = now


class SecondaryZones:
    """The secondary zones: their state, the process that answers from
    them, and the NOTIFY handler the server calls."""

    def __init__(self, secondaries: list[str], *, key: dns.tsig.Key | None, counters,
                 clock: Callable[[], float]) -> None:
        self.zones = {origin: SecondaryZone(origin, primary)
                      for origin, primary in (parse_secondary(text) for text in secondaries)}
        self.key = key
        self.keyring = {key.name: key} if key is not None else None
        self.counters = counters
        self.clock = clock
        self.table = Zones([])
        self._answer = zone_process(self.table)
        self.on_change: list[Callable[[], None]] = []
        self.wake = asyncio.Event()

    def rebuild(self) -> None:
        """Swaps in the zones as transferred (and forgets kept answers)."""
        self.table = Zones([z.served for z in self.zones.values() if z.served is not None])
        self._answer = zone_process(self.table)
        for callback in self.on_change:
            callback()

    async def process(self, *, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        question = single_in_question(query)
        if question is None:
            return None
        name = question.name.canonicalize()
        zone = next((z for origin, z in self.zones.items() if name.is_subdomain(origin)), None)
        if zone is None:
            return None
        if zone.expired(self.clock()):
            self.counters["secondary.expired.servfail"] += 1
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return Answer(response, final=True, static=False)
        # kept answers are forgotten when the zone changes or expires (SecondaryService)
        return await self._answer(src=src, dst=dst, query=query)

    def handle_notify(self, src_ip: int, payload: bytes) -> bytes | None:
        """A NOTIFY (opcode 4) for one of our zones: from its primary, signed
        when we have a key, it schedules a check now; others are refused.
        A response (QR set) is dropped: an answer is never answered (the
        server drops those before they get here; this keeps the handler whole
        on its own)."""
        if len(payload) < 12 or payload[2] & 0x80:
            self.counters["notify.in.response.drop"] += 1
            return None
        try:
            query = dns.message.from_wire(payload, keyring=self.keyring)
        except Exception:
            self.counters["notify.in.bad.refused"] += 1
            return _header_reply(payload, dns.rcode.REFUSED)
        zone = self.zones.get(query.question[0].name.canonicalize()) if len(query.question) == 1 else None
        if zone is None:
            self.counters["notify.in.notauth"] += 1
            return _reply(query, dns.rcode.NOTAUTH)
        if src_ip != zone.primary[0] or (self.key is not None and not query.had_tsig):
            self.counters["notify.in.refused"] += 1
            log.warning("NOTIFY for %s from %s refused (not its primary, or unsigned)", zone.origin,
                        ipaddress.IPv4Address(src_ip))
            return _reply(query, dns.rcode.REFUSED)
        self.counters["notify.in.accepted"] += 1
        zone.notified(self.clock())
        self.wake.set()
        return _reply(query, dns.rcode.NOERROR)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.set_rcode(rcode)
    return response.to_wire()


def _header_reply(payload: bytes, rcode: int) -> bytes | None:
    return wire.error_reply(payload, rcode)


class SecondaryService:
    """Keeps every secondary zone: one task that transfers what is due and
    sleeps until the next deadline (or a NOTIFY)."""

    def __init__(self, stack, zones: SecondaryZones, *, max_bytes: int = MAX_TRANSFER_BYTES,
                 max_records: int = MAX_TRANSFER_RECORDS, timeout: float = TRANSFER_TIMEOUT) -> None:
        self.stack = stack
        self.zones = zones
        self.max_bytes = max_bytes          # the bounds on one transfer, whatever the primary sends
        self.max_records = max_records
        self.timeout = timeout
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        zones = self.zones
        while True:
            for zone in zones.zones.values():
                if zone.next_at <= zones.clock():
                    await self.refresh(zone)
            now = zones.clock()
            deadline = min(min(z.next_at for z in zones.zones.values()),
                           min((z.expire_at for z in zones.zones.values() if z.served and z.expire_at > now),
                               default=float("inf")))
            zones.wake.clear()
            try:
                await asyncio.wait_for(zones.wake.wait(), max(deadline - now, 0.01))
            except TimeoutError:
                pass
            for zone in zones.zones.values():
                if zone.served is not None and zone.expired(zones.clock()) and not zone.expiry_noted:
                    zone.expiry_noted = True
                    zones.counters["secondary.expired"] += 1
                    log.warning("zone %s expired (serial %d): SERVFAIL until a transfer succeeds",
                                zone.origin, zone.serial)
                    zones.rebuild()     # forget the answers kept from it

    async def refresh(self, zone: SecondaryZone) -> None:
        counters = self.zones.counters
        before = zone.serial
        try:
            changed = await asyncio.wait_for(self._transfer(zone), self.timeout)
        except Exception as e:   # a primary down, refusing, or sending garbage: keep what we have
            counters["secondary.transfer.failed"] += 1
            zone.failed(self.zones.clock())
            log.warning("transfer of %s from %s:%d failed (%s: %s); serving serial %s until it expires",
                        zone.origin, ipaddress.IPv4Address(zone.primary[0]), zone.primary[1],
                        type(e).__name__, e, before)
            return
        was_expired = zone.expired(self.zones.clock())
        zone.transferred(self.zones.clock(), changed)
        if changed:
            counters["secondary.transfer.done"] += 1
            log.warning("zone %s: serial %s -> %d from %s (%d names)", zone.origin, before, zone.serial,
                        ipaddress.IPv4Address(zone.primary[0]), len(zone.data.nodes))
        if changed or was_expired:
            self.zones.rebuild()

    async def _transfer(self, zone: SecondaryZone) -> bool:
        """One IXFR (or AXFR) into ``zone.data``; True when a new version came."""
        key = self.zones.key
        query, serial = dns.xfr.make_query(zone.data, keyring={key.name: key} if key else None,
                                           keyname=key.name if key else None,
                                           keyalgorithm=key.algorithm if key else dns.tsig.default_algorithm)
        counters = self.zones.counters
        counters["secondary.ixfr.asked" if serial is not None else "secondary.axfr.asked"] += 1
        reader, writer = await open_connection(self.stack.tcp, zone.primary[0], zone.primary[1],
                                               timeout=CONNECT_TIMEOUT)
        try:
            request = query.to_wire()
            writer.write(len(request).to_bytes(2, "big") + request)
            received = records = 0
            tsig_ctx = None
            first = True
            is_ixfr = query.question[0].rdtype == dns.rdatatype.IXFR
            with dns.xfr.Inbound(zone.data, query.question[0].rdtype, serial) as inbound:
                done = False
                while not done:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    message = await reader.readexactly(length)
                    received += length + 2
                    if received > self.max_bytes:
                        counters["secondary.transfer.too_big"] += 1
                        raise dns.xfr.TransferError(dns.rcode.SERVFAIL)   # rolls the transaction back
                    reply = dns.message.from_wire(message, keyring=query.keyring, request_mac=query.mac, xfr=True,
                                                  origin=zone.data.from_wire_origin(), tsig_ctx=tsig_ctx, multi=True,
                                                  one_rr_per_rrset=is_ixfr)
                    if not query.is_response(reply, xfr_continuation=not first):
                        raise dns.xfr.TransferError(dns.rcode.FORMERR)
                    records += sum(len(r) for r in reply.answer)
                    if records > self.max_records:
                        counters["secondary.transfer.too_many_records"] += 1
                        raise dns.xfr.TransferError(dns.rcode.SERVFAIL)
                    first = False
                    done = inbound.process_message(reply)
                    tsig_ctx = reply.tsig_ctx
        except BaseException:
            # a transfer cut short (a bound, the deadline, garbage): reset,
            # so the primary stops sending into a window nobody reads
            writer.abort()
            raise
        writer.close()
        # a single SOA no newer than ours: up to date, nothing committed
        soa = zone.data.get_rdataset(zone.origin, dns.rdatatype.SOA)
        return soa is not None and soa[0].serial != serial
