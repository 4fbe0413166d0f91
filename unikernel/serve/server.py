"""The one glue between the stack's UDP/TCP and the DNS core:
``serve_with_processor`` and ``serve_with_zonefile`` (the seed's names).

Two paths for a UDP query:

* the hot path, inside the stack's receive callback: read the question's
  fast-path key from the bytes (:mod:`unikernel.wire`), look it up among the
  static answers kept so far and then in each ``fast_lookups`` callable (the
  cache), patch ID, RD and letter case, hand the reply and its sum back (the
  stack patches the checksum: both kinds of answer are ``wire.KeptAnswer``s).
  A handful of dict and bytes operations, no dnspython.
* the slow path, an asyncio task per query: dnspython parses, the error rules
  apply (FORMERR, NOTIMP, REFUSED, BADVERS), the processor answers, and what
  it leaves goes to the ``forwarder`` when one is given (an exception
  becomes SERVFAIL, no answer becomes REFUSED), EDNS is set from the
  query and the reply is rendered to fit the client's size (512 bytes
  without EDNS, at most 1232 with it), by NSD's rules for what is cut and
  when TC is set (:func:`unikernel.serve.render.render`). A static answer rendered whole is kept
  for the hot path, bounded in count and bytes.

Kept answers are a segmented LRU (SLRU) whose protected segment is a CLOCK:
a new answer goes to the probation segment (first in, first out), one asked
for again moves to the protected segment (at most PROTECTED_SHARE of the
count), and room is made from probation's oldest first. A hit on a protected
answer only sets its reference bit (one store, where an LRU would move it);
when protected is over its share, the hand goes round from its oldest: an
answer referenced since the hand last passed gets a second chance (bit
cleared, back to the young end), the first one not referenced falls back to
probation. A flood of names asked once (a random-subdomain attack) thus only
churns probation and never pushes out the answers clients use.

RA says whether recursion is available to the client (RFC 1035 4.1.1): with
``recursion_for`` (main hands in the forwarder's access list) it is set on
every answer, slow path and fast path alike, to that client's verdict.

Slow-path tasks come in two pools with bounds of their own: ``max_pending``
for what is being answered here, ``max_forwarded`` for what waits on the
forwarder (a task moves from the first to the second when it gets there), so
queries whose upstreams never answer cannot starve the names that are ours.
Every UDP reply passes RRL (:mod:`unikernel.serve.rrl`) when it is on.

A rendered answer never depends on the size limit when it fits, so a kept
answer served to a client whose limit it fits is byte-identical to what the
slow path would have sent (tests/unit/test_wire.py checks this).

TCP queries (length-prefixed, up to 65535 bytes, never truncated) go through
the slow path (:meth:`DnsServer.handle_tcp`) via
:class:`unikernel.serve.tcp.DnsTcpServer`, which main (or
:func:`serve_with_processor`) attaches when the stack has TCP. A query is
never left unanswered for its content; only a message too short for a header,
one that is itself a response, or one from a source port that would start a
packet loop (:data:`BAD_SOURCE_PORTS`) is dropped (and counted). Sources no
reply should go to (broadcast, multicast, loopback, ourselves) never reach the
server: the stack drops them (``ipv4.bad_source.drop``). Counters: ``dns.*``
in ``stack.counters``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.tsig

from netstack.tally import Tally
from unikernel import wire
from unikernel.ops.stats import Observe
from unikernel.process import (
    META_QTYPES_FORMERR,
    META_QTYPES_NOTIMP,
    TRANSFER_QTYPES,
    Answer,
    Endpoint,
    Processor,
    processor_of_process,
)
from unikernel.serve import rrl as rrl_mod
from unikernel.serve.render import UDP_PAYLOAD, render
from unikernel.serve.rrl import ResponseRateLimiter
from unikernel.serve.tcp import DnsTcpServer

if TYPE_CHECKING:
    from unikernel.transfer.outbound import TransferServer

log = logging.getLogger("unikernel.serve.server")

TCP_LIMIT = 65535
MAX_KEPT = 100_000                # kept answers; probation's least recently used goes first when full
PROTECTED_SHARE = 0.8             # of MAX_KEPT, for answers asked for more than once
MAX_KEPT_BYTES = 24 * 1024 * 1024   # and their memory (about 600 bytes for a long-named NXDOMAIN)
KEPT_OVERHEAD = 330               # what one kept answer costs beyond its key and bytes (measured)
MAX_PENDING = 1024                # slow-path queries in flight locally; beyond, dropped and counted
MAX_FORWARDED = 1024              # and those waiting on the forwarder; beyond, SERVFAIL at once
# The latency a fast-path answer is observed with: it is made within the call
# that got its query, in a microsecond or two, far under the latency
# histogram's first bucket (100 us), so the clock is read once (for its
# arrival), not twice to measure what no bucket can tell apart.
FAST_LATENCY: Final = 0.0
# Source ports never answered: 0 is no port, and echo (7), daytime (13),
# chargen (19) and time (37) answer whatever they are sent, so a query forged
# from one of them would start a loop of packets between it and us.
BAD_SOURCE_PORTS: Final = frozenset({0, 7, 13, 19, 37})

# (key, src_ip, now) -> an answer for the key kept with its sums (the cache's,
# TTLs counted down to now), served as the static ones are, or None
FastLookup = Callable[[bytes, int, float], "wire.KeptAnswer | None"]
# where a kept answer is: probation, or protected with its reference bit clear or set
# (Final: compiled, inlined where read, as wire's constants are)
_PROBATION: Final = 0
_PROTECTED: Final = 1
_REFERENCED: Final = 2


class _Kept(wire.KeptAnswer):
    """A kept answer (wire.KeptAnswer), what answered it, and its segment
    (and reference bit)."""

    __slots__ = ("source", "state")

    def __init__(self, answer: bytes, source: str, name_end: int) -> None:
        super().__init__(answer, name_end)
        self.source = source
        self.state = _PROBATION



class DnsServer:
    """Serves ``processor`` on ``port`` of ``stack`` (UDP, and TCP when
    available). ``start()`` binds, ``close()`` unbinds."""

    def __init__(self, stack, port: int, processor: Processor, *,
                 fast_lookups: Iterable[FastLookup] = (), observe: Observe | None = None,
                 chaos: Processor | None = None, udp_payload: int = UDP_PAYLOAD, max_kept: int = MAX_KEPT,
                 max_kept_bytes: int = MAX_KEPT_BYTES, max_pending: int = MAX_PENDING,
                 recursion_for: Callable[[int], bool] | None = None,
                 rrl: ResponseRateLimiter | None = None,
                 forwarder: Processor | None = None, max_forwarded: int = MAX_FORWARDED,
                 clock: Callable[[], float] | None = None) -> None:
        self.stack = stack
        self.port = port
        self.processor = processor
        self.fast_lookups = tuple(fast_lookups)
        # told of every reply sent (metrics, the query log): see unikernel.ops.stats.Observe
        self.observe = observe
        # answers class CH questions (the CHAOS names); without it they are REFUSED
        self.chaos = chaos
        self.udp_payload = udp_payload
        self.max_kept = max_kept
        self.max_kept_bytes = max_kept_bytes
        self.kept_bytes = 0               # what the kept answers cost, by _kept_cost
        self.max_pending = max_pending
        self.counters = stack.counters
        # counted on every hit: a plain integer (netstack.counters.Counters.tally);
        # declared, as ``stack`` is not: compiled, a native field's increment
        self._fast_hits: Tally = stack.counters.tally("dns.fast.hit")
        self._lookup_hits: Tally = stack.counters.tally("dns.fast.lookup_hit")
        self.clock = clock or getattr(stack, "now", None) or (lambda: 0.0)
        # static answers rendered whole, by fast-path key (bounded by max_kept
        # and max_kept_bytes), with what answered them; served by wire.patch_kept.
        # Their order of use is kept in the two SLRU segments, least recently used first.
        self.kept_answers: dict[bytes, _Kept] = {}
        self._probation: OrderedDict[bytes, None] = OrderedDict()
        self._protected: OrderedDict[bytes, None] = OrderedDict()
        self.max_protected = max(1, int(max_kept * PROTECTED_SHARE))
        self.recursion_for = recursion_for
        self.rrl = rrl
        self.pending: set[asyncio.Task] = set()
        # UDP queries handed to the forwarder leave ``pending`` for this pool of
        # their own, so local answers never wait behind forwarded ones
        self.forwarder = forwarder
        self.max_forwarded = max_forwarded
        self.forwarding: set[asyncio.Task] = set()
        # the TCP side (a DnsTcpServer on handle_tcp), attached by whoever
        # wires the server (main, serve_with_processor); closed with it
        self.tcp_server: DnsTcpServer | None = None
        # zone transfers (AXFR/IXFR over TCP), when main wires a TransferServer
        self.transfers: TransferServer | None = None
        # TSIG keys questions may be signed with ({name: key}; main sets it when there is one)
        self.keyring: dict | None = None
        # NOTIFY (opcode 4) for secondary zones: (source address, message) -> reply
        self.notify_handler: Callable[[int, bytes], bytes | None] | None = None
        self._sendto = stack.udp.sendto
        self._loop: asyncio.AbstractEventLoop     # set by start(), before any datagram

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.stack.udp.bind_responder(self.port, self.answer_datagram)

    def forget_kept_answers(self) -> None:
        """Drops every kept answer (the zones behind them changed)."""
        self.kept_answers.clear()
        self._probation.clear()
        self._protected.clear()
        self.kept_bytes = 0
        self.counters["dns.static.forgotten"] += 1

    def close(self) -> None:
        self.stack.udp.unbind(self.port)
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None
        for task in [*self.pending, *self.forwarding]:
            task.cancel()

    # -- the hot path -----------------------------------------------------------
    def answer_datagram(self, payload: bytes, src_ip: int, src_port: int, dst_ip: int,
                        dst_port: int) -> tuple[bytes, int] | None:
        """The port's responder (netstack.udp.Responder): the reply to send at
        once, with its payload sum, or None (dropped, or left to the slow
        path, which sends its reply itself)."""
        if src_port in BAD_SOURCE_PORTS:
            self.counters["dns.bad_source_port.drop"] += 1
            return None
        parsed = wire.fast_key(payload)
        if parsed is not None:
            key, name_end, client_size = parsed
            kept = self.kept_answers.get(key)
            if kept is not None and kept.size <= client_size:
                self._fast_hits.count += 1
                state = kept.state
                if state == _PROTECTED:
                    kept.state = _REFERENCED
                elif state == _PROBATION:
                    self._promote(key, kept)
                ra = None if self.recursion_for is None else self.recursion_for(src_ip)
                summed = wire.patch_kept(kept, payload, name_end, ra)
                observe = self.observe
                if observe is not None:
                    reply = summed[0]
                    observe(self.clock(), "udp", src_ip, src_port, key, reply[2] << 8 | reply[3], reply[3] & 0x0F,
                            kept.source, FAST_LATENCY)
                if self.rrl is None:
                    return summed
                return self._rate_limited_summed(summed, src_ip)
            if self.fast_lookups:
                limit = client_size if client_size < self.udp_payload else self.udp_payload
                now = self.clock()
                for lookup in self.fast_lookups:
                    try:
                        found = lookup(key, src_ip, now)
                    except Exception:
                        self.counters["dns.fast.lookup_error"] += 1
                        log.exception("fast lookup failed")
                        found = None
                    if found is not None and found.size <= limit:
                        self._lookup_hits.count += 1
                        summed = wire.patch_kept(found, payload, name_end)
                        observe = self.observe
                        if observe is not None:
                            # the one fast lookup main hands over is the cache's
                            reply = summed[0]
                            observe(now, "udp", src_ip, src_port, key, reply[2] << 8 | reply[3], reply[3] & 0x0F,
                                    "cache", FAST_LATENCY)
                        if self.rrl is None:
                            return summed
                        return self._rate_limited_summed(summed, src_ip)
        self.counters["dns.fast.miss"] += 1
        if len(self.pending) >= self.max_pending:
            self.counters["dns.slow.overload.drop"] += 1
            return None
        task = self._loop.create_task(self._udp_slow(payload, src_ip, src_port, dst_ip, dst_port, self.clock()))
        self.pending.add(task)
        task.add_done_callback(self._finished)
        return None

    def _finished(self, task: asyncio.Task) -> None:
        self.pending.discard(task)
        self.forwarding.discard(task)

    async def _udp_slow(self, payload: bytes, src_ip: int, src_port: int, dst_ip: int,
                        dst_port: int, arrived: float) -> None:
        try:
            reply, static = await self.respond(payload, (src_ip, src_port), (dst_ip, dst_port),
                                               udp=True, arrived=arrived)
        except Exception:  # a bug, not the query's fault: SERVFAIL, count it, keep serving
            self.counters["dns.exception"] += 1
            log.exception("query handling failed")
            reply, static = wire.error_reply(payload, dns.rcode.SERVFAIL), ""
        if reply is None:
            return
        # kept only under a key read by the validating parser (see wire.fast_key)
        validated = wire.parse_query(payload) if static else None
        if validated is not None:
            self._keep(validated[0], reply, static)
        self._send(reply, src_ip, src_port)

    def _send(self, reply: bytes, src_ip: int, src_port: int) -> None:
        """Sends a slow-path UDP reply, or what RRL lets go to ``src_ip``."""
        limited = self._rate_limited(reply, src_ip)
        if limited is not None:
            self._sendto(limited, self.port, src_ip, src_port)

    def _rate_limited_summed(self, summed: tuple[bytes, int], src_ip: int) -> tuple[bytes, int] | None:
        """A fast-path reply and its sum as RRL lets them go: unchanged, the
        truncated empty form with its own sum (slipped), or nothing."""
        limited = self._rate_limited(summed[0], src_ip)
        if limited is None:
            return None
        return summed if limited is summed[0] else (limited, wire.payload_sum(limited))

    def _rate_limited(self, reply: bytes, src_ip: int) -> bytes | None:
        """What RRL lets go to ``src_ip``: the reply, its truncated empty
        form, or nothing."""
        if self.rrl is not None:
            verdict = self.rrl.verdict(src_ip, self.clock())
            if verdict == rrl_mod.DROP:
                return None
            if verdict == rrl_mod.SLIP:
                return rrl_mod.truncated_empty(reply)
        return reply

    def _promote(self, key: bytes, kept: _Kept) -> None:
        """A first hit: the answer moves from probation to the young end of
        the protected segment; when that is over its share, the hand makes
        room (_demote)."""
        self._probation.pop(key, None)
        self._protected[key] = None
        kept.state = _PROTECTED
        if len(self._protected) > self.max_protected:
            self._demote()

    def _demote(self) -> None:
        """The CLOCK's hand: from protected's oldest, referenced answers get
        their bit cleared and go to the young end; the first one not
        referenced falls back to probation. Ends within one turn, as every
        bit it passes is cleared."""
        protected, kept_answers = self._protected, self.kept_answers
        while True:
            key, _ = protected.popitem(last=False)
            kept = kept_answers[key]
            if kept.state == _REFERENCED:
                kept.state = _PROTECTED
                protected[key] = None
            else:
                kept.state = _PROBATION
                self._probation[key] = None
                return

    def _keep(self, key: bytes, answer: bytes, source: str) -> None:
        """Keeps a static answer (and what answered it) in probation, making
        room from probation's oldest (then protected's) while the table is
        over its count or its bytes."""
        old = self.kept_answers.pop(key, None)
        if old is not None:
            self.kept_bytes -= _kept_cost(key, old.size)
            self._probation.pop(key, None)
            self._protected.pop(key, None)
        cost = _kept_cost(key, len(answer))
        if cost > self.max_kept_bytes:
            return
        while self.kept_answers and (len(self.kept_answers) >= self.max_kept
                                     or self.kept_bytes + cost > self.max_kept_bytes):
            segment = self._probation or self._protected
            oldest, _ = segment.popitem(last=False)
            self.kept_bytes -= _kept_cost(oldest, self.kept_answers.pop(oldest).size)
            self.counters["dns.static.evicted"] += 1
        # the question's name ends where the key's name does, 12 bytes in
        self.kept_answers[key] = _Kept(answer, source, wire.HEADER_SIZE + len(key) - 5)
        self._probation[key] = None
        self.kept_bytes += cost
        self.counters["dns.static.stored"] += 1

    async def handle_tcp(self, src, dst, query_wire: bytes) -> bytes | list[bytes] | None:
        """DnsTcpServer's handler: zone transfers to the TransferServer (when
        there is one), the rest to the slow path with TCP's limit, no truncation."""
        self.counters["dns.tcp.query"] += 1
        try:
            src_ip, src_port = _endpoint_ints(src)
            if self.transfers is not None and self.transfers.wants(query_wire):
                return self.transfers.handle(ipaddress.IPv4Address(src_ip), query_wire)
            dst_ip, dst_port = _endpoint_ints(dst)
            reply, _ = await self.respond(query_wire, (src_ip, src_port), (dst_ip, dst_port), udp=False)
        except Exception:
            self.counters["dns.exception"] += 1
            log.exception("query handling failed")
            reply = wire.error_reply(query_wire, dns.rcode.SERVFAIL)
        return reply

    # -- the slow path ----------------------------------------------------------
    async def respond(self, payload: bytes, src: tuple[int, int], dst: tuple[int, int], *,
                      udp: bool, arrived: float | None = None) -> tuple[bytes | None, str]:
        """``(reply wire or None, keep)``: ``keep`` is the answer's source when
        the reply may be kept for the hot path, else "". Every reply is handed
        to ``observe`` (with ``arrived``, the query's arrival, for its latency)."""
        if arrived is None:
            arrived = self.clock()
        reply, keep, source, rcode, key = await self._respond(payload, src, dst, udp)
        if reply is not None and self.observe is not None:
            self.observe(arrived, "udp" if udp else "tcp", src[0], src[1], key,
                         reply[2] << 8 | reply[3], rcode, source, self.clock() - arrived)
        return reply, keep

    async def _respond(self, payload: bytes, src: tuple[int, int], dst: tuple[int, int],
                       udp: bool) -> tuple[bytes | None, str, str, int, bytes]:
        """``(reply, keep, source, rcode, key)``; ``key`` is the question's
        fast-path key (the root's, type 0, when there is no question to read)."""
        counters = self.counters
        key = _NO_QUESTION
        if len(payload) < wire.HEADER_SIZE:
            counters["dns.short.drop"] += 1
            return None, "", "server", 0, key
        if payload[2] & 0x80:
            counters["dns.response.drop"] += 1       # never answer an answer
            return None, "", "server", 0, key
        opcode = (payload[2] >> 3) & 0x0F
        if opcode == dns.opcode.NOTIFY and self.notify_handler is not None:
            counters["dns.notify"] += 1
            return self.notify_handler(src[0], payload), "", "notify", 0, key
        if opcode != dns.opcode.QUERY:
            counters["dns.notimp"] += 1
            return wire.error_reply(payload, dns.rcode.NOTIMP), "", "server", dns.rcode.NOTIMP, key
        if payload[6:10] != b"\x00\x00\x00\x00":
            # NSD (query.c): a query has no answer or authority records; refused
            # from the header, before a parser reads what may be 64 KB of them
            counters["dns.formerr.records"] += 1
            return wire.error_reply(payload, dns.rcode.FORMERR), "", "server", dns.rcode.FORMERR, key
        try:
            query = dns.message.from_wire(payload, ignore_trailing=True, keyring=self.keyring)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature, dns.tsig.BadTime, dns.tsig.BadAlgorithm,
                dns.tsig.PeerError):
            counters["dns.tsig.bad"] += 1            # RFC 8945 5.2: NOTAUTH, unsigned
            return wire.error_reply(payload, dns.rcode.NOTAUTH), "", "server", dns.rcode.NOTAUTH, key
        except Exception:
            counters["dns.formerr"] += 1
            return wire.error_reply(payload, dns.rcode.FORMERR), "", "server", dns.rcode.FORMERR, key
        if len(query.question) != 1:
            counters["dns.formerr"] += 1
            return wire.error_reply(payload, dns.rcode.FORMERR), "", "server", dns.rcode.FORMERR, key
        limit = TCP_LIMIT
        if udp:
            limit = wire.CLASSIC_UDP_SIZE
            if query.edns >= 0:
                limit = min(max(query.payload, wire.CLASSIC_UDP_SIZE), self.udp_payload)
        question = query.question[0]
        key = _key_of(query)
        if query.edns > 0:
            counters["dns.badvers"] += 1
            return self._error_reply(query, dns.rcode.BADVERS, limit, key)
        processor = self.processor
        if question.rdclass == dns.rdataclass.CH and self.chaos is not None:
            processor = self.chaos
        elif question.rdclass != dns.rdataclass.IN:
            counters["dns.refused"] += 1
            return self._error_reply(query, dns.rcode.REFUSED, limit, key)
        if question.rdtype in META_QTYPES_FORMERR:
            counters["dns.formerr"] += 1
            return self._error_reply(query, dns.rcode.FORMERR, limit, key)
        if question.rdtype in TRANSFER_QTYPES or question.rdtype in META_QTYPES_NOTIMP:
            counters["dns.notimp"] += 1
            return self._error_reply(query, dns.rcode.NOTIMP, limit, key)
        src_ep: Endpoint = (ipaddress.IPv4Address(src[0]), src[1])
        dst_ep: Endpoint = (ipaddress.IPv4Address(dst[0]), dst[1])
        try:
            answer = await processor(src_ep, dst_ep, query)
            if self.forwarder is not None and processor is self.processor and (
                    answer is None or not (answer.final or answer.message.rcode() == dns.rcode.NOERROR)):
                # what compose(local, forwarder) would do, in the forwarded pool
                if not self._to_forwarding_pool():
                    counters["dns.slow.forward_overload.servfail"] += 1
                    return self._error_reply(query, dns.rcode.SERVFAIL, limit, key)
                answer = await self.forwarder(src_ep, dst_ep, query)
        except Exception:
            counters["dns.servfail"] += 1
            log.exception("processor failed on %s", question)
            return self._error_reply(query, dns.rcode.SERVFAIL, limit, key)
        if answer is None:
            counters["dns.refused"] += 1
            return self._error_reply(query, dns.rcode.REFUSED, limit, key)
        response = _normalised(answer, query)
        if self.recursion_for is not None:
            if self.recursion_for(src[0]):
                response.flags |= dns.flags.RA
            else:
                response.flags &= ~dns.flags.RA
        if query.had_tsig:
            # a signed question (a secondary's SOA check) gets a signed answer, never kept
            counters["dns.tsig.signed"] += 1
            assert query.keyalgorithm is not None and query.mac is not None     # had_tsig: both read
            response.use_tsig(query.keyring, query.keyname, original_id=query.id, algorithm=query.keyalgorithm)
            response.request_mac = query.mac
            response.use_edns(0 if query.edns >= 0 else -1, query.ednsflags & dns.flags.DO, UDP_PAYLOAD)
            return (response.to_wire(max_size=limit, prefer_truncation=True), "", answer.source or "server",
                    response.rcode(), key)
        reply, whole = render(response, query, limit)
        if not whole:
            counters["dns.truncated" if reply[2] & 0x02 else "dns.trimmed"] += 1
        counters["dns.slow.answered"] += 1
        source = answer.source or "server"
        return reply, source if answer.static and whole else "", source, response.rcode(), key

    def _to_forwarding_pool(self) -> bool:
        """Moves the running UDP slow-path task from ``pending`` to
        ``forwarding``; False when that pool is full. (TCP queries have the
        TCP server's bounds and are not counted here.)"""
        task = asyncio.current_task()
        if task is None or task not in self.pending:
            return True
        if len(self.forwarding) >= self.max_forwarded:
            return False
        self.pending.discard(task)
        self.forwarding.add(task)
        return True

    def _error_reply(self, query: dns.message.Message, rcode: dns.rcode.Rcode, limit: int,
                     key: bytes) -> tuple[bytes | None, str, str, int, bytes]:
        reply, _ = render(_error(query, rcode), query, limit)
        return reply, "", "server", rcode, key


# the observers' key for a reply to something that is no readable question
_NO_QUESTION = b"\x00\x00\x00\x00\x00\x00"


def _key_of(query: dns.message.Message) -> bytes:
    """The question's fast-path key (unikernel.wire), read from dnspython's message."""
    question = query.question[0]
    edns = wire.NO_EDNS if query.edns < 0 else wire.EDNS_DO if query.ednsflags & dns.flags.DO else wire.EDNS
    name = question.name.canonicalize().to_wire()
    assert name is not None          # to_wire() without a file returns the bytes
    return name + question.rdtype.to_bytes(2, "big") + question.rdclass.to_bytes(2, "big") + bytes((edns,))


def _kept_cost(key: bytes, size: int) -> int:
    return len(key) + size + KEPT_OVERHEAD


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response


def _normalised(answer: Answer, query: dns.message.Message) -> dns.message.Message:
    """The processor's message as a reply to this query: same ID and question,
    QR set, RD and CD copied; EDNS is added by :func:`unikernel.serve.render.render`. TC is kept: a
    forwarder relaying a truncated upstream reply must say it is truncated."""
    response = answer.message
    response.id = query.id
    # RD and CD are the client's to set and ours to echo (RFC 1035 4.1.1, RFC 4035 3.2.2)
    echoed = dns.flags.RD | dns.flags.CD
    response.flags = (response.flags & ~echoed) | dns.flags.QR | (query.flags & echoed)
    if not response.question:
        response.question = list(query.question)
    return response


def _endpoint_ints(endpoint) -> tuple[int, int]:
    address, port = endpoint
    return int(ipaddress.IPv4Address(address)) if not isinstance(address, int) else address, port


def serve_with_processor(stack, port: int = 53, processor: Processor | None = None, *,
                         fast_lookups: Iterable[FastLookup] = (), **options) -> DnsServer:
    """Starts answering on ``port`` with ``processor`` (call from a running loop).
    Returns the server; ``close()`` stops it."""
    if processor is None:
        raise ValueError("serve_with_processor needs a processor")
    server = DnsServer(stack, port, processor, fast_lookups=fast_lookups, **options)
    server.start()
    if getattr(stack, "tcp", None) is not None:      # a stack without TCP (a test's fake): UDP only
        server.tcp_server = DnsTcpServer(stack.tcp, port, server.handle_tcp)
        server.tcp_server.start()
    return server


def serve_with_zonefile(stack, port: int = 53, zonefile=None, **options) -> DnsServer:
    """The tutorial's one-liner: serve one zone file (or several, as a list)."""
    from unikernel.sources.zone import zone_process

    if zonefile is None:
        raise ValueError("serve_with_zonefile needs a zonefile")
    files = [zonefile] if isinstance(zonefile, (str, bytes)) or hasattr(zonefile, "__fspath__") else zonefile
    return serve_with_processor(stack, port, processor_of_process(zone_process(files)), **options)
