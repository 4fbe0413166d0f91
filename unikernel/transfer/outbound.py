"""Zone transfers out: AXFR (RFC 5936) and IXFR (RFC 1995) over TCP, TSIG
(RFC 8945) when a key is configured.

:class:`TransferServer` keeps, for every zone served, its records and a
journal of the differences between the versions loaded (each reload that
brings a new serial adds one), bounded in versions and in records; an IXFR
from a serial the journal reaches gets the differences, any other an AXFR
in IXFR's form (RFC 1995 4), a client already up to date the SOA alone.

Who may transfer: clients in ``allow`` (CIDRs; none by default), and, with a
key, only requests signed with it; the answer to a signed request is signed
message by message (RFC 8945 5.3.1). Every refusal has its answer and its
counter (``transfer.*``): REFUSED outside ``allow`` or unsigned when a key is
required, NOTAUTH for a bad or unknown key (unsigned, RFC 8945 5.2) and for a
zone we do not serve, FORMERR for what cannot be read.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.rrset
import dns.tsig

from unikernel import wire
from unikernel.sources.zone import AuthoritativeZone, Zones

log = logging.getLogger("unikernel.transfer")

Record = tuple[dns.name.Name, int, dns.rdata.Rdata]     # owner, TTL, RDATA

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA
TRANSFER_TYPES = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
MESSAGE_SIZE = 16384          # records per transfer message, in bytes (BIND's and NSD's order of size)
MAX_MESSAGE = 65535           # what TCP's two-byte length allows
TSIG_ROOM = 256               # kept free in each message for its TSIG record
FUDGE = 300                   # seconds of clock difference a TSIG may show (RFC 8945 10)
MAX_VERSIONS = 32             # differences kept per zone for IXFR
MAX_JOURNAL_RECORDS = 200_000  # and the records they hold, all together


def zone_records(zone: AuthoritativeZone) -> tuple[Record, tuple[Record, ...]]:
    """(the SOA, every other record) of a zone, its NSEC3 chain included, in
    the zone's own order: a secondary keeps RRsets in the order they come,
    and some answers (ANY) depend on it."""
    soa: Record | None = None
    records: list[Record] = []
    for name, rdataset in zone.records():
        for rdata in rdataset:
            if rdataset.rdtype == SOA:
                soa = (name, rdataset.ttl, rdata)
            else:
                records.append((name, rdataset.ttl, rdata))
    assert soa is not None, "a loaded zone has its SOA"
    return soa, tuple(records)


def serial_of(soa: Record) -> int:
    return soa[2].serial  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Change:
    """One step between two versions: RFC 1995's difference sequence."""

    old_soa: Record
    new_soa: Record
    deleted: tuple[Record, ...]
    added: tuple[Record, ...]

    @property
    def size(self) -> int:
        return len(self.deleted) + len(self.added)


class ZoneHistory:
    """A zone's current records and the journal of changes that led there."""

    def __init__(self, zone: AuthoritativeZone) -> None:
        self.soa, self.ordered = zone_records(zone)
        self.records = frozenset(self.ordered)
        self.changes: collections.deque[Change] = collections.deque()

    @property
    def serial(self) -> int:
        return serial_of(self.soa)

    def advance(self, zone: AuthoritativeZone) -> bool:
        """Takes the zone as loaded now; True when its serial is new."""
        soa, ordered = zone_records(zone)
        records = frozenset(ordered)
        if serial_of(soa) == self.serial:
            if records != self.records or soa != self.soa:
                # the content changed under the same serial: no secondary
                # would ask, and the journal no longer leads here
                log.warning("zone %s changed without a new serial (%d): secondaries keep the old data",
                            zone.origin, self.serial)
                self.changes.clear()
            self.soa, self.ordered, self.records = soa, ordered, records
            return False
        self.changes.append(Change(self.soa, soa, tuple(r for r in self.ordered if r not in records),
                                   tuple(r for r in ordered if r not in self.records)))
        self.soa, self.ordered, self.records = soa, ordered, records
        return True

    def trim(self, max_versions: int, budget: int) -> int:
        """Forgets the oldest changes beyond ``max_versions`` or ``budget``
        records; returns the records the journal still holds."""
        while len(self.changes) > max_versions or (self.changes and sum(c.size for c in self.changes) > budget):
            self.changes.popleft()
        return sum(c.size for c in self.changes)

    def changes_since(self, serial: int) -> list[Change] | None:
        """The changes from ``serial`` to now, or None when the journal does
        not reach back that far."""
        for start, change in enumerate(self.changes):
            if serial_of(change.old_soa) == serial:
                return list(self.changes)[start:]
        return None


class TransferServer:
    """Answers AXFR and IXFR requests (TCP) for the zones served."""

    def __init__(self, zones: Zones, *, allow: Iterable[str], key: dns.tsig.Key | None, counters,
                 max_versions: int = MAX_VERSIONS, max_journal_records: int = MAX_JOURNAL_RECORDS) -> None:
        self.allow = [ipaddress.IPv4Network(cidr, strict=False) for cidr in allow]
        self.key = key
        self.keyring = {key.name: key} if key is not None else None
        self.counters = counters
        self.max_versions = max_versions
        self.max_journal_records = max_journal_records
        self.histories: dict[dns.name.Name, ZoneHistory] = {
            origin: ZoneHistory(zone) for origin, zone in zones.by_origin.items()}

    def update(self, zones: Zones) -> list[AuthoritativeZone]:
        """The zones as reloaded; returns those whose serial is new (to NOTIFY)."""
        changed = []
        histories = {}
        for origin, zone in zones.by_origin.items():
            history = self.histories.get(origin)
            if history is None:
                history = ZoneHistory(zone)
                changed.append(zone)
            elif history.advance(zone):
                changed.append(zone)
            histories[origin] = history
        self.histories = histories
        budget = self.max_journal_records
        for history in histories.values():
            budget -= history.trim(self.max_versions, max(budget, 0))
        return changed

    @staticmethod
    def wants(payload: bytes) -> bool:
        """Is this a transfer request (a QUERY for AXFR or IXFR)?"""
        if len(payload) < wire.HEADER_SIZE or payload[2] & 0x80 or (payload[2] >> 3) & 0x0F != dns.opcode.QUERY:
            return False
        try:
            question = dns.message.from_wire(payload, question_only=True).question
        except Exception:
            return False
        return len(question) == 1 and question[0].rdtype in TRANSFER_TYPES

    def handle(self, src_ip: ipaddress.IPv4Address, payload: bytes) -> list[bytes]:
        """The messages answering one transfer request, in order."""
        counters = self.counters
        try:
            query = dns.message.from_wire(payload, keyring=self.keyring)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature, dns.tsig.BadTime, dns.tsig.BadAlgorithm,
                dns.tsig.PeerError) as e:
            counters["transfer.tsig.bad"] += 1
            log.warning("transfer request from %s: bad TSIG (%s)", src_ip, type(e).__name__)
            return _error(payload, dns.rcode.NOTAUTH)
        except Exception:
            counters["transfer.formerr"] += 1
            return _error(payload, dns.rcode.FORMERR)
        question = query.question[0]
        if not any(src_ip in network for network in self.allow):
            counters["transfer.refused.not_allowed"] += 1
            return _error(payload, dns.rcode.REFUSED)
        if self.key is not None and not query.had_tsig:
            counters["transfer.refused.unsigned"] += 1
            return _error(payload, dns.rcode.REFUSED)
        history = self.histories.get(question.name.canonicalize()) if question.rdclass == IN else None
        if history is None:
            counters["transfer.notauth"] += 1
            return _error(payload, dns.rcode.NOTAUTH)
        if question.rdtype == dns.rdatatype.AXFR:
            counters["transfer.axfr"] += 1
            log.info("AXFR of %s (serial %d) to %s", question.name, history.serial, src_ip)
            return self._messages(query, self._axfr(history))
        return self._messages(query, self._ixfr(query, history, src_ip))

    def _axfr(self, history: ZoneHistory) -> Iterator[Record]:
        yield history.soa
        yield from history.ordered
        yield history.soa

    def _ixfr(self, query: dns.message.Message, history: ZoneHistory,
              src_ip: ipaddress.IPv4Address) -> Iterator[Record]:
        theirs = [r for r in query.authority if r.rdtype == SOA]
        if not theirs:
            self.counters["transfer.ixfr.no_soa"] += 1      # BIND and NSD read it as AXFR too
            yield from self._axfr(history)
            return
        serial = theirs[0][0].serial
        if not _serial_before(serial, history.serial):
            self.counters["transfer.ixfr.up_to_date"] += 1
            yield history.soa
            return
        changes = history.changes_since(serial)
        if changes is None:
            self.counters["transfer.ixfr.as_axfr"] += 1
            log.info("IXFR of %s from serial %d to %s: not in the journal, whole zone", history.soa[0], serial, src_ip)
            yield from self._axfr(history)
            return
        self.counters["transfer.ixfr"] += 1
        log.info("IXFR of %s from serial %d to %d (%d changes) to %s", history.soa[0], serial, history.serial,
                 len(changes), src_ip)
        yield history.soa
        for change in changes:
            yield change.old_soa
            yield from change.deleted
            yield change.new_soa
            yield from change.added
        yield history.soa

    def _messages(self, query: dns.message.Message, records: Iterable[Record]) -> list[bytes]:
        """Packs records into messages of at most MESSAGE_SIZE bytes, the
        question in the first one only, each signed when the request was."""
        messages: list[bytes] = []
        ctx = None
        renderer = self._renderer(query, first=True)
        for name, ttl, rdata in records:
            rrset = dns.rrset.from_rdata(name, ttl, rdata)
            try:
                renderer.add_rrset(dns.renderer.ANSWER, rrset)
            except dns.exception.TooBig:
                if renderer.counts[dns.renderer.ANSWER]:
                    ctx = self._finish(query, renderer, ctx, messages)
                    renderer = self._renderer(query, first=False)
                try:
                    renderer.add_rrset(dns.renderer.ANSWER, rrset)
                except dns.exception.TooBig:
                    # a record bigger than our message size starts a message as big as it needs
                    renderer = self._renderer(query, first=not messages, size=MAX_MESSAGE - TSIG_ROOM)
                    renderer.add_rrset(dns.renderer.ANSWER, rrset)
        self._finish(query, renderer, ctx, messages)
        return messages

    def _renderer(self, query: dns.message.Message, first: bool, size: int = MESSAGE_SIZE) -> dns.renderer.Renderer:
        renderer = dns.renderer.Renderer(query.id, dns.flags.QR | dns.flags.AA, size + TSIG_ROOM)
        renderer.reserve(TSIG_ROOM)
        if first:
            question = query.question[0]
            renderer.add_question(question.name, question.rdtype, question.rdclass)
        return renderer

    def _finish(self, query: dns.message.Message, renderer: dns.renderer.Renderer, ctx, messages: list[bytes]):
        renderer.release_reserved()
        renderer.write_header()
        if query.had_tsig and self.key is not None:
            ctx = renderer.add_multi_tsig(ctx, self.key.name, self.key, FUDGE, query.id, 0, b"", query.mac,
                                          self.key.algorithm)
        messages.append(renderer.get_wire())
        return ctx


def _serial_before(a: int, b: int) -> bool:
    """RFC 1982: is serial ``a`` before ``b``?"""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def _error(payload: bytes, rcode: int) -> list[bytes]:
    reply = wire.error_reply(payload, rcode)
    return [reply] if reply is not None else []
