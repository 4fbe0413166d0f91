"""Special-use and locally served names: answered here, never forwarded.

- ``localhost.`` and every name below it: the loopback addresses (RFC 6761
  section 6.3), and their PTR (1.0.0.127.in-addr.arpa, ::1's ip6.arpa name);
- ``invalid.``, ``test.`` (RFC 6761), ``local.`` (RFC 6762: multicast DNS
  names must not go to unicast DNS), ``onion.`` (RFC 7686), ``home.arpa.``
  (RFC 8375): negative answers at once;
- the reverse zones of private, loopback, link-local, shared and documentation
  ranges (RFC 6303, RFC 6598/7793): answers on behalf of empty zones, so
  queries for them never leak to the public DNS.

Each is an empty zone as RFC 6303 section 3 describes it: its apex has a SOA
(``@ 10800 SOA @ nobody.invalid. 1 3600 1200 604800 10800``) and NS; other
names are NXDOMAIN and other types NODATA, with the SOA in authority. Answers
are final (these names are ours), AA, and static.
"""
from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from unikernel.process import Answer, Endpoint, authoritative_response, single_in_question

ZONE_TTL = 10800

_EMPTY_DOMAINS = ["invalid.", "test.", "local.", "onion.", "home.arpa."]

_REVERSE_V4 = (
    ["0", "127", "10", "254.169", "168.192", "2.0.192", "100.51.198", "113.0.203", "255.255.255.255"]
    + [f"{n}.172" for n in range(16, 32)]
    + [f"{n}.100" for n in range(64, 128)]
)
_REVERSE_V6 = [
    "0." * 32,                    # ::/128
    "1." + "0." * 31,             # ::1/128
    "d.f.", "8.e.f.", "9.e.f.", "a.e.f.", "b.e.f.",   # fd00::/8 (ULA), fe80::/10 (link-local)
    "8.b.d.0.1.0.0.2.",           # 2001:db8::/32 (documentation)
]

LOOPBACK_PTR = {
    "1.0.0.127.in-addr.arpa.": "localhost.",
    "1." + "0." * 31 + "ip6.arpa.": "localhost.",
}


def special_zones() -> list[dns.name.Name]:
    """Every apex this module answers for."""
    names = [*_EMPTY_DOMAINS, "localhost."]
    names += [f"{z}.in-addr.arpa." for z in _REVERSE_V4]
    names += [f"{z}ip6.arpa." for z in _REVERSE_V6]
    return [dns.name.from_text(n) for n in names]


def special_process(*, recursion_available: bool = False, extra_zones=()):
    """The process for special-use names. ``extra_zones``: more apexes to
    answer as empty zones."""
    zones = {*special_zones(), *(dns.name.from_text(str(e)) for e in extra_zones)}
    # each zone's SOA and NS are made when it is first asked: making all 103
    # from text was a fifth of the appliance's setup, paid before its first answer
    records: dict[dns.name.Name, tuple[dns.rrset.RRset, dns.rrset.RRset]] = {}
    localhost = dns.name.from_text("localhost.")
    loopback_ptr = {dns.name.from_text(k): dns.name.from_text(v) for k, v in LOOPBACK_PTR.items()}

    def apex_of(name: dns.name.Name) -> dns.name.Name | None:
        while True:
            if name in zones:
                return name
            if name == dns.name.root:
                return None
            name = name.parent()

    async def special(*, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        q = single_in_question(query)
        if q is None:
            return None
        name = q.name.canonicalize()
        apex = apex_of(name)
        if apex is None:
            return None
        soa, ns = records.get(apex) or records.setdefault(apex, _soa_and_ns(apex))
        response = authoritative_response(query, recursion_available=recursion_available)
        rdtype = q.rdtype
        answer: list[dns.rrset.RRset] = []
        exists = name == apex
        if apex == localhost:
            exists = True           # every name under localhost. is loopback
            if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
                answer.append(dns.rrset.from_text(q.name, ZONE_TTL, "IN", "A", "127.0.0.1"))
            if rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY):
                answer.append(dns.rrset.from_text(q.name, ZONE_TTL, "IN", "AAAA", "::1"))
        if name in loopback_ptr:
            exists = True
            if rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                answer.append(dns.rrset.from_text(q.name, ZONE_TTL, "IN", "PTR", loopback_ptr[name].to_text()))
        if name == apex:
            if rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
                answer.append(_renamed(soa, q.name))
            if rdtype in (dns.rdatatype.NS, dns.rdatatype.ANY):
                answer.append(_renamed(ns, q.name))
        if answer:
            response.answer = answer
        else:
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority = [soa]
        return Answer(response, final=True, static=True)

    return special


def _soa_and_ns(apex: dns.name.Name) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
    soa = dns.rrset.from_text(apex, ZONE_TTL, "IN", "SOA",
                              f"{apex.to_text()} nobody.invalid. 1 3600 1200 604800 10800")
    ns = dns.rrset.from_text(apex, ZONE_TTL, "IN", "NS", apex.to_text())
    return soa, ns


def _renamed(rrset: dns.rrset.RRset, name: dns.name.Name) -> dns.rrset.RRset:
    """The apex's rrset owned by the question's name as asked (same name,
    maybe other case) so the answer compresses against the question."""
    copy = dns.rrset.RRset(name, rrset.rdclass, rrset.rdtype)
    copy.update(rrset)
    copy.ttl = rrset.ttl
    return copy
