"""RRSIG checks (RFC 4035 5.3) and DS against DNSKEY (RFC 4035 5.2), after
Unbound's ``val_sigcrypt.c``; :mod:`.crypto` does the arithmetic with the
system's libcrypto.

Bounds (KeyTrap, CVE-2023-50387): at most ``MAX_RRSIGS_PER_RRSET`` signatures
are tried for one RRset, and every signature check of one answer is paid from
one :class:`Budget`; once it is spent the answer is bogus, however many keys
share a key tag.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.rdataset
import dns.rdatatype
import dns.rrset

from unikernel.resolver.dnssec import crypto
from unikernel.resolver.dnssec.verdict import (
    EDE_DNSKEY_MISSING,
    EDE_DNSSEC_BOGUS,
    EDE_RRSIGS_MISSING,
    EDE_SIGNATURE_EXPIRED,
    EDE_SIGNATURE_NOT_YET_VALID,
    EDE_UNSUPPORTED_ALGORITHM,
    EDE_UNSUPPORTED_DIGEST,
    Verdict,
    bogus,
    insecure,
    secure,
)

# RSASHA256, RSASHA512, ECDSAP256SHA256, ECDSAP384SHA384, ED25519, ED448
SUPPORTED_ALGORITHMS = frozenset(crypto.ALGORITHMS)
SUPPORTED_DIGESTS = frozenset(crypto.DS_DIGESTS)     # SHA-256, SHA-384
MAX_RRSIGS_PER_RRSET = 8
SIGNATURE_CHECKS_PER_ANSWER = 32                 # cryptographic verifications, whole chain included
_ZONE_KEY, _REVOKE, _PROTOCOL = 0x0100, 0x0080, 3


class Budget:
    """Signature verifications one answer may still cost."""

    def __init__(self, checks: int = SIGNATURE_CHECKS_PER_ANSWER) -> None:
        self.left = checks

    def spend(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass(frozen=True, slots=True)
class Checked:
    """An RRset whose signature verified: the RRSIG that did it."""
    rrsig: Any                  # an RRSIG rdata

    @property
    def expiration(self) -> int:
        return self.rrsig.expiration


def label_count(name: dns.name.Name) -> int:
    """RFC 4034 3.1.3: labels of an owner name, root and a leading ``*`` not counted."""
    count = len(name) - 1
    return count - 1 if name.is_wild() else count


def wildcard_source(owner: dns.name.Name, rrsig) -> dns.name.Name | None:
    """The closest encloser a wildcard answer was expanded from (the owner
    cut to the RRSIG's label count), or None when ``owner`` is not an expansion."""
    labels = label_count(owner)
    if rrsig.labels >= labels:
        return None
    return owner.split(rrsig.labels + 1)[1]


def verify_rrset(rrset: dns.rrset.RRset, rrsigs: Iterable, zone: dns.name.Name,
                 keys: dns.rdataset.Rdataset, now: float, budget: Budget) -> Checked | Verdict:
    """``rrset`` checked against the RRSIGs given (those by ``zone``), with the
    zone's validated ``keys``: :class:`Checked`, or a bogus Verdict naming
    the first reason among expired, not yet valid, no key, wrong signature."""
    owner = rrset.name
    candidates = [sig for sig in rrsigs
                  if sig.type_covered == rrset.rdtype and sig.signer == zone
                  and owner.is_subdomain(zone)][:MAX_RRSIGS_PER_RRSET]
    if not candidates:
        return bogus(EDE_RRSIGS_MISSING, f"no RRSIG by {zone} over {owner} {dns.rdatatype.to_text(rrset.rdtype)}",
                     zone)
    failure: Verdict | None = None
    for sig in candidates:
        if (sig.algorithm not in SUPPORTED_ALGORITHMS or sig.labels > label_count(owner)
                or sig.rdclass != rrset.rdclass):
            failure = failure or bogus(EDE_DNSSEC_BOGUS, f"unusable RRSIG over {owner}", zone)
            continue
        if now > sig.expiration:
            failure = failure or bogus(EDE_SIGNATURE_EXPIRED, f"RRSIG over {owner} expired", zone)
            continue
        if now < sig.inception:
            failure = failure or bogus(EDE_SIGNATURE_NOT_YET_VALID, f"RRSIG over {owner} not yet valid", zone)
            continue
        matching = [k for k in keys if k.algorithm == sig.algorithm and k.key_id() == sig.key_tag
                    and k.flags & _ZONE_KEY and k.protocol == _PROTOCOL
                    and (not k.flags & _REVOKE or rrset.rdtype == dns.rdatatype.DNSKEY)]
        if not matching:
            failure = failure or bogus(EDE_DNSKEY_MISSING, f"no DNSKEY {sig.key_tag} in {zone} for {owner}", zone)
            continue
        data = crypto.signed_data(owner, rrset.rdtype, rrset.rdclass, rrset, sig)
        for key in matching:
            if not budget.spend():
                return bogus(EDE_DNSSEC_BOGUS, "signature check budget spent", zone)
            try:
                verified = crypto.verify(sig.algorithm, key.key, sig.signature, data)
            except crypto.CryptoUnavailable as e:
                return bogus(EDE_DNSSEC_BOGUS, str(e), zone)
            except (crypto.UnsupportedAlgorithm, ValueError, struct.error, dns.exception.DNSException):
                continue
            if verified:
                return Checked(sig)
        failure = failure or bogus(EDE_DNSSEC_BOGUS, f"RRSIG over {owner} does not verify", zone)
    assert failure is not None
    return failure


def ds_matches(zone: dns.name.Name, key, ds) -> bool:
    if key.algorithm != ds.algorithm or key.key_id() != ds.key_tag:
        return False
    return crypto.ds_digest(zone, key, ds.digest_type) == ds.digest


def unusable_ds(zone: dns.name.Name, ds_set: Iterable) -> Verdict | None:
    """The insecure verdict for a DS set none of whose records has an
    algorithm and digest we support (RFC 6840 5.2), else None."""
    ds_list = list(ds_set)
    if any(ds.digest_type in SUPPORTED_DIGESTS and ds.algorithm in SUPPORTED_ALGORITHMS for ds in ds_list):
        return None
    unknown_algorithm = any(ds.algorithm not in SUPPORTED_ALGORITHMS for ds in ds_list)
    return insecure("no DS with an algorithm and digest supported", zone,
                    EDE_UNSUPPORTED_ALGORITHM if unknown_algorithm else EDE_UNSUPPORTED_DIGEST)


def verify_dnskeys(zone: dns.name.Name, dnskeys: dns.rrset.RRset, rrsigs: Iterable,
                   ds_set: Iterable, now: float, budget: Budget) -> Checked | Verdict:
    """The zone's DNSKEY RRset against the DS records (or the anchor's) that
    vouch for it (RFC 4035 5.2): signed by a key that a usable DS matches.
    A DS set with no algorithm or digest we support makes the zone insecure
    (RFC 6840 5.2), not bogus."""
    unsupported = unusable_ds(zone, ds_set)
    if unsupported is not None:
        return unsupported
    usable = [ds for ds in ds_set if ds.digest_type in SUPPORTED_DIGESTS and ds.algorithm in SUPPORTED_ALGORITHMS]
    entry_keys = [k for k in dnskeys if k.flags & _ZONE_KEY and any(ds_matches(zone, k, ds) for ds in usable)]
    if not entry_keys:
        return bogus(EDE_DNSKEY_MISSING, f"no DNSKEY of {zone} matches its DS", zone)
    vouched = dns.rdataset.from_rdata_list(dnskeys.ttl, entry_keys)
    return verify_rrset(dnskeys, rrsigs, zone, vouched, now, budget)


def key_matches_anchor(key, anchor_keys: Iterable) -> bool:
    """For a DNSKEY trust anchor: the key is one of the anchor's (same rdata)."""
    return any(key == anchor for anchor in anchor_keys)


def verdict_of(result: Checked | Verdict, zone: dns.name.Name) -> Verdict:
    if isinstance(result, Checked):
        return secure(zone, float(result.expiration))
    return result
