"""Our per-packet Python alone: frames in, frames out, no tap, no kernel.

A Stack on a link that only counts what it is given, the DNS server on it
with bench/auth.py's zone; each query frame of the authoritative mix is sent
once (the slow path answers and keeps it), then the whole list is fed to
``Stack.receive`` ``passes`` times and timed (CPU time of this process, so
other jobs on the machine count less). Printed: microseconds per answered
query (the median and the least of the rounds), what each query costs our
code before the tap's write; bench hot_path is the DNS half of it alone.
Run it before and after a change to the hot path:

    .venv/bin/python -m bench frames [--frame-rounds 5] [--passes 5] [--names 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rdatatype

from bench.auth import write_queries, write_zone
from netstack import ethernet, udp
from netstack import ipv4 as ip4
from netstack.stack import Stack

OURS, CLIENT = ipaddress.IPv4Address("192.0.2.2"), ipaddress.IPv4Address("192.0.2.1")
OUR_MAC, CLIENT_MAC = bytes.fromhex("020000c00002"), bytes.fromhex("02aabbccddee")


class KeepingLink:
    mtu, mac = 1500, None

    def __init__(self) -> None:
        self.sent = 0

    def attach(self, loop, receive) -> None:
        pass

    def send(self, frame: bytes) -> bool:
        self.sent += 1
        return True         # a Link's send says whether the frame went (compiled callers check the type)

    def close(self) -> None:
        pass


def query_frames(query_file: Path) -> list[bytes]:
    frames = []
    rng = random.Random(7)
    for ident, line in enumerate(query_file.read_text().split("\n")):
        if not line:
            continue
        name, qtype = line.split()
        wire = dns.message.make_query(name, dns.rdatatype.from_text(qtype), use_edns=False, id=ident & 0xFFFF).to_wire()
        port = rng.randrange(1024, 65536)
        segment = udp.build(int(CLIENT), port, int(OURS), 53, wire)
        packet = ip4.header(int(CLIENT), int(OURS), ip4.PROTO_UDP, len(segment), ident & 0xFFFF) + segment
        frames.append(ethernet.header(OUR_MAC, CLIENT_MAC, ethernet.TYPE_IPV4) + packet)
    return frames


async def measure(names: int, rounds: int, passes: int) -> list[float]:
    from unikernel.process import processor_of_process
    from unikernel.serve.server import DnsServer
    from unikernel.sources.zone import zone_process

    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        zone, queries = Path(tmp) / "zone", Path(tmp) / "queries"
        write_queries(queries, write_zone(zone, names, rng), 20000, rng)
        link = KeepingLink()
        stack = Stack(link, f"{OURS}/24", None, mac=OUR_MAC)
        await stack.start()
        server = DnsServer(stack, 53, processor_of_process(zone_process([zone])))
        server.start()
        arp = ethernet.header(OUR_MAC, CLIENT_MAC, ethernet.TYPE_ARP) + bytes.fromhex("0001080006040002") + \
            CLIENT_MAC + CLIENT.packed + OUR_MAC + OURS.packed
        stack.receive(arp)
        frames = query_frames(queries)
    for frame in frames:                       # the slow path answers each once, and keeps it
        stack.receive(frame)
        while server.pending:
            await asyncio.gather(*server.pending)
    receive = stack.receive
    results = []
    for _ in range(rounds):
        hits = stack.counters["dns.fast.hit"]
        start = time.process_time()
        for _ in range(passes):
            for frame in frames:
                receive(frame)
        elapsed = time.process_time() - start
        answered = stack.counters["dns.fast.hit"] - hits
        if answered != passes * len(frames):
            raise RuntimeError(f"only {answered} of {passes * len(frames)} queries took the fast path")
        results.append(1e6 * elapsed / answered)
    stack.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench frames", description=__doc__.splitlines()[0])
    parser.add_argument("--frame-rounds", dest="rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--names", type=int, default=3000)
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    results = asyncio.run(measure(args.names, args.rounds, args.passes))
    print(f"frames in, frames out: {statistics.median(results):.2f} us per answered query (median of {args.rounds}, "
          f"least {min(results):.2f}; "
          f"rounds {', '.join(f'{r:.2f}' for r in results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
