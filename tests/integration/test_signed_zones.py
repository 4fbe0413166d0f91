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
import re
import shutil
import subprocess
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.integration.test_nsd_compare import (
    ROOT,
    VARIANTS,
    ZONE_FILES,
    ZONES,
    ask_udp,
    diff,
    free_port,
    make,
    questions,
    serve_args,
    summary,
)
from tests.netns import Namespace, needs_root, read_until, stop
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
        stop(proc)


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


# -- a validating resolver finds our answers secure -----------------------------

# Names whose answers stay inside hard.example (no delegation, no CNAME out of
# it): positive, CNAME chains, wildcards and wildcard CNAMEs, empty
# non-terminals, NXDOMAIN at several depths, NODATA, DS at insecure cuts, keys,
# a TXT RRset too big for UDP (Unbound asks again over TCP).
VALIDATED = [
    ("www.hard.example", "A"), ("www.hard.example", "AAAA"), ("hard.example", "MX"), ("hard.example", "DNSKEY"),
    ("hard.example", "SOA"), ("alias1.hard.example", "A"), ("foo.wild.hard.example", "A"),
    ("foo.wild.hard.example", "MX"), ("foo.cwild.hard.example", "A"), ("a.b.ent.hard.example", "A"),
    ("b.ent.hard.example", "A"), ("ent.hard.example", "TXT"), ("nope.hard.example", "A"),
    ("x.nope.hard.example", "A"), ("a.b.c.d.hard.example", "AAAA"), ("zzz.hard.example", "A"),
    ("www.hard.example", "TXT"), ("dangling.hard.example", "A"), ("child.hard.example", "DS"),
    ("nochild.hard.example", "DS"), ("sub.exists.wild.hard.example", "A"), ("x.exists.wild.hard.example", "A"),
    ("_sip._udp.hard.example", "SRV"), ("q.deep.hard.example", "A"), ("y.x.ent2.hard.example", "A"),
    ("big.hard.example", "TXT"), ("c15.hard.example", "A"), ("mxcname.hard.example", "MX"),
]

# With opt-out, an NSEC3 that covers the next closer name may span unsigned
# delegations, so NXDOMAIN and wildcard answers are insecure by design (RFC
# 5155 9.2): Unbound gives them without AD, and never SERVFAIL.
OPT_OUT_INSECURE = {
    ("foo.wild.hard.example", "A"), ("foo.wild.hard.example", "MX"), ("foo.cwild.hard.example", "A"),
    ("nope.hard.example", "A"), ("x.nope.hard.example", "A"), ("a.b.c.d.hard.example", "AAAA"),
    ("zzz.hard.example", "A"), ("dangling.hard.example", "A"), ("x.exists.wild.hard.example", "A"),
    ("q.deep.hard.example", "A"), ("y.x.ent2.hard.example", "A"),
}


def read_until_file(path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {path} within {timeout} s")


def unbound_conf(work, port: int, appliance: str, anchor: str):
    conf = work / "unbound.conf"
    (work / "anchor").write_text(anchor + "\n")
    # the root is stubbed to the appliance too (which refuses it), so no
    # query can go anywhere but the namespace's own tap
    conf.write_text(f"""server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: "{work}/unbound.pid"
    use-syslog: no
    logfile: "{work}/unbound.log"
    verbosity: 1
    val-log-level: 2
    do-ip6: no
    do-not-query-localhost: no
    qname-minimisation: no
    target-fetch-policy: "0 0 0 0 0"
    module-config: "validator iterator"
    trust-anchor-file: "{work}/anchor"
remote-control:
    control-enable: no
stub-zone:
    name: "hard.example"
    stub-addr: {appliance}
stub-zone:
    name: "."
    stub-addr: {appliance}
""")
    return conf


@needs_root
@pytest.mark.skipif(shutil.which("unbound") is None, reason="needs Unbound (apt install unbound)")
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_unbound_validates_every_answer(tmp_path, scheme):
    """Unbound, with hard.example's key as its trust anchor and the appliance
    (through our own stack) as the zone's server, finds every answer secure
    (AD set), but those opt-out makes insecure; none is bogus."""
    signed = sign_zone(ZONES / "hard.example.zone", "hard.example", tmp_path / "zone", **SCHEMES[scheme])
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        appliance = ns.popen(*serve_args([signed.path]), cwd=str(ROOT))
        read_until(appliance, "ready")
        port = 5300
        conf = unbound_conf(tmp_path, port, "192.0.2.2", signed.ds)
        ns.popen("unbound", "-d", "-c", str(conf))
        read_until_file(tmp_path / "unbound.log", "start of service")
        problems = []
        for name, rdtype in VALIDATED:
            out = ns.run("dig", "@127.0.0.1", "-p", str(port), name, rdtype, "+dnssec", "+time=5",
                         "+tries=2", timeout=30).stdout
            header = re.search(r"status: (\w+),.*\n;; flags: ([a-z ]*);", out)
            secure = not (scheme == "nsec3-optout" and (name, rdtype) in OPT_OUT_INSECURE)
            if header is None or header[1] not in ("NOERROR", "NXDOMAIN") or secure != ("ad" in header[2].split()):
                problems.append(f"{name} {rdtype}: {header.groups() if header else out[-300:]}")
        log = (tmp_path / "unbound.log").read_text()
        assert not problems, "\n".join(problems) + "\n" + log[-1500:]
        assert "validation failure" not in log
