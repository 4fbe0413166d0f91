"""The one glue between the stack's UDP/TCP and the DNS core:
``serve_with_processor`` and ``serve_with_zonefile`` (the seed's names).

Two paths for a UDP query:

* the hot path, inside the stack's receive callback: read the question's
  fast-path key from the bytes (:mod:`unikernel.wire`), look it up among the
  static answers kept so far and then in each ``fast_lookups`` callable (the
  cache), patch ID, RD and letter case, send. A handful of dict and bytes
  operations, no dnspython.
* the slow path, an asyncio task per query: dnspython parses, the error rules
  apply (FORMERR, NOTIMP, REFUSED, BADVERS), the processor answers (an
  exception becomes SERVFAIL, no answer becomes REFUSED), EDNS is set from the
  query and the reply is rendered to fit the client's size (512 bytes
  without EDNS, at most 1232 with it), by NSD's rules for what is cut and
  when TC is set (:func:`render`). A static answer rendered whole is kept
  for the hot path (bounded in count and bytes; the oldest goes first).

A rendered answer never depends on the size limit when it fits, so a kept
answer served to a client whose limit it fits is byte-identical to what the
slow path would have sent (tests/unit/test_wire.py checks this).

TCP queries (length-prefixed, up to 65535 bytes, never truncated) go through
the slow path via :class:`unikernel.serve.tcp.DnsTcpServer` when the stack has
TCP. A query is never left unanswered for its content; only a message too
short for a header, one that is itself a response, or one from a source port
that would start a packet loop (:data:`BAD_SOURCE_PORTS`) or from an address
no reply should go to (broadcast, multicast, loopback, ourselves) is dropped
(and counted). Counters: ``dns.*`` in ``stack.counters``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.renderer

from unikernel import wire
from unikernel.ops.stats import FLAG_DO, Observe
from unikernel.process import Answer, Endpoint, Processor, processor_of_process

log = logging.getLogger("unikernel.serve.server")

# The EDNS size we advertise and the most we send over UDP (NSD's default:
# no IP fragmentation on the paths that matter, RFC 9715).
UDP_PAYLOAD = 1232
TCP_LIMIT = 65535
OPT_SIZE = 11                     # an OPT RR without options
MAX_STATIC = 100_000              # kept answers; the oldest goes first when full
MAX_STATIC_BYTES = 24 * 1024 * 1024   # and their memory (about 600 bytes for a long-named NXDOMAIN)
STATIC_OVERHEAD = 330             # what one kept answer costs beyond its key and bytes (measured)
MAX_PENDING = 1024                # slow-path queries in flight; beyond, dropped and counted
# Source ports never answered: 0 is no port, and echo (7), daytime (13),
# chargen (19) and time (37) answer whatever they are sent, so a query forged
# from one of them would start a loop of packets between it and us.
BAD_SOURCE_PORTS = frozenset({0, 7, 13, 19, 37})
# Source addresses never answered: a reply to them would go to no one
# (0.0.0.0), back to ourselves (127/8, our own address) or to many hosts at
# once (multicast, 240/4 and limited broadcast, the subnet's broadcast): a
# forged query from one of those is a reflection, not a question.
_MULTICAST_AND_ABOVE = 0xE0000000
_LOOPBACK_OCTET = 127

FastLookup = Callable[[bytes, int, float], "bytes | None"]
_ADDITIONAL_ORDER = {dns.rdatatype.A: 0, dns.rdatatype.AAAA: 1}
_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
# Meta types no question may ask for (BIND's answers): OPT, TSIG and TKEY are
# FORMERR, the obsolete MAILA/MAILB NOTIMP. Answering them from a zone is
# wrong, and forwarding them lets a client provoke upstream errors.
_META_FORMERR = frozenset({dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY})
_META_NOTIMP = frozenset({dns.rdatatype.MAILA, dns.rdatatype.MAILB})


def render(response: dns.message.Message, query: dns.message.Message, limit: int) -> tuple[bytes, bool]:
    """``response`` in wire form for ``query``, at most ``limit`` bytes, RRs in
    zone order (no shuffling: the same question always gets the same bytes):
    ``(wire, whole)``; ``whole`` is False when something had to be left out.

    NSD's rules, RRset by RRset: an answer or required authority RRset that
    does not fit sets TC and ends the message there. An NS RRset in authority
    next to a non-empty answer is optional: if it does not fit it is left out,
    and so is the additional section. Additional RRsets go A first, then AAAA,
    then the rest; once one does not fit, the following groups are left out
    (a referral that could not carry any A glue gets TC). The OPT record's
    room is reserved first; it carries our UDP size, the query's DO bit and
    the response's options (an Extended DNS Error)."""
    renderer = dns.renderer.Renderer(response.id, response.flags, limit)
    with_edns = query.edns >= 0
    rcode = response.rcode()
    ednsflags = query.ednsflags & dns.flags.DO
    if rcode > 0xF:
        ednsflags |= (rcode >> 4) << 24
    # the response's own EDNS options (an Extended DNS Error) go out with our OPT
    options = list(response.options) if with_edns and response.edns >= 0 else []
    if with_edns:
        renderer.reserve(OPT_SIZE + sum(4 + len(option.to_wire() or b"") for option in options))
    for question in response.question:
        renderer.add_question(question.name, question.rdtype, question.rdclass)
    whole, truncated, room = True, False, True
    try:
        for rrset in response.answer:
            renderer.add_rrset(dns.renderer.ANSWER, rrset, want_shuffle=False)
        for rrset in response.authority:
            if response.answer and rrset.rdtype == dns.rdatatype.NS:
                try:
                    renderer.add_rrset(dns.renderer.AUTHORITY, rrset, want_shuffle=False)
                except dns.exception.TooBig:
                    whole, room = False, False
                    break
            else:
                renderer.add_rrset(dns.renderer.AUTHORITY, rrset, want_shuffle=False)
    except dns.exception.TooBig:
        whole, truncated, room = False, True, False
    if room and response.additional:
        groups: list[list] = [[], [], []]
        for rrset in response.additional:
            if rrset.rdtype != dns.rdatatype.OPT:
                groups[_ADDITIONAL_ORDER.get(rrset.rdtype, 2)].append(rrset)
        referral = not response.answer and not response.flags & dns.flags.AA
        for group_index, group in enumerate(groups):
            added = 0
            for rrset in group:
                try:
                    renderer.add_rrset(dns.renderer.ADDITIONAL, rrset, want_shuffle=False)
                    added += 1
                except dns.exception.TooBig:
                    whole = False
            if not whole:
                if group_index == 0 and added == 0 and referral and group:
                    truncated = True
                break
    if with_edns:
        renderer.release_reserved()
        renderer.add_edns(0, ednsflags, UDP_PAYLOAD, options)
    if truncated:
        renderer.flags |= dns.flags.TC
    renderer.write_header()
    return renderer.get_wire(), whole


class DnsServer:
    """Serves ``processor`` on ``port`` of ``stack`` (UDP, and TCP when
    available). ``start()`` binds, ``close()`` unbinds."""

    def __init__(self, stack, port: int, processor: Processor, *,
                 fast_lookups: Iterable[FastLookup] = (),
                 observe: Observe | None = None, chaos: Processor | None = None,
                 udp_payload: int = UDP_PAYLOAD, max_static: int = MAX_STATIC,
                 max_static_bytes: int = MAX_STATIC_BYTES, max_pending: int = MAX_PENDING,
                 max_tcp_answer_bytes: int | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.stack = stack
        self.port = port
        self.processor = processor
        self.fast_lookups = tuple(fast_lookups)
        # called for every reply sent (metrics, the query log): see unikernel.ops.stats.Observe
        self.observe = observe
        # answers class CH questions (the CHAOS names); without it they are REFUSED
        self.chaos = chaos
        self.udp_payload = udp_payload
        self.max_static = max_static
        self.max_static_bytes = max_static_bytes
        self.static_bytes = 0             # what the kept answers cost, by _static_cost
        self.max_pending = max_pending
        self.max_tcp_answer_bytes = max_tcp_answer_bytes
        self.counters = stack.counters
        self.clock = clock or getattr(stack, "now", None) or (lambda: 0.0)
        # key -> (length, (header without RD, header with RD), bytes after the question name, source)
        self.static: dict[bytes, tuple[int, tuple[bytes, bytes], bytes, str]] = {}
        self.pending: set[asyncio.Task] = set()
        self.tcp_server = None
        self._sendto = stack.udp.sendto
        self._own_addresses = frozenset(a for a in (0, getattr(stack, "address", None),
                                                    getattr(stack, "subnet_broadcast", None))
                                        if a is not None)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.stack.udp.bind(self.port, self.on_datagram)
        self.tcp_server = self._start_tcp()

    def _start_tcp(self):
        tcp = getattr(self.stack, "tcp", None)
        if tcp is None:          # a stack without TCP (or a test's fake): UDP only
            return None
        from unikernel.serve.tcp import DnsTcpServer

        limits = {} if self.max_tcp_answer_bytes is None else {"max_answer_bytes": self.max_tcp_answer_bytes}
        server = DnsTcpServer(tcp, self.port, self.handle_tcp, **limits)
        server.start()
        return server

    def forget_static(self) -> None:
        """Drops every kept answer (the zones behind them changed)."""
        self.static.clear()
        self.static_bytes = 0
        self.counters["dns.static.forgotten"] += 1

    def close(self) -> None:
        self.stack.udp.unbind(self.port)
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None
        for task in list(self.pending):
            task.cancel()

    # -- the hot path -----------------------------------------------------------
    def on_datagram(self, payload: bytes, src_ip: int, src_port: int, dst_ip: int, dst_port: int) -> None:
        if src_port in BAD_SOURCE_PORTS:
            self.counters["dns.bad_source_port.drop"] += 1
            return
        if (src_ip >= _MULTICAST_AND_ABOVE or src_ip >> 24 == _LOOPBACK_OCTET
                or src_ip in self._own_addresses):
            self.counters["dns.bad_source_address.drop"] += 1
            return
        parsed = wire.fast_key(payload)
        if parsed is not None:
            key, name_end, client_size = parsed
            kept = self.static.get(key)
            if kept is not None and kept[0] <= client_size:
                self.counters["dns.fast.hit"] += 1
                arrived = self.clock() if self.observe is not None else 0.0
                # wire.patch, with the two header variants made in advance
                header = kept[1][wire.variant(payload)]
                self._sendto(payload[:2] + header + payload[12:name_end] + kept[2],
                             self.port, src_ip, src_port)
                if self.observe is not None:
                    self.observe(arrived, "udp", src_ip, src_port, key, _flags(header, key), header[1] & 0x0F,
                                 kept[3], self.clock() - arrived)
                return
            if self.fast_lookups:
                limit = client_size if client_size < self.udp_payload else self.udp_payload
                now = self.clock()
                for lookup in self.fast_lookups:
                    try:
                        answer = lookup(key, src_ip, now)
                    except Exception:
                        self.counters["dns.fast.lookup_error"] += 1
                        log.exception("fast lookup failed")
                        answer = None
                    if answer is not None and len(answer) <= limit:
                        self.counters["dns.fast.lookup_hit"] += 1
                        header = bytes(((answer[2] & 0xFE) | (payload[2] & 0x01),)) + answer[3:12]
                        self._sendto(payload[:2] + header + payload[12:name_end] + answer[name_end:],
                                     self.port, src_ip, src_port)            # wire.patch, inlined
                        if self.observe is not None:
                            # the one fast lookup main hands over is the cache's
                            self.observe(now, "udp", src_ip, src_port, key, _flags(header, key), header[1] & 0x0F,
                                         "cache", self.clock() - now)
                        return
        self.counters["dns.fast.miss"] += 1
        if len(self.pending) >= self.max_pending:
            self.counters["dns.slow.overload.drop"] += 1
            return
        task = self._loop.create_task(self._udp_slow(payload, src_ip, src_port, dst_ip, dst_port, self.clock()))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

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
            key, name_end, _ = validated
            self._keep(key, (len(reply), wire.header_variants(reply), reply[name_end:], static))
        self._sendto(reply, self.port, src_ip, src_port)

    def _keep(self, key: bytes, kept: tuple[int, tuple[bytes, ...], bytes, str]) -> None:
        """Keeps a static answer, the oldest going first while the table is
        over its count or its bytes."""
        old = self.static.pop(key, None)
        if old is not None:
            self.static_bytes -= _static_cost(key, old)
        cost = _static_cost(key, kept)
        if cost > self.max_static_bytes:
            return
        while self.static and (len(self.static) >= self.max_static
                               or self.static_bytes + cost > self.max_static_bytes):
            oldest = next(iter(self.static))
            self.static_bytes -= _static_cost(oldest, self.static.pop(oldest))
            self.counters["dns.static.evicted"] += 1
        self.static[key] = kept
        self.static_bytes += cost
        self.counters["dns.static.stored"] += 1

    async def handle_tcp(self, src, dst, query_wire: bytes) -> bytes | None:
        """DnsTcpServer's handler: the slow path with TCP's limit, no truncation."""
        self.counters["dns.tcp.query"] += 1
        try:
            src_ip, src_port = _endpoint_ints(src)
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
                         _flags(reply[2:4], key), rcode, source, self.clock() - arrived)
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
        if opcode != dns.opcode.QUERY:
            counters["dns.notimp"] += 1
            return wire.error_reply(payload, dns.rcode.NOTIMP), "", "server", \
                dns.rcode.NOTIMP, key
        try:
            query = dns.message.from_wire(payload, ignore_trailing=True)
        except Exception:
            counters["dns.formerr"] += 1
            return wire.error_reply(payload, dns.rcode.FORMERR), "", "server", \
                dns.rcode.FORMERR, key
        if len(query.question) != 1:
            counters["dns.formerr"] += 1
            return wire.error_reply(payload, dns.rcode.FORMERR), "", "server", \
                dns.rcode.FORMERR, key
        limit = TCP_LIMIT
        if udp:
            limit = wire.CLASSIC_UDP_SIZE
            if query.edns >= 0:
                limit = min(max(query.payload, wire.CLASSIC_UDP_SIZE), self.udp_payload)
        question = query.question[0]
        key = _key_of(query)
        if query.edns > 0:
            counters["dns.badvers"] += 1
            return render(_error(query, dns.rcode.BADVERS), query, limit)[0], "", "server", \
                dns.rcode.BADVERS, key
        processor = self.processor
        if question.rdclass == dns.rdataclass.CH and self.chaos is not None:
            processor = self.chaos
        elif question.rdclass != dns.rdataclass.IN:
            counters["dns.refused"] += 1
            return render(_error(query, dns.rcode.REFUSED), query, limit)[0], "", "server", \
                dns.rcode.REFUSED, key
        if question.rdtype in _META_FORMERR:
            counters["dns.formerr"] += 1
            return render(_error(query, dns.rcode.FORMERR), query, limit)[0], "", "server", \
                dns.rcode.FORMERR, key
        if question.rdtype in _TRANSFERS or question.rdtype in _META_NOTIMP:
            # zone transfers are not offered (NSD says NOTIMP over UDP too)
            counters["dns.notimp"] += 1
            return render(_error(query, dns.rcode.NOTIMP), query, limit)[0], "", "server", \
                dns.rcode.NOTIMP, key
        src_ep: Endpoint = (ipaddress.IPv4Address(src[0]), src[1])
        dst_ep: Endpoint = (ipaddress.IPv4Address(dst[0]), dst[1])
        try:
            answer = await processor(src_ep, dst_ep, query)
        except Exception:
            counters["dns.servfail"] += 1
            log.exception("processor failed on %s", question)
            return render(_error(query, dns.rcode.SERVFAIL), query, limit)[0], "", "server", \
                dns.rcode.SERVFAIL, key
        if answer is None:
            counters["dns.refused"] += 1
            return render(_error(query, dns.rcode.REFUSED), query, limit)[0], "", "server", \
                dns.rcode.REFUSED, key
        response = _normalised(answer, query)
        reply, whole = render(response, query, limit)
        if not whole:
            counters["dns.truncated" if reply[2] & 0x02 else "dns.trimmed"] += 1
        counters["dns.slow.answered"] += 1
        source = answer.source or "server"
        return reply, source if answer.static and whole else "", source, response.rcode(), key

# the observer's key for a reply to something that is no readable question
_NO_QUESTION = b"\x00\x00\x00\x00\x00\x00"


def _key_of(query: dns.message.Message) -> bytes:
    """The question's fast-path key (unikernel.wire), read from dnspython's message."""
    question = query.question[0]
    edns = wire.NO_EDNS if query.edns < 0 else wire.EDNS_DO if query.ednsflags & dns.flags.DO else wire.EDNS
    name = question.name.canonicalize().to_wire()
    assert name is not None          # to_wire() without a file returns the bytes
    return (name + question.rdtype.to_bytes(2, "big")
            + question.rdclass.to_bytes(2, "big") + bytes((edns,)))


def _flags(header: bytes, key: bytes) -> int:
    """The reply's header flags (its bytes 2 and 3, ``header``'s first two)
    and the query's DO bit (the key's last byte), as the observers take them."""
    return (header[0] << 8 | header[1]) | (FLAG_DO if key[-1] == wire.EDNS_DO else 0)


def _static_cost(key: bytes, kept: tuple[int, tuple[bytes, ...], bytes, str]) -> int:
    return len(key) + len(kept[2]) + STATIC_OVERHEAD


def _error(query: dns.message.Message, rcode: int) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response


def _normalised(answer: Answer, query: dns.message.Message) -> dns.message.Message:
    """The processor's message as a reply to this query: same ID and question,
    QR set, RD and CD copied; EDNS is added by :func:`render`. TC is kept: a
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
    return server


def serve_with_zonefile(stack, port: int = 53, zonefile=None, **options) -> DnsServer:
    """The tutorial's one-liner: serve one zone file (or several, as a list)."""
    from unikernel.sources.zone import zone_process

    if zonefile is None:
        raise ValueError("serve_with_zonefile needs a zonefile")
    files = [zonefile] if isinstance(zonefile, (str, bytes)) or hasattr(zonefile, "__fspath__") else zonefile
    return serve_with_processor(stack, port, processor_of_process(zone_process(files)), **options)
