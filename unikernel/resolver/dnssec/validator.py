"""A whole response, validated (RFC 4035 5): which RRsets must be signed,
by which zone, and which denial proof an answer needs.

- each RRset of the answer on the question's chain (the name, its CNAME
  targets, DNAMEs above them) is checked against its signer's keys; an
  unsigned one is acceptable only where the chain proves the name insecure
  (a CNAME synthesised from a checked DNAME needs no signature);
- an RRset expanded from a wildcard (RRSIG labels fewer than the owner's)
  also needs the proof that the name itself does not exist;
- NXDOMAIN and NODATA (at the end of the chain) need an NSEC or NSEC3 proof
  signed by the zone the SOA belongs to, or a chain proving that zone insecure.

The verdict is the worst of the parts: bogus, else insecure, else secure.
"""
from __future__ import annotations

import collections

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from unikernel.resolver.cache import on_chain
from unikernel.resolver.dnssec import nsec, nsec3
from unikernel.resolver.dnssec.chain import ChainOfTrust, Work, rrsigs_in, verified_denial
from unikernel.resolver.dnssec.signatures import Budget, Checked, verify_rrset, wildcard_source
from unikernel.resolver.dnssec.verdict import (
    EDE_DNSSEC_BOGUS,
    EDE_NSEC_MISSING,
    EDE_RRSIGS_MISSING,
    Security,
    Verdict,
    bogus,
    combine,
    insecure,
    secure,
)

# Questions whose answers are not validated (as Unbound: RRSIGs are never
# signed themselves, ANY is a mix of whatever the upstream had).
UNVALIDATED_TYPES = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.ANY})


class Validator:
    def __init__(self, chain: ChainOfTrust, *, counters=None) -> None:
        self.chain = chain
        self.counters = counters if counters is not None else collections.Counter()

    async def validate(self, qname: dns.name.Name, rdtype: int, message: dns.message.Message,
                       now: float) -> Verdict:
        """The verdict on ``message``, an upstream's NOERROR or NXDOMAIN reply
        to (qname, rdtype) asked with DO and CD."""
        if rdtype in UNVALIDATED_TYPES:
            return insecure(f"{dns.rdatatype.RdataType.make(rdtype).name} answers are not validated")
        work = Work()
        qname = qname.canonicalize()
        # what is relayed (the forwarder's on_chain), so what must be valid
        answer = on_chain(qname, rdtype, [r for r in message.answer if r.rdtype != dns.rdatatype.RRSIG])
        parts: list[Verdict] = []
        dnames = [r for r in answer if r.rdtype == dns.rdatatype.DNAME]
        for rrset in answer:
            if rrset.rdtype == dns.rdatatype.CNAME and _synthesised(rrset, dnames):
                continue                     # vouched for by the DNAME's own check
            parts.append(await self._rrset(rrset, rrsigs_in(message.answer, rrset.name, rrset.rdtype),
                                           message, now, work))
        final = _chain_end(qname, rdtype, answer)
        answered = any(r.name == final and r.rdtype == rdtype for r in answer)
        if message.rcode() == dns.rcode.NXDOMAIN or not answered:
            parts.append(await self._denial(final, rdtype, message, message.rcode() == dns.rcode.NXDOMAIN,
                                            now, work))
        verdict = combine(parts)
        self.counters[f"dnssec.{verdict.security.value}"] += 1
        return verdict

    async def _rrset(self, rrset: dns.rrset.RRset, sigs: list, message: dns.message.Message, now: float,
                     work: Work) -> Verdict:
        if not sigs:
            state = await self.chain.state_at(rrset.name, now, work)
            if state.security is Security.SECURE:
                return bogus(EDE_RRSIGS_MISSING, f"{rrset.name} {rrset.rdtype.name} is unsigned "
                             f"in the signed zone {state.zone}", state.zone)
            return state.verdict
        signer = sigs[0].signer.canonicalize()
        if not rrset.name.is_subdomain(signer):
            return bogus(EDE_DNSSEC_BOGUS, f"{rrset.name} signed by {signer}, not an enclosing zone", signer)
        state = await self.chain.state_at(signer, now, work)
        if state.security is not Security.SECURE:
            return state.verdict
        if state.zone != signer or state.keys is None:
            return bogus(EDE_DNSSEC_BOGUS, f"{rrset.name} signed by {signer}, which is not a zone", signer)
        checked = verify_rrset(rrset, sigs, signer, state.keys, now, work.budget)
        if not isinstance(checked, Checked):
            return checked
        until = min(float(checked.expiration), state.verdict.valid_until or float("inf"))
        source = wildcard_source(rrset.name, checked.rrsig)
        if source is not None:
            outcome = _no_closer(message, rrset.name, source, signer, state.keys, now, work.budget)
            if outcome is None:
                return bogus(EDE_NSEC_MISSING, f"{rrset.name} comes from a wildcard with no proof that it does "
                             "not exist", signer)
            if outcome == "insecure":
                return insecure(f"{rrset.name} comes from a wildcard over an opt-out span", signer)
        return secure(signer, until)

    async def _denial(self, name: dns.name.Name, rdtype: int, message: dns.message.Message, nxdomain: bool,
                      now: float, work: Work) -> Verdict:
        soa = next((r for r in message.authority if r.rdtype == dns.rdatatype.SOA), None)
        signed = [sig for r in message.authority if r.rdtype == dns.rdatatype.RRSIG for sig in r]
        soa_sigs = [sig for sig in signed if soa is not None and sig.type_covered == dns.rdatatype.SOA]
        signer_of = soa_sigs or [sig for sig in signed if sig.type_covered in (dns.rdatatype.NSEC,
                                                                                 dns.rdatatype.NSEC3)]
        what = "NXDOMAIN" if nxdomain else "NODATA"
        if not signer_of:
            state = await self.chain.state_at(soa.name if soa is not None else name, now, work)
            if state.security is Security.SECURE:
                return bogus(EDE_RRSIGS_MISSING if soa is not None else EDE_NSEC_MISSING,
                             f"unsigned {what} for {name} from the signed zone {state.zone}", state.zone)
            return state.verdict
        zone = signer_of[0].signer.canonicalize()
        if not name.is_subdomain(zone):
            return bogus(EDE_DNSSEC_BOGUS, f"{what} for {name} signed by {zone}, not an enclosing zone", zone)
        state = await self.chain.state_at(zone, now, work)
        if state.security is not Security.SECURE:
            return state.verdict
        if state.zone != zone or state.keys is None:
            return bogus(EDE_DNSSEC_BOGUS, f"{what} for {name} signed by {zone}, which is not a zone", zone)
        until = state.verdict.valid_until or float("inf")
        if soa is not None:
            checked = verify_rrset(soa, soa_sigs, zone, state.keys, now, work.budget)
            if not isinstance(checked, Checked):
                return checked
            until = min(until, float(checked.expiration))
        nsecs, nsec3s, _ttl, proofs_until = verified_denial(message, zone, state.keys, now, work.budget)
        until = min(until, proofs_until)
        if nsecs:
            proven = (nsec.proves_name_error(nsecs, name, zone) if nxdomain
                      else nsec.proves_nodata(nsecs, name, rdtype))
            return secure(zone, until) if proven else bogus(EDE_DNSSEC_BOGUS, f"the NSECs do not prove {what} "
                                                            f"for {name}", zone)
        if nsec3s:
            try:
                usable = nsec3.Nsec3Set.of(nsec3s, zone)
            except nsec3.TooManyIterations as e:
                return insecure(str(e), zone)
            if usable is None:
                return insecure(f"no NSEC3 of {zone} uses a known hash", zone)
            if nxdomain:
                outcome = nsec3.name_error(usable, name)
            else:
                outcome = nsec3.nodata(usable, name, rdtype)
            if outcome == "secure":
                return secure(zone, until)
            if outcome == "insecure":
                return insecure(f"{name} lies in an opt-out span of {zone}", zone)
            return bogus(EDE_DNSSEC_BOGUS, f"the NSEC3s do not prove {what} for {name}", zone)
        return bogus(EDE_NSEC_MISSING, f"{what} for {name} without a signed NSEC or NSEC3", zone)


def _no_closer(message: dns.message.Message, owner: dns.name.Name, source: dns.name.Name, zone: dns.name.Name,
               keys, now: float, budget: Budget) -> str | None:
    """Whether the authority section proves that a wildcard answer's owner
    does not exist: "secure", "insecure" (NSEC3 opt-out, or too many
    iterations), None (no proof)."""
    nsecs, nsec3s, _ttl, _until = verified_denial(message, zone, keys, now, budget)
    if nsecs:
        return "secure" if nsec.proves_no_closer(nsecs, owner) else None
    if nsec3s:
        try:
            usable = nsec3.Nsec3Set.of(nsec3s, zone)
        except nsec3.TooManyIterations:
            return "insecure"
        return nsec3.no_closer(usable, owner, source) if usable is not None else None
    return None


def _synthesised(cname: dns.rrset.RRset, dnames: list[dns.rrset.RRset]) -> bool:
    """A CNAME that the DNAME above its owner makes (RFC 6672 5.3.1)."""
    for dname in dnames:
        if cname.name.is_subdomain(dname.name) and cname.name != dname.name:
            try:
                expected = cname.name.relativize(dname.name).concatenate(dname[0].target)
            except dns.name.NameTooLong:
                continue
            if len(cname) == 1 and cname[0].target == expected:
                return True
    return False


def _chain_end(qname: dns.name.Name, rdtype: int, answer: list[dns.rrset.RRset]) -> dns.name.Name:
    """Where the question's CNAME chain (if any) ends."""
    name = qname
    for _ in range(len(answer) + 1):
        if rdtype == dns.rdatatype.CNAME:
            return name
        step = next((r for r in answer if r.name == name and r.rdtype == dns.rdatatype.CNAME), None)
        if step is None:
            return name
        name = step[0].target
    return name
