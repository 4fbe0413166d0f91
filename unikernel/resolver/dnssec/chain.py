"""The chain of trust, built through the upstreams (RFC 4035 5.1-5.2), after
Unbound's ``val_utils.c`` and its key cache.

:meth:`ChainOfTrust.state_at` says, for a name, which zone's keys apply there
and whether they are trusted: it starts at the closest trust anchor (its
DNSKEY set checked against the anchor) and walks down one label at a time,
asking for the DS set at each name (``fetch(name, DS)``):

- a DS set signed by the zone above: the child is a signed zone; its DNSKEY
  set must be signed by a key a DS matches (``fetch(name, DNSKEY)``);
- no DS, proven by an NSEC/NSEC3 denial signed by the zone above: either the
  name is a delegation (insecure from there down: RFC 4035 5.2) or it is just
  a name inside the zone above (the walk goes on with the same keys);
- anything else is bogus.

What it learns is cached per name until the smallest TTL, clamped to the
expiration of the signatures relied on; a bogus outcome for ``bogus_ttl``
(Unbound's val-bogus-ttl). A walk asked for by many answers at once runs
once, and so does each fetch. Work per answer is bounded by :class:`Work`.
"""
from __future__ import annotations

import asyncio
import collections
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import dns.message
import dns.name
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.rrset

from unikernel.resolver.dnssec import nsec, nsec3
from unikernel.resolver.dnssec.anchors import Anchor, TrustAnchors
from unikernel.resolver.dnssec.signatures import (
    Budget,
    Checked,
    unusable_ds,
    verify_dnskeys,
    verify_rrset,
)
from unikernel.resolver.dnssec.verdict import (
    EDE_DNSKEY_MISSING,
    EDE_DNSSEC_BOGUS,
    EDE_NSEC_MISSING,
    Security,
    Verdict,
    bogus,
    insecure,
    secure,
)

Fetch = Callable[[dns.name.Name, int], Awaitable["dns.message.Message | None"]]
FETCHES_PER_ANSWER = 24          # DS/DNSKEY lookups one answer may cause (cached ones are free)
BOGUS_TTL = 60                   # Unbound's val-bogus-ttl
MAX_KEY_TTL = 86400
MAX_NAMES = 4096                 # names whose chain state is kept


@dataclass
class Work:
    """What one answer may still cost: lookups and signature checks."""
    fetches_left: int = FETCHES_PER_ANSWER
    budget: Budget = field(default_factory=Budget)


@dataclass(frozen=True, slots=True)
class ZoneState:
    """At a name: the verdict of the chain down to it, the zone whose keys
    apply there (the insecure cut, or where it failed), those keys when
    secure, and when this stops being true."""
    verdict: Verdict
    zone: dns.name.Name
    keys: dns.rdataset.Rdataset | None
    expires_at: float

    @property
    def security(self) -> Security:
        return self.verdict.security


class ChainOfTrust:
    def __init__(self, anchors: TrustAnchors, fetch: Fetch, *, bogus_ttl: int = BOGUS_TTL,
                 max_names: int = MAX_NAMES, counters=None) -> None:
        self.anchors = anchors
        self.fetch = fetch
        self.bogus_ttl = bogus_ttl
        self.max_names = max_names
        self.counters = counters if counters is not None else collections.Counter()
        self._states: OrderedDict[dns.name.Name, ZoneState] = OrderedDict()
        self._walks: dict[dns.name.Name, asyncio.Future] = {}
        self._fetches: dict[tuple[dns.name.Name, int], asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._states)

    # -- the cache of states ------------------------------------------------
    def _cached(self, name: dns.name.Name, now: float) -> ZoneState | None:
        state = self._states.get(name)
        if state is None:
            return None
        if state.expires_at <= now:
            del self._states[name]
            return None
        self._states.move_to_end(name)
        return state

    def _store(self, name: dns.name.Name, state: ZoneState) -> None:
        self._states[name] = state
        self._states.move_to_end(name)
        while len(self._states) > self.max_names:
            self._states.popitem(last=False)
            self.counters["dnssec.chain.evict"] += 1

    def forget(self) -> None:
        self._states.clear()

    # -- walking ------------------------------------------------------------
    async def state_at(self, name: dns.name.Name, now: float, work: Work) -> ZoneState:
        name = name.canonicalize()
        cached = self._cached(name, now)
        if cached is not None:
            self.counters["dnssec.chain.hit"] += 1
            return cached
        walk = self._walks.get(name)
        if walk is None:
            walk = asyncio.ensure_future(self._walk(name, now, work))
            self._walks[name] = walk
            walk.add_done_callback(self._walk_done(name))
        else:
            self.counters["dnssec.chain.joined"] += 1
        return await asyncio.shield(walk)

    def _walk_done(self, name: dns.name.Name) -> Callable[[asyncio.Future], None]:
        def done(_walk: asyncio.Future) -> None:
            self._walks.pop(name, None)
        return done

    def _fetch_done(self, key: tuple[dns.name.Name, int]) -> Callable[[asyncio.Future], None]:
        def done(_fetch: asyncio.Future) -> None:
            self._fetches.pop(key, None)
        return done

    async def _walk(self, name: dns.name.Name, now: float, work: Work) -> ZoneState:
        anchor = self.anchors.closest(name)
        if anchor is None:
            return ZoneState(insecure(f"no trust anchor above {name}"), name, None, now + MAX_KEY_TTL)
        # start from the deepest name whose state is known, else at the anchor
        position, state = None, None
        depth = len(name)
        while depth >= len(anchor.name):
            candidate = name.split(depth)[1]
            state = self._cached(candidate, now)
            if state is not None:
                position = candidate
                break
            depth -= 1
        if state is None or position is None:
            state = await self._anchor_state(anchor, now, work)
            position = anchor.name
            self._store(position, state)
        while state.security is Security.SECURE and position != name:
            child = name.split(len(position) + 1)[1]
            state = await self._step(state, child, now, work)
            self._store(child, state)
            position = child
        return state

    async def _fetch(self, name: dns.name.Name, rdtype: int, work: Work) -> dns.message.Message | None:
        key = (name, rdtype)
        pending = self._fetches.get(key)
        if pending is None:
            if work.fetches_left <= 0:
                self.counters["dnssec.chain.fetch_budget_spent"] += 1
                return None
            work.fetches_left -= 1
            self.counters["dnssec.chain.fetch"] += 1
            pending = asyncio.ensure_future(self.fetch(name, rdtype))
            self._fetches[key] = pending
            pending.add_done_callback(self._fetch_done(key))
        try:
            return await asyncio.shield(pending)
        except Exception:  # noqa: BLE001 - a failed lookup is a failed chain, never a crash
            self.counters["dnssec.chain.fetch_error"] += 1
            return None

    def _failed(self, verdict: Verdict, zone: dns.name.Name, now: float) -> ZoneState:
        return ZoneState(verdict, zone, None, now + self.bogus_ttl)

    def _secure(self, zone: dns.name.Name, keys: dns.rrset.RRset, checked: Checked, ttl: int,
                now: float) -> ZoneState:
        expires = min(now + min(ttl, MAX_KEY_TTL), float(checked.expiration))
        return ZoneState(secure(zone, float(checked.expiration)), zone, keys, expires)

    async def _anchor_state(self, anchor: Anchor, now: float, work: Work) -> ZoneState:
        zone = anchor.name
        reply = await self._fetch(zone, dns.rdatatype.DNSKEY, work)
        found = _rrset_and_sigs(reply, zone, dns.rdatatype.DNSKEY)
        if found is None:
            return self._failed(bogus(EDE_DNSKEY_MISSING, f"no DNSKEY set for trust anchor {zone}", zone), zone, now)
        dnskeys, sigs = found
        if anchor.ds:
            result = verify_dnskeys(zone, dnskeys, sigs, anchor.ds, now, work.budget)
        else:
            trusted = [k for k in dnskeys if k in anchor.dnskeys]
            if not trusted:
                return self._failed(bogus(EDE_DNSKEY_MISSING, f"no DNSKEY of {zone} is its trust anchor", zone),
                                    zone, now)
            result = verify_rrset(dnskeys, sigs, zone, dns.rdataset.from_rdata_list(dnskeys.ttl, trusted),
                                  now, work.budget)
        if isinstance(result, Checked):
            return self._secure(zone, dnskeys, result, dnskeys.ttl, now)
        if result.security is Security.INSECURE:
            return ZoneState(result, zone, None, now + MAX_KEY_TTL)
        return self._failed(result, zone, now)

    async def _step(self, above: ZoneState, child: dns.name.Name, now: float, work: Work) -> ZoneState:
        """The state at ``child`` given the (secure) state one label up."""
        zone, keys = above.zone, above.keys
        assert keys is not None
        reply = await self._fetch(child, dns.rdatatype.DS, work)
        if reply is None or reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return self._failed(bogus(EDE_DNSSEC_BOGUS, f"DS lookup for {child} failed", child), child, now)
        found = _rrset_and_sigs(reply, child, dns.rdatatype.DS)
        if found is not None and reply.rcode() == dns.rcode.NOERROR:
            ds_set, sigs = found
            checked = verify_rrset(ds_set, sigs, zone, keys, now, work.budget)
            if not isinstance(checked, Checked):
                return self._failed(checked, child, now)
            return await self._zone_keys(child, ds_set, checked, now, work)
        # no DS: the zone above must prove it, and say whether child is a cut
        nsecs, nsec3s, ttl, until = verified_denial(reply, zone, keys, now, work.budget)
        kind = None
        if nsecs:
            kind = nsec.delegation_kind(nsecs, child)
        elif nsec3s:
            try:
                usable = nsec3.Nsec3Set.of(nsec3s, zone)
            except nsec3.TooManyIterations as e:
                return ZoneState(insecure(str(e), zone), zone, None, now + max(ttl, 1))
            kind = nsec3.delegation_kind(usable, child) if usable is not None else None
        else:
            return self._failed(bogus(EDE_NSEC_MISSING, f"no signed denial of a DS at {child}", zone), child, now)
        expires = min(above.expires_at, now + max(ttl, 1), until)
        if kind == "insecure":
            return ZoneState(insecure(f"{child} is delegated without DS", child), child, None, expires)
        if kind == "not a cut":
            return ZoneState(above.verdict, zone, keys, expires)
        return self._failed(bogus(EDE_DNSSEC_BOGUS, f"the denial of a DS at {child} does not hold", zone), child, now)

    async def _zone_keys(self, zone: dns.name.Name, ds_set: dns.rrset.RRset, ds_checked: Checked, now: float,
                         work: Work) -> ZoneState:
        unsupported = unusable_ds(zone, ds_set)
        if unsupported is not None:          # insecure, whatever its DNSKEY set says (RFC 4035 5.2)
            return ZoneState(unsupported, zone, None, now + min(ds_set.ttl, MAX_KEY_TTL))
        reply = await self._fetch(zone, dns.rdatatype.DNSKEY, work)
        found = _rrset_and_sigs(reply, zone, dns.rdatatype.DNSKEY)
        if found is None:
            return self._failed(bogus(EDE_DNSKEY_MISSING, f"no DNSKEY set for {zone}", zone), zone, now)
        dnskeys, sigs = found
        result = verify_dnskeys(zone, dnskeys, sigs, ds_set, now, work.budget)
        if isinstance(result, Checked):
            state = self._secure(zone, dnskeys, result, min(dnskeys.ttl, ds_set.ttl), now)
            return ZoneState(state.verdict, zone, dnskeys,
                             min(state.expires_at, float(ds_checked.expiration)))
        if result.security is Security.INSECURE:
            return ZoneState(result, zone, None, now + min(ds_set.ttl, MAX_KEY_TTL))
        return self._failed(result, zone, now)


def rrsigs_in(section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: int) -> list:
    return [sig for r in section if r.rdtype == dns.rdatatype.RRSIG and r.name == name
            for sig in r if sig.type_covered == rdtype]


def _rrset_and_sigs(reply: dns.message.Message | None, name: dns.name.Name, rdtype: int):
    if reply is None:
        return None
    for rrset in reply.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset, rrsigs_in(reply.answer, name, rdtype)
    return None


def verified_denial(reply: dns.message.Message, zone: dns.name.Name, keys: dns.rdataset.Rdataset, now: float,
                    budget: Budget) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset], int, float]:
    """The NSEC and NSEC3 RRsets of the authority section whose signatures by
    ``zone`` verify; the smallest TTL among them (and the SOA), and the
    earliest expiration of their signatures. The others are dropped."""
    nsecs: list[dns.rrset.RRset] = []
    nsec3s: list[dns.rrset.RRset] = []
    ttl = MAX_KEY_TTL
    until = float("inf")
    for rrset in reply.authority:
        if rrset.rdtype not in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.SOA):
            continue
        if not rrset.name.is_subdomain(zone):
            continue
        if rrset.rdtype == dns.rdatatype.SOA:
            ttl = min(ttl, rrset.ttl, rrset[0].minimum)
            continue
        checked = verify_rrset(rrset, rrsigs_in(reply.authority, rrset.name, rrset.rdtype), zone, keys, now, budget)
        if not isinstance(checked, Checked):
            continue
        ttl = min(ttl, rrset.ttl)
        until = min(until, float(checked.expiration))
        (nsecs if rrset.rdtype == dns.rdatatype.NSEC else nsec3s).append(rrset)
    return nsecs, nsec3s, ttl, until
