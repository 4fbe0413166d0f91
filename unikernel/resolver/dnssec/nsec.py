"""NSEC denial proofs (RFC 4035 5.4, RFC 6840 4), after Unbound's ``val_nsec.c``.

Every function takes NSEC RRsets that have already been checked against the
zone's keys and answers whether they prove what is asked; they never fetch.
"""
from __future__ import annotations

from collections.abc import Iterable

import dns.name
import dns.rdatatype
import dns.rrset

WILDCARD = dns.name.Name((b"*",))


def _types(nsec: dns.rrset.RRset) -> set[int]:
    rd = nsec[0]
    return {t for window, bitmap in rd.windows for i, byte in enumerate(bitmap)
            for bit in range(8) if byte & (0x80 >> bit) for t in (window * 256 + i * 8 + bit,)}


def types_at(nsec: dns.rrset.RRset) -> set[int]:
    """The types the NSEC says exist at its owner."""
    return _types(nsec)


def covers(nsec: dns.rrset.RRset, name: dns.name.Name) -> bool:
    """Whether ``name`` falls strictly between the NSEC's owner and its next
    name in canonical order (the last NSEC of a zone wraps to the apex)."""
    owner, nxt = nsec.name, nsec[0].next
    if owner < nxt:
        return owner < name < nxt
    return name > owner or name < nxt          # the zone's last NSEC


def _is_delegation(nsec: dns.rrset.RRset) -> bool:
    types = _types(nsec)
    return dns.rdatatype.NS in types and dns.rdatatype.SOA not in types


def _usable_for(nsec: dns.rrset.RRset, name: dns.name.Name) -> bool:
    """RFC 6840 4.1: an NSEC at a delegation (NS without SOA) or at a DNAME
    says nothing about names below its owner."""
    if name.is_subdomain(nsec.name) and name != nsec.name:
        types = _types(nsec)
        if dns.rdatatype.DNAME in types or _is_delegation(nsec):
            return False
    return True


def closest_encloser(nsec: dns.rrset.RRset, name: dns.name.Name) -> dns.name.Name:
    """The deepest ancestor of ``name`` that the covering NSEC shows to exist:
    the longer common ancestor with its owner or with its next name."""
    best = 0
    for other in (nsec.name, nsec[0].next):
        common = name.fullcompare(other)[2]
        best = max(best, common)
    return name.split(best)[1]


def covering(nsecs: Iterable[dns.rrset.RRset], name: dns.name.Name) -> dns.rrset.RRset | None:
    for nsec in nsecs:
        if covers(nsec, name) and _usable_for(nsec, name):
            return nsec
    return None


def matching(nsecs: Iterable[dns.rrset.RRset], name: dns.name.Name) -> dns.rrset.RRset | None:
    for nsec in nsecs:
        if nsec.name == name:
            return nsec
    return None


def _empty_non_terminal(nsecs: Iterable[dns.rrset.RRset], name: dns.name.Name) -> bool:
    """An NSEC that jumps from before ``name`` to a name below it: ``name``
    exists with no data (RFC 4035 3.1.3.2's empty non-terminal)."""
    return any(nsec.name < name and nsec[0].next.is_subdomain(name) and nsec[0].next != name
               for nsec in nsecs)


def proves_name_error(nsecs: list[dns.rrset.RRset], name: dns.name.Name, zone: dns.name.Name) -> bool:
    """NXDOMAIN: ``name`` is covered, and so is the wildcard at its closest encloser."""
    cover = covering(nsecs, name)
    if cover is None or not name.is_subdomain(zone):
        return False
    encloser = closest_encloser(cover, name)
    if not encloser.is_subdomain(zone):
        return False
    wildcard = WILDCARD.concatenate(encloser)
    return covering(nsecs, wildcard) is not None


def proves_nodata(nsecs: list[dns.rrset.RRset], name: dns.name.Name, rdtype: int) -> bool:
    """NODATA: the NSEC at ``name`` lacks the type (and CNAME), or ``name`` is
    an empty non-terminal, or a wildcard matched it without the type."""
    exact = matching(nsecs, name)
    if exact is not None:
        types = _types(exact)
        if rdtype in types or dns.rdatatype.CNAME in types:
            return False
        if rdtype == dns.rdatatype.DS:
            return dns.rdatatype.SOA not in types or name == dns.name.root    # the parent's NSEC, not the child's
        # an NSEC from the parent side of a cut says nothing about the child's data
        return not _is_delegation(exact)
    if _empty_non_terminal(nsecs, name):
        return True
    cover = covering(nsecs, name)
    if cover is None:
        return False
    wildcard = matching(nsecs, WILDCARD.concatenate(closest_encloser(cover, name)))
    if wildcard is None:
        return False
    types = _types(wildcard)
    return rdtype not in types and dns.rdatatype.CNAME not in types


def proves_no_closer(nsecs: list[dns.rrset.RRset], name: dns.name.Name) -> bool:
    """A wildcard answer: ``name`` itself does not exist (RFC 4035 5.3.4)."""
    return covering(nsecs, name) is not None


def delegation_kind(nsecs: list[dns.rrset.RRset], name: dns.name.Name) -> str | None:
    """What a proven absence of DS at ``name`` means for the chain: "insecure"
    (a delegation without DS), "not a cut" (the name is in the parent zone,
    or does not exist), or None when the NSECs prove neither."""
    exact = matching(nsecs, name)
    if exact is not None:
        types = _types(exact)
        if dns.rdatatype.DS in types:
            return None
        if dns.rdatatype.NS in types and dns.rdatatype.SOA not in types:
            return "insecure"
        if dns.rdatatype.SOA in types:
            return None              # the child's own apex NSEC cannot deny its DS
        return "not a cut"
    if _empty_non_terminal(nsecs, name) or covering(nsecs, name) is not None:
        return "not a cut"
    return None
