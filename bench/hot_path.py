"""``python -m bench hot_path``: the DNS hot path alone, in CPU microseconds
per kept-answer hit through ``DnsServer.answer_datagram`` on a fake stack (no
frames, no tap), plain and with RRL and the per-client RA on, as main wires
them when forwarding. The best of several rounds of CPU time (process_time),
so other jobs on the machine matter less than in wall-clock figures."""
from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from pathlib import Path

import dns.message

from tests.unit.fake_stack import CLIENT_IP, SERVER_IP, FakeStack
from unikernel.config import AccessList
from unikernel.process import processor_of_process
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench hot_path")
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    plain = asyncio.run(per_hit(False, args.hits, args.rounds))
    limited = asyncio.run(per_hit(True, args.hits, args.rounds))
    print(f"kept-answer hit: {plain:.2f} us plain, {limited:.2f} us with RRL and RA "
          f"(+{limited - plain:.2f} us), CPU time, best of {args.rounds} x {args.hits:,}")
    return 0
