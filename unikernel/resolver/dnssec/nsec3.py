"""NSEC3 denial proofs (RFC 5155 8, RFC 9276), after Unbound's ``val_nsec3.c``.

The NSEC3 RRsets given have been checked against the zone's keys. Hashing is
the costly part, so every proof first drops what it cannot use: records of
another zone, another hash algorithm than SHA-1, or other parameters than the
first usable record's (RFC 5155 8.2); and a zone whose NSEC3 records ask for
more than ``MAX_ITERATIONS`` iterations is treated as insecure (RFC 9276 3.2),
so no answer can make us hash for long. Hashes are remembered per proof.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import dns.name
import dns.rdatatype
import dns.rrset

from unikernel.resolver.dnssec.nsec import types_at

MAX_ITERATIONS = 150            # RFC 9276: above this, insecure (Unbound's val-nsec3-keysize-iterations)
SHA1 = 1
OPT_OUT = 0x01
WILDCARD = dns.name.Name((b"*",))


class TooManyIterations(Exception):
    """The zone's NSEC3 iterations are above MAX_ITERATIONS: treat as insecure."""


@dataclass
class Nsec3Set:
    """The usable NSEC3 records of one zone, with their shared parameters."""
    zone: dns.name.Name
    records: list[tuple[bytes, bytes, dns.rrset.RRset]]     # (owner hash, next hash, rrset)
    salt: bytes
    iterations: int
    _hashes: dict[dns.name.Name, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, rrsets: list[dns.rrset.RRset], zone: dns.name.Name) -> Nsec3Set | None:
        """None when no record is usable; raises TooManyIterations."""
        params = None
        records = []
        for rrset in rrsets:
            if rrset.name.parent() != zone or len(rrset) != 1:
                continue
            rd = rrset[0]
            if rd.algorithm != SHA1:
                continue
            if params is None:
                params = (rd.salt, rd.iterations)
            if (rd.salt, rd.iterations) != params:
                continue
            try:
                owner_hash = base64.b32hexdecode(rrset.name[0].upper())
            except ValueError:
                continue
            records.append((owner_hash, rd.next, rrset))
        if params is None or not records:
            return None
        if params[1] > MAX_ITERATIONS:
            raise TooManyIterations(f"{zone} uses {params[1]} NSEC3 iterations")
        return cls(zone, records, params[0] or b"", params[1])

    def hash(self, name: dns.name.Name) -> bytes:
        got = self._hashes.get(name)
        if got is None:
            digest = hashlib.sha1(name.to_digestable() + self.salt).digest()
            for _ in range(self.iterations):
                digest = hashlib.sha1(digest + self.salt).digest()
            self._hashes[name] = got = digest
        return got

    def matching(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        h = self.hash(name)
        for owner_hash, _next, rrset in self.records:
            if owner_hash == h:
                return rrset
        return None

    def covering(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        h = self.hash(name)
        for owner_hash, next_hash, rrset in self.records:
            if owner_hash < next_hash:
                if owner_hash < h < next_hash:
                    return rrset
            elif h > owner_hash or h < next_hash:        # the last record wraps around
                return rrset
        return None

    def closest_encloser(self, name: dns.name.Name) -> tuple[dns.name.Name, dns.rrset.RRset] | None:
        """RFC 5155 8.3: (closest encloser, the NSEC3 covering the next closer name)."""
        if not name.is_subdomain(self.zone):
            return None
        candidate = name
        while candidate != self.zone:
            parent = candidate.parent()
            match = self.matching(parent)
            if match is not None:
                types = types_at(match)
                if dns.rdatatype.DNAME in types or (dns.rdatatype.NS in types and dns.rdatatype.SOA not in types):
                    return None          # a delegation or DNAME cannot be an encloser (RFC 5155 8.3)
                cover = self.covering(candidate)
                return (parent, cover) if cover is not None else None
            candidate = parent
        return None


def opted_out(rrset: dns.rrset.RRset) -> bool:
    return bool(rrset[0].flags & OPT_OUT)


def name_error(nsec3: Nsec3Set, name: dns.name.Name) -> str | None:
    """RFC 5155 8.4: closest encloser proof, and the wildcard at it covered:
    "secure"; "insecure" when the next closer name lies in an opt-out span
    (an unsigned delegation could be there: RFC 5155 9.2, as Unbound); None
    when the proof does not hold."""
    found = nsec3.closest_encloser(name)
    if found is None:
        return None
    encloser, cover = found
    if nsec3.covering(WILDCARD.concatenate(encloser)) is None:
        return None
    return "insecure" if opted_out(cover) else "secure"


def nodata(nsec3: Nsec3Set, name: dns.name.Name, rdtype: int) -> str | None:
    """RFC 5155 8.5-8.7: "secure" when NODATA is proven, "insecure" when only
    an opt-out span covers the name (a DS question), None when nothing holds."""
    match = nsec3.matching(name)
    if match is not None:
        types = types_at(match)
        if rdtype in types or dns.rdatatype.CNAME in types:
            return None
        if rdtype == dns.rdatatype.DS and dns.rdatatype.SOA in types and name != dns.name.root:
            return None          # the child's apex record cannot deny the parent's DS
        return "secure"
    found = nsec3.closest_encloser(name)
    if found is None:
        return None
    encloser, cover = found
    if rdtype == dns.rdatatype.DS:
        return "insecure" if opted_out(cover) else None
    wildcard = nsec3.matching(WILDCARD.concatenate(encloser))
    if wildcard is not None:
        types = types_at(wildcard)
        if rdtype not in types and dns.rdatatype.CNAME not in types:
            return "secure"
    return None


def no_closer(nsec3: Nsec3Set, owner: dns.name.Name, encloser: dns.name.Name) -> str | None:
    """RFC 5155 8.8: a wildcard answer's next closer name is covered:
    "secure", or "insecure" when by an opt-out span; None when not covered."""
    if owner == encloser:
        return "secure"
    next_closer = owner.split(len(encloser) + 1)[1]
    cover = nsec3.covering(next_closer)
    if cover is None:
        return None
    return "insecure" if opted_out(cover) else "secure"


def delegation_kind(nsec3: Nsec3Set, name: dns.name.Name) -> str | None:
    """As :func:`unikernel.resolver.dnssec.nsec.delegation_kind`, from NSEC3:
    "insecure" (a delegation without DS, or an opt-out span over it), "not a
    cut", or None when nothing is proven."""
    match = nsec3.matching(name)
    if match is not None:
        types = types_at(match)
        if dns.rdatatype.DS in types or dns.rdatatype.SOA in types:
            return None
        if dns.rdatatype.NS in types:
            return "insecure"
        return "not a cut"
    found = nsec3.closest_encloser(name)
    if found is None:
        return None
    _encloser, cover = found
    # the next closer is covered: if it is ``name`` itself, ``name`` does not
    # exist unless an opt-out span hides an unsigned delegation there
    return "insecure" if opted_out(cover) else "not a cut"
