"""``python -m bench hot_path``: the DNS hot path alone, in CPU microseconds
per kept-answer hit through ``DnsServer.answer_datagram`` on a fake stack (no
frames, no tap), plain and with RRL and the per-client RA on, as main wires
them when forwarding; then per cache hit (the forwarder's cache as main hands
it to the server, behind an access list, an answer stored ten seconds
before, so its TTLs are counted down). The best of several rounds of CPU time (process_time), so
other jobs on the machine matter less than in wall-clock figures."""
from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from pathlib import Path

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.unit.fake_stack import CLIENT_IP, SERVER_IP, FakeStack
from unikernel.config import AccessList
from unikernel.process import processor_of_process
from unikernel.resolver.cache import Cache
from unikernel.serve.rrl import ResponseRateLimiter
from unikernel.serve.server import DnsServer
from unikernel.sources.zone import zone_process

ZONE = Path(__file__).resolve().parent.parent / "tests" / "integration" / "zones" / "hard.example.zone"


async def per_hit(with_rrl: bool, hits: int, rounds: int) -> float:
    stack = FakeStack()
    options = {}
    if with_rrl:
        # a limit no run reaches: the cost of the check, not of limiting
        options = {"rrl": ResponseRateLimiter(10**9, 2, counters=stack.counters),
                   "recursion_for": AccessList(["192.0.2.0/24"])}
    server = DnsServer(stack, 53, processor_of_process(zone_process([ZONE])), **options)
    server.start()
    query = dns.message.make_query("www.hard.example.", "A").to_wire()
    stack.udp.bindings[53](query, CLIENT_IP, 4000, SERVER_IP, 53)
    while server.pending:
        await asyncio.gather(*server.pending)
    assert server.kept_answers, "the answer was not kept"

    answer = server.answer_datagram

    def hit() -> None:
        answer(query, CLIENT_IP, 4000, SERVER_IP, 53)

    best = min(timeit.repeat(hit, number=hits, repeat=rounds, timer=time.process_time))
    server.close()
    return best / hits * 1e6


async def per_cache_hit(hits: int, rounds: int) -> float:
    stack = FakeStack()
    clock = [1000.0]
    cache = Cache(counters=stack.counters)
    name = dns.name.from_text("www.example.com.")
    reply = dns.message.make_response(dns.message.make_query(name, "A"))
    reply.answer = [dns.rrset.from_text(name, 3600, "IN", "A", "192.0.2.7", "192.0.2.8")]
    reply.authority = [dns.rrset.from_text("example.com.", 3600, "IN", "NS", "ns1.example.com.", "ns2.example.com.")]
    entry = cache.entry_from_reply(name, dns.rdatatype.A, dns.rdataclass.IN, False, reply, clock[0])
    assert entry is not None and cache.store(entry)
    clock[0] += 10.5

    async def nothing(*, src, dst, query):
        return None

    allowed = AccessList(["192.0.2.0/24"])

    def allowed_now(ip: int) -> bool:         # the forwarder's hook: its access list, read on every hit
        return allowed(ip)

    server = DnsServer(stack, 53, nothing, fast_lookups=[cache.fast_lookup(allowed_now)], clock=lambda: clock[0])
    server.start()
    query = dns.message.make_query("www.example.com.", "A", use_edns=0).to_wire()
    answer = server.answer_datagram
    assert answer(query, CLIENT_IP, 4000, SERVER_IP, 53) is not None, "not a cache hit"

    def hit() -> None:
        answer(query, CLIENT_IP, 4000, SERVER_IP, 53)

    best = min(timeit.repeat(hit, number=hits, repeat=rounds, timer=time.process_time))
    server.close()
    return best / hits * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench hot_path")
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    plain = asyncio.run(per_hit(False, args.hits, args.rounds))
    limited = asyncio.run(per_hit(True, args.hits, args.rounds))
    print(f"kept-answer hit: {plain:.2f} us plain, {limited:.2f} us with RRL and RA "
          f"(+{limited - plain:.2f} us), CPU time, best of {args.rounds} x {args.hits:,}")
    cached = asyncio.run(per_cache_hit(args.hits, args.rounds))
    print(f"cache hit: {cached:.2f} us, CPU time, best of {args.rounds} x {args.hits:,}")
    return 0
