"""The upstream resolvers: their order, failover, health, and the downgrades
an upstream earns (after CoreDNS's forward plugin and RFC 5452).

- upstreams are tried in the order given, healthy ones first. An attempt that
  has no reply after ``attempt_timeout`` does not stop: the next upstream is
  asked as well and the first usable reply wins, until the deadline;
- an upstream that fails ``max_fails`` times in a row (silence, REFUSED,
  garbage) is marked down: it is skipped (used only when every upstream is
  down) until a health probe (``. NS``) gets a reply from it, or
  ``down_time`` has passed;
- 0x20 is used unless switched off; a reply that echoes the question in
  another case makes the question be asked again at once without 0x20 (while
  the first query still waits for a reply in the right case: the wrong one
  may be a forger's), and an upstream that does so CASE_MISMATCH_LIMIT times
  in a row loses 0x20 (logged), so a single forged reply cannot switch it off;
- an upstream that answers an EDNS query with FORMERR or NOTIMP and no OPT
  (RFC 6891 section 7) is asked without EDNS;
- a downgrade is not for good: after ``downgrade_recheck`` seconds (900, as
  Unbound's infra-host-ttl forgets what it learnt of a server) 0x20 and EDNS
  are tried again.

The queries themselves go through the stub resolver the caller hands in.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdatatype

from unikernel.resolver.stub import DEFAULT_PAYLOAD, CaseMismatch, Reply, StubError, StubResolver, StubTimeout

log = logging.getLogger("unikernel.resolver.upstream")

USABLE_RCODES = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
HEALTH_LOG_INTERVAL = 60.0     # seconds between two down/up log lines of one upstream
CASE_MISMATCH_LIMIT = 3        # wrong-case replies in a row before 0x20 goes off for an upstream
DOWNGRADE_RECHECK = 900.0      # seconds before 0x20 or EDNS is tried again (Unbound's infra-host-ttl)
# Replies about the question rather than the upstream: they say nothing about
# its health (else a client could sideline an upstream by asking such things).
_QUESTION_ERRORS = (dns.rcode.SERVFAIL, dns.rcode.FORMERR, dns.rcode.NOTIMP)


@dataclass(eq=False)
class Upstream:
    ip: int
    port: int
    use_0x20: bool = True
    case_mismatches: int = 0           # replies in the wrong case since the last right one
    edns: bool = True                  # off once it answers an EDNS query with FORMERR/NOTIMP
    downgraded_at: float = 0.0         # when 0x20 or EDNS last went off (the injected clock)
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


class Upstreams:
    """The upstreams in the order given, with their health. Iterable and
    indexable like the list it holds.

    clock: the injected clock (seconds, float) for health; the attempts'
    timeouts run on the event loop's time."""

    def __init__(self, endpoints: Iterable[tuple[int, int]], *, counters, clock: Callable[[], float],
                 randomize_case: bool = True, attempt_timeout: float = 1.0, max_fails: int = 2,
                 down_time: float = 10.0, probe_interval: float = 1.0,
                 downgrade_recheck: float = DOWNGRADE_RECHECK) -> None:
        self.upstreams = [Upstream(ip, port, use_0x20=randomize_case) for ip, port in endpoints]
        self.randomize_case = randomize_case
        self.downgrade_recheck = downgrade_recheck
        if not self.upstreams:
            raise ValueError("a forwarder needs at least one upstream")
        self.counters = counters
        self.clock = clock
        self.attempt_timeout = attempt_timeout
        self.max_fails = max_fails
        self.down_time = down_time
        self.probe_interval = probe_interval
        self.max_attempts = max(3, 2 * len(self.upstreams))
        # told (upstream name, seconds) for each answered query: the RTT metrics
        self.observe_rtt: Callable[[str, float], None] | None = None

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self.upstreams)

    def __len__(self) -> int:
        return len(self.upstreams)

    def __getitem__(self, index: int) -> Upstream:
        return self.upstreams[index]

    def order(self) -> list[Upstream]:
        """Healthy upstreams in the order given, then those down, soonest back first."""
        now = self.clock()
        self._recheck_downgrades(now)
        up = [u for u in self.upstreams if not u.is_down(now)]
        down = sorted((u for u in self.upstreams if u.is_down(now)), key=lambda u: u.down_until)
        return up + down

    def _recheck_downgrades(self, now: float) -> None:
        for upstream in self.upstreams:
            if (upstream.edns and (upstream.use_0x20 or not self.randomize_case)
                    or now - upstream.downgraded_at < self.downgrade_recheck):
                continue
            if not upstream.edns:
                upstream.edns = True
                self.counters["forward.upstream.edns_retry"] += 1
            if self.randomize_case and not upstream.use_0x20:
                upstream.use_0x20 = True
                upstream.case_mismatches = 0
                self.counters["forward.upstream.0x20_retry"] += 1

    def _downgraded(self, upstream: Upstream) -> None:
        upstream.downgraded_at = self.clock()

    async def ask(self, stub: StubResolver, qname: dns.name.Name, rdtype: int, rdclass: int, do: bool,
                  deadline: float, *, cd: bool = False) -> tuple[Upstream, Reply] | None:
        """The first usable reply as (Upstream, Reply); an error reply if that
        is all every upstream said; None when nothing came before ``deadline``
        (on the loop's time). ``cd``: ask with checking disabled."""
        loop = asyncio.get_running_loop()
        order = self.order()
        pending: dict[asyncio.Future, tuple[Upstream, float]] = {}
        again: list[Upstream] = []           # re-ask at once (0x20 or EDNS just switched off)
        plain_case: set[int] = set()         # upstreams (by id) re-asked without 0x20 for this question
        launched = 0
        failure: tuple[Upstream, Reply] | None = None
        error_replies = 0
        next_launch = loop.time()
        woken: asyncio.Future = loop.create_future()

        def case_mismatch(upstream: Upstream) -> None:
            # This question is asked again in plain case, at once. 0x20 goes off for
            # the upstream only after several mismatches in a row, so that one
            # forged reply (it must match ID and port) cannot switch it off.
            self.counters["forward.upstream.case_mismatch"] += 1
            upstream.case_mismatches += 1
            if upstream.use_0x20 and upstream.case_mismatches >= CASE_MISMATCH_LIMIT:
                upstream.use_0x20 = False
                self._downgraded(upstream)
                log.warning("upstream %s does not preserve letter case: 0x20 off for it", upstream.name)
            if id(upstream) in plain_case:
                return                       # a mismatch without 0x20: a forgery, ignore it
            plain_case.add(id(upstream))
            again.append(upstream)
            if not woken.done():
                woken.set_result(None)

        try:
            while True:
                t = loop.time()
                if t >= deadline:
                    return failure
                can_launch = launched < self.max_attempts or again
                if again or (can_launch and t >= next_launch):
                    if again:
                        upstream = again.pop()
                    else:
                        upstream = order[launched % len(order)]
                        launched += 1
                    attempt = asyncio.ensure_future(stub.query(
                        upstream.endpoint, qname, rdtype, rdclass, timeout=deadline - t,
                        do=do and upstream.edns, cd=cd,
                        use_0x20=upstream.use_0x20 and id(upstream) not in plain_case,
                        payload=DEFAULT_PAYLOAD if upstream.edns else None,
                        on_case_mismatch=functools.partial(case_mismatch, upstream)))
                    pending[attempt] = (upstream, t)
                    self.counters["forward.upstream.query"] += 1
                    next_launch = t + self.attempt_timeout
                if not pending:
                    if not can_launch:
                        return failure
                    next_launch = t          # nothing left to wait for: launch now, not spin
                    continue
                if woken.done():
                    woken = loop.create_future()
                wake = min(next_launch, deadline) if can_launch else deadline
                done, _ = await asyncio.wait([*pending, woken], timeout=max(wake - loop.time(), 0),
                                             return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    if finished is woken:
                        continue             # a wrong-case reply: the re-ask is launched above
                    upstream, started = pending.pop(finished)
                    try:
                        reply = finished.result()
                    except CaseMismatch:
                        continue             # counted when it came (case_mismatch)
                    except StubTimeout:
                        self.failed(upstream)
                        continue
                    except (StubError, OSError, ValueError) as e:
                        self.counters["forward.upstream.error"] += 1
                        log.debug("upstream %s: %s", upstream.name, e)
                        self.failed(upstream)
                        continue
                    if upstream.use_0x20 and id(upstream) not in plain_case:
                        upstream.case_mismatches = 0     # it kept our letter case
                    rcode = reply.message.rcode()
                    if rcode in USABLE_RCODES or reply.truncated:
                        self.succeeded(upstream)
                        if self.observe_rtt is not None:
                            self.observe_rtt(upstream.name, loop.time() - started)
                        return upstream, reply
                    if (rcode in (dns.rcode.FORMERR, dns.rcode.NOTIMP) and upstream.edns
                            and reply.message.edns < 0):
                        # an old server that does not know EDNS (RFC 6891 section 7);
                        # one that does puts an OPT in its error, and keeps EDNS
                        upstream.edns = False
                        self._downgraded(upstream)
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
                        self.failed(upstream)
                    failure = (upstream, reply)
                    error_replies += 1
                    if error_replies >= len(self.upstreams):
                        return failure
                    next_launch = loop.time()
        finally:
            woken.cancel()
            t = loop.time()
            for unanswered, (upstream, started) in pending.items():
                unanswered.cancel()
                if t - started >= self.attempt_timeout:
                    self.failed(upstream)     # silent for a whole attempt: counts against it

    def failed(self, upstream: Upstream) -> None:
        upstream.fails += 1
        self.counters["forward.upstream.fail"] += 1
        if upstream.fails >= self.max_fails:
            now = self.clock()
            if not upstream.is_down(now):
                if self._may_log_health(upstream, now):
                    log.warning("upstream %s is not answering: skipped until it does", upstream.name)
                self.counters["forward.upstream.marked_down"] += 1
            upstream.down_until = now + self.down_time

    def succeeded(self, upstream: Upstream) -> None:
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

    async def probe_health(self, stub: StubResolver) -> None:
        """Asks each upstream that is down for ``. NS``; any reply brings it back."""
        async def probe(upstream: Upstream) -> None:
            try:
                await stub.query(upstream.endpoint, dns.name.root, dns.rdatatype.NS,
                                      timeout=self.probe_interval, use_0x20=False)
            except (StubError, OSError, ValueError):
                self.counters["forward.probe.fail"] += 1
                return
            self.counters["forward.probe.ok"] += 1
            self.succeeded(upstream)

        down = [u for u in self.upstreams if u.fails >= self.max_fails]
        if down:
            await asyncio.gather(*(probe(u) for u in down))
