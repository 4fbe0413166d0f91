"""DNS messages through the whole server: the fuzz that reaches the inside.

Each message goes through the appliance's own resolution chain as main wires
it (the hard.example zone, a hosts file, special-use names, the forwarder
with its cache, kept answers, RRL and the RA policy), over UDP (the hot path
and the slow path) and, for a share of them, TCP's handler. Upstream is a
scripted resolver on the same fake wire that answers well, badly (garbage,
wrong IDs, wrong case, truncation, poisoned sections) or not at all.

Messages are made from valid queries (dnspython's, with random names, types,
classes, opcodes, flags, EDNS versions, sizes and options) and then, most
of them, mutated at the byte level: header counts rewritten, bits flipped,
bytes set, cut, extended, label lengths broken, compression pointers (and
loops) planted. They are sent in batches from many sources, so that joins
in flight, both slow-path pools and RRL are exercised.

Invariants checked for every message, beyond "no exception":

* at most one reply; none for a response (QR=1), a message shorter than a
  header, or a source port of an echo-like service; each drop is counted;
* a reply parses with dnspython, has QR set and the query's ID, fits the
  client's limit (512 bytes without EDNS, at most 1,232 with it; 65,535 over
  TCP), and when RRL slipped it, is truncated and empty;
* RA only for clients allowed to recurse;
* after every batch, every table within its bound: kept answers (count and
  bytes), cache (count and bytes), slow-path pools, forwarder questions in
  flight; and the process's memory growth bounded.

``python -m tests.fuzz_dns [--messages N] [--seed S]`` prints the counts;
``tests/unit/test_fuzz_dns.py`` runs a short form in ``make test``.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import random
import resource
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset

from netstack.counters import Counters
from tests.unit.fake_stack import FakeUdp
from unikernel.config import AccessList
from unikernel.process import compose, processor_of_process
from unikernel.resolver.cache import Cache
from unikernel.resolver.forwarder import Forwarder
from unikernel.resolver.stub import StubResolver
from unikernel.serve.rrl import ResponseRateLimiter
from unikernel.serve.server import BAD_SOURCE_PORTS, DnsServer
from unikernel.sources.hosts import hosts_process, parse_hosts
from unikernel.sources.special import special_process
from unikernel.sources.zone import zone_process

ZONE = Path(__file__).resolve().parent / "integration" / "zones" / "hard.example.zone"
SERVER_IP = int(ipaddress.IPv4Address("192.0.2.2"))
UPSTREAM = (int(ipaddress.IPv4Address("192.0.2.1")), 53)
ALLOWED = "192.0.2.0/24"
BATCH = 80                                # at most this many messages before the loop runs
MAX_MEMORY_GROWTH = 256 * 1024 * 1024     # bytes of RSS a run may grow by (the tables' budgets and Python's)

NAMES = ["www.hard.example.", "mail.hard.example.", "alias1.hard.example.", "loop1.hard.example.",
         "big.hard.example.", "x.wild.hard.example.", "a.b.ent.hard.example.", "child.hard.example.",
         "hard.example.", "printer.lan.", "localhost.", "10.in-addr.arpa.", "x.local.",
         "www.example.com.", "mail.example.com.", "alias.example.com.", "nx.example.com.",
         "poison.example.net.", "big.example.net.", "slow.example.org.", "trunc.example.org."]
QTYPES = ["A", "AAAA", "MX", "TXT", "NS", "SOA", "CNAME", "PTR", "SRV", "ANY", "DS", "DNSKEY", "RRSIG",
          "NSEC", "OPT", "TSIG", "TKEY", "AXFR", "IXFR", "MAILA", "TYPE65280", "TYPE0"]


class FuzzUdp(FakeUdp):
    """The stack's UDP contract on a fake wire: the server's port, the stub's
    ephemeral ports, the upstream, and what goes back to clients."""

    def __init__(self, stack: FuzzStack) -> None:
        super().__init__(seed=11)
        self.stack = stack
        self.sent: list[tuple[bytes, int, int]] = []        # (payload, dst_ip, dst_port) to clients

    def sendto(self, payload: bytes, src_port: int, dst_ip: int, dst_port: int) -> None:
        if (dst_ip, dst_port) == UPSTREAM:
            self.stack.upstream.receive(payload, src_port)
        else:
            self.sent.append((payload, dst_ip, dst_port))

    def deliver(self, payload: bytes, src_ip: int, src_port: int, dst_port: int) -> None:
        def run() -> None:
            handler = self.bindings.get(dst_port)
            if handler is not None:
                handler(payload, src_ip, src_port, SERVER_IP, dst_port)
        asyncio.get_running_loop().call_soon(run)


@dataclass
class Clock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class FuzzStack:
    counters: Counters = field(default_factory=Counters)
    clock: Clock = field(default_factory=Clock)
    tcp: None = None
    address: int = SERVER_IP

    def __post_init__(self) -> None:
        self.udp = FuzzUdp(self)
        self.upstream = Upstream(self, random.Random(5))

    def now(self) -> float:
        return self.clock()


class Upstream:
    """A resolver that answers from a few names, and misbehaves on purpose."""

    def __init__(self, stack: FuzzStack, rng: random.Random) -> None:
        self.stack, self.rng = stack, rng

    def receive(self, wire: bytes, src_port: int) -> None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - our stub's query must always parse
            self.stack.counters["fuzz.upstream.unparsable_query"] += 1
            return
        name = query.question[0].name.canonicalize().to_text()
        roll = self.rng.random()
        if name.startswith("slow.") or roll < 0.01:
            return                                              # silence: the stub times out
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        qname = query.question[0].name
        if name.startswith("nx.") or name.endswith(".example.com.") and name.startswith("r"):
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority = [dns.rrset.from_text("example.com.", 60, "IN", "SOA", "ns. host. 1 2 3 4 30")]
        elif name.startswith("alias."):
            response.answer = [dns.rrset.from_text(qname, 60, "IN", "CNAME", "www.example.com."),
                               dns.rrset.from_text("www.example.com.", 60, "IN", "A", "192.0.2.80")]
        elif name.startswith("big."):
            response.answer = [dns.rrset.from_text(qname, 60, "IN", "TXT", *[f'"{i:04d}' + "x" * 200 + '"'
                                                                               for i in range(8)])]
        else:
            response.answer = [dns.rrset.from_text(qname, 60, "IN", "A", "192.0.2.80")]
            response.additional = [dns.rrset.from_text("ns.victim.example.", 86400, "IN", "A", "203.0.113.66")]
        if name.startswith("poison."):
            response.answer.append(dns.rrset.from_text("victim.example.", 86400, "IN", "A", "203.0.113.66"))
            response.authority = [dns.rrset.from_text("example.", 86400, "IN", "NS", "ns.victim.example.")]
        if name.startswith("trunc."):
            response.flags |= dns.flags.TC
            response.answer = []
        out = bytearray(response.to_wire(max_size=65535))
        if roll < 0.03:
            out = bytearray(mutate(bytes(out), self.rng))       # garbage with the right ID, often
        elif roll < 0.05:
            qlen = len(query.question[0].name.to_wire())
            out[12:12 + qlen] = bytes(out[12:12 + qlen]).swapcase()
            self.stack.udp.deliver(bytes(out), *UPSTREAM, src_port)     # a wrong-case forgery first
            out = bytearray(response.to_wire(max_size=65535))
        elif roll < 0.06:
            out[0] ^= 0x5A                                       # a wrong ID
        self.stack.udp.deliver(bytes(out), *UPSTREAM, src_port)


# -- messages ------------------------------------------------------------------

def random_name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(NAMES)
    if roll < 0.7:
        return f"r{rng.getrandbits(32):x}.{rng.choice(['hard.example.', 'example.com.', 'lan.', 'test.'])}"
    if roll < 0.85:
        labels = [bytes(rng.choice(b"abcXYZ019-_*\\. ") for _ in range(rng.randint(1, 63))) for _ in
                  range(rng.randint(1, 4))]
        return ".".join(label.decode("latin-1").replace("\\", "\\\\").replace(".", "\\.").replace(" ", "\\032")
                        for label in labels) + "."
    return ".".join("a" * 63 for _ in range(3)) + "." + "b" * rng.randint(1, 61) + "."


def random_query(rng: random.Random) -> bytes:
    try:
        query = dns.message.make_query(random_name(rng), "A" if rng.random() < 0.4 else rng.choice(QTYPES),
                                       rdclass=rng.choice(["IN"] * 8 + ["CH", "HS", "ANY", "CLASS77"]))
    except Exception:  # noqa: BLE001 - a name dnspython refuses: fall back to a plain one
        query = dns.message.make_query("www.hard.example.", "A")
    query.id = rng.getrandbits(16)
    if rng.random() < 0.6:
        options = []
        if rng.random() < 0.3:
            options.append(dns.edns.GenericOption(10, bytes(rng.getrandbits(8) for _ in
                                                            range(rng.choice([8, 16, 24, 5, 41])))))
        if rng.random() < 0.2:
            options.append(dns.edns.GenericOption(rng.choice([3, 8, 12, 15, 65001]),
                                                  bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 12)))))
        query.use_edns(rng.choice([0] * 9 + [1]), dns.flags.DO if rng.random() < 0.3 else 0,
                       rng.choice([0, 100, 512, 1232, 4096, 65535]), options=options)
    flags = rng.getrandbits(16) if rng.random() < 0.1 else query.flags | (dns.flags.CD if rng.random() < 0.2 else 0)
    query.flags = flags & ~dns.flags.QR if rng.random() < 0.95 else flags
    if rng.random() < 0.05:
        query.set_opcode(rng.choice([dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS]))
    wire = query.to_wire()
    if rng.random() < 0.05:
        wire = wire[:4] + struct.pack("!H", rng.choice([0, 2, 3])) + wire[6:] + wire[12:]   # question counts
    return wire


def mutate(wire: bytes, rng: random.Random) -> bytes:
    data = bytearray(wire)
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if not data:
            data = bytearray(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        elif kind < 0.25:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind < 0.4:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif kind < 0.5:
            del data[rng.randint(0, len(data)):]
        elif kind < 0.6:
            data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        elif kind < 0.75 and len(data) >= 12:
            count = rng.randrange(4)
            data[4 + 2 * count:6 + 2 * count] = struct.pack("!H", rng.choice([0, 1, 2, 255, 0xFFFF]))
        elif kind < 0.85 and len(data) > 13:
            at = rng.randrange(12, len(data) - 1)                # a compression pointer, maybe a loop
            data[at:at + 2] = struct.pack("!H", 0xC000 | rng.choice([12, at, rng.randrange(len(data))]))
        elif len(data) > 12:
            data[12] = rng.choice([0, 63, 64, 127, 192, 255])   # the first label's length
    return bytes(data)


# -- the run ---------------------------------------------------------------------

@dataclass
class Appliance:
    stack: FuzzStack
    server: DnsServer
    forwarder: Forwarder
    cache: Cache


def build(stack: FuzzStack) -> Appliance:
    """The server with the resolution chain main composes, on the fake wire,
    with bounds small enough that a run reaches them."""
    counters = stack.counters
    hosts = hosts_process(parse_hosts("192.0.2.10 printer.lan printer\n2001:db8::10 printer.lan\n", "hosts"),
                          recursion_available=True)
    cache = Cache(max_entries=300, max_bytes=2 * 1024 * 1024, serve_stale=True, counters=counters)
    stub = StubResolver(stack, counters=counters, rng=random.Random(3))
    forwarder = Forwarder([UPSTREAM], stub=stub, cache=cache, allow=[ALLOWED], clock=stack.clock,
                          deadline=0.05, attempt_timeout=0.02, probe_interval=0.02, max_inflight=32,
                          rng=random.Random(4), counters=counters)
    local = compose(zone_process([ZONE]), hosts, special_process(recursion_available=True))
    rrl = ResponseRateLimiter(50, 2, counters=counters, buckets=1024, salt=0)
    server = DnsServer(stack, 53, processor_of_process(local), forwarder=processor_of_process(forwarder),
                       fast_lookups=[forwarder.fast_lookup], max_kept=200, max_kept_bytes=256 * 1024,
                       max_pending=64, max_forwarded=24, recursion_for=AccessList([ALLOWED]), rrl=rrl,
                       clock=stack.clock)
    server.start()
    return Appliance(stack, server, forwarder, cache)


def source(rng: random.Random) -> tuple[int, int]:
    roll = rng.random()
    if roll < 0.4:
        ip = int(ipaddress.IPv4Address("192.0.2.99"))            # allowed, and busy: RRL applies
    elif roll < 0.7:
        ip = int(ipaddress.IPv4Address("192.0.2.0")) + rng.randint(1, 254)
    else:
        ip = rng.getrandbits(32) | 0x01000000                    # anywhere (outside: no recursion)
    port = rng.choice(sorted(BAD_SOURCE_PORTS)) if rng.random() < 0.01 else rng.randint(1024, 65535)
    return ip, port


def udp_limit(wire: bytes) -> int:
    """The most a UDP reply to ``wire`` may hold: 512 unless its OPT (as
    dnspython reads it) asks for more, at most 1,232."""
    try:
        query = dns.message.from_wire(wire, ignore_trailing=True)
    except Exception:  # noqa: BLE001 - unreadable: the reply is a header
        return 512
    if query.edns < 0:
        return 512
    return min(max(query.payload, 512), 1232)


def check_reply(reply: bytes, query: bytes, limit: int, ip: int, findings: Counter) -> None:
    message = dns.message.from_wire(reply)                      # raises when we sent garbage
    assert message.flags & dns.flags.QR, "a reply without QR"
    assert reply[:2] == query[:2], "a reply with another ID"
    assert len(reply) <= limit, f"{len(reply)} bytes for a client limit of {limit}"
    if message.flags & dns.flags.RA:
        assert AccessList([ALLOWED])(ip), "RA for a client that may not recurse"
    if message.flags & dns.flags.TC and not (message.answer or message.authority or message.additional):
        findings["truncated_empty"] += 1
    findings[f"rcode.{dns.rcode.to_text(message.rcode())}"] += 1


def check_bounds(app: Appliance) -> None:
    server, cache, forwarder = app.server, app.cache, app.forwarder
    assert len(server.kept_answers) <= server.max_kept and server.kept_bytes <= server.max_kept_bytes
    assert len(server.kept_answers) == len(server._probation) + len(server._protected)
    assert len(cache) <= cache.max_entries and cache.size <= cache.max_bytes
    assert len(server.pending) <= server.max_pending and len(server.forwarding) <= server.max_forwarded
    assert len(forwarder._inflight) <= forwarder.max_inflight


async def run(messages: int, seed: int = 1, tcp_share: float = 0.05) -> Counter:
    rng = random.Random(seed)
    stack = FuzzStack()
    app = build(stack)
    server, udp = app.server, stack.udp
    findings: Counter = Counter()
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sent_so_far = 0
    while sent_so_far < messages:
        batch = []
        for _ in range(min(rng.randint(1, BATCH), messages - sent_so_far)):
            wire = random_query(rng)
            if rng.random() < 0.6:
                wire = mutate(wire, rng)
            ip, port = source(rng)
            batch.append((wire, ip, port))
        sent_so_far += len(batch)
        udp.sent.clear()
        by_port: dict[int, tuple[bytes, int]] = {}
        tcp_jobs = []
        for wire, ip, port in batch:
            if rng.random() < tcp_share:
                tcp_jobs.append((wire, ip, asyncio.ensure_future(server.handle_tcp(
                    (ipaddress.IPv4Address(ip), port), (ipaddress.IPv4Address(SERVER_IP), 53), wire))))
                continue
            while port in by_port:                       # one message per source port in a batch
                port = port + 1 if port < 65535 else 1024
            by_port[port] = (wire, ip)
            udp.bindings[53](wire, ip, port, SERVER_IP, 53)
            findings["udp"] += 1
        await asyncio.sleep(0)
        while server.pending or server.forwarding or tcp_jobs:
            await asyncio.gather(*server.pending, *server.forwarding, *(job for _, _, job in tcp_jobs))
            for wire, ip, job in tcp_jobs:
                findings["tcp"] += 1
                reply = job.result()
                if reply is None:
                    findings["tcp.unanswered"] += 1
                else:
                    check_reply(reply, wire, 65535, ip, findings)
            tcp_jobs = []
        replies: Counter = Counter()
        for reply, dst_ip, dst_port in udp.sent:
            wire, ip = by_port[dst_port]
            assert dst_ip == ip, "a reply to another address"
            replies[dst_port] += 1
            assert dst_port not in BAD_SOURCE_PORTS, "a reply to an echo-like service"
            check_reply(reply, wire, udp_limit(wire), ip, findings)
        assert all(n == 1 for n in replies.values()), "more than one reply to one query"
        findings["udp.unanswered"] += len(by_port) - len(replies)
        check_bounds(app)
        stack.clock.t += rng.choice([0.0, 0.01, 0.3, 2.0, 40.0])
    await app.forwarder.stop()
    server.close()
    counters = stack.counters
    assert counters["dns.exception"] == 0 and counters["dns.fast.lookup_error"] == 0
    assert counters["stub.case_callback.error"] == 0 and counters["fuzz.upstream.unparsable_query"] == 0
    assert counters["forward.error"] == 0
    # every message unanswered is a counted drop
    dropped = sum(counters[k] for k in ("dns.short.drop", "dns.response.drop", "dns.bad_source_port.drop",
                                        "dns.rrl.dropped", "dns.slow.overload.drop"))
    unanswered = findings["udp.unanswered"] + findings["tcp.unanswered"]
    assert unanswered == dropped, (unanswered, dropped)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start
    assert growth < MAX_MEMORY_GROWTH, f"memory grew by {growth >> 20} MiB"
    findings["memory.growth_mib"] = growth >> 20
    for name in ("dns.fast.hit", "dns.fast.lookup_hit", "dns.slow.answered", "dns.formerr", "dns.formerr.records",
                 "dns.notimp", "dns.refused", "dns.badvers", "dns.short.drop", "dns.response.drop",
                 "dns.rrl.limited", "dns.rrl.slipped", "dns.rrl.dropped", "dns.static.evicted", "cache.evict",
                 "dns.slow.overload.drop", "dns.slow.forward_overload.servfail", "forward.scrub.additional",
                 "forward.scrub.authority", "forward.servfail", "forward.stale.served", "stub.reply.ok",
                 "stub.reply.case_mismatch.drop", "stub.reply.malformed.drop", "stub.timeout"):
        findings[name] = counters[name]
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DNS messages through the whole server, with invariants.")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)         # upstream health lines are expected here
    started = time.monotonic()
    findings = asyncio.run(run(args.messages, args.seed))
    elapsed = time.monotonic() - started
    print(f"fuzz_dns: {args.messages} messages (seed {args.seed}) in {elapsed:.1f} s: every invariant held")
    for name, value in sorted(findings.items()):
        print(f"  {name:40} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
