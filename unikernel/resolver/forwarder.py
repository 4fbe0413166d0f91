"""The forwarder: the seed's ``forwarder(upstreams)`` process, with a cache.

A question that no local zone, hosts entry or special-use rule answered comes
here. For allowed clients it is answered from the cache, or relayed with RD
set to the upstream resolvers through the stub resolver (our own stack's UDP);
the answer goes back with RA set. Clients outside ``allow`` get ``None`` (the
server answers REFUSED), so the appliance is never an open resolver.

How upstreams are used (after CoreDNS's forward plugin and RFC 5452):

- upstreams are tried in the order given, healthy ones first. An attempt that
  has no reply after ``attempt_timeout`` does not stop: the next upstream is
  asked as well and the first usable reply wins, until ``deadline``;
- an upstream that fails ``max_fails`` times in a row (silence, REFUSED,
  garbage) is marked down: it is skipped (used only when every upstream is
  down) until a health probe (``. NS``, every ``probe_interval``) gets a reply
  from it, or ``down_time`` has passed;
- 0x20 is used unless switched off; a reply that echoes the question in
  another case makes the forwarder ask that question again without 0x20, and
  an upstream that does so CASE_MISMATCH_LIMIT times in a row loses 0x20
  (logged), so a single forged reply cannot switch it off;
- identical questions in flight are sent upstream once: later askers wait for
  the first one's outcome;
- no usable reply before the deadline: the stale answer when serve-stale
  allows it, else SERVFAIL (kept briefly in the cache), never silence; with
  serve-stale, a stale answer is given already after ``stale_answer_timeout``
  (RFC 8767's 1.8 s) while the refresh goes on;
- NXDOMAIN wildcarding is undone: at start and every ``wildcard_interval``
  each upstream is asked for random names that cannot exist; addresses it
  answers with (and those given as ``bogus_nxdomain``) turn answers that carry
  them back into NXDOMAIN.

Answers are neither ``static`` (they age and change) nor ``final``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from unikernel.process import Answer, Endpoint
from unikernel.resolver.cache import (
    KIND_NEGATIVE,
    KIND_POSITIVE,
    Cache,
    Entry,
    entry_key,
    on_chain,
    question_key,
    with_ttl,
)
from unikernel.resolver.stub import CaseMismatch, Reply, StubError, StubResolver, StubTimeout

log = logging.getLogger("unikernel.resolver.forwarder")

_USABLE = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
HEALTH_LOG_INTERVAL = 60.0     # seconds between two down/up log lines of one upstream
CASE_MISMATCH_LIMIT = 3        # wrong-case replies in a row before 0x20 goes off for an upstream
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
# Zone transfers, and meta types no question may carry (the server answers
# them FORMERR/NOTIMP itself; upstream they would only provoke errors).
_NEVER_FORWARDED = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.OPT,
                              dns.rdatatype.TSIG, dns.rdatatype.TKEY, dns.rdatatype.MAILA,
                              dns.rdatatype.MAILB})
# Replies about the question rather than the upstream: they say nothing about
# its health (else a client could sideline an upstream by asking such things).
_QUESTION_ERRORS = (dns.rcode.SERVFAIL, dns.rcode.FORMERR, dns.rcode.NOTIMP)


def parse_upstream(text: str, default_port: int = 53) -> tuple[int, int]:
    """``ADDR``, ``ADDR:PORT`` or ``ADDR#PORT`` (dnsmasq's spelling) -> (ip as
    int, port). IPv4 only: the stack speaks IPv4. Raises ValueError."""
    text = text.strip()
    addr, sep, port_text = text.replace("#", ":").partition(":")
    try:
        ip = int(ipaddress.IPv4Address(addr))
        port = int(port_text) if sep else default_port
    except ValueError:
        raise ValueError(f"bad upstream {text!r}: want ADDR[:PORT] with an IPv4 address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad upstream {text!r}: port out of range")
    return ip, port


def yes_or_no(text: str) -> bool:
    """A switch's value as the command line (or a kernel command-line word
    such as ``serve-stale=yes``) spells it."""
    value = text.strip().lower()
    if value in ("yes", "y", "true", "on", "1"):
        return True
    if value in ("no", "n", "false", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


class AccessList:
    """Which clients may use forwarding (and the cache): ``acl(ip_int)``."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | str]) -> None:
        nets = []
        for n in networks:
            try:
                nets.append(ipaddress.IPv4Network(n, strict=False))
            except ValueError as e:
                raise ValueError(f"bad allowed network {str(n)!r}: {e}") from None
        self.networks = nets
        self._pairs = tuple((int(n.network_address), int(n.netmask)) for n in nets)

    def __call__(self, ip: int) -> bool:
        for network, mask in self._pairs:
            if ip & mask == network:
                return True
        return False

    def __repr__(self) -> str:
        return f"AccessList({[str(n) for n in self.networks]})"


@dataclass(eq=False)
class Upstream:
    ip: int
    port: int
    use_0x20: bool = True
    case_mismatches: int = 0           # replies in the wrong case since the last right one
    edns: bool = True                  # off once it answers an EDNS query with FORMERR/NOTIMP
    fails: int = 0                     # consecutive failures
    down_until: float = 0.0            # on the injected clock; 0: not down
    bogus: set[str] = field(default_factory=set)   # addresses it answers non-existent names with
    health_logged_at: float | None = None          # when its last down/up line was logged

    @property
    def name(self) -> str:
        return f"{ipaddress.IPv4Address(self.ip)}#{self.port}"

    @property
    def endpoint(self) -> tuple[int, int]:
        return self.ip, self.port

    def is_down(self, now: float) -> bool:
        return self.down_until > now


class Forwarder:
    """A process (``await forwarder(src=, dst=, query=)``) plus its lifecycle:
    ``start()`` runs the health and wildcard probes, ``stop()`` ends them.

    clock: the injected clock (seconds, float) for the cache and health; the
    timeouts themselves run on the event loop's time.
    """

    def __init__(self, stack, upstreams: Iterable[str | tuple[int, int]], *, cache: Cache,
                 allow: AccessList | Iterable[str], deadline: float = 4.0, attempt_timeout: float = 1.0,
                 randomize_case: bool = True, bogus_nxdomain: Iterable[str] = (),
                 serve_stale: bool = False, clock: Callable[[], float] | None = None,
                 rng: random.Random | None = None, max_fails: int = 2, down_time: float = 10.0,
                 probe_interval: float = 1.0, wildcard_interval: float = 3600.0,
                 wildcard_probes: int = 2, max_inflight: int = 1024, stale_answer_timeout: float = 1.8,
                 counters=None, observe_rtt: Callable[[str, float], None] | None = None,
                 stub: StubResolver | None = None) -> None:
        self.upstreams = [Upstream(*(parse_upstream(u) if isinstance(u, str) else u), use_0x20=randomize_case)
                          for u in upstreams]
        if not self.upstreams:
            raise ValueError("a forwarder needs at least one upstream")
        self.stack = stack
        self.cache = cache
        if serve_stale:
            cache.serve_stale = True
        self.allowed = allow if isinstance(allow, AccessList) else AccessList(allow)
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.randomize_case = randomize_case
        try:
            self.bogus_nxdomain = {ipaddress.ip_address(a).compressed for a in bogus_nxdomain}
        except ValueError as e:
            raise ValueError(f"bad bogus-nxdomain address: {e}") from None
        self.clock = clock or _loop_time
        self.rng = rng or random.SystemRandom()
        self.counters = counters if counters is not None else stack.counters
        self.stub = stub or StubResolver(stack, counters=self.counters, rng=self.rng)
        self.max_fails = max_fails
        self.down_time = down_time
        self.probe_interval = probe_interval
        self.wildcard_interval = wildcard_interval
        self.wildcard_probes = wildcard_probes
        self.max_inflight = max_inflight
        self.stale_answer_timeout = stale_answer_timeout
        self.observe_rtt = observe_rtt      # (upstream name, seconds) of each answered upstream query
        self.max_attempts = max(3, 2 * len(self.upstreams))
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._background: asyncio.Task | None = None
        # looked up on every hit, so that replacing ``allowed`` takes effect
        # on the fast path as on the slow one
        self.fast_lookup = cache.fast_lookup(lambda ip: self.allowed(ip))

    # -- the process ---------------------------------------------------------
    async def __call__(self, *, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        c = self.counters
        if not self.allowed(int(src[0])):
            c["forward.refused"] += 1
            return None
        if len(query.question) != 1:
            return None
        q = query.question[0]
        if q.rdtype in _NEVER_FORWARDED:
            c["forward.refused.qtype"] += 1
            return None
        do = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        now = self.clock()
        entry = self.cache.get(q.name, q.rdtype, q.rdclass, do, now)
        if entry is not None:
            c["forward.cache.hit"] += 1
            return Answer(self.cache.response(query, entry, now), source="cache")
        key = entry_key(question_key(q.name, q.rdtype, q.rdclass), do)
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self.max_inflight:
                c["forward.inflight_full.servfail"] += 1
                return Answer(_servfail(query))
            c["forward.cache.miss"] += 1
            task = asyncio.ensure_future(self._resolve(q.name, q.rdtype, q.rdclass, do))
            self._inflight[key] = task
            task.add_done_callback(lambda _t, key=key: self._inflight.pop(key, None))
        else:
            c["forward.inflight.joined"] += 1
        if self.cache.serve_stale:
            # RFC 8767's client response timer: a stale answer at once if the
            # upstreams are slow; the refresh goes on and fills the cache.
            stale = self.cache.get_stale(q.name, q.rdtype, q.rdclass, do, now)
            if stale is not None:
                done, _ = await asyncio.wait({task}, timeout=self.stale_answer_timeout)
                if not done:
                    c["forward.stale.served_early"] += 1
                    return Answer(self.cache.response(query, stale, self.clock(), stale=True), source="cache")
        kind, value = await asyncio.shield(task)
        now = self.clock()
        if kind == "entry":
            return Answer(self.cache.response(query, value, now))
        if kind == "stale":
            return Answer(self.cache.response(query, value, now, stale=True))
        if kind == "truncated":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC | dns.flags.RA
            response.set_rcode(value.message.rcode())
            return Answer(response)
        return Answer(_servfail(query))

    # -- one question, upstream -----------------------------------------------
    async def _resolve(self, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool):
        """("entry", Entry) | ("stale", Entry) | ("truncated", Reply) | ("servfail", None)."""
        loop = asyncio.get_running_loop()
        try:
            got = await self._ask_upstreams(qname, rdtype, rdclass, do, loop.time() + self.deadline)
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
            if reply.message.rcode() in _USABLE:
                message = self._undo_wildcard(upstream, reply.message)
                entry = self.cache.entry_from_reply(qname, rdtype, rdclass, do, message, now)
                if entry is None:
                    entry = _transient_entry(qname, rdtype, rdclass, do, message, now)
                else:
                    self.cache.store(entry)
                self.counters["forward.answered"] += 1
                return "entry", entry
        stale = self.cache.get_stale(qname, rdtype, rdclass, do, now)
        if stale is not None:
            self.counters["forward.stale.served"] += 1
            return "stale", stale
        self.cache.store(self.cache.servfail_entry(qname, rdtype, rdclass, do, now))
        self.counters["forward.servfail"] += 1
        return "servfail", None

    def _order(self) -> list[Upstream]:
        now = self.clock()
        up = [u for u in self.upstreams if not u.is_down(now)]
        down = sorted((u for u in self.upstreams if u.is_down(now)), key=lambda u: u.down_until)
        return up + down

    async def _ask_upstreams(self, qname, rdtype, rdclass, do, deadline: float):
        """The first usable reply as (Upstream, Reply); a SERVFAIL-like reply if
        that is all every upstream said; None when nothing came in time."""
        loop = asyncio.get_running_loop()
        order = self._order()
        pending: dict[asyncio.Future, tuple[Upstream, float]] = {}
        again: list[Upstream] = []           # re-ask at once (0x20 or EDNS just switched off)
        plain_case: set[int] = set()         # upstreams (by id) re-asked without 0x20 for this question
        launched = 0
        failure: tuple[Upstream, Reply] | None = None
        refusals = 0
        next_launch = loop.time()
        try:
            while True:
                t = loop.time()
                if t >= deadline:
                    return failure
                can_launch = launched < self.max_attempts or again
                if can_launch and t >= next_launch:
                    if again:
                        upstream = again.pop()
                    else:
                        upstream = order[launched % len(order)]
                        launched += 1
                    attempt = asyncio.ensure_future(self.stub.query(
                        upstream.endpoint, qname, rdtype, rdclass, timeout=deadline - t,
                        do=do and upstream.edns,
                        use_0x20=upstream.use_0x20 and id(upstream) not in plain_case,
                        **({} if upstream.edns else {"payload": None})))
                    pending[attempt] = (upstream, t)
                    self.counters["forward.upstream.query"] += 1
                    next_launch = t + self.attempt_timeout
                if not pending:
                    if not can_launch:
                        return failure
                    next_launch = t          # nothing left to wait for: launch now, not spin
                    continue
                wake = min(next_launch, deadline) if can_launch else deadline
                done, _ = await asyncio.wait(list(pending), timeout=max(wake - loop.time(), 0),
                                             return_when=asyncio.FIRST_COMPLETED)
                for attempt in done:
                    upstream, started = pending.pop(attempt)
                    try:
                        reply = attempt.result()
                    except CaseMismatch:
                        # This question is asked again in plain case. 0x20 goes off for
                        # the upstream only after several mismatches in a row, so that one
                        # forged reply (it must match ID and port) cannot switch it off.
                        self.counters["forward.upstream.case_mismatch"] += 1
                        upstream.case_mismatches += 1
                        if upstream.use_0x20 and upstream.case_mismatches >= CASE_MISMATCH_LIMIT:
                            upstream.use_0x20 = False
                            log.warning("upstream %s does not preserve letter case: 0x20 off for it",
                                        upstream.name)
                        if id(upstream) in plain_case:
                            continue                 # a mismatch without 0x20: a forgery, ignore it
                        plain_case.add(id(upstream))
                        again.append(upstream)
                        next_launch = loop.time()
                        continue
                    except StubTimeout:
                        self._failed(upstream)
                        continue
                    except (StubError, OSError, ValueError) as e:
                        self.counters["forward.upstream.error"] += 1
                        log.debug("upstream %s: %s", upstream.name, e)
                        self._failed(upstream)
                        continue
                    if upstream.use_0x20 and id(upstream) not in plain_case:
                        upstream.case_mismatches = 0     # it kept our letter case
                    rcode = reply.message.rcode()
                    if rcode in _USABLE or reply.truncated:
                        self._succeeded(upstream)
                        if self.observe_rtt is not None:
                            self.observe_rtt(upstream.name, loop.time() - started)
                        return upstream, reply
                    if (rcode in (dns.rcode.FORMERR, dns.rcode.NOTIMP) and upstream.edns
                            and reply.message.edns < 0):
                        # an old server that does not know EDNS (RFC 6891 section 7);
                        # one that does puts an OPT in its error, and keeps EDNS
                        upstream.edns = False
                        log.warning("upstream %s rejects EDNS: asking it without", upstream.name)
                        self.counters["forward.upstream.edns_off"] += 1
                        again.append(upstream)
                        next_launch = loop.time()
                        continue
                    # SERVFAIL may be the far authorities' fault, FORMERR and
                    # NOTIMP the question's; REFUSED and the like mean this
                    # upstream will not serve us.
                    self.counters[f"forward.upstream.{dns.rcode.to_text(rcode).lower()}"] += 1
                    if rcode not in _QUESTION_ERRORS:
                        self._failed(upstream)
                    failure = (upstream, reply)
                    refusals += 1
                    if refusals >= len(self.upstreams):
                        return failure
                    next_launch = loop.time()
        finally:
            t = loop.time()
            for attempt, (upstream, started) in pending.items():
                attempt.cancel()
                if t - started >= self.attempt_timeout:
                    self._failed(upstream)     # silent for a whole attempt: counts against it

    # -- health --------------------------------------------------------------
    def _failed(self, upstream: Upstream) -> None:
        upstream.fails += 1
        self.counters["forward.upstream.fail"] += 1
        if upstream.fails >= self.max_fails:
            now = self.clock()
            if not upstream.is_down(now):
                if self._may_log_health(upstream, now):
                    log.warning("upstream %s is not answering: skipped until it does", upstream.name)
                self.counters["forward.upstream.marked_down"] += 1
            upstream.down_until = now + self.down_time

    def _succeeded(self, upstream: Upstream) -> None:
        if upstream.fails >= self.max_fails:
            if self._may_log_health(upstream, self.clock()):
                log.warning("upstream %s answers again", upstream.name)
            self.counters["forward.upstream.marked_up"] += 1
        upstream.fails = 0
        upstream.down_until = 0.0

    def _may_log_health(self, upstream: Upstream, now: float) -> bool:
        """Whether a down/up line may be logged for ``upstream`` now. Clients can
        make an upstream flap (names whose authorities never answer time it
        out), so the lines are limited to one per ``HEALTH_LOG_INTERVAL`` per
        upstream; the counters still count every change."""
        if upstream.health_logged_at is not None and now - upstream.health_logged_at < HEALTH_LOG_INTERVAL:
            self.counters["forward.upstream.log_suppressed"] += 1
            return False
        upstream.health_logged_at = now
        return True

    async def probe_health(self) -> None:
        """Asks each upstream that is down for ``. NS``; any reply brings it back."""
        async def probe(upstream: Upstream) -> None:
            try:
                await self.stub.query(upstream.endpoint, dns.name.root, dns.rdatatype.NS,
                                      timeout=self.probe_interval, use_0x20=False)
            except (StubError, OSError, ValueError):
                self.counters["forward.probe.fail"] += 1
                return
            self.counters["forward.probe.ok"] += 1
            self._succeeded(upstream)

        down = [u for u in self.upstreams if u.fails >= self.max_fails]
        if down:
            await asyncio.gather(*(probe(u) for u in down))

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
        for task in list(self._inflight.values()):
            task.cancel()

    close = stop        # the name main.serve's lifecycle calls


def forwarder(stack, upstreams, **options) -> Forwarder:
    """The seed's ``forwarder(upstreams)``: a Process (the Forwarder is
    callable) that also has ``start``/``stop`` and ``fast_lookup``."""
    return Forwarder(stack, upstreams, **options)


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


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
