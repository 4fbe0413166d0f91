"""Our per-packet Python alone: frames in, frames out, no tap, no kernel.

A Stack on a link that only counts what it is given, the DNS server on it
with bench/auth.py's zone; each query frame of the authoritative mix is sent
once (the slow path answers and keeps it), then the whole list is fed to
``Stack.receive`` ``passes`` times and timed (CPU time of this process, so
other jobs on the machine count less). Printed: microseconds per answered
query (the median and the least of the rounds), what each query costs our
code before the tap's write; bench hot_path is the DNS half of it alone.
``--stats`` hands every answer to the operator's statistics
(``QueryStats.record``), as the appliance does with its metrics port on (the
default, and in bench auth). Run it before and after a change to the hot path:

    .venv/bin/python -m bench frames [--frame-rounds 5] [--passes 5] [--names 3000] [--stats]

``--callgrind`` counts instead of timing, since time on a shared machine is
noise and instruction counts are not: this module runs twice under valgrind's
callgrind (hash seed fixed, one round each), with 1 pass and with
``--passes``, and what the second run executes beyond the first, over the
frames between, is the instructions a frame (setup, slow path and exit
cancel out). ``--callgrind-out DIR`` keeps both profiles for
callgrind_annotate:

    .venv/bin/python -m bench frames --callgrind [--names 300] [--queries 1000] [--passes 11] [--stats]
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import re
import shutil
import statistics
import subprocess
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


async def measure(names: int, rounds: int, passes: int, queries_count: int = 20000,
                  with_stats: bool = False) -> list[float]:
    from unikernel.ops.stats import QueryStats
    from unikernel.process import processor_of_process
    from unikernel.serve.server import DnsServer
    from unikernel.sources.zone import zone_process

    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        zone, queries = Path(tmp) / "zone", Path(tmp) / "queries"
        write_queries(queries, write_zone(zone, names, rng), queries_count, rng)
        link = KeepingLink()
        # a seeded generator: the same IP idents every run (callgrind's counts repeat)
        stack = Stack(link, f"{OURS}/24", None, mac=OUR_MAC, rng=random.Random(2))
        await stack.start()
        if stack._timer is not None:
            # the stack's tick fires by wall time, so while the slow path below
            # awaits, how often it ran would depend on the machine's load (and
            # on valgrind's pace); no tick runs in the passes measured either
            stack._timer.cancel()
        # the observer main wires when the metrics port is on
        observe = QueryStats().record if with_stats else None
        server = DnsServer(stack, 53, processor_of_process(zone_process([zone])), observe=observe)
        server.start()
        arp = ethernet.header(OUR_MAC, CLIENT_MAC, ethernet.TYPE_ARP) + bytes.fromhex("0001080006040002") + \
            CLIENT_MAC + CLIENT.packed + OUR_MAC + OURS.packed
        stack.receive(arp)
        frames = query_frames(queries)
    for n, frame in enumerate(frames):         # the slow path answers each once, and keeps it
        if n % 100 == 0:
            stack.receive(arp)                 # kept fresh, as in the passes below
        stack.receive(frame)
        while server.pending:
            await asyncio.gather(*server.pending)
    receive = stack.receive
    results = []
    for _ in range(rounds):
        hits, sent = stack.counters["dns.fast.hit"], link.sent
        start = time.process_time()
        for _ in range(passes):
            # the client's ARP reply again, as its refresh would come: the entry
            # lives 120 s, which a run under callgrind on a loaded machine may
            # outlast, and the replies would then wait for ARP instead of leaving
            receive(arp)
            for frame in frames:
                receive(frame)
        elapsed = time.process_time() - start
        answered = stack.counters["dns.fast.hit"] - hits
        if answered != passes * len(frames):
            raise RuntimeError(f"only {answered} of {passes * len(frames)} queries took the fast path")
        if link.sent - sent != answered:
            raise RuntimeError(f"{answered} answers but {link.sent - sent} frames sent (waiting on ARP?)")
        results.append(1e6 * elapsed / answered)
    stack.close()
    return results


def callgrind_instructions(argv: list[str], out_file: Path) -> int:
    """The instructions (callgrind's total Ir) of this module run with
    ``argv`` under callgrind, with the build and the hash seed fixed."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    # this process's path decides the build (bench/__main__ put the compiled folder first)
    compiled = [p for p in sys.path if Path(p, ".complete").exists()]
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([*compiled[:1], root])
    env["PYTHONSAFEPATH"] = "1"
    env.pop("MYPYC", None)
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
               sys.executable, "-m", "bench.frames", *argv]
    if shutil.which("setarch"):
        # the same addresses every run: CPython's method cache is indexed by
        # the names' addresses, so its collisions (1-2 % of a frame) follow the layout
        command = ["setarch", os.uname().machine, "--addr-no-randomize", *command]
    r = subprocess.run(command, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"callgrind run failed: {r.stderr[-800:]}")
    found = re.search(r"^(?:summary|totals): (\d+)", out_file.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no total in {out_file}")
    return int(found.group(1))


def count(args: argparse.Namespace) -> int:
    """--callgrind: instructions a frame, as the module's doc says."""
    if shutil.which("valgrind") is None:
        print("bench frames: --callgrind needs valgrind (apt install valgrind)", file=sys.stderr)
        return 2
    if args.passes < 2:
        print("bench frames: --callgrind needs --passes 2 or more", file=sys.stderr)
        return 2
    common = ["--frame-rounds", "1", "--names", str(args.names), "--queries", str(args.queries)]
    if args.stats:
        common.append("--stats")
    keep = Path(args.callgrind_out) if args.callgrind_out else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        once = callgrind_instructions([*common, "--passes", "1"], folder / "callgrind.1pass")
        many = callgrind_instructions([*common, "--passes", str(args.passes)],
                                      folder / f"callgrind.{args.passes}passes")
    frames = (args.passes - 1) * args.queries
    print(f"frames in, frames out: {(many - once) / frames:,.0f} instructions per answered query "
          f"(callgrind: {many:,} with {args.passes} passes less {once:,} with 1, over {frames:,} frames; "
          f"{args.names} names, {args.queries} queries{', statistics on' if args.stats else ''})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench frames", description=__doc__.splitlines()[0])
    parser.add_argument("--frame-rounds", dest="rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=None, help="default 5, or 11 with --callgrind")
    parser.add_argument("--names", type=int, default=None, help="default 3000, or 300 with --callgrind")
    parser.add_argument("--queries", type=int, default=None, help="default 20000, or 1000 with --callgrind")
    parser.add_argument("--stats", action="store_true", help="every answer recorded by QueryStats, as main wires it")
    parser.add_argument("--callgrind", action="store_true", help="count instructions a frame instead of timing")
    parser.add_argument("--callgrind-out", metavar="DIR", help="keep callgrind's two profiles in DIR")
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    for name, timed, counted in (("passes", 5, 11), ("names", 3000, 300), ("queries", 20000, 1000)):
        if getattr(args, name) is None:
            setattr(args, name, counted if args.callgrind else timed)
    if args.callgrind:
        return count(args)
    results = asyncio.run(measure(args.names, args.rounds, args.passes, args.queries, args.stats))
    print(f"frames in, frames out: {statistics.median(results):.2f} us per answered query (median of {args.rounds}, "
          f"least {min(results):.2f}; "
          f"rounds {', '.join(f'{r:.2f}' for r in results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
