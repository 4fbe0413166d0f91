"""Names on the link, asked by multicast DNS: the one-shot querier of RFC 6762
section 5.1, as an RFC 8766 discovery proxy uses it, so that a plain unicast
client (dig, a phone without mDNS, a container) finds ``printer.local``.

For a question under ``local.`` (or under the unicast domain mapped onto it,
RFC 8766's ``lan.example.`` -> ``local.``), and for the reverse name of an
address on the link's own subnet (RFC 6762 4), the appliance sends one query
to 224.0.0.251:5353 from a port other than 5353 with IP TTL 255, and waits:

- responses are taken only from the link (RFC 6762 11): source on our
  subnet, source port 5353, no error rcode. Unicast replies (RFC 6762 6.7)
  must come to our random query port with our query's ID and question;
  responses to 224.0.0.251:5353 (some responders send those too,
  python-zeroconf among them) are matched by the names they carry, so they
  must also have IP TTL 255 (a router would have lowered it). Unicast
  replies are not held to TTL 255 because python-zeroconf sends them at 64;
- only records that answer the question are kept, plus, for PTR and SRV
  answers, the SRV, TXT and address records of the names they point to: no
  other name is cached or answered, so a responder cannot plant one;
- the first answer ends an A/AAAA/PTR question about a name; a service
  browse (a PTR question for ``_service._proto``) collects BROWSE_WINDOW
  longer for other responders; an NSEC for the name without the type is a
  NODATA at once; nobody within TIMEOUT: NXDOMAIN (NODATA when the name was
  seen with other types). A reverse name nobody claims goes on down the chain
  (the RFC 6303 empty zone, or the forwarder for a public subnet);
- answers lose the cache-flush bit and have their TTLs capped at MAX_TTL: a
  unicast cache never hears mDNS goodbyes; they are kept that long (negative
  outcomes NEGATIVE_TTL: the link is not asked the same question more than
  once a second, RFC 6762 5.2);
- identical questions in flight are asked once; known-answer lists and
  duplicate suppression are for continuous queriers, not needed here.

Only clients that may use the forwarder (``allowed``) get answers about
``local.``; others get REFUSED, so the link's devices are not shown to the
world. Bounds: questions in flight, queries sent per second, records per
answer, cache entries, packet size and record counts; each overflow and drop
has an ``mdns.*`` counter. Answers are final (``local.`` never goes upstream)
and not static (the link changes).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from unikernel.process import UNANSWERED_QTYPES, Answer, Endpoint, Process, single_in_question

log = logging.getLogger("unikernel.sources.mdns")

MDNS_GROUP = 0xE00000FB            # 224.0.0.251
MDNS_PORT = 5353
LINK_TTL = 255                     # IP TTL of every mDNS packet, ours and theirs
LOCAL = dns.name.from_text("local.")
IN_ADDR_ARPA = dns.name.from_text("in-addr.arpa.")

TIMEOUT = 1.0                      # nobody answered: NXDOMAIN
BROWSE_WINDOW = 0.25               # after the first answer to a service browse
MAX_TTL = 10                       # seconds, for answers and the cache
NEGATIVE_TTL = 1.0
MAX_PACKET = 9000                  # RFC 6762 17
MAX_PACKET_RECORDS = 256           # questions + records a response may declare
MAX_ANSWER_RECORDS = 32            # records kept for one question
MAX_IN_FLIGHT = 128
MAX_CACHE = 1024
QUERY_RATE, QUERY_BURST = 20.0, 20  # multicast queries we send per second

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_FLAG_QR = 0x8000
_CACHE_FLUSH = 0x8000
_NAME_TYPES = {dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS, dns.rdatatype.DNAME}
_SERVICE_DATA = (dns.rdatatype.SRV, dns.rdatatype.TXT, dns.rdatatype.A, dns.rdatatype.AAAA)


class MdnsFormatError(ValueError):
    """A packet that cannot be read; it is counted and dropped whole."""


# -- reading responses -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Record:
    name: dns.name.Name
    rdtype: int
    ttl: int
    rdata: Any                  # a dns.rdata.Rdata (PTR's and SRV's have .target)


@dataclass(slots=True)
class Packet:
    ident: int
    flags: int
    questions: list[tuple[dns.name.Name, int]]
    records: list[Record]          # every section: responders differ in where they put what
    unreadable: int = 0            # records framed right whose rdata dnspython cannot read


def _read_name(wire: bytes, offset: int) -> tuple[dns.name.Name, int]:
    """A possibly compressed name at ``offset``; returns it and the offset
    after it. Pointers must point backwards, so there are no loops."""
    labels: list[bytes] = []
    length_so_far = 1
    after: int | None = None
    pos = offset
    while True:
        if pos >= len(wire):
            raise MdnsFormatError("name runs past the end")
        length = wire[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(wire):
                raise MdnsFormatError("pointer runs past the end")
            target = (length & 0x3F) << 8 | wire[pos + 1]
            if after is None:
                after = pos + 2
            if target >= pos:
                raise MdnsFormatError("compression pointer does not point backwards")
            pos = target
            continue
        if length & 0xC0:
            raise MdnsFormatError("extended label type")
        if length == 0:
            break
        length_so_far += length + 1
        if length_so_far > 255 or pos + 1 + length > len(wire):
            raise MdnsFormatError("name too long or runs past the end")
        labels.append(wire[pos + 1:pos + 1 + length])
        pos += 1 + length
    return dns.name.Name([*labels, b""]), (pos + 1 if after is None else after)


def _uncompressed_rdata(wire: bytes, rdtype: int, start: int, end: int) -> bytes:
    """The rdata with any names in it written out, so dnspython can read it
    (mDNS compresses names inside SRV and even NSEC rdata, RFC 6762 18.14)."""
    if rdtype in _NAME_TYPES or rdtype == dns.rdatatype.NSEC:
        name, after = _read_name(wire, start)
        if after > end:
            raise MdnsFormatError("name runs past the rdata")
        return cast(bytes, name.to_wire()) + (wire[after:end] if rdtype == dns.rdatatype.NSEC else b"")
    if rdtype in (dns.rdatatype.SRV, dns.rdatatype.MX):
        fixed = 6 if rdtype == dns.rdatatype.SRV else 2
        name, after = _read_name(wire, start + fixed)
        if after > end:
            raise MdnsFormatError("name runs past the rdata")
        return wire[start:start + fixed] + cast(bytes, name.to_wire())
    return wire[start:end]


def parse(wire: bytes) -> Packet:
    """Reads a whole mDNS message; raises MdnsFormatError for anything wrong."""
    if len(wire) > MAX_PACKET:
        raise MdnsFormatError("larger than an mDNS packet may be")
    if len(wire) < _HEADER.size:
        raise MdnsFormatError("shorter than a header")
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if qdcount + ancount + nscount + arcount > MAX_PACKET_RECORDS:
        raise MdnsFormatError("more records than any response needs")
    pos = _HEADER.size
    questions = []
    for _ in range(qdcount):
        name, pos = _read_name(wire, pos)
        if pos + 4 > len(wire):
            raise MdnsFormatError("question runs past the end")
        qtype, _qclass = struct.unpack_from("!HH", wire, pos)
        pos += 4
        questions.append((name, qtype))
    records = []
    unreadable = 0
    for _ in range(ancount + nscount + arcount):
        name, pos = _read_name(wire, pos)
        if pos + _RR.size > len(wire):
            raise MdnsFormatError("record runs past the end")
        rdtype, rdclass, ttl, rdlength = _RR.unpack_from(wire, pos)
        pos += _RR.size
        end = pos + rdlength
        if end > len(wire):
            raise MdnsFormatError("rdata runs past the end")
        if rdclass & ~_CACHE_FLUSH == dns.rdataclass.IN and rdtype != dns.rdatatype.OPT:
            rdata_wire = _uncompressed_rdata(wire, rdtype, pos, end)
            if rdtype == dns.rdatatype.TXT and not rdata_wire:
                rdata_wire = b"\0"       # RFC 6763 6.1: no strings means one empty one (zeroconf sends these)
            try:
                records.append(Record(name, rdtype, ttl, dns.rdata.from_wire(
                    dns.rdataclass.IN, rdtype, rdata_wire, 0, len(rdata_wire))))
            except (dns.exception.DNSException, ValueError, IndexError):
                unreadable += 1          # its length was right, so the records after it still are
        pos = end
    return Packet(ident, flags, questions, records, unreadable)


def _nsec_denies(rdata, rdtype: int) -> bool:
    """True when an NSEC record's type bitmap leaves ``rdtype`` out."""
    window, low = divmod(rdtype, 256)
    for w, bitmap in rdata.windows:
        if w == window:
            return not (len(bitmap) > low // 8 and bitmap[low // 8] & (0x80 >> (low % 8)))
    return True


# -- asking the link ---------------------------------------------------------------------

@dataclass(slots=True)
class Outcome:
    rcode: dns.rcode.Rcode
    records: list[Record]          # answers first, then what they point to
    answer_count: int


@dataclass(eq=False)
class _Lookup:
    name: dns.name.Name            # the question as asked on the link (under local. or in-addr.arpa.)
    rdtype: int
    ident: int
    deadline: float
    future: asyncio.Future
    browse: bool
    settle_at: float | None = None
    answers: dict[tuple, Record] = field(default_factory=dict)
    related: dict[tuple, Record] = field(default_factory=dict)
    name_seen: bool = False


def _is_browse(name: dns.name.Name, rdtype: int) -> bool:
    """A PTR question for a service type (``_http._tcp.local``), which
    every responder offering the service answers."""
    return rdtype == dns.rdatatype.PTR and bool(name.labels) and name.labels[0].startswith(b"_")


def check_domain(text: str) -> dns.name.Name:
    """The unicast domain to map onto ``local.``; ValueError when it cannot be one."""
    try:
        domain = dns.name.from_text(text)
    except (dns.exception.DNSException, ValueError) as e:
        raise ValueError(f"mdns-domain {text!r}: {e}") from None
    if domain == dns.name.root or domain.is_subdomain(LOCAL) or domain.is_subdomain(IN_ADDR_ARPA):
        raise ValueError(f"mdns-domain {text}: must be a unicast domain, not the root, local. or in-addr.arpa.")
    return domain


class MdnsQuerier:
    """The mDNS source: ``querier.process`` is a Process; ``start`` binds
    its ports and joins 224.0.0.251, ``close`` undoes it.

    ``udp`` is the stack's UDP layer; ``join``/``leave`` the stack's group
    membership; ``allowed(ip)`` says who may have answers; ``domain`` is the
    unicast domain mapped onto ``local.`` (or None); ``clock`` gives the time.
    """

    def __init__(self, udp, *, interface: ipaddress.IPv4Interface, allowed: Callable[[int], bool],
                 join: Callable[[int], None], leave: Callable[[int], None], counters,
                 clock: Callable[[], float], rng: random.Random | None = None,
                 domain: str | None = None, recursion_available: bool = False,
                 max_cache: int = MAX_CACHE, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.udp = udp
        self._net, self._mask = int(interface.network.network_address), int(interface.netmask)
        self._own = int(interface.ip)
        self.allowed = allowed
        self._join, self._leave = join, leave
        self.counters = counters
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.domain = check_domain(domain) if domain else None
        self.recursion_available = recursion_available
        self.max_cache, self.max_in_flight = max_cache, max_in_flight
        self.cache: OrderedDict[tuple[dns.name.Name, int], tuple[float, Outcome]] = OrderedDict()
        self._in_flight: dict[tuple[dns.name.Name, int], _Lookup] = {}
        self._by_ident: dict[int, _Lookup] = {}
        self._tokens = float(QUERY_BURST)
        self._tokens_at: float | None = None
        self.port: int | None = None
        self._listening = False
        self._timer: asyncio.TimerHandle | None = None

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        self.port = self.udp.bind_ephemeral_with_ttl(self._on_reply)
        try:
            self.udp.bind_with_ttl(MDNS_PORT, self._on_multicast)
            self._join(MDNS_GROUP)
            self._listening = True
        except OSError as e:      # port 5353 taken: unicast replies still come to our port
            log.warning("mDNS: not listening on 224.0.0.251:5353 (%s); unicast replies only", e)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.port is not None:
            self.udp.unbind(self.port)
        if self._listening:
            self.udp.unbind(MDNS_PORT)
            self._leave(MDNS_GROUP)
        for lookup in self._in_flight.values():
            if not lookup.future.done():
                lookup.future.cancel()

    # -- the process -------------------------------------------------------------
    def link_name(self, name: dns.name.Name) -> dns.name.Name | None:
        """The name to ask the link for ``name``, or None when it is not ours
        (the apexes themselves are not: no device is called ``local.``)."""
        if name == LOCAL or name == self.domain:
            return None
        if name.is_subdomain(LOCAL):
            return name
        if self.domain is not None and name.is_subdomain(self.domain):
            return name.relativize(self.domain).derelativize(LOCAL)
        if name.is_subdomain(IN_ADDR_ARPA) and len(name.labels) == 7:
            try:
                address = int(ipaddress.IPv4Address(".".join(x.decode() for x in reversed(name.labels[:4]))))
            except (ValueError, UnicodeDecodeError):
                return None
            if address & self._mask == self._net and address != self._own:
                return name
        return None

    def not_kept(self, process: Process) -> Process:
        """``process`` (the special-use names) with its answers about names
        this source asks the link for made not static: a reverse name that
        nobody claimed may be claimed next minute, so the empty zone's answer
        for it must not be kept on the server's fast path."""
        async def unkept(*, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
            answer = await process(src=src, dst=dst, query=query)
            q = single_in_question(query)
            if answer is not None and answer.static and q is not None and self.link_name(q.name.canonicalize()):
                answer.static = False
            return answer
        return unkept

    async def process(self, *, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        q = single_in_question(query)
        if q is None or q.rdtype in UNANSWERED_QTYPES:
            return None
        asked = q.name.canonicalize()
        name = self.link_name(asked)
        if name is None:
            return None
        reverse = not name.is_subdomain(LOCAL)
        if not self.allowed(int(src[0])):
            if reverse:
                return None            # the empty reverse zone answers, showing nothing
            self.counters["mdns.refused"] += 1
            return self._answer(query, Outcome(dns.rcode.REFUSED, [], 0), asked)
        outcome = await self.lookup(name, q.rdtype)
        if reverse and not outcome.records:
            return None
        return self._answer(query, outcome, asked)

    async def lookup(self, name: dns.name.Name, rdtype: int) -> Outcome:
        now = self.clock()
        key = (name, rdtype)
        cached = self.cache.get(key)
        if cached is not None:
            expires, outcome = cached
            if expires > now:
                self.cache.move_to_end(key)
                self.counters["mdns.cache.hit"] += 1
                return self._aged(outcome, expires - now)
            del self.cache[key]
        lookup = self._in_flight.get(key)
        if lookup is not None:
            self.counters["mdns.query.merged"] += 1
        else:
            if len(self._in_flight) >= self.max_in_flight:
                self.counters["mdns.in_flight_full.drop"] += 1
                return Outcome(dns.rcode.SERVFAIL, [], 0)
            if not self._may_send(now):
                self.counters["mdns.query.rate_limited.drop"] += 1
                return Outcome(dns.rcode.SERVFAIL, [], 0)
            lookup = self._ask(now, name, rdtype)
        expires, outcome = await asyncio.shield(lookup.future)
        return self._aged(outcome, expires - self.clock())

    def _may_send(self, now: float) -> bool:
        if self._tokens_at is not None:
            self._tokens = min(QUERY_BURST, self._tokens + (now - self._tokens_at) * QUERY_RATE)
        self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _ask(self, now: float, name: dns.name.Name, rdtype: int) -> _Lookup:
        ident = self.rng.randrange(1, 65536)
        while ident in self._by_ident:
            ident = self.rng.randrange(1, 65536)
        loop = asyncio.get_running_loop()
        lookup = _Lookup(name, rdtype, ident, now + TIMEOUT, loop.create_future(), _is_browse(name, rdtype))
        self._in_flight[(name, rdtype)] = lookup
        self._by_ident[ident] = lookup
        # RD clear, no QU bit (RFC 6762 5.4): from a port other than 5353, the
        # responders answer by unicast (6.7), and some by multicast as well
        wire = _HEADER.pack(ident, 0, 1, 0, 0, 0) + cast(bytes, name.to_wire()) + struct.pack("!HH", rdtype, 1)
        self.udp.sendto(wire, self.port, MDNS_GROUP, MDNS_PORT, ttl=LINK_TTL)
        self.counters["mdns.query.sent"] += 1
        self._wake_at(loop, lookup.deadline)
        return lookup

    def _wake_at(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """One timer, for the earliest thing due; it runs tick with our clock."""
        if self._timer is not None and self._timer.when() <= loop.time() + (when - self.clock()):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(max(0.0, when - self.clock()) + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.tick(self.clock())
        due = [t for lookup in self._in_flight.values()
               for t in (lookup.deadline, lookup.settle_at) if t is not None]
        if due:
            self._wake_at(asyncio.get_running_loop(), min(due))

    def tick(self, now: float) -> None:
        """Ends the questions whose time is up."""
        for lookup in list(self._in_flight.values()):
            if lookup.settle_at is not None and lookup.settle_at <= now or lookup.deadline <= now:
                self._finish(now, lookup)

    # -- what comes back ---------------------------------------------------------
    def _on_link(self, src: int, ttl: int, *, matched_by_name: bool) -> bool:
        """RFC 6762 11. The source must be on our subnet. What comes to
        5353 is matched by name alone, so it must also show that no router
        forwarded it (TTL 255). A unicast reply to our query port must match
        a random port, ID and question, and python-zeroconf sends those with
        its socket's default TTL (64), so for them the subnet is the test
        (RFC 6762 11's own test for unicast responses); the TTL is counted."""
        if src & self._mask != self._net:
            self.counters["mdns.reply.off_link.drop"] += 1
            return False
        if ttl != LINK_TTL:
            if matched_by_name:
                self.counters["mdns.reply.ttl.drop"] += 1
                return False
            self.counters["mdns.reply.unicast.ttl_below_255"] += 1
        return True

    def _read(self, data: bytes, src: int, src_port: int, ttl: int, *, matched_by_name: bool) -> Packet | None:
        if not self._on_link(src, ttl, matched_by_name=matched_by_name):
            return None
        if src_port != MDNS_PORT:
            self.counters["mdns.reply.bad_port.drop"] += 1
            return None
        if len(data) > 2 and not data[2] & _FLAG_QR >> 8:     # others' queries: not worth parsing
            self.counters["mdns.query_seen.ignored"] += 1
            return None
        try:
            packet = parse(data)
        except MdnsFormatError:
            self.counters["mdns.reply.malformed.drop"] += 1
            return None
        if packet.unreadable:
            self.counters["mdns.record.unreadable.drop"] += packet.unreadable
        if packet.flags & 0x780F:      # opcode or rcode not zero: ignored (RFC 6762 18.3, 18.11)
            self.counters["mdns.reply.bad_opcode_rcode.drop"] += 1
            return None
        return packet

    def _on_reply(self, data: bytes, src: int, src_port: int, dst: int, dst_port: int, ttl: int) -> None:
        """A unicast reply to our query port (RFC 6762 6.7)."""
        packet = self._read(data, src, src_port, ttl, matched_by_name=False)
        if packet is None:
            return
        lookup = self._by_ident.get(packet.ident)
        if lookup is None:
            self.counters["mdns.reply.unknown_id.drop"] += 1
            return
        if packet.questions and packet.questions[0] != (lookup.name, lookup.rdtype):
            self.counters["mdns.reply.wrong_question.drop"] += 1
            return
        self.counters["mdns.reply.unicast"] += 1
        self._offer(self.clock(), lookup, packet.records)

    def _on_multicast(self, data: bytes, src: int, src_port: int, dst: int, dst_port: int, ttl: int) -> None:
        """Anything to 224.0.0.251:5353: responses matched by the names they answer."""
        if not self._in_flight:
            self.counters["mdns.multicast.unasked.ignored"] += 1
            return
        packet = self._read(data, src, src_port, ttl, matched_by_name=True)
        if packet is None:
            return
        names = {record.name for record in packet.records}
        lookups = [lookup for lookup in self._in_flight.values() if lookup.name in names]
        if not lookups:
            self.counters["mdns.multicast.unasked.ignored"] += 1
            return
        self.counters["mdns.reply.multicast"] += 1
        now = self.clock()
        for lookup in lookups:
            self._offer(now, lookup, packet.records)

    def _offer(self, now: float, lookup: _Lookup, records: list[Record]) -> None:
        """Keeps what answers the lookup's question, and the records that its
        PTR and SRV answers point to; ends it when that is enough."""
        denied = False
        for record in records:
            if record.name != lookup.name:
                continue
            lookup.name_seen = True
            if record.rdtype == dns.rdatatype.NSEC and lookup.rdtype != dns.rdatatype.NSEC:
                denied = denied or _nsec_denies(record.rdata, lookup.rdtype)
            elif record.ttl and lookup.rdtype in (record.rdtype, dns.rdatatype.ANY):
                self._keep(lookup, lookup.answers, record)
        targets = {r.rdata.target for r in lookup.answers.values()
                   if r.rdtype in (dns.rdatatype.PTR, dns.rdatatype.SRV)}
        for _ in range(2):         # instance -> SRV/TXT -> host -> A/AAAA
            found = set()
            for record in records:
                if record.name in targets and record.rdtype in _SERVICE_DATA and record.ttl:
                    self._keep(lookup, lookup.related, record)
                    if record.rdtype == dns.rdatatype.SRV:
                        found.add(record.rdata.target)
            targets = found
        if lookup.answers and not lookup.browse:
            self._finish(now, lookup)
        elif lookup.answers and lookup.settle_at is None:
            lookup.settle_at = now + BROWSE_WINDOW
            self._wake_at(asyncio.get_running_loop(), lookup.settle_at)
        elif denied and not lookup.answers:
            self._finish(now, lookup)

    def _keep(self, lookup: _Lookup, table: dict, record: Record) -> None:
        key = (record.name, record.rdtype, record.rdata)
        if key in lookup.answers or key in lookup.related:
            return
        if len(lookup.answers) + len(lookup.related) >= MAX_ANSWER_RECORDS:
            self.counters["mdns.answer.records_full.drop"] += 1
            return
        table[key] = Record(record.name, record.rdtype, min(record.ttl, MAX_TTL), record.rdata)

    def _finish(self, now: float, lookup: _Lookup) -> None:
        self._in_flight.pop((lookup.name, lookup.rdtype), None)
        self._by_ident.pop(lookup.ident, None)
        if lookup.answers:
            records = [*lookup.answers.values(), *lookup.related.values()]
            outcome = Outcome(dns.rcode.NOERROR, records, len(lookup.answers))
            expires = now + min(r.ttl for r in records)
            self.counters["mdns.answered"] += 1
        else:
            outcome = Outcome(dns.rcode.NOERROR if lookup.name_seen else dns.rcode.NXDOMAIN, [], 0)
            expires = now + NEGATIVE_TTL
            self.counters["mdns.nodata" if lookup.name_seen else "mdns.nxdomain"] += 1
        self._remember((lookup.name, lookup.rdtype), expires, outcome)
        if not lookup.future.done():
            lookup.future.set_result((expires, outcome))

    def _remember(self, key: tuple[dns.name.Name, int], expires: float, outcome: Outcome) -> None:
        self.cache[key] = (expires, outcome)
        self.cache.move_to_end(key)
        while len(self.cache) > self.max_cache:
            self.cache.popitem(last=False)
            self.counters["mdns.cache.evicted"] += 1

    @staticmethod
    def _aged(outcome: Outcome, remaining: float) -> Outcome:
        left = max(1, int(remaining + 0.999))
        return Outcome(outcome.rcode, [Record(r.name, r.rdtype, min(r.ttl, left), r.rdata) for r in outcome.records],
                       outcome.answer_count)

    # -- the unicast answer --------------------------------------------------------
    def _to_client(self, name: dns.name.Name) -> dns.name.Name:
        """A link name as the client knows it: under the mapped domain when it asked there."""
        if self.domain is not None and name.is_subdomain(LOCAL):
            return name.relativize(LOCAL).derelativize(self.domain)
        return name

    def _answer(self, query: dns.message.Message, outcome: Outcome, asked: dns.name.Name) -> Answer:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.recursion_available:
            response.flags |= dns.flags.RA
        response.set_rcode(outcome.rcode)
        q = query.question[0]
        mapped = self.domain is not None and asked.is_subdomain(self.domain)
        rename = self._to_client if mapped else (lambda n: n)
        sections: dict[tuple, dns.rrset.RRset] = {}
        for i, record in enumerate(outcome.records):
            owner = q.name if i < outcome.answer_count else rename(record.name)
            rdata = record.rdata
            if mapped and record.rdtype in (dns.rdatatype.PTR, dns.rdatatype.SRV):
                rdata = rdata.replace(target=rename(rdata.target))
            key = (i < outcome.answer_count, owner, record.rdtype)
            rrset = sections.get(key)
            if rrset is None:
                rrset = sections[key] = dns.rrset.RRset(owner, dns.rdataclass.IN,
                                                        dns.rdatatype.RdataType.make(record.rdtype))
                (response.answer if key[0] else response.additional).append(rrset)
            rrset.add(rdata, record.ttl)
        if outcome.rcode == dns.rcode.NXDOMAIN or (outcome.rcode == dns.rcode.NOERROR and not outcome.records):
            apex = self.domain if mapped and self.domain is not None else LOCAL
            response.authority.append(dns.rrset.from_text(
                apex, MAX_TTL, "IN", "SOA", f"{apex} nobody.invalid. 1 3600 1200 604800 {MAX_TTL}"))
        return Answer(response, final=True)
