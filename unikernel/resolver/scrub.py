"""The scrubber: what of an upstream's authority and additional sections may
be relayed and cached (after Unbound's iterator/iter_scrub.c and RFC 2181
section 5.4.1's ranking: additional data is the least trusted, and only
what the answer itself points to is worth keeping).

The answer section is cut to the question's chain by
:func:`unikernel.resolver.cache.on_chain`; here, for the names on that chain
(the question's name and each CNAME target):

- authority keeps SOA, NS and DS RRsets owned by one of those names or an
  ancestor of one (the zones the answer speaks for: the question's
  bailiwick), then NSEC and NSEC3 RRsets inside such a zone (or one whose
  signature the answer carries), and the RRSIGs over what is kept;
- additional keeps A and AAAA RRsets (with their RRSIGs) only for names that
  a kept record points to (NS, MX, SRV and KX targets, as Unbound's
  mark_additional_rrset), and the address of a name server only when it lies
  inside the zone of its NS (Unbound's harden-glue).

Everything else is what a poisoner plants (records for other names, riding
along to be cached by every resolver behind us); it is dropped and counted
(``forward.scrub.authority`` / ``forward.scrub.additional``, one per RRset).
"""
from __future__ import annotations

from collections.abc import Iterable

import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

from unikernel.resolver.cache import key_inside, name_key, on_chain

_ZONE_TYPES = frozenset({dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.DS})
_DENIAL_TYPES = frozenset({dns.rdatatype.NSEC, dns.rdatatype.NSEC3})
_ADDRESS_TYPES = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA})
_RRSIG = dns.rdatatype.RRSIG


def scrub(qname: dns.name.Name, rdtype: int, message: dns.message.Message, counters) -> dns.message.Message:
    """``message`` with its authority and additional sections cut to what the
    question's chain accounts for (in place; returned for convenience).
    Names are compared as name keys (:func:`~unikernel.resolver.cache.name_key`)."""
    answer = on_chain(qname, rdtype, message.answer, counters)
    chain = {name_key(qname)}
    chain.update(name_key(rd.target) for rrset in answer if rrset.rdtype == dns.rdatatype.CNAME for rd in rrset)
    zones = _ancestors(chain)

    owners = [name_key(r.name) for r in message.authority]
    types = [_type_of(r) for r in message.authority]
    kept = {i for i, owner in enumerate(owners) if types[i] in _ZONE_TYPES and owner in zones}
    # the zones the kept SOA and NS records are for, and those that signed the
    # answer (a wildcard answer's NSEC3 comes with no SOA): denial proofs live there
    apexes = {owners[i] for i in kept if types[i] in (dns.rdatatype.SOA, dns.rdatatype.NS)}
    apexes.update(signer for signer in _signers((*answer, *message.authority)) if signer in zones)
    kept.update(i for i, owner in enumerate(owners) if types[i] in _DENIAL_TYPES and key_inside(owner, apexes))
    authority = [r for i, r in enumerate(message.authority) if i in kept]       # in their order

    glue_zones: dict[tuple[bytes, ...], set[tuple[bytes, ...]]] = {}   # an NS target -> the zones it serves
    pointed: set[tuple[bytes, ...]] = set()
    for rrset in (*answer, *authority):
        if rrset.rdtype == dns.rdatatype.NS:
            for rd in rrset:
                glue_zones.setdefault(name_key(rd.target), set()).add(name_key(rrset.name))
        elif rrset.rdtype in (dns.rdatatype.MX, dns.rdatatype.KX):
            pointed.update(name_key(rd.exchange) for rd in rrset)
        elif rrset.rdtype == dns.rdatatype.SRV:
            pointed.update(name_key(rd.target) for rd in rrset)
    additional = []
    for rrset in message.additional:
        if _type_of(rrset) not in _ADDRESS_TYPES:
            continue
        owner = name_key(rrset.name)
        if owner in pointed or key_inside(owner, glue_zones.get(owner, ())):
            additional.append(rrset)

    dropped_authority = len(message.authority) - len(authority)
    dropped_additional = len(message.additional) - len(additional)
    if dropped_authority:
        counters["forward.scrub.authority"] += dropped_authority
    if dropped_additional:
        counters["forward.scrub.additional"] += dropped_additional
    message.authority = authority
    message.additional = additional
    return message


def _type_of(rrset: dns.rrset.RRset) -> int:
    """The type an RRset is about: an RRSIG goes with the type it covers."""
    return rrset.covers if rrset.rdtype == _RRSIG else rrset.rdtype


def _signers(rrsets: Iterable[dns.rrset.RRset]) -> set[tuple[bytes, ...]]:
    return {name_key(rd.signer) for rrset in rrsets if rrset.rdtype == _RRSIG for rd in rrset}


def _ancestors(names: Iterable[tuple[bytes, ...]]) -> set[tuple[bytes, ...]]:
    """Every name given and every ancestor of one, the root included (name keys)."""
    return {name[cut:] for name in names for cut in range(len(name))}
