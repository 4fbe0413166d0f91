"""Our answers against NSD's, for the same zones and questions.

NSD (apt) serves the hard-cases zones on loopback; our server answers the
same questions twice: in-process (the zone process + the server's rendering,
no network) and, with root, through our own stack on a tap in a network
namespace. For every question, with and without EDNS, with DO, and at several
UDP sizes, the two must agree on the rcode, the AA and TC flags, EDNS, and
each section as a set of RRs. Malformed queries are compared on rcode.
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.netns import Namespace, needs_root, read_until, stop, unix_target
from tests.nsd import nsd_conf
from tests.unit.fake_stack import FakeStack
from unikernel.process import processor_of_process
from unikernel.serve.server import DnsServer
from unikernel.sources.zone import load_zones, zone_process

ROOT = Path(__file__).resolve().parent.parent.parent
ZONES = Path(__file__).resolve().parent / "zones"
ZONE_FILES = {"hard.example": "hard.example.zone", "sub.hard.example": "sub.hard.example.zone",
              "x.y.hard.example": "x.y.hard.example.zone", "extra.test": "extra.test.zone"}
VARIANTS = [  # (EDNS version or -1, UDP size, DO)
    (-1, 0, False), (0, 1232, False), (0, 512, True), (0, 4096, False), (0, 800, False)]

pytestmark = pytest.mark.skipif(shutil.which("nsd") is None, reason="needs NSD (apt install nsd)")


def questions() -> list[tuple[str, str]]:
    lines = (ZONES / "questions.txt").read_text().splitlines()
    return [tuple(line.split()[:2]) for line in lines if line.strip() and not line.startswith("#")]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    """NSD on 127.0.0.1:<port> serving the zones; yields the port."""
    work = tmp_path_factory.mktemp("nsd")
    port = free_port()
    nsd_conf(work, {name: ZONES / f for name, f in ZONE_FILES.items()}, port=port)
    proc = subprocess.Popen(["nsd", "-d", "-c", str(work / "nsd.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        probe = dns.message.make_query("hard.example.", "SOA")
        for _ in range(100):
            try:
                dns.query.udp(probe, "127.0.0.1", port=port, timeout=0.2)
                break
            except (dns.exception.Timeout, OSError):
                if proc.poll() is not None:
                    pytest.skip(f"NSD did not start: {(work / 'nsd.log').read_text()[-300:]}")
        else:
            pytest.skip("NSD did not answer within 20 s")
        yield port
    finally:
        stop(proc)


def make(name: str, rdtype: str, edns: int, size: int, do: bool) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns if edns >= 0 else False, payload=size,
                               want_dnssec=do)
    q.flags &= ~dns.flags.RD
    return q


def summary(reply: bytes) -> dict:
    msg = dns.message.from_wire(reply)
    return {
        "rcode": dns.rcode.to_text(msg.rcode()),
        "aa": bool(msg.flags & dns.flags.AA),
        "tc": bool(msg.flags & dns.flags.TC),
        "edns": (msg.edns, msg.payload if msg.edns >= 0 else 0, msg.ednsflags & dns.flags.DO),
        "question": [q.to_text() for q in msg.question],
        "answer": {line for r in msg.answer for line in r.to_text().splitlines()},
        "authority": {line for r in msg.authority for line in r.to_text().splitlines()},
        "additional": {line for r in msg.additional for line in r.to_text().splitlines()},
    }


def ask_udp(wire: bytes, address: str, port: int, sock: socket.socket | None = None) -> bytes:
    own = sock is None
    sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(3)
        for _ in range(3):
            sock.sendto(wire, (address, port))
            try:
                while True:
                    data, _ = sock.recvfrom(65535)
                    if data[:2] == wire[:2]:
                        return data
            except TimeoutError:
                continue
        raise AssertionError(f"no answer from {address}:{port}")
    finally:
        if own:
            sock.close()


def diff(name, rdtype, variant, theirs: dict, ours: dict) -> list[str]:
    return [f"{name} {rdtype} {variant} {k}: nsd={theirs[k]!r} ours={ours[k]!r}"
            for k in theirs if theirs[k] != ours[k]]


@pytest.fixture(scope="module")
def zone_files():
    return [ZONES / f for f in ZONE_FILES.values()]


def test_in_process_answers_agree_with_nsd(nsd, zone_files):
    async def run() -> tuple[list[str], int]:
        stack = FakeStack()
        server = DnsServer(stack, 53, processor_of_process(zone_process(load_zones(zone_files))))
        problems, compared = [], 0
        for name, rdtype in questions():
            for variant in VARIANTS:
                wire = make(name, rdtype, *variant).to_wire()
                theirs = summary(ask_udp(wire, "127.0.0.1", nsd))
                ours_wire, _ = await server.respond(wire, (0x7F000001, 1), (0x7F000001, 53), udp=True)
                problems += diff(name, rdtype, variant, theirs, summary(ours_wire))
                compared += 1
        return problems, compared

    problems, compared = asyncio.run(run())
    assert compared >= 400
    assert not problems, "\n".join(problems[:40])


def malformed_queries() -> dict[str, bytes]:
    q = make("www.hard.example", "A", -1, 0, False)
    plain = q.to_wire()
    two = bytearray(plain)
    two[5] = 2
    update = bytearray(plain)
    update[2] = (update[2] & 0x87) | (5 << 3)
    no_question = bytearray(plain[:12])
    no_question[5] = 0
    return {
        "two questions": bytes(two) + plain[12:],
        "no question": bytes(no_question),
        "cut question": plain[:-2],
        "opcode UPDATE": bytes(update),
        "class CH": dns.message.make_query("www.hard.example", "A", rdclass="CH").to_wire(),
        "EDNS version 1": dns.message.make_query("www.hard.example", "A", use_edns=1).to_wire(),
        "outside every zone": dns.message.make_query("www.example.org", "A").to_wire(),
        "AXFR over UDP": dns.message.make_query("hard.example", "AXFR").to_wire(),
    }


def test_malformed_queries_get_nsds_rcode(nsd, zone_files):
    async def run() -> list[str]:
        stack = FakeStack()
        server = DnsServer(stack, 53, processor_of_process(zone_process(load_zones(zone_files))))
        problems = []
        for label, wire in malformed_queries().items():
            theirs = ask_udp(wire, "127.0.0.1", nsd)
            ours, _ = await server.respond(wire, (0x7F000001, 1), (0x7F000001, 53), udp=True)
            if (theirs[3] & 0x0F, theirs[:2]) != (ours[3] & 0x0F, ours[:2]):
                problems.append(f"{label}: nsd rcode {theirs[3] & 15}, ours {ours[3] & 15}")
            if summary(theirs)["rcode"] != summary(ours)["rcode"]:   # extended rcodes (BADVERS)
                problems.append(f"{label}: nsd {summary(theirs)['rcode']}, ours {summary(ours)['rcode']}")
        return problems

    problems = asyncio.run(run())
    assert not problems, "\n".join(problems)


def serve_args(zone_files) -> list[str]:
    """The unix target, authoritative-only, on tap0 at 192.0.2.2 serving the zones
    (without mDNS, which would answer .local where NSD refuses)."""
    return unix_target("--mdns", "no", *(a for f in zone_files for a in ("--zone", str(f))))


@needs_root
def test_answers_through_our_stack_agree_with_nsd(nsd, zone_files):
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        args = serve_args(zone_files)
        proc = ns.popen(*args, cwd=str(ROOT))
        read_until(proc, "ready")
        with ns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp_socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
        problems, compared = [], 0
        try:
            for name, rdtype in questions():
                for variant in VARIANTS[:3]:
                    wire = make(name, rdtype, *variant).to_wire()
                    theirs = summary(ask_udp(wire, "127.0.0.1", nsd))
                    ours = summary(ask_udp(wire, "192.0.2.2", 53, sock))
                    problems += diff(name, rdtype, variant, theirs, ours)
                    compared += 1
            # the big answer that UDP truncates comes whole over TCP, from both
            big = make("big.hard.example", "TXT", -1, 0, False)
            tcp_sock = tcp_socks[0]
            tcp_sock.settimeout(10)
            tcp_sock.connect(("192.0.2.2", 53))
            ours_tcp = dns.query.tcp(big, "192.0.2.2", sock=tcp_sock, timeout=10)
            theirs_tcp = dns.query.tcp(big, "127.0.0.1", port=nsd, timeout=10)
            problems += diff("big", "TXT", "tcp", summary(theirs_tcp.to_wire()), summary(ours_tcp.to_wire()))
        finally:
            sock.close()
            for s in tcp_socks:
                s.close()
        assert compared >= 200
        assert not problems, "\n".join(problems[:40])
        assert len(ours_tcp.answer[0]) == 10


@needs_root
def test_names_outside_the_zones_are_refused_like_nsd(nsd, zone_files):
    """Through the whole appliance (zones, hosts, special-use, as the CLI
    builds it) without a forwarder: nothing but zone and hosts data is served,
    so special-use and other names outside the zones are REFUSED, as by NSD."""
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        args = serve_args(zone_files)
        read_until(ns.popen(*args, cwd=str(ROOT)), "ready")
        with ns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for name in ("outside.test", "x.invalid", "www.example.org", "example", "localhost",
                         "1.0.0.10.in-addr.arpa", "laptop.local"):
                wire = make(name, "A", -1, 0, False).to_wire()
                theirs = summary(ask_udp(wire, "127.0.0.1", nsd))
                ours = summary(ask_udp(wire, "192.0.2.2", 53, sock))
                assert theirs["rcode"] == ours["rcode"] == "REFUSED", name
                assert ours["answer"] == ours["authority"] == set()
        finally:
            sock.close()


# -- random zones (seeded): the rules must hold for zones nobody wrote by hand ----

LABELS = ["a", "b", "c", "www", "mail", "ns", "x", "*"]
RANDOM_TYPES = ["A", "AAAA", "TXT", "MX", "CNAME", "NS", "SRV", "DNAME"]


def random_name(rng, depth: int = 3) -> str:
    labels = [rng.choice(LABELS) for _ in range(rng.randint(1, depth))]
    return ".".join(label if label != "*" or i == 0 else "q" for i, label in enumerate(labels))


def random_zone(rng, origin: str) -> str:
    """Wildcards, CNAME chains and loops, DNAMEs, delegations, empty
    non-terminals and big TXT RRsets arise by chance; a zone NSD refuses
    (data below a DNAME, say) is skipped by the caller."""
    lines = [f"$ORIGIN {origin}.", "$TTL 300", "@ SOA ns hostmaster 1 2 3 4 60", "@ NS ns", "ns A 192.0.2.1"]
    kinds: dict[str, set] = {}
    for _ in range(rng.randint(5, 45)):
        name, rdtype = random_name(rng), rng.choice(RANDOM_TYPES)
        held = kinds.setdefault(name, set())
        if ("CNAME" in held) or (rdtype == "CNAME" and held) or (rdtype == "DNAME" and "DNAME" in held):
            continue
        if rdtype in ("NS", "DNAME") and name.startswith("*"):
            continue
        held.add(rdtype)
        target = random_name(rng) + rng.choice(["", "", "", ".elsewhere.test."])
        rdata = {"A": f"192.0.2.{rng.randint(2, 250)}", "AAAA": f"2001:db8::{rng.randint(1, 999)}",
                 "TXT": '"t' + "x" * rng.choice([0, 0, 100, 200]) + '"', "MX": f"{rng.randint(1, 50)} {target}",
                 "CNAME": target, "NS": target, "SRV": f"1 1 1 {target}", "DNAME": target}[rdtype]
        lines.append(f"{name} {rdtype} {rdata}")
    return "\n".join(lines) + "\n"


def start_nsd(work: Path, origin: str, zone: Path, port: int) -> subprocess.Popen:
    nsd_conf(work, {origin: zone}, port=port)
    return subprocess.Popen(["nsd", "-d", "-c", str(work / "nsd.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_random_zones_agree_with_nsd(tmp_path):
    import random

    origin, compared, zones_served, problems = "fz.test", 0, 0, []
    for seed in range(16):
        rng = random.Random(seed)
        zone = tmp_path / f"{seed}.zone"
        zone.write_text(random_zone(rng, origin))
        try:
            loaded = load_zones([zone])
        except Exception:
            continue                                   # dnspython refuses it: nothing to compare
        port = free_port()
        proc = start_nsd(tmp_path, origin, zone, port)
        try:
            soa = None
            for _ in range(30):           # NSD answers SERVFAIL until the zone is loaded
                try:
                    soa = dns.query.udp(dns.message.make_query(origin, "SOA"), "127.0.0.1", port=port, timeout=0.2)
                    if soa.rcode() == dns.rcode.NOERROR or proc.poll() is not None:
                        break
                except (dns.exception.Timeout, OSError):
                    pass
                time.sleep(0.05)
            if soa is None or soa.rcode() != dns.rcode.NOERROR or not soa.answer:
                continue                               # NSD refused the zone
            zones_served += 1
            server = DnsServer(FakeStack(), 53, processor_of_process(zone_process(loaded)))
            for _ in range(40):
                qname = random_name(rng, 4).replace("*", rng.choice(["*", "zz"])) + "." + origin
                qtype = rng.choice(RANDOM_TYPES + ["ANY", "SOA", "DS"])
                edns = rng.choice([-1, -1, 0])
                q = make(qname, qtype, edns, rng.choice([512, 600, 1232, 4096]), edns == 0 and rng.random() < 0.3)
                wire = q.to_wire()
                theirs = summary(ask_udp(wire, "127.0.0.1", port))
                ours_wire, _ = asyncio.run(server.respond(wire, (0x7F000001, 1), (0x7F000001, 53), udp=True))
                problems += [f"seed {seed}: {p}" for p in diff(qname, qtype, edns, theirs, summary(ours_wire))]
                compared += 1
        finally:
            proc.terminate()
            proc.wait(10)
    assert zones_served >= 5 and compared >= 200, (zones_served, compared)
    assert not problems, "\n".join(problems[:20])
