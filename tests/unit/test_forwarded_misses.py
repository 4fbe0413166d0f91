"""Many distinct cache misses at once, through the whole miss path: the
server's slow path and its forwarded pool, the forwarder, the upstreams and
the stub resolver, over one fake stack whose upstream answers nothing until
it holds a given number of queries at once.

If anything on the way bounded or serialised the misses below what is
documented (a pool, a semaphore, an in-flight table, one query at a time to
an upstream), the upstream would never hold them all, would answer none, and
every client would get SERVFAIL at the deadline (10 s, never reached when
the path is right: the upstream answers as soon as it holds them all): so
"all answered" here means "all were upstream at the same time". (Written
while looking for what made bench/dot.py's misses slow, which was RRL, not
this path: with a pool bound of 64 put into the stub, as a check, the first
test fails.) Then the documented bounds
themselves: beyond ``max_forwarded`` (the server's forwarded pool) and
``max_inflight`` (the forwarder's in-flight table) a miss gets SERVFAIL at
once, counted, and never reaches the upstream.
"""
import asyncio
import random
from collections import Counter

import dns.message
import dns.rcode
import dns.rrset

from netstack.counters import Counters
from tests.unit.fake_stack import FakeUdp
from unikernel.process import processor_of_process
from unikernel.resolver.cache import Cache
from unikernel.resolver.forwarder import Forwarder
from unikernel.resolver.stub import StubResolver
from unikernel.serve.server import DnsServer

CLIENT_IP = 0xC0000263          # 192.0.2.99
SERVER_IP = 0xC0000202          # 192.0.2.2
UPSTREAM = (0xC0000201, 53)     # 192.0.2.1
MISSES = 300                    # above dnsperf's 64 in flight, below every default bound (1024)


class Udp(FakeUdp):
    """The stack's UDP contract for the server (bind_responder, as
    tests/unit/fake_stack.py holds it) and the stub resolver
    (bind_ephemeral): datagrams to the upstream go to it, the rest are the
    server's replies to clients, kept."""

    def __init__(self, stack):
        super().__init__(seed=5)
        self.stack = stack
        self.replies: dict[int, bytes] = {}         # client port -> reply
        self.before_release: set[int] = set()       # client ports answered before the upstream answered any

    def sendto(self, payload, src_port, dst_ip, dst_port):
        if (dst_ip, dst_port) == UPSTREAM:
            self.stack.upstream.receive(payload, src_port)
        else:
            assert dst_ip == CLIENT_IP and dst_port not in self.replies, "one reply per query"
            self.replies[dst_port] = payload
            if not self.stack.upstream.released:
                self.before_release.add(dst_port)

    def deliver(self, payload, src_ip, src_port, dst_port):
        handler = self.bindings.get(dst_port)
        if handler is not None:
            handler(payload, src_ip, src_port, SERVER_IP, dst_port)


class Stack:
    def __init__(self, release_at: int):
        self.counters = Counters()
        self.udp = Udp(self)
        self.tcp = None
        self.upstream = HoldingUpstream(self, release_at)

    def now(self) -> float:
        return asyncio.get_running_loop().time()


class HoldingUpstream:
    """Answers every A question (with 10.0.x.y) but holds its replies until
    ``release_at`` queries are outstanding at once; then answers them all,
    and every later query at once."""

    def __init__(self, stack, release_at: int):
        self.stack, self.release_at = stack, release_at
        self.held: list[tuple[bytes, int]] = []
        self.most_held = 0
        self.queries = 0
        self.released = False

    def receive(self, wire, src_port):
        self.queries += 1
        query = dns.message.from_wire(wire)
        reply = dns.message.make_response(query)
        question = query.question[0]
        index = int(question.name.labels[0][1:])
        reply.answer = [dns.rrset.from_text(question.name, 300, "IN", "A", f"10.0.{index >> 8}.{index & 255}")]
        self.held.append((reply.to_wire(), src_port))
        self.most_held = max(self.most_held, len(self.held))
        if self.most_held >= self.release_at:
            self.released = True
            held, self.held = self.held, []
            loop = asyncio.get_running_loop()
            for wire_, port in held:
                loop.call_soon(self.stack.udp.deliver, wire_, *UPSTREAM, port)


def query(index: int) -> bytes:
    return dns.message.make_query(f"m{index}.misses.test.", "A", id=index).to_wire()


async def not_ours(src, dst, query):
    return None             # no local zone: every question is the forwarder's


async def misses(release_at: int, *, max_forwarded: int = 1024, max_inflight: int = 1024):
    """Sends MISSES distinct questions from one client at once (each from its
    own port), waits until every query is done, returns the stack."""
    stack = Stack(release_at)
    stub = StubResolver(stack, counters=stack.counters, rng=random.Random(1))
    cache = Cache(counters=stack.counters)
    forwarder = Forwarder([UPSTREAM], stub=stub, cache=cache, allow=["192.0.2.0/24"], clock=stack.now,
                          deadline=10.0, attempt_timeout=10.0, randomize_case=False, max_inflight=max_inflight)
    server = DnsServer(stack, 53, processor_of_process(not_ours), forwarder=processor_of_process(forwarder),
                       max_forwarded=max_forwarded, clock=stack.now)
    server.start()
    for i in range(MISSES):
        stack.udp.deliver(query(i), CLIENT_IP, 20000 + i, 53)
    while server.pending or server.forwarding:
        await asyncio.gather(*server.pending, *server.forwarding, return_exceptions=True)
    server.close()
    return stack


def rcodes(stack, ports=None) -> Counter:
    return Counter(dns.rcode.to_text(dns.message.from_wire(r).rcode()) for port, r in stack.udp.replies.items()
                   if ports is None or port in ports)


def test_distinct_misses_are_all_upstream_at_once_and_all_answered():
    stack = asyncio.run(misses(release_at=MISSES))
    assert stack.upstream.most_held == MISSES      # every miss was waiting on the upstream at the same time
    assert stack.upstream.queries == MISSES        # once each: no re-ask, no wait for a slot
    assert rcodes(stack) == Counter({"NOERROR": MISSES})
    for port, reply in stack.udp.replies.items():  # each client its own name's answer
        message = dns.message.from_wire(reply)
        index = port - 20000
        assert message.id == index
        assert message.answer[0].to_rdataset()[0].to_text() == f"10.0.{index >> 8}.{index & 255}"
    assert stack.counters["forward.cache.miss"] == MISSES
    assert stack.counters["dns.slow.forward_overload.servfail"] == 0


def test_beyond_the_forwarded_pool_a_miss_gets_servfail_at_once():
    bound = 100
    stack = asyncio.run(misses(release_at=bound, max_forwarded=bound))
    assert stack.upstream.most_held == bound and stack.upstream.queries == bound
    assert rcodes(stack) == Counter({"NOERROR": bound, "SERVFAIL": MISSES - bound})
    assert stack.counters["dns.slow.forward_overload.servfail"] == MISSES - bound
    assert rcodes(stack, stack.udp.before_release) == Counter({"SERVFAIL": MISSES - bound})   # not at the deadline


def test_beyond_the_in_flight_table_a_miss_gets_servfail_at_once():
    bound = 120
    stack = asyncio.run(misses(release_at=bound, max_inflight=bound))
    assert stack.upstream.most_held == bound and stack.upstream.queries == bound
    assert rcodes(stack) == Counter({"NOERROR": bound, "SERVFAIL": MISSES - bound})
    assert stack.counters["forward.inflight_full.servfail"] == MISSES - bound
    assert rcodes(stack, stack.udp.before_release) == Counter({"SERVFAIL": MISSES - bound})
