"""The forwarder's cache: positive and negative answers, TTLs that count down.

What is kept (RFC 2308, RFC 8767, RFC 9520):

- positive answers for as long as their smallest TTL, each TTL clamped into
  ``[min_ttl, max_ttl]``;
- negative answers (NXDOMAIN, and NODATA: NOERROR with an empty answer) for
  min(SOA TTL, SOA MINIMUM), capped by ``negative_max_ttl``; a negative answer
  without a SOA is not cached (RFC 2308 section 5);
- SERVFAIL for ``servfail_ttl`` seconds only (RFC 9520: briefly, at least 1 s);
- with ``serve_stale``, expired answers are kept for ``max_stale`` seconds so
  the forwarder can give them (with TTL ``stale_ttl``, RFC 8767) when no
  upstream answers.

At most ``max_entries`` entries and ``max_bytes`` of memory (an estimate:
a fixed part, the answer's wire form, and each rendered fast-path variant);
the least recently used goes first. A large
answer (over TCP an upstream may give 64 KB) thus takes the room of many small
ones, so a client asking for big answers cannot fill the appliance's memory.

Only the answer RRsets on the question's chain are kept (the name, then each
CNAME target, and DNAMEs above them): an upstream's answer section holding
anything else is what a poisoner sends, and it is not relayed.

The clock is injected: every method that needs the time takes ``now`` (the
forwarder passes its clock's reading), so tests move time by hand.

Fast path. The server looks answers up by the key that ``unikernel/wire.py``
documents: the question as on the wire, name lowercased (labels + type +
class), followed by one byte of EDNS flags: 0 no OPT, 1 OPT, 3 OPT with DO.
:meth:`Cache.fast_lookup` returns a callable ``(key, src_ip, now) ->
CachedAnswer | None`` that gives a complete answer (ID 0, lowercase question;
the server patches ID, RD and letter case) with every TTL counted down, as a
``wire.KeptAnswer``: the server serves it as it serves its static answers,
and the stack patches the checksum from its kept sum. Each variant an entry
has served (one per EDNS form of the query) sits in a table of its own under
the fast-path key itself, so a hit is one dict probe, and, once a second, a
few ``pack_into`` calls that move the TTLs and the sum together.
Answers with and without DO are different entries (DO changes what an
upstream sends); with and without OPT share one entry.

Compact entries. Once stored, an entry keeps its records only as that wire
form (the answer without OPT, TTLs as stored: also what the fast path's
variant for queries without EDNS is cut from) and its question as the key's bytes; dnspython's
RRsets are parsed again from it on the rare slow-path uses (a stale answer,
a copy without DNSSEC records, an EDNS variant rendered the first time).
dnspython's objects cost several times the wire's size, so a cache of
100,000 answers kept them as most of its memory.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.rrset

from netstack.counters import Counters
from unikernel import wire as wire_mod

KIND_POSITIVE = "positive"
KIND_NEGATIVE = "negative"
KIND_SERVFAIL = "servfail"
SECURITY_SECURE, SECURITY_INSECURE, SECURITY_BOGUS, SECURITY_UNCHECKED = "secure", "insecure", "bogus", "unchecked"
OUR_PAYLOAD = 1232             # the EDNS payload size our answers advertise
MAX_BYTES = 32 * 1024 * 1024   # the cache's memory budget (see _cost)
# What an entry costs: a fixed part (the entry, its key, its place in the
# table), its wire form, and for each variant the fast path has served
# (CachedAnswer) its object and sum (VARIANT_OVERHEAD), its copy of the
# answer and its TTL fields. Measured with tracemalloc over 20,000 cached A
# answers, each asked once with EDNS: 913 bytes an entry (767 when the
# variant was a counted-down copy of the answer and nothing else), charged 1,130.
ENTRY_OVERHEAD = 768
VARIANT_OVERHEAD = 240

# an entry's answer, authority and additional RRsets
Sections = tuple[list[dns.rrset.RRset], list[dns.rrset.RRset], list[dns.rrset.RRset]]

_SECTIONS = (dns.renderer.ANSWER, dns.renderer.AUTHORITY, dns.renderer.ADDITIONAL)
_OPCODE_BITS = 0x7800
_TTL = struct.Struct("!I")
_QTYPE_CLASS = struct.Struct("!HH")
_TTL_FIELD = struct.Struct("!HI")
# CNAME targets followed in an upstream's answer: more than any resolver
# follows itself (Unbound restarts a query at most 11 times, BIND 11 too)
MAX_CHAIN = 16


def question_key(qname: dns.name.Name, rdtype: int, rdclass: int) -> bytes:
    """The question as on the wire with the name lowercased: the fast-path key
    without its final EDNS byte. (Written here from the labels: what
    ``qname.canonicalize().to_wire()`` gives, at a third of its cost, for
    the absolute names questions have.)"""
    return b"".join([bytes((len(label),)) + label.lower() for label in qname.labels]) + _QTYPE_CLASS.pack(
        rdtype, rdclass)


def entry_key(qkey: bytes, do: bool, cd: bool = False) -> bytes:
    """Where an entry lives: the question, then 2 for DO and 0 without, plus
    4 for data relayed unvalidated to a CD query (never on the fast path,
    whose keys end in 0 or 2)."""
    return qkey + bytes(((2 if do else 0) | (4 if cd else 0),))


class CachedAnswer(wire_mod.KeptAnswer):
    """One EDNS variant of an entry as the fast path serves it: a
    wire.KeptAnswer (so the server patches it and the stack its checksum as
    for a static answer) whose TTL fields count down. :meth:`age` rewrites
    them for the seconds since the entry was stored, and the kept sum with
    them (RFC 1624: each rewritten field's change times its weight, so no
    hit sums the answer). A 32-bit field at an odd offset has an odd number
    of bytes after it in the padded answer, so its weight is 256, else 1
    (0x10000 is 1 mod 0xFFFF)."""

    __slots__ = ("entry_key", "stored_at", "ttl", "ttl_fields", "elapsed")

    def __init__(self, answer: bytes, entry: Entry, with_do: bool) -> None:
        super().__init__(answer, len(entry.key) + wire_mod.HEADER_SIZE - 5, with_do)
        # the entry's, shared (not a reference to the entry: no cycle to collect)
        self.entry_key, self.stored_at, self.ttl = entry.key, entry.stored_at, entry.ttl
        # (offset, ttl as stored), packed as _TTL_FIELD, one a record
        self.ttl_fields = b"".join(_TTL_FIELD.pack(*field) for field in ttl_fields(answer))
        self.elapsed = 0

    def age(self, elapsed: int) -> None:
        """Every TTL as stored less ``elapsed`` (0 at the least), in the
        answer and in its sum."""
        tail = bytearray(self.tail)
        change = 0
        for offset, ttl in _TTL_FIELD.iter_unpack(self.ttl_fields):
            left = ttl - elapsed if ttl > elapsed else 0
            at = offset - 4                          # the tail starts after ID and flags
            change += (left - _TTL.unpack_from(tail, at)[0]) * (256 if offset & 1 else 1)   # its weight
            _TTL.pack_into(tail, at, left)
        self.tail = bytes(tail)
        self.tail_sum = (self.tail_sum + change) % 0xFFFF
        self.elapsed = elapsed


class Entry:
    """One answer. Made with dnspython's RRsets (the forwarder may still
    change them); :meth:`compact` turns them into ``wire``, after which the
    sections are parsed from it on each read."""

    __slots__ = ("kind", "rcode", "_sections", "_qname", "wire", "stored_at", "ttl", "key", "rendered", "cost",
                 "refresh_failed_at", "security", "ede")

    def __init__(self, kind: str, rcode: dns.rcode.Rcode, answer: list[dns.rrset.RRset],
                 authority: list[dns.rrset.RRset], additional: list[dns.rrset.RRset], stored_at: float, ttl: int,
                 question: tuple[dns.name.Name, int, int], do: bool, *, security: str = SECURITY_UNCHECKED,
                 ede: tuple[int, str] | None = None, cd: bool = False) -> None:
        self.kind = kind
        self.rcode = rcode
        self._sections: tuple[list[dns.rrset.RRset], ...] | None = (answer, authority, additional)
        self._qname: dns.name.Name | None = question[0]     # until compact, for its question
        self.wire: bytes | None = None          # once compact: the answer without OPT (see _render)
        self.stored_at = stored_at
        self.ttl = ttl
        # where the entry lives (entry_key): the same bytes are the table's key
        self.key = entry_key(question_key(*question), do, cd)
        # the fast path's variants, by the key's EDNS byte (0, 1 or 3)
        self.rendered: list[CachedAnswer | None] = [None, None, None, None]
        self.cost = 0                           # bytes charged to the cache's budget
        self.refresh_failed_at: float | None = None   # serve-stale: when a refresh last got nothing
        # DNSSEC: "secure" (answered with AD), "insecure", "bogus" (a SERVFAIL
        # with ``ede``, an RFC 8914 (code, text)), "unchecked" (not validated:
        # validation off, or relayed for CD, then ``cd`` is set)
        self.security = security
        self.ede = ede

    @property
    def question(self) -> tuple[dns.name.Name, int, int]:
        qname, used = dns.name.from_wire(self.key, 0)
        rdtype, rdclass = struct.unpack_from("!HH", self.key, used)
        return qname, rdtype, rdclass

    @property
    def do(self) -> bool:
        return bool(self.key[-1] & 2)

    @property
    def cd(self) -> bool:
        return bool(self.key[-1] & 4)

    @cd.setter
    def cd(self, cd: bool) -> None:
        self.key = entry_key(self.key[:-1], self.do, cd)

    def sections(self) -> Sections:
        """Answer, authority and additional: parsed again from the wire once compact."""
        if self._sections is not None:
            answer, authority, additional = self._sections
        else:
            assert self.wire is not None
            answer, authority, additional = dns.message.from_wire(self.wire).sections[1:]
        return answer, authority, additional

    def fresh(self) -> tuple[Entry, Sections]:
        """The entry and its records as made, read before :meth:`Cache.store`
        compacts them: what the miss that made the entry is answered from
        (:meth:`Cache.response`'s ``sections``)."""
        return self, self.sections()

    def _set_section(self, index: int, rrsets: list[dns.rrset.RRset]) -> None:
        """Changes a section (the forwarder's, before it stores the entry):
        the entry is made of RRsets again, its renderings forgotten."""
        sections = list(self.sections())
        sections[index] = rrsets
        self._sections, self.wire = tuple(sections), None
        self.rendered = [None, None, None, None]

    answer = property(lambda self: self.sections()[0], lambda self, rrsets: self._set_section(0, rrsets))
    authority = property(lambda self: self.sections()[1], lambda self, rrsets: self._set_section(1, rrsets))
    additional = property(lambda self: self.sections()[2], lambda self, rrsets: self._set_section(2, rrsets))

    def compact(self) -> bool:
        """Renders the records into ``wire`` and drops the RRsets; False when
        they cannot be rendered (then the entry keeps them and is not stored)."""
        if self.wire is not None:
            return True
        # what Message.to_wire renders (a message of ID 0 with the lowercase
        # question and these sections), without making the message
        flags = dns.flags.QR | dns.flags.RA | (self.rcode & 0x0F)
        if self.security == SECURITY_SECURE:
            flags |= dns.flags.AD              # the server's patch keeps it for queries with AD or DO only
        rdtype, rdclass = struct.unpack_from("!HH", self.key, len(self.key) - 5)
        qname = self._qname.canonicalize() if self._qname is not None else self.question[0]
        renderer = dns.renderer.Renderer(0, flags, 65535)
        try:
            renderer.add_question(qname, rdtype, rdclass)
            for section, rrsets in zip(_SECTIONS, self.sections()):
                for rrset in rrsets:
                    renderer.add_rrset(section, rrset)
        except Exception:  # noqa: BLE001 - dnspython raises several kinds for what does not fit
            return False
        renderer.write_header()
        self.wire = renderer.get_wire()
        self._sections = self._qname = None
        return True

    @property
    def expires_at(self) -> float:
        return self.stored_at + self.ttl

    def remaining(self, now: float) -> int:
        """Whole seconds left; <= 0 once expired."""
        return self.ttl - int(now - self.stored_at)


class Cache:
    def __init__(self, *, max_entries: int = 10000, max_bytes: int = MAX_BYTES, min_ttl: int = 0,
                 max_ttl: int = 86400, negative_max_ttl: int = 3600, servfail_ttl: int = 2,
                 serve_stale: bool = False, stale_ttl: int = 30, max_stale: int = 86400, counters=None) -> None:
        if max_entries < 1:
            raise ValueError("cache needs room for at least one entry")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0                      # the sum of the kept entries' costs
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_max_ttl = negative_max_ttl
        self.servfail_ttl = servfail_ttl
        self.serve_stale = serve_stale
        self.stale_ttl = stale_ttl
        self.max_stale = max_stale
        self.counters = counters if counters is not None else Counters()
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        # the entries' rendered variants, by fast-path key (the question and
        # the EDNS byte 0, 1 or 3): a hit is one probe of this
        self._fast: dict[bytes, CachedAnswer] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forgets every entry (a reload changed what may be answered: a name
        now blocked must not be served from here)."""
        self._entries.clear()
        self._fast.clear()
        self.size = 0
        self.counters["cache.cleared"] += 1

    # -- storing ------------------------------------------------------------
    def entry_from_reply(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool,
                         reply: dns.message.Message, now: float) -> Entry | None:
        """What an upstream reply means for the cache: an Entry (its TTL may be
        0: usable for this answer, not worth keeping), or None when the reply
        is not cacheable (SERVFAIL, REFUSED, a referral, a negative answer
        without SOA...)."""
        rcode = reply.rcode()
        answer = [self._clamped(r) for r in on_chain(qname, rdtype, reply.answer)]
        authority = [self._clamped(r) for r in reply.authority]
        additional = [self._clamped(r) for r in reply.additional
                      if r.rdtype != dns.rdatatype.OPT]
        question = (qname.canonicalize(), rdtype, rdclass)
        if rcode == dns.rcode.NOERROR and answer and _has_data(answer, rdtype):
            ttl = min(r.ttl for r in (*answer, *authority, *additional))
            return Entry(KIND_POSITIVE, rcode, answer, authority, additional, now, ttl, question, do)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        soa = next((r for r in reply.authority if r.rdtype == dns.rdatatype.SOA), None)
        if soa is None:
            return None        # RFC 2308 section 5: no SOA, no negative caching
        negative_ttl = min(soa.ttl, soa[0].minimum, self.negative_max_ttl)
        negative_ttl = max(negative_ttl, min(self.min_ttl, self.negative_max_ttl))
        authority = [with_ttl(r, min(r.ttl, negative_ttl)) for r in authority]
        # a CNAME chain ending in NXDOMAIN or NODATA is part of the answer (RFC 2308 2.1, 2.2)
        answer = [with_ttl(r, min(r.ttl, negative_ttl)) for r in answer]
        ttl = min(r.ttl for r in authority)
        return Entry(KIND_NEGATIVE, rcode, answer, authority, [], now, ttl, question, do)

    def servfail_entry(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool, now: float) -> Entry:
        return Entry(KIND_SERVFAIL, dns.rcode.SERVFAIL, [], [], [], now, self.servfail_ttl,
                     (qname.canonicalize(), rdtype, rdclass), do)

    def bogus_entry(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool, now: float, ttl: int,
                    ede: tuple[int, str]) -> Entry:
        """A failed DNSSEC check, kept ``ttl`` seconds (Unbound's val-bogus-ttl)
        so that a broken zone is not validated again for every query."""
        return Entry(KIND_SERVFAIL, dns.rcode.SERVFAIL, [], [], [], now, ttl,
                     (qname.canonicalize(), rdtype, rdclass), do, security=SECURITY_BOGUS, ede=ede)

    def store(self, entry: Entry) -> bool:
        """Keeps the entry if it lives at least a second; a SERVFAIL never
        replaces an answer that serve-stale could still give."""
        if entry.ttl <= 0:
            self.counters["cache.store.ttl0"] += 1
            return False
        key = entry.key
        old = self._entries.get(key)
        if (entry.kind == KIND_SERVFAIL and old is not None and old.kind != KIND_SERVFAIL
                and self.serve_stale and self._stale_usable(old, entry.stored_at)):
            self.counters["cache.store.servfail_kept_stale"] += 1
            return False
        if not entry.compact():
            self.counters["cache.store.unrenderable"] += 1     # answered, never kept
            return False
        entry.cost = _cost(entry)
        if entry.cost > self.max_bytes // 4:
            self.counters["cache.store.too_big"] += 1     # answered, never kept
            return False
        if old is not None:
            self._remove(key)
        self._entries[key] = entry
        self.size += entry.cost
        self.counters[f"cache.store.{entry.kind}"] += 1
        self._trim()
        return True

    def _remove(self, key: bytes) -> None:
        self._forget(self._entries.pop(key))

    def _forget(self, entry: Entry) -> None:
        """What a removed entry leaves: its cost, its variants on the fast path."""
        self.size -= entry.cost
        for flags, rendered in enumerate(entry.rendered):
            if rendered is not None:
                self._fast.pop(entry.key[:-1] + bytes((flags,)), None)

    def _trim(self) -> None:
        """Evicts the least recently used until both bounds hold."""
        while self._entries and (len(self._entries) > self.max_entries or self.size > self.max_bytes):
            _, evicted = self._entries.popitem(last=False)
            self._forget(evicted)
            self.counters["cache.evict"] += 1

    # -- looking up ---------------------------------------------------------
    def get(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool, now: float, *,
            cd: bool = False) -> Entry | None:
        """A live entry, or None. Expired entries are dropped unless serve-stale
        may still need them. ``cd``: the unvalidated data kept for CD queries."""
        key = entry_key(question_key(qname, rdtype, rdclass), do, cd)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.remaining(now) > 0:
            self._entries.move_to_end(key)
            return entry
        if not (self.serve_stale and entry.kind != KIND_SERVFAIL and self._stale_usable(entry, now)):
            self._remove(key)
        return None

    def get_stale(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool, now: float, *,
                  cd: bool = False) -> Entry | None:
        """An expired positive or negative entry still inside ``max_stale``
        (only with serve_stale)."""
        if not self.serve_stale:
            return None
        entry = self._entries.get(entry_key(question_key(qname, rdtype, rdclass), do, cd))
        if entry is None or entry.kind == KIND_SERVFAIL or not self._stale_usable(entry, now):
            return None
        return entry

    def forget_under(self, names: Iterable[dns.name.Name]) -> int:
        """Drops every entry for a name at or below one of ``names`` (zones
        that now answer those names themselves); returns how many."""
        apexes = [name.canonicalize() for name in names]
        shadowed = [key for key, entry in self._entries.items()     # the names parsed: a reload's work
                    if any(entry.question[0].is_subdomain(apex) for apex in apexes)]
        for key in shadowed:
            self._remove(key)
        self.counters["cache.flushed"] += len(shadowed)
        return len(shadowed)

    def _stale_usable(self, entry: Entry, now: float) -> bool:
        return now < entry.expires_at + self.max_stale

    # -- answers ------------------------------------------------------------
    def response(self, query: dns.message.Message, entry: Entry, now: float, *,
                 stale: bool = False, sections: Sections | None = None) -> dns.message.Message:
        """The answer to ``query`` from ``entry``: question as asked, RA set, AA
        clear, every TTL counted down (``stale_ttl`` when serving stale).
        ``sections``: the entry's records as made (:meth:`Entry.fresh`), so
        that the miss that made the entry is answered without parsing its
        compact form again."""
        response = reply_to(query)
        response.flags |= dns.flags.RA
        response.set_rcode(entry.rcode)
        elapsed = int(now - entry.stored_at)

        def aged(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
            ttl = self.stale_ttl if stale else max(rrset.ttl - elapsed, 0)
            # an entry's RRsets are never changed once made (owners lowercased
            # by with_ttl), so one whose TTL stands is answered as it is
            return rrset if ttl == rrset.ttl else with_ttl(rrset, ttl)

        answer, authority, additional = sections if sections is not None else entry.sections()
        response.answer = [aged(r) for r in answer]
        response.authority = [aged(r) for r in authority]
        response.additional = [aged(r) for r in additional]
        # RFC 6840 5.7: AD for a validated answer when the client set DO or AD
        if entry.security == SECURITY_SECURE and (query.flags & dns.flags.AD or
                                                  (query.edns >= 0 and query.ednsflags & dns.flags.DO)):
            response.flags |= dns.flags.AD
        else:
            response.flags &= ~dns.flags.AD
        if entry.ede is not None and query.edns >= 0:
            response.use_edns(0, query.ednsflags & dns.flags.DO, OUR_PAYLOAD, options=[_ede(entry.ede)])
        return response

    def fast_lookup(self, allowed: Callable[[int], bool]) -> Callable[[bytes, int, float], CachedAnswer | None]:
        """The server's hot-path hook: ``(key, src_ip, now) -> CachedAnswer |
        None``, only for clients that ``allowed(src_ip)`` and only for live
        entries, its TTLs counted down to ``now``."""
        fast = self._fast
        move_to_end = self._entries.move_to_end
        counters = self.counters
        hits = counters.tally("cache.fast.hit")      # a plain integer (netstack.counters)

        def lookup(key: bytes, src_ip: int, now: float) -> CachedAnswer | None:
            cached = fast.get(key)
            if cached is None:
                cached = self._variant(key)
                if cached is None:
                    return None
            if not allowed(src_ip):
                counters["cache.fast.refused"] += 1
                return None
            elapsed = int(now - cached.stored_at)
            if elapsed >= cached.ttl:
                return None            # expired: the slow path refreshes it (or serves it stale)
            hits.count += 1
            move_to_end(cached.entry_key)       # a hit keeps the entry from LRU eviction
            if elapsed != cached.elapsed:
                cached.age(elapsed)
            return cached

        return lookup

    def _variant(self, key: bytes) -> CachedAnswer | None:
        """The fast path's variant for ``key`` rendered the first time it is
        asked for, when its entry is there and no DNSSEC failure (a CD query
        must get the data: the slow path tells them apart)."""
        flags = key[-1]
        entry = self._entries.get(key[:-1] + (b"\x02" if flags == wire_mod.EDNS_DO else b"\x00"))
        if entry is None or entry.security == SECURITY_BOGUS:
            return None
        return self._render(entry, flags)

    def _render(self, entry: Entry, flags: int) -> CachedAnswer | None:
        """The entry as an answer for one EDNS variant (ID 0, RD clear, RA
        set, question lowercase), kept on the fast path. Without EDNS that is
        the entry's own wire; with it, the wire parsed again and rendered with
        an OPT."""
        if not entry.compact():
            self.counters["cache.render.failed"] += 1
            return None
        assert entry.wire is not None
        wire = entry.wire
        if flags:
            message = dns.message.from_wire(wire)
            options: list[dns.edns.Option] = [_ede(entry.ede)] if entry.ede is not None else []
            message.use_edns(0, dns.flags.DO if flags == wire_mod.EDNS_DO else 0, OUR_PAYLOAD, options=options)
            try:
                wire = message.to_wire()
            except Exception:  # noqa: BLE001 - an entry that cannot be rendered is just not served fast
                self.counters["cache.render.failed"] += 1
                return None
        rendered = CachedAnswer(wire, entry, flags == wire_mod.EDNS_DO)
        entry.rendered[flags] = rendered
        grown = _variant_cost(rendered)
        entry.cost += grown
        key = entry.key
        if self._entries.get(key) is entry:
            self._fast[key[:-1] + bytes((flags,))] = rendered
            self.size += grown
            self._entries.move_to_end(key)     # not the one to evict for its own growth
            self._trim()
        return rendered

    def _clamped(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        return with_ttl(rrset, max(self.min_ttl, min(self.max_ttl, rrset.ttl)))


def reply_to(query: dns.message.Message) -> dns.message.QueryMessage:
    """A response to ``query``: its ID, opcode, RD and question, QR set, no
    OPT. What the server needs of a process's message (it sets RD and CD
    again, and renders the OPT from the query: serve/render.py), at a
    tenth of ``dns.message.make_response``'s cost, which also builds an
    OPT record and copies what a TSIG needs (the server signs itself)."""
    response = dns.message.QueryMessage(id=query.id)
    response.flags = dns.flags.Flag(dns.flags.QR | (query.flags & (dns.flags.RD | _OPCODE_BITS)))
    response.question = list(query.question)
    return response


def _ede(ede: tuple[int, str]) -> dns.edns.EDEOption:
    code, text = ede
    return dns.edns.EDEOption(dns.edns.EDECode.make(code), text or None)


def name_key(name: dns.name.Name) -> tuple[bytes, ...]:
    """A name as its lowercased labels, the root's empty one last: what the
    relay's tables are keyed by. dnspython's Name hashes itself letter by
    letter in Python and makes a new Name for each parent or lowercased
    copy; a tuple of bytes hashes in C, and its ancestors are its suffixes
    (``key[i:]``), a subdomain test a slice (:func:`key_inside`)."""
    return tuple(map(bytes.lower, name.labels))


def key_inside(key: tuple[bytes, ...], zones: Iterable[tuple[bytes, ...]]) -> bool:
    """Whether the name ``key`` is at or below one of ``zones`` (name keys)."""
    return any(key[len(key) - len(zone):] == zone for zone in zones if len(zone) <= len(key))


def on_chain(qname: dns.name.Name, rdtype: int, answer: list[dns.rrset.RRset],
             counters=None) -> list[dns.rrset.RRset]:
    """The RRsets of an answer section that the question leads to, in their
    order: those owned by the name or a CNAME target reached from it (RRSIGs
    included), and DNAMEs (with their RRSIGs) owned by an ancestor of one.

    The work is linear in the RRsets (each owner is read once, then looked up
    by name), and at most MAX_CHAIN targets are followed: an upstream's answer
    of 64 KB cannot make this quadratic. A chain cut there is counted
    (``forward.chain_too_long``) when ``counters`` are given."""
    by_owner: dict[tuple[bytes, ...], list[int]] = {}
    dnames: dict[tuple[bytes, ...], list[int]] = {}
    for index, rrset in enumerate(answer):
        owner = name_key(rrset.name)
        by_owner.setdefault(owner, []).append(index)
        if dns.rdatatype.DNAME in (rrset.rdtype, rrset.covers):
            dnames.setdefault(owner, []).append(index)
    first = name_key(qname)
    names, queue = {first}, [first]
    kept: set[int] = set()
    while queue:                       # a chain may be given in any order
        name = queue.pop()
        for index in by_owner.get(name, ()):
            kept.add(index)
            rrset = answer[index]
            if rrset.rdtype == dns.rdatatype.CNAME and rdtype != dns.rdatatype.CNAME:
                for rdata in rrset:
                    target = name_key(rdata.target)
                    if target in names:
                        continue
                    if len(names) > MAX_CHAIN:
                        if counters is not None:
                            counters["forward.chain_too_long"] += 1
                        continue
                    names.add(target)
                    queue.append(target)
        if dnames:
            for cut in range(1, len(name)):          # every ancestor, the root included
                kept.update(dnames.get(name[cut:], ()))
    return [rrset for index, rrset in enumerate(answer) if index in kept]


def _has_data(answer: list[dns.rrset.RRset], rdtype: int) -> bool:
    """Whether a chain holds what was asked: else it is NODATA behind a CNAME
    (RFC 2308 section 2.2), cached as a negative answer."""
    if rdtype in (dns.rdatatype.CNAME, dns.rdatatype.ANY, dns.rdatatype.RRSIG):
        return True
    return any(rrset.rdtype == rdtype for rrset in answer)


def _cost(entry: Entry) -> int:
    """What a compact entry is charged against the cache's byte budget: its
    wire, and each variant (_variant_cost)."""
    assert entry.wire is not None
    return ENTRY_OVERHEAD + len(entry.wire) + sum(_variant_cost(r) for r in entry.rendered if r is not None)


def _variant_cost(rendered: CachedAnswer) -> int:
    """A variant's own copy of its answer (tail and name), its TTL fields and
    its object (VARIANT_OVERHEAD)."""
    return VARIANT_OVERHEAD + rendered.size + len(rendered.ttl_fields)


def with_ttl(rrset: dns.rrset.RRset, ttl: int) -> dns.rrset.RRset:
    """A copy of ``rrset`` with ``ttl`` and its owner name lowercased (so the
    0x20 case pattern of an upstream query never shows in answers)."""
    # a shallow copy: the rdatas are immutable, and copying the set's dict
    # hashes none of them (a new RRset updated from this one hashes each, by
    # its wire form: four times the cost)
    copy = rrset.copy()
    copy.name = rrset.name.canonicalize()
    copy.ttl = ttl
    return copy


def ttl_fields(wire: bytes) -> list[tuple[int, int]]:
    """(offset, value) of the TTL field of every resource record in a DNS
    message, OPT excluded (its "TTL" holds EDNS flags)."""
    qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", wire, 4)
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(wire, offset) + 4
    fields = []
    for _ in range(ancount + nscount + arcount):
        offset = _skip_name(wire, offset)
        rdtype, _rdclass, ttl, rdlength = struct.unpack_from("!HHIH", wire, offset)
        if rdtype != dns.rdatatype.OPT:
            fields.append((offset + 4, ttl))
        offset += 10 + rdlength
    return fields


def _skip_name(wire: bytes, offset: int) -> int:
    while True:
        length = wire[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
