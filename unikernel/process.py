"""The seed's API, in Python: processes, processors, and compose.

A *process* maps a query to an optional answer::

    async def process(*, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None

``None`` means "not mine, ask the next". An :class:`Answer` whose ``final`` flag
is set means "mine": the process is authoritative for the name (its zone holds
it, or holds the closest enclosing apex), so even NXDOMAIN or NODATA ends the
chain. That is how the names of local zones never leak to a forwarder, while
``compose`` keeps the seed's rule that a non-NOERROR answer falls through.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Endpoint = tuple[ipaddress.IPv4Address, int]

# Question types no process answers. Zone transfers are not offered (NSD says
# NOTIMP over UDP too). Meta types no question may ask for (BIND's answers):
# OPT, TSIG and TKEY are FORMERR, the obsolete MAILA/MAILB NOTIMP. Answering
# them from a zone is wrong, and forwarding them lets a client provoke
# upstream errors.
TRANSFER_QTYPES = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
META_QTYPES_FORMERR = frozenset({dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY})
META_QTYPES_NOTIMP = frozenset({dns.rdatatype.MAILA, dns.rdatatype.MAILB})
UNANSWERED_QTYPES = TRANSFER_QTYPES | META_QTYPES_FORMERR | META_QTYPES_NOTIMP


@dataclass(slots=True)
class Answer:
    """A response message, and what the server may do with it.

    final:  the process is authoritative for the name; compose stops here even
            when the rcode is not NOERROR (Twisted's AuthoritativeDomainError).
    static: the answer depends only on the question (name case-folded, type,
            class, EDNS present, DO bit), so its wire form may be kept and
            served from the fast path.
    source: what answered (zone, hosts, special, blocked, cache, forward...),
            for the metrics and the query log; set by :func:`labelled`
            unless the process knows better (the forwarder's cache hits).
    """

    message: dns.message.Message
    final: bool = False
    static: bool = False
    source: str = ""


class Process(Protocol):
    def __call__(self, *, src: Endpoint, dst: Endpoint,
                 query: dns.message.Message) -> Awaitable[Answer | None]: ...


def compose(first: Process, *rest: Process) -> Process:
    """``compose(p, backup, ...)``: p's answer, unless p has none or answers with
    a non-NOERROR rcode without being final; then the next one's, and so on.
    The last process's answer is returned whatever it is."""
    chain = (first, *rest)

    async def composed(*, src: Endpoint, dst: Endpoint,
                       query: dns.message.Message) -> Answer | None:
        answer = None
        for process in chain:
            answer = await process(src=src, dst=dst, query=query)
            if answer is not None and (answer.final or answer.message.rcode() == dns.rcode.NOERROR):
                return answer
        return answer

    return composed


def labelled(source: str, process: Process) -> Process:
    """``process`` whose answers say they came from ``source`` (unless they
    already say where they came from)."""

    async def labelling(*, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        answer = await process(src=src, dst=dst, query=query)
        if answer is not None and not answer.source:
            answer.source = source
        return answer

    return labelling


Processor = Callable[[Endpoint, Endpoint, dns.message.Message], Awaitable[Answer | None]]


def processor_of_process(process: Process) -> Processor:
    """Adapts a process to what the server calls (positional endpoints). The
    server catches what a processor raises and answers that query SERVFAIL."""

    async def processor(src: Endpoint, dst: Endpoint,
                        query: dns.message.Message) -> Answer | None:
        return await process(src=src, dst=dst, query=query)

    processor.process = process  # type: ignore[attr-defined]
    return processor


def single_in_question(query: dns.message.Message) -> dns.rrset.RRset | None:
    """The query's one question when it is of class IN; None when there are
    several or it is another class (then the question is not a local table's:
    the server answers FORMERR or REFUSED itself)."""
    if len(query.question) != 1:
        return None
    question = query.question[0]
    return question if question.rdclass == dns.rdataclass.IN else None


def authoritative_response(query: dns.message.Message, *, recursion_available: bool) -> dns.message.Message:
    """The reply a local table starts from: AA set, and RA when the appliance
    also forwards (it then offers recursion, RFC 1035 4.1.1)."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if recursion_available:
        response.flags |= dns.flags.RA
    return response
