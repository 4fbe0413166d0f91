"""Signed zones, answered as NSD answers them.

The hard-cases zones (wildcards, empty non-terminals, CNAME chains, DNAMEs,
secure and insecure delegations, zones nested in zones) are signed at test
time by ldns-signzone, three ways: NSEC, NSEC3, NSEC3 with opt-out. NSD
serves each set on loopback; our server answers the same questions
in-process; with and without EDNS, with DO and at several sizes, rcode,
flags and every section must agree (RRSIGs and NSEC/NSEC3 proofs included),
so must what survives truncation.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess

import dns.message
import dns.query
import pytest

from tests.integration.test_nsd_compare import (
    VARIANTS,
    ZONE_FILES,
    ZONES,
    ask_udp,
    diff,
    free_port,
    make,
    questions,
    summary,
)
from tests.nsd import nsd_conf
from tests.signing import SignedZone, needs_ldns, sign_zone
from tests.unit.fake_stack import FakeStack
from unikernel.process import processor_of_process
from unikernel.serve.server import DnsServer
from unikernel.sources.zone import load_zones, zone_process

pytestmark = [needs_ldns, pytest.mark.skipif(shutil.which("nsd") is None, reason="needs NSD (apt install nsd)")]

# deleg6 becomes a secure delegation (its DS is made up: only the parent's
# answers are compared here); child and nochild stay insecure.
HARD_EXTRA = "deleg6 IN DS 12345 13 2 " + "ab" * 32 + "\n"
# Questions only signed zones make interesting: keys, denial records, the
# signatures themselves, DS at secure and insecure cuts, NXDOMAIN and NODATA
# at every depth (each NSEC3 hash lands somewhere else in the chain).
SIGNED_QUESTIONS = [
    ("hard.example", "DNSKEY"), ("hard.example", "NSEC3PARAM"), ("hard.example", "NSEC"),
    ("www.hard.example", "NSEC"), ("www.hard.example", "NSEC3"), ("www.hard.example", "RRSIG"),
    ("deleg6.hard.example", "DS"), ("deleg6.hard.example", "A"), ("x.deleg6.hard.example", "A"),
    ("nochild.hard.example", "DS"), ("child.hard.example", "DS"), ("sub.hard.example", "DNSKEY"),
    ("sub.hard.example", "DS"), ("x.y.hard.example", "DNSKEY"), ("extra.test", "DNSKEY"),
    ("a.b.c.d.hard.example", "A"), ("zzz.hard.example", "A"), ("aaa.hard.example", "TXT"),
    ("b.ent.hard.example", "TXT"), ("a.b.ent.hard.example", "TXT"), ("q.b.ent.hard.example", "A"),
    ("foo.wild.hard.example", "AAAA"), ("a.foo.wild.hard.example", "A"), ("mail.hard.example", "MX"),
    ("nx.x.y.hard.example", "A"), ("nx.sub.hard.example", "TXT"), ("foo.extra.test", "TXT"),
    ("x.dn.extra.test", "A"), ("q.dnin.extra.test", "A"), ("zz.child.extra.test", "A"),
]
# NSD proves the non-existence of a wildcard-expanded name reached through a
# DNAME with the NSEC before its closest encloser, which does not cover the
# name (a validator rejects it); we give the NSEC that covers it.
NSD_DNAME_WILDCARD_PROOF = {("y.x.dnin.extra.test", "TXT"), ("x.dnin.extra.test", "A"), ("q.dnin.extra.test", "A")}
SCHEMES = {"nsec": {}, "nsec3": {"nsec3": True}, "nsec3-optout": {"nsec3": True, "opt_out": True}}


def sign_all(work, scheme: str) -> dict[str, SignedZone]:
    options = SCHEMES[scheme]
    signed = {}
    for origin, file in ZONE_FILES.items():
        extra = HARD_EXTRA if origin == "hard.example" else ""
        signed[origin] = sign_zone(ZONES / file, origin, work / origin, extra=extra, **options)
    return signed


def start_nsd(work, signed: dict[str, SignedZone]) -> tuple[subprocess.Popen, int]:
    """NSD serving the zones on a free loopback port, answering; a port that
    turns out to be taken (TCP) is replaced by another."""
    for _attempt in range(3):
        port = free_port()
        nsd_conf(work, {origin: z.path for origin, z in signed.items()}, port=port)
        proc = subprocess.Popen(["nsd", "-d", "-c", str(work / "nsd.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        probe = dns.message.make_query("hard.example.", "SOA")
        for _ in range(100):
            if proc.poll() is not None:
                break
            try:
                if dns.query.udp(probe, "127.0.0.1", port=port, timeout=0.2).rcode() == 0:
                    return proc, port
            except (dns.exception.Timeout, OSError):
                pass
        proc.kill()
        proc.wait()
    pytest.fail(f"NSD did not start: {(work / 'nsd.log').read_text()[-300:]}")


@pytest.fixture(scope="module", params=list(SCHEMES))
def signed_nsd(request, tmp_path_factory):
    """(signed zones, NSD's port) for one signing scheme."""
    work = tmp_path_factory.mktemp(request.param)
    signed = sign_all(work, request.param)
    proc, port = start_nsd(work, signed)
    try:
        yield signed, port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def compared_questions(signed: dict[str, SignedZone]) -> list[tuple[str, str]]:
    """Every question, but those where NSD's NSEC proof is wrong (above)."""
    nsec = "NSEC3PARAM" not in signed["extra.test"].path.read_text()
    return [q for q in questions() + SIGNED_QUESTIONS if not (nsec and q in NSD_DNAME_WILDCARD_PROOF)]


def test_signed_answers_agree_with_nsd(signed_nsd):
    signed, port = signed_nsd

    async def run() -> tuple[list[str], int, int]:
        server = DnsServer(FakeStack(), 53, processor_of_process(
            zone_process(load_zones(z.path for z in signed.values()))))
        problems, compared, with_signatures = [], 0, 0
        for name, rdtype in compared_questions(signed):
            for variant in VARIANTS:
                wire = make(name, rdtype, *variant).to_wire()
                theirs = summary(ask_udp(wire, "127.0.0.1", port))
                ours_wire, _ = await server.respond(wire, (0x7F000001, 1), (0x7F000001, 53), udp=True)
                ours = summary(ours_wire)
                problems += diff(name, rdtype, variant, theirs, ours)
                compared += 1
                if variant[2] and rdtype != "RRSIG":
                    with_signatures += any(" RRSIG " in line for section in ("answer", "authority")
                                           for line in ours[section])
        return problems, compared, with_signatures

    problems, compared, with_signatures = asyncio.run(run())
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:40])
    assert compared >= 500
    assert with_signatures >= 100          # the comparison saw signed answers


def test_signed_answers_over_tcp_agree_with_nsd(signed_nsd):
    """TCP (no size limit) with DO: every RRSIG and proof, nothing cut."""
    signed, port = signed_nsd

    async def run() -> list[str]:
        server = DnsServer(FakeStack(), 53, processor_of_process(
            zone_process(load_zones(z.path for z in signed.values()))))
        problems = []
        for name, rdtype in compared_questions(signed):
            query = make(name, rdtype, 0, 4096, True)
            theirs = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
            ours_wire, _ = await server.respond(query.to_wire(), (0x7F000001, 1), (0x7F000001, 53), udp=False)
            problems += diff(name, rdtype, "tcp", summary(theirs.to_wire()), summary(ours_wire))
        return problems

    problems = asyncio.run(run())
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:40])
