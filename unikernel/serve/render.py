"""Rendering a response to fit the client, by NSD's truncation rules.

The slow path renders every reply here: RRs in zone order, the OPT record's
room reserved first, what does not fit left out or, when the answer is
incomplete without it, TC set. A rendered answer never depends on the size
limit when it fits, so an answer kept whole for the hot path is byte-identical
to what this would render for any client whose limit it fits.
"""
from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import dns.renderer

# The EDNS size we advertise and the most we send over UDP (NSD's default:
# no IP fragmentation on the paths that matter, RFC 9715).
UDP_PAYLOAD = 1232
OPT_SIZE = 11                     # an OPT RR without options
_ADDITIONAL_ORDER = {dns.rdatatype.A: 0, dns.rdatatype.AAAA: 1}


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
        for unit in _units(response.answer):
            _add_unit(renderer, dns.renderer.ANSWER, unit)
        for unit in _units(response.authority):
            if response.answer and unit[0].rdtype == dns.rdatatype.NS:
                try:
                    _add_unit(renderer, dns.renderer.AUTHORITY, unit)
                except dns.exception.TooBig:
                    whole, room = False, False
                    break
            else:
                _add_unit(renderer, dns.renderer.AUTHORITY, unit)
    except dns.exception.TooBig:
        whole, truncated, room = False, True, False
    if room and response.additional:
        groups: list[list] = [[], [], []]
        for unit in _units(response.additional):
            if unit[0].rdtype != dns.rdatatype.OPT:
                groups[_ADDITIONAL_ORDER.get(unit[0].rdtype, 2)].append(unit)
        referral = not response.answer and not response.flags & dns.flags.AA
        for group_index, group in enumerate(groups):
            added = 0
            for unit in group:
                try:
                    _add_unit(renderer, dns.renderer.ADDITIONAL, unit)
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


def _units(rrsets: list) -> list[list]:
    """The RRsets of a section in order, each with the RRSIGs right after it
    that cover it: NSD renders an RRset and its signatures together or not
    at all (RFC 4035 3.1.1). An answer to a question for RRSIG (dnspython
    keeps one RRset per covered type) is one unit too, as in NSD."""
    units: list[list] = []
    for rrset in rrsets:
        last = units[-1] if units else None
        if rrset.rdtype == dns.rdatatype.RRSIG and last is not None and last[0].name == rrset.name and (
                (last[0].rdtype == rrset.covers and len(last) == 1) or last[0].rdtype == dns.rdatatype.RRSIG):
            last.append(rrset)
        else:
            units.append([rrset])
    return units


def _add_unit(renderer: dns.renderer.Renderer, section: int, unit: list) -> None:
    """Adds the RRsets of ``unit`` to ``section``, all or none: raises TooBig
    with the message as it was before."""
    start, count = renderer.output.tell(), renderer.counts[section]
    try:
        for rrset in unit:
            renderer.add_rrset(section, rrset, want_shuffle=False)
    except dns.exception.TooBig:
        # dnspython rolls back only the RRset that did not fit; the others of
        # the unit go too (its _rollback also forgets their compression offsets)
        renderer._rollback(start)
        renderer.counts[section] = count
        raise
