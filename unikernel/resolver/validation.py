"""The forwarder's side of DNSSEC: what it does with the validator's verdicts.

- :meth:`Validation.check` validates an upstream reply on the wall clock
  (RRSIG validity is in seconds since the epoch, not the loop's time) and
  logs a bogus outcome once per zone per ``log_interval``;
- :func:`relayed` is what of an upstream reply goes to clients: the answer,
  the authority's SOA and denial records (the parts that are validated), no
  additional section; for a client without DO no RRSIG, NSEC or NSEC3
  (RFC 4035 3.2.1) unless the question asks for that type;
- :func:`ede_option` is the RFC 8914 option a bogus SERVFAIL carries;
- :func:`strips_dnssec` tells whether an upstream's answer for the signed
  root's keys came without signatures (checked at start).

The chain of trust behind the validator fetches through the forwarder's
upstreams (``Forwarder.fetch_for_validation``); main wires the two.
"""
from __future__ import annotations

import collections
import logging
from collections import OrderedDict
from collections.abc import Callable

import dns.edns
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

from unikernel.resolver.dnssec.chain import BOGUS_TTL
from unikernel.resolver.dnssec.validator import Validator
from unikernel.resolver.dnssec.verdict import EDE_DNSSEC_BOGUS, Verdict, bogus

log = logging.getLogger("unikernel.resolver.validation")

BOGUS_LOG_INTERVAL = 60.0          # seconds between two log lines about one zone
MAX_LOGGED_ZONES = 1024            # zones whose last log line time is remembered
_DNSSEC_TYPES = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3})
_PROOF_TYPES = frozenset({dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.NSEC3})


class Validation:
    def __init__(self, validator: Validator, *, wall_clock: Callable[[], float], counters=None,
                 log_interval: float = BOGUS_LOG_INTERVAL, bogus_ttl: int = BOGUS_TTL) -> None:
        self.validator = validator
        self.wall_clock = wall_clock
        self.bogus_ttl = bogus_ttl
        self.counters = counters if counters is not None else collections.Counter()
        self.log_interval = log_interval
        self._logged: OrderedDict[dns.name.Name | None, float] = OrderedDict()

    async def check(self, qname: dns.name.Name, rdtype: int, message: dns.message.Message) -> Verdict:
        now = self.wall_clock()
        try:
            verdict = await self.validator.validate(qname, rdtype, message, now)
        except Exception:  # noqa: BLE001 - a validator bug fails closed: SERVFAIL, never unvalidated data
            self.counters["dnssec.error"] += 1
            log.exception("DNSSEC validation of %s failed", qname)
            verdict = bogus(EDE_DNSSEC_BOGUS, "validation failed", None)
        if verdict.is_bogus:
            self._log_bogus(qname, rdtype, verdict, now)
        return verdict

    def _log_bogus(self, qname: dns.name.Name, rdtype: int, verdict: Verdict, now: float) -> None:
        last = self._logged.get(verdict.zone)
        if last is not None and now - last < self.log_interval:
            self.counters["dnssec.bogus.log_suppressed"] += 1
            return
        self._logged[verdict.zone] = now
        self._logged.move_to_end(verdict.zone)
        while len(self._logged) > MAX_LOGGED_ZONES:
            self._logged.popitem(last=False)
            self.counters["dnssec.bogus.log_zones_evicted"] += 1
        log.warning("DNSSEC bogus: %s %s (zone %s): %s; answered SERVFAIL (EDE %s)", qname,
                    dns.rdatatype.RdataType.make(rdtype).name, verdict.zone, verdict.reason, verdict.ede)


def for_client(rrsets: list[dns.rrset.RRset], rdtype: int) -> list[dns.rrset.RRset]:
    """The RRsets a client without DO gets: no RRSIG, NSEC or NSEC3 unless
    it asked for that type."""
    return [r for r in rrsets if r.rdtype not in _DNSSEC_TYPES or r.rdtype == rdtype]


def relayed(message: dns.message.Message, rdtype: int, do: bool) -> dns.message.Message:
    """What of a validated (or, for CD, unvalidated) upstream reply is relayed."""
    copy = dns.message.Message(id=message.id)
    copy.flags = message.flags
    copy.set_rcode(message.rcode())
    copy.answer = list(message.answer)
    copy.authority = [r for r in message.authority if r.rdtype in _PROOF_TYPES
                      or (r.rdtype == dns.rdatatype.RRSIG and r.covers in _PROOF_TYPES)]
    if not do:
        copy.answer = for_client(copy.answer, rdtype)
        copy.authority = for_client(copy.authority, rdtype)
    return copy


def ede_option(verdict: Verdict) -> dns.edns.EDEOption:
    code = dns.edns.EDECode.make(verdict.ede) if verdict.ede is not None else dns.edns.EDECode.DNSSEC_BOGUS
    return dns.edns.EDEOption(code, verdict.reason[:200] or None)


def strips_dnssec(reply: dns.message.Message) -> bool:
    """Whether a reply to ``. DNSKEY`` (asked with DO and CD) lacks the RRSIG
    every DNSSEC-aware server sends with it."""
    return not any(r.rdtype == dns.rdatatype.RRSIG and r.covers == dns.rdatatype.DNSKEY for r in reply.answer)
