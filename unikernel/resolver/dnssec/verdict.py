"""What a DNSSEC check concluded, and the Extended DNS Error (RFC 8914) a
client is told when it is bogus."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import dns.name


class Security(enum.Enum):
    SECURE = "secure"          # a chain of signatures from a trust anchor
    INSECURE = "insecure"      # provably unsigned (no DS, proven), or only unknown algorithms
    BOGUS = "bogus"            # should be signed and is not, or the signatures fail
    UNCHECKED = "unchecked"    # relayed for a CD query: not validated at all


# RFC 8914 info codes this validator gives
EDE_UNSUPPORTED_ALGORITHM = 1
EDE_UNSUPPORTED_DIGEST = 2
EDE_DNSSEC_BOGUS = 6
EDE_SIGNATURE_EXPIRED = 7
EDE_SIGNATURE_NOT_YET_VALID = 8
EDE_DNSKEY_MISSING = 9
EDE_RRSIGS_MISSING = 10
EDE_NSEC_MISSING = 12


@dataclass(frozen=True, slots=True)
class Verdict:
    security: Security
    ede: int | None = None               # RFC 8914 code (bogus; informational when insecure)
    reason: str = ""                     # for the log and the EDE's text
    zone: dns.name.Name | None = None    # where the check failed (or the chain ended)
    valid_until: float | None = None     # earliest RRSIG expiration relied on (clamps cache TTLs)

    @property
    def is_bogus(self) -> bool:
        return self.security is Security.BOGUS


def secure(zone: dns.name.Name | None = None, valid_until: float | None = None) -> Verdict:
    return Verdict(Security.SECURE, zone=zone, valid_until=valid_until)


def insecure(reason: str, zone: dns.name.Name | None = None, ede: int | None = None) -> Verdict:
    return Verdict(Security.INSECURE, ede=ede, reason=reason, zone=zone)


def bogus(ede: int, reason: str, zone: dns.name.Name | None = None) -> Verdict:
    return Verdict(Security.BOGUS, ede=ede, reason=reason, zone=zone)


def combine(verdicts: list[Verdict]) -> Verdict:
    """The verdict of an answer made of parts: bogus if any part is, else
    insecure if any part is, else secure (valid until the earliest part)."""
    for v in verdicts:
        if v.is_bogus:
            return v
    for v in verdicts:
        if v.security is Security.INSECURE:
            return v
    untils = [v.valid_until for v in verdicts if v.valid_until is not None]
    zone = verdicts[-1].zone if verdicts else None
    return secure(zone, min(untils) if untils else None)
