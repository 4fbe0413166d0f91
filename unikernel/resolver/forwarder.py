"""The forwarder: the seed's ``forwarder(upstreams)`` process, with a cache.

A question that no local zone, hosts entry or special-use rule answered comes
here. For allowed clients it is answered from the cache, or relayed with RD
set to the upstream resolvers through the stub resolver (our own stack's UDP);
the answer goes back with RA set. Clients outside ``allow`` get ``None`` (the
server answers REFUSED), so the appliance is never an open resolver.

How upstreams are chosen, failed over, probed and downgraded (0x20, EDNS)
is :mod:`unikernel.resolver.upstream`; the first usable reply before
``deadline`` wins. Here:

- identical questions in flight are sent upstream once: later askers wait for
  the first one's outcome;
- no usable reply before the deadline: the stale answer when serve-stale
  allows it, else SERVFAIL (kept briefly in the cache), never silence; with
  serve-stale, a stale answer is given already after ``stale_answer_timeout``
  (RFC 8767's 1.8 s) while the refresh goes on, and, once a refresh got
  nothing, at once without asking again for ``stale_refresh_time`` (RFC 8767
  section 5's failure recheck timer; 30 s as BIND's stale-refresh-time);
- NXDOMAIN wildcarding is undone: at start and every ``wildcard_interval``
  each upstream is asked for random names that cannot exist; addresses it
  answers with (and those given as ``bogus_nxdomain``) turn answers that carry
  them back into NXDOMAIN.

With a :class:`~unikernel.resolver.validation.Validation` (DNSSEC on), every
question goes upstream with DO and CD, the reply is validated before it is
cached, and one upstream exchange serves clients with and without DO:

- secure and insecure answers are cached with their verdict (AD for secure
  ones, for clients that set DO or AD); RRSIGs and denial records are kept
  for DO clients only;
- a bogus answer is a SERVFAIL with its Extended DNS Error, cached for the
  validation's ``bogus_ttl``;
- a client that sets CD gets the data unvalidated (a secure or insecure
  cached answer when there is one; else a separate, unchecked entry);
- the chain of trust asks its DS and DNSKEY questions through the same
  upstreams (:meth:`Forwarder.fetch_for_validation`);
- at start, an upstream whose ``. DNSKEY`` comes without RRSIG is named in
  the log: it strips DNSSEC, so what it relays fails validation.

Answers are neither ``static`` (they age and change) nor ``final``.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import string
from collections.abc import Callable, Iterable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from unikernel.config import AccessList, parse_upstream
from unikernel.process import UNANSWERED_QTYPES, Answer, Endpoint
from unikernel.resolver.cache import (
    KIND_NEGATIVE,
    KIND_POSITIVE,
    KIND_SERVFAIL,
    SECURITY_BOGUS,
    SECURITY_SECURE,
    SECURITY_UNCHECKED,
    Cache,
    Entry,
    Sections,
    entry_key,
    on_chain,
    question_key,
    with_ttl,
)
from unikernel.resolver.dnssec.verdict import EDE_DNSSEC_BOGUS, EDE_UNSUPPORTED_ALGORITHM, EDE_UNSUPPORTED_DIGEST
from unikernel.resolver.scrub import scrub
from unikernel.resolver.stub import StubError, StubResolver
from unikernel.resolver.upstream import USABLE_RCODES, Upstream, Upstreams
from unikernel.resolver.validation import Validation, for_client, relayed, strips_dnssec

log = logging.getLogger("unikernel.resolver.forwarder")

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
_UNSUPPORTED = (EDE_UNSUPPORTED_ALGORITHM, EDE_UNSUPPORTED_DIGEST)


class Forwarder:
    """A process (``await forwarder(src=, dst=, query=)``) plus its lifecycle:
    ``start()`` runs the health and wildcard probes, ``stop()`` ends them.

    stub: the StubResolver that asks upstreams; cache: the Cache (its
    ``serve_stale`` decides whether stale answers are given), both handed in
    by the composition root (unikernel.main). clock: the injected clock
    (seconds, float) for the cache and health; the timeouts themselves run on
    the event loop's time.
    """

    def __init__(self, upstreams: Iterable[str | tuple[int, int]], *, stub: StubResolver, cache: Cache,
                 allow: AccessList | Iterable[str], deadline: float = 4.0, attempt_timeout: float = 1.0,
                 randomize_case: bool = True, bogus_nxdomain: Iterable[str] = (),
                 clock: Callable[[], float] | None = None,
                 rng: random.Random | None = None, max_fails: int = 2, down_time: float = 10.0,
                 probe_interval: float = 1.0, wildcard_interval: float = 3600.0,
                 wildcard_probes: int = 2, max_inflight: int = 1024, stale_answer_timeout: float = 1.8,
                 stale_refresh_time: float = 30.0, counters=None,
                 validation: Validation | None = None) -> None:
        self.clock = clock or _loop_time
        self.counters = counters if counters is not None else stub.counters
        self.upstreams = Upstreams((parse_upstream(u) if isinstance(u, str) else u for u in upstreams),
                                   counters=self.counters, clock=self.clock, randomize_case=randomize_case,
                                   attempt_timeout=attempt_timeout, max_fails=max_fails, down_time=down_time,
                                   probe_interval=probe_interval)
        self.cache = cache
        # one list for the slow path and the fast path's hook (which calls it
        # on every hit): replacing ``allowed`` assigns it (see the property)
        self._allowed = AccessList(allow.networks if isinstance(allow, AccessList) else allow)
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.randomize_case = randomize_case
        try:
            self.bogus_nxdomain = {ipaddress.ip_address(a).compressed for a in bogus_nxdomain}
        except ValueError as e:
            raise ValueError(f"bad bogus-nxdomain address: {e}") from None
        self.rng = rng or random.SystemRandom()
        self.stub = stub
        self.probe_interval = probe_interval
        self.wildcard_interval = wildcard_interval
        self.wildcard_probes = wildcard_probes
        self.max_inflight = max_inflight
        self.stale_answer_timeout = stale_answer_timeout
        self.stale_refresh_time = stale_refresh_time
        self.validation = validation
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._background: asyncio.Task | None = None
        self.fast_lookup = cache.fast_lookup(self._allowed)

    @property
    def allowed(self) -> AccessList:
        """Who may use forwarding and the cache."""
        return self._allowed

    @allowed.setter
    def allowed(self, allow: AccessList) -> None:
        # the held list takes the new networks: the fast path's hook calls it
        # directly, and sees the change as the slow path does
        self._allowed.assign(allow)

    # -- the process ---------------------------------------------------------
    async def __call__(self, *, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        c = self.counters
        if not self._allowed(int(src[0])):
            c["forward.refused"] += 1
            return None
        if len(query.question) != 1:
            return None
        q = query.question[0]
        if q.rdtype in UNANSWERED_QTYPES:
            c["forward.refused.qtype"] += 1
            return None
        do = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        validating = self.validation is not None
        cd = validating and bool(query.flags & dns.flags.CD)
        now = self.clock()
        entry = self.cache.get(q.name, q.rdtype, q.rdclass, do, now)
        if cd and (entry is None or entry.security == SECURITY_BOGUS):
            entry = self.cache.get(q.name, q.rdtype, q.rdclass, do, now, cd=True)
        if entry is None and validating and not do:
            entry = self._without_dnssec(self.cache.get(q.name, q.rdtype, q.rdclass, True, now, cd=cd))
        if entry is not None:
            c["forward.cache.hit"] += 1
            return Answer(self.cache.response(query, entry, now), source="cache")
        if self.cache.serve_stale:
            stale = self.cache.get_stale(q.name, q.rdtype, q.rdclass, do, now, cd=cd)
            if (stale is not None and stale.refresh_failed_at is not None
                    and now - stale.refresh_failed_at < self.stale_refresh_time):
                c["forward.stale.recheck_wait"] += 1
                return Answer(self.cache.response(query, stale, now, stale=True), source="cache")
        # validating, one exchange (with DO) answers clients with and without DO
        key = entry_key(question_key(q.name, q.rdtype, q.rdclass), do or validating, cd)
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self.max_inflight:
                c["forward.inflight_full.servfail"] += 1
                return Answer(_servfail(query))
            c["forward.cache.miss"] += 1
            task = asyncio.ensure_future(self._resolve(q.name, q.rdtype, q.rdclass, do, cd))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._resolved, key))
        else:
            c["forward.inflight.joined"] += 1
        if self.cache.serve_stale:
            # RFC 8767's client response timer: a stale answer at once if the
            # upstreams are slow; the refresh goes on and fills the cache.
            stale = self.cache.get_stale(q.name, q.rdtype, q.rdclass, do, now, cd=cd)
            if stale is not None:
                done, _ = await asyncio.wait({task}, timeout=self.stale_answer_timeout)
                if not done:
                    c["forward.stale.served_early"] += 1
                    return Answer(self.cache.response(query, stale, self.clock(), stale=True), source="cache")
        kind, value = await asyncio.shield(task)
        now = self.clock()
        if kind == "entry":
            entry, sections = value(do)
            return Answer(self.cache.response(query, entry, now, sections=sections))
        if kind == "stale":
            stale = self.cache.get_stale(q.name, q.rdtype, q.rdclass, do, now, cd=cd)
            return Answer(self.cache.response(query, stale or value, now, stale=True))
        if kind == "truncated":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC | dns.flags.RA
            response.set_rcode(value.message.rcode())
            return Answer(response)
        return Answer(_servfail(query))

    # -- one question, upstream -----------------------------------------------
    def _resolved(self, key, _task: asyncio.Future) -> None:
        self._inflight.pop(key, None)

    async def _resolve(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool, cd: bool = False):
        """("entry", entry_for) | ("stale", Entry) | ("truncated", Reply) |
        ("servfail", None); ``entry_for(do)`` is the Entry for a client with or
        without DO (validating, one reply serves both), with its records as
        made (Entry.fresh)."""
        loop = asyncio.get_running_loop()
        validating = self.validation is not None
        try:
            got = await self.upstreams.ask(self.stub, qname, rdtype, rdclass, do or validating,
                                           loop.time() + self.deadline, cd=validating)
        except Exception:  # noqa: BLE001 - a bug here must still give SERVFAIL, not silence
            log.exception("forwarding %s failed", qname)
            self.counters["forward.error"] += 1
            got = None
        now = self.clock()
        if got is not None:
            upstream, reply = got
            if reply.truncated:
                self.counters["forward.truncated.relayed"] += 1
                return "truncated", reply
            if reply.message.rcode() in USABLE_RCODES and validating:
                # scrubbed first: the validator judges (and the cache keeps) only what the
                # question's chain accounts for; denial proofs and their RRSIGs stay
                message = scrub(qname, rdtype, reply.message, self.counters)
                entry_for = await self._validated(upstream, qname, rdtype, rdclass, do, cd, message)
                self.counters["forward.answered"] += 1
                return "entry", entry_for
            if reply.message.rcode() in USABLE_RCODES:
                # only what the question's chain accounts for is cached and relayed
                message = scrub(qname, rdtype, self._undo_wildcard(upstream, reply.message), self.counters)
                entry = self.cache.entry_from_reply(qname, rdtype, rdclass, do, message, now)
                if entry is None:
                    fresh = _transient_entry(qname, rdtype, rdclass, do, message, now).fresh()
                else:
                    fresh = entry.fresh()
                    self.cache.store(entry)
                self.counters["forward.answered"] += 1
                return "entry", _always(fresh)
        stale = self.cache.get_stale(qname, rdtype, rdclass, do, now, cd=cd)
        if stale is not None:
            stale.refresh_failed_at = now
            self.counters["forward.stale.served"] += 1
            return "stale", stale
        for variant in {do, do or validating}:
            servfail = self.cache.servfail_entry(qname, rdtype, rdclass, variant, now)
            servfail.cd = cd
            self.cache.store(servfail)
        self.counters["forward.servfail"] += 1
        return "servfail", None

    async def _validated(self, upstream: Upstream, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool,
                         cd: bool, message: dns.message.Message) -> Callable[[bool], tuple[Entry, Sections]]:
        """The reply (asked with DO and CD) validated, and ``entry_for(do)``:
        its entry for clients with or without DO, made and cached when first
        asked for (for CD, cached unvalidated apart)."""
        assert self.validation is not None
        verdict = None if cd else await self.validation.check(qname, rdtype, message)
        now = self.clock()
        entries: dict[bool, tuple[Entry, Sections]] = {}
        if verdict is not None and verdict.is_bogus:
            ede = (verdict.ede or EDE_DNSSEC_BOGUS, verdict.reason[:200])
            for variant in (True, False):
                bogus = self.cache.bogus_entry(qname, rdtype, rdclass, variant, now, self.validation.bogus_ttl, ede)
                entries[variant] = bogus.fresh()
                self.cache.store(bogus)
            return entries.__getitem__
        security = verdict.security.value if verdict is not None else SECURITY_UNCHECKED
        # an answer insecure only for an algorithm or digest we lack says so
        # (RFC 8914 codes 1 and 2), as information beside NOERROR
        note = ((verdict.ede, verdict.reason[:200]) if verdict is not None and verdict.ede in _UNSUPPORTED
                else None)
        if security != SECURITY_SECURE:
            message = self._undo_wildcard(upstream, message)   # a signed answer is no rewrite
        # RFC 4035 5.3.3: kept no longer than the signatures it rests on are valid
        left = (None if verdict is None or verdict.valid_until is None
                else max(int(verdict.valid_until - self.validation.wall_clock()), 0))

        def entry_for(variant: bool) -> tuple[Entry, Sections]:
            if variant not in entries:
                entries[variant] = self._validated_entry(qname, rdtype, rdclass, variant, cd, message, security,
                                                         left, now, note)
            return entries[variant]

        entry_for(do)
        return entry_for

    def _validated_entry(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool, cd: bool,
                         message: dns.message.Message, security: str, left: int | None, now: float,
                         note: tuple[int, str] | None) -> tuple[Entry, Sections]:
        shown = relayed(message, rdtype, do)
        entry = self.cache.entry_from_reply(qname, rdtype, rdclass, do, shown, now)
        keep = entry is not None
        if entry is None:
            entry = _transient_entry(qname, rdtype, rdclass, do, shown, now)
        entry.security, entry.cd, entry.ede = security, cd, note
        if left is not None and left < entry.ttl:
            entry.ttl = left
            entry.answer, entry.authority = ([with_ttl(r, min(r.ttl, left)) for r in section]
                                             for section in (entry.answer, entry.authority))
        fresh = entry.fresh()
        if keep:
            self.cache.store(entry)
        return fresh

    def _without_dnssec(self, entry: Entry | None) -> Entry | None:
        """A client without DO asks what one with DO had answered: the same
        entry without RRSIG, NSEC and NSEC3, cached in its own place."""
        if entry is None or entry.kind == KIND_SERVFAIL:
            return None
        rdtype = entry.question[1]
        copy = Entry(entry.kind, entry.rcode, for_client(entry.answer, rdtype), for_client(entry.authority, rdtype),
                     [], entry.stored_at, entry.ttl, entry.question, False, security=entry.security, ede=entry.ede,
                     cd=entry.cd)
        self.cache.store(copy)
        self.counters["forward.cache.hit_without_dnssec"] += 1
        return copy

    async def fetch_for_validation(self, name: dns.name.Name, rdtype: int) -> dns.message.Message | None:
        """The chain of trust's DS and DNSKEY questions, asked with DO and CD
        through the upstreams; None when no usable reply came."""
        loop = asyncio.get_running_loop()
        got = await self.upstreams.ask(self.stub, name, rdtype, dns.rdataclass.IN, True,
                                       loop.time() + self.deadline, cd=True)
        if got is None or got[1].truncated or got[1].message.rcode() not in USABLE_RCODES:
            return None
        return got[1].message

    async def check_dnssec_upstreams(self) -> None:
        """Names, once, each upstream whose ``. DNSKEY`` comes without RRSIG."""
        async def check(upstream: Upstream) -> None:
            try:
                reply = await self.stub.query(upstream.endpoint, dns.name.root, dns.rdatatype.DNSKEY, do=True,
                                              cd=True, timeout=self.attempt_timeout * 2, use_0x20=False)
            except (StubError, OSError, ValueError):
                return                       # silence is the health probes' business
            if reply.message.rcode() == dns.rcode.NOERROR and strips_dnssec(reply.message):
                self.counters["forward.upstream.strips_dnssec"] += 1
                log.warning("upstream %s strips DNSSEC (no RRSIG with the root's DNSKEY): what it relays "
                            "fails validation, so answers through it are SERVFAIL", upstream.name)

        await asyncio.gather(*(check(u) for u in self.upstreams))

    async def probe_health(self) -> None:
        """Asks each upstream that is down whether it answers again."""
        await self.upstreams.probe_health(self.stub)

    # -- NXDOMAIN wildcarding ------------------------------------------------------
    def _random_name(self) -> dns.name.Name:
        label = "".join(self.rng.choice(string.ascii_lowercase) for _ in range(self.rng.randint(12, 16)))
        return dns.name.from_text(label + ".")

    async def probe_wildcards(self) -> None:
        """Asks every upstream for names that cannot exist; the addresses it
        answers them with are remembered as its NXDOMAIN rewrites."""
        async def probe(upstream: Upstream) -> None:
            for _ in range(self.wildcard_probes):
                name = self._random_name()
                for rdtype in _ADDRESS_TYPES:
                    try:
                        reply = await self.stub.query(upstream.endpoint, name, rdtype,
                                                      timeout=self.attempt_timeout * 2, use_0x20=False)
                    except (StubError, OSError, ValueError):
                        continue
                    if reply.message.rcode() != dns.rcode.NOERROR:
                        continue
                    found = {rd.address for r in reply.message.answer if r.rdtype == rdtype for rd in r}
                    new = found - upstream.bogus
                    if new and len(upstream.bogus) < 64:
                        upstream.bogus |= new
                        self.counters["forward.wildcard.detected"] += 1
                        log.warning("upstream %s rewrites NXDOMAIN (answered %s with %s): such answers "
                                    "become NXDOMAIN again", upstream.name, name, ", ".join(sorted(new)))

        await asyncio.gather(*(probe(u) for u in self.upstreams))

    def _undo_wildcard(self, upstream: Upstream, message: dns.message.Message) -> dns.message.Message:
        if not (upstream.bogus or self.bogus_nxdomain) or message.rcode() != dns.rcode.NOERROR:
            return message
        bogus = upstream.bogus | self.bogus_nxdomain
        for rrset in message.answer:
            if rrset.rdtype in _ADDRESS_TYPES and any(
                    ipaddress.ip_address(rd.address).compressed in bogus for rd in rrset):
                self.counters["forward.bogus_nxdomain"] += 1
                nx = dns.message.Message(id=message.id)
                nx.flags = message.flags
                nx.set_rcode(dns.rcode.NXDOMAIN)
                return nx
        return message

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Starts the background probes on the running loop (wildcard probes
        at once, then every ``wildcard_interval``; health every ``probe_interval``)."""
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(self._run_probes())

    async def _run_probes(self) -> None:
        loop = asyncio.get_running_loop()
        next_wildcard = loop.time()
        if self.validation is not None:
            try:
                await self.check_dnssec_upstreams()
            except Exception:  # noqa: BLE001 - a probe bug must not end the probing
                log.exception("DNSSEC upstream check failed")
        while True:
            try:
                if loop.time() >= next_wildcard:
                    next_wildcard = loop.time() + self.wildcard_interval
                    await self.probe_wildcards()
                await self.probe_health()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a probe bug must not end the probing
                log.exception("upstream probe failed")
            await asyncio.sleep(self.probe_interval)

    async def stop(self) -> None:
        task, self._background = self._background, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for question in list(self._inflight.values()):
            question.cancel()

    close = stop        # the name main.serve's lifecycle calls


def forwarder(upstreams, **options) -> Forwarder:
    """The seed's ``forwarder(upstreams)``: a Process (the Forwarder is
    callable) that also has ``start``/``stop`` and ``fast_lookup``."""
    return Forwarder(upstreams, **options)


def _servfail(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    response.set_rcode(dns.rcode.SERVFAIL)
    return response


def _transient_entry(qname, rdtype, rdclass, do, message: dns.message.Message, now: float) -> Entry:
    """A usable reply the cache will not keep (TTL 0, no SOA...), shaped as an
    entry so it is answered the same way."""
    answer = on_chain(qname, rdtype, message.answer)
    kind = KIND_POSITIVE if answer and message.rcode() == dns.rcode.NOERROR else KIND_NEGATIVE
    return Entry(kind, message.rcode(), [with_ttl(r, r.ttl) for r in answer],
                 [with_ttl(r, r.ttl) for r in message.authority],
                 [with_ttl(r, r.ttl) for r in message.additional if r.rdtype != dns.rdatatype.OPT],
                 now, 0, (qname.canonicalize(), rdtype, rdclass), do)


def _always(fresh: tuple[Entry, Sections]) -> Callable[[bool], tuple[Entry, Sections]]:
    return lambda _do: fresh


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
