"""An upstream's reply read into dnspython's objects, for the record types a
forwarded answer usually holds, at a fraction of ``dns.message.from_wire``'s
cost: the miss path's largest single cost was dnspython reading the reply
(its wire parser's per-byte calls, a context manager per record, a message
index per RRset).

:func:`read` gives the same :class:`dns.message.Message` that
``dns.message.from_wire(wire)`` gives (the same RRsets, rdata objects, TTLs,
flags and OPT), or None when the reply holds anything it does not read
itself: then the caller asks dnspython, whose rules stay the judge of what
is malformed. Read here:

- opcode QUERY, one question;
- class IN records of types A, AAAA, NS, CNAME, PTR, DNAME, MX, SOA, TXT,
  and the DNSSEC types RRSIG, DNSKEY and DS (what a validated positive answer
  and the chain of trust's fetches hold), in any section; the OPT record in
  the additional section, without options;
- names by dnspython's rules (dns.name.from_wire_parser): pointers only
  backwards and never into the name they are part of, at most
  MAX_COMPRESSION_POINTER_CHAIN of them, none inside DNAME's rdata; each
  rdata exactly its length; nothing after the last record.

Records of one RRset are gathered as dnspython gathers them (owner compared
without case, first owner's case kept, equal rdatas once, the smallest
TTL, a TTL above 2^31 - 1 read as 0).
"""
from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.DNAME import DNAME
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.OPT import OPT
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.RRSIG import RRSIG
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.nsbase import NSBase

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_SOA_NUMBERS = struct.Struct("!IIIII")
_RRSIG_HEADER = struct.Struct("!HBBIIIH")
_KEY_HEADER = struct.Struct("!HBB")         # DNSKEY's flags, protocol, algorithm; DS's tag, algorithm, digest type
_RRSIG = dns.rdatatype.RRSIG
_IN = dns.rdataclass.IN
_OPT = dns.rdatatype.OPT
# the types whose rdata is one name (may it be compressed? dnspython's rule)
_ONE_NAME: dict[int, tuple[type[NSBase], bool]] = {
    dns.rdatatype.NS: (NS, True), dns.rdatatype.CNAME: (CNAME, True), dns.rdatatype.PTR: (PTR, True),
    dns.rdatatype.DNAME: (DNAME, False)}
_SINGLETONS = frozenset({dns.rdatatype.CNAME, dns.rdatatype.DNAME, dns.rdatatype.SOA})   # dns.rdatatype.is_singleton
_KEYS: dict[int, type[DNSKEY] | type[DS]] = {dns.rdatatype.DNSKEY: DNSKEY, dns.rdatatype.DS: DS}
_TYPES = {t: dns.rdatatype.RdataType.make(t) for t in (*_ONE_NAME, *_KEYS, dns.rdatatype.A, dns.rdatatype.AAAA,
                                                        dns.rdatatype.MX, dns.rdatatype.SOA, dns.rdatatype.TXT,
                                                        _RRSIG)}


class _NotRead(Exception):
    """Something this reader leaves to dnspython."""


def read(wire: bytes) -> dns.message.Message | None:
    """The reply as ``dns.message.from_wire(wire)`` reads it, or None when
    dnspython must read it (see the module's docstring)."""
    try:
        return _read(wire)
    except (_NotRead, IndexError, struct.error, dns.exception.DNSException, ValueError):
        return None


def _read(wire: bytes) -> dns.message.Message:
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if qdcount != 1 or (flags >> 11) & 0x0F != dns.opcode.QUERY:
        raise _NotRead
    labels, offset = _name(wire, 12, len(wire), True)
    qtype, qclass = struct.unpack_from("!HH", wire, offset)
    offset += 4
    message = dns.message.QueryMessage(id=ident)
    message.flags = dns.flags.Flag(flags)
    message.question = [dns.rrset.RRset(dns.name.Name(labels), dns.rdataclass.RdataClass.make(qclass),
                                        dns.rdatatype.RdataType.make(qtype))]
    opt = None
    for index, count in enumerate((ancount, nscount, arcount)):
        section: list[dns.rrset.RRset] = []
        rrsets: dict[tuple[tuple[bytes, ...], int, int], dns.rrset.RRset] = {}
        for _ in range(count):
            labels, offset = _name(wire, offset, len(wire), True)
            rdtype, rdclass, ttl, rdlength = _RR.unpack_from(wire, offset)
            offset += 10
            end = offset + rdlength
            if end > len(wire):
                raise _NotRead
            if rdtype == _OPT:
                if index != 2 or opt is not None or len(labels) != 1 or rdlength:
                    raise _NotRead            # options, or an OPT dnspython refuses: its call
                opt = dns.rrset.from_rdata(dns.name.root, ttl, OPT(rdclass, _OPT, []))
                continue
            if rdclass != _IN:
                raise _NotRead
            rdata = _rdata(wire, offset, end, rdtype)
            offset = end
            covers = rdata.covers()               # an RRSIG's RRset is per type covered
            key = (tuple(map(bytes.lower, labels)), rdtype, covers)
            rrset = rrsets.get(key)
            if rrset is None:
                rrset = rrsets[key] = dns.rrset.RRset(dns.name.Name(labels), _IN, _TYPES[rdtype], covers)
                section.append(rrset)
            # Rdataset.add's steps for these types, hashing the rdata once
            # (Set.add hashes it twice: a hash is its rdata rendered)
            rrset.update_ttl(0 if ttl > 0x7FFFFFFF else ttl)
            if rdtype in _SINGLETONS:
                rrset.items.clear()           # the last one read stays, as dnspython keeps it
            rrset.items.setdefault(rdata, None)
        message.sections[index + 1] = section
    if offset != len(wire):
        raise _NotRead                        # trailing bytes: dnspython's TrailingJunk
    if opt is not None:
        message.opt = opt
    message.wire = wire
    # no index of the RRsets (dnspython's keys hash each owner name, letter
    # by letter): Message.find_rrset searches the sections when it is None
    # (its code says so; its annotation does not)
    message.index = None  # type: ignore[assignment]
    return message


def _rdata(wire: bytes, offset: int, end: int, rdtype: int):
    """One record's rdata object, which must fill ``wire[offset:end]`` exactly."""
    if rdtype == dns.rdatatype.A:
        if end - offset != 4:
            raise _NotRead
        return A(_IN, dns.rdatatype.A, wire[offset:end])
    if rdtype == dns.rdatatype.AAAA:
        if end - offset != 16:
            raise _NotRead
        return AAAA(_IN, dns.rdatatype.AAAA, wire[offset:end])
    one_name = _ONE_NAME.get(rdtype)
    if one_name is not None:
        cls, compressed = one_name
        labels, after = _name(wire, offset, end, compressed)
        if after != end:
            raise _NotRead
        return cls(_IN, rdtype, dns.name.Name(labels))
    if rdtype == dns.rdatatype.MX:
        if end - offset < 3:
            raise _NotRead
        labels, after = _name(wire, offset + 2, end, True)
        if after != end:
            raise _NotRead
        return MX(_IN, rdtype, wire[offset] << 8 | wire[offset + 1], dns.name.Name(labels))
    if rdtype == dns.rdatatype.SOA:
        mname, after = _name(wire, offset, end, True)
        rname, after = _name(wire, after, end, True)
        if end - after != 20:
            raise _NotRead
        return SOA(_IN, rdtype, dns.name.Name(mname), dns.name.Name(rname), *_SOA_NUMBERS.unpack_from(wire, after))
    if rdtype == _RRSIG:
        if end - offset < _RRSIG_HEADER.size:
            raise _NotRead
        covered, algorithm, labels, original_ttl, expiration, inception, key_tag = _RRSIG_HEADER.unpack_from(wire,
                                                                                                             offset)
        signer, after = _name(wire, offset + _RRSIG_HEADER.size, end, False)
        return RRSIG(_IN, rdtype, covered, algorithm, labels, original_ttl, expiration, inception, key_tag,
                     dns.name.Name(signer), wire[after:end])
    keyed = _KEYS.get(rdtype)
    if keyed is not None:
        if end - offset < _KEY_HEADER.size:
            raise _NotRead
        first, second, third = _KEY_HEADER.unpack_from(wire, offset)
        return keyed(_IN, rdtype, first, second, third, wire[offset + _KEY_HEADER.size:end])
    if rdtype == dns.rdatatype.TXT:
        strings = []
        while offset < end:
            length = wire[offset]
            if offset + 1 + length > end:
                raise _NotRead
            strings.append(wire[offset + 1:offset + 1 + length])
            offset += 1 + length
        return TXT(_IN, _TYPES[rdtype], strings)
    raise _NotRead


def _name(wire: bytes, offset: int, end: int, decompress: bool) -> tuple[list[bytes], int]:
    """The labels of the name at ``offset`` (the root's empty one last) and
    where the next field starts, by dns.name.from_wire_parser's rules; no
    read reaches ``end``."""
    labels: list[bytes] = []
    biggest_pointer = start = at = offset
    after = -1                             # past the first pointer, once one is followed
    hops = 0
    while True:
        if at >= end:
            raise _NotRead
        count = wire[at]
        at += 1
        if count == 0:
            break
        if count < 64:
            if at + count > end:
                raise _NotRead
            labels.append(wire[at:at + count])
            at += count
        elif count >= 192 and decompress:
            if at >= end:
                raise _NotRead
            pointer = (count & 0x3F) << 8 | wire[at]
            at += 1
            if pointer >= biggest_pointer:
                raise _NotRead
            biggest_pointer = pointer
            hops += 1
            if hops > dns.name.MAX_COMPRESSION_POINTER_CHAIN:
                raise _NotRead
            if after < 0:
                after = at
            end = start                    # the target must not overlap this name
            at = start = pointer
        else:
            raise _NotRead
    labels.append(b"")
    return labels, at if after < 0 else after
