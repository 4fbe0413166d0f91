"""The validating forwarder end to end, against validating Unbound, on the
signed hierarchy of tests/dnssec_world.py:

    namespace:  tap0 host side 192.0.2.1/24: Unbound, iterator only (the upstream)
                127.0.0.1 NSD (every zone), 127.0.0.2 Unbound validating (the reference)
    appliance:  192.0.2.2/24 on tap0, `python -m unikernel serve --trust-anchor ...`

Every question is asked of both, with DO and without, twice (the second
answer comes from the cache's fast path): rcode, AD and the answer section
must agree; bogus answers carry their Extended DNS Error; CD gets the data.
"""
from __future__ import annotations

import socket
import threading

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnssec_world import QUESTIONS, REFERENCE, SignedWorld, missing_tools
from tests.netns import Namespace, needs_root

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")]
UPSTREAM, APPLIANCE, STRIPPER = "192.0.2.1", "192.0.2.2", "192.0.2.3"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with Namespace("dsfwd") as ns:
        ns.add_tap("tap0", f"{UPSTREAM}/24")
        ns.ip("addr", "add", f"{STRIPPER}/24", "dev", "tap0")
        with SignedWorld(ns, tmp_path_factory.mktemp("world"), upstream=UPSTREAM) as w:
            yield w


def appliance(world: SignedWorld, *flags: str, forward: str = UPSTREAM):
    return world.ns.serve(*flags, ipv4=f"{APPLIANCE}/24", gateway=UPSTREAM, forward=f"{forward}:53")


def stop(proc) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return out


def ask(world: SignedWorld, server: str, name: str, rdtype: str, *, do: bool = True, cd: bool = False,
        ad: bool = True) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=do, use_edns=0, payload=1232)
    query.flags = (query.flags & ~dns.flags.AD) | (dns.flags.AD if ad else 0) | (dns.flags.CD if cd else 0)
    with world.ns.entered():
        return dns.query.udp(query, server, timeout=6)


def summary(reply: dns.message.Message) -> tuple:
    answer = sorted((r.name.to_text().lower(), dns.rdatatype.to_text(r.rdtype), rd.to_text())
                    for r in reply.answer for rd in r)
    return dns.rcode.to_text(reply.rcode()), bool(reply.flags & dns.flags.AD), answer


def ede_codes(reply: dns.message.Message) -> list[int]:
    return [o.code for o in reply.options if isinstance(o, dns.edns.EDEOption)]


@pytest.fixture
def validating(world):
    """The appliance validating with the test anchor (one at a time: they share tap0)."""
    proc = appliance(world, "--trust-anchor", str(world.anchor_file))
    yield proc
    stop(proc)


@pytest.mark.parametrize("do", [True, False], ids=["DO", "noDO"])
def test_every_answer_agrees_with_unbound(world, validating, do):
    disagreements = []
    for name, rdtype in QUESTIONS:
        theirs = summary(ask(world, REFERENCE, name, rdtype, do=do))
        for attempt in ("first", "cached"):
            ours = summary(ask(world, APPLIANCE, name, rdtype, do=do))
            if ours != theirs:
                disagreements.append(f"{name} {rdtype} ({attempt}): ours {ours}, Unbound {theirs}")
    assert not disagreements, "\n".join(disagreements)


def test_without_do_no_dnssec_records_and_ad_only_when_asked(world, validating):
    reply = ask(world, APPLIANCE, "www.secure.tld.", "A", do=False, ad=True)
    assert reply.flags & dns.flags.AD
    assert [r.rdtype for r in reply.answer] == [dns.rdatatype.A]
    for _ in range(2):                   # the slow path, then the cache's fast path
        assert not ask(world, APPLIANCE, "www.secure.tld.", "A", do=False, ad=False).flags & dns.flags.AD
    nx = ask(world, APPLIANCE, "nothing.secure.tld.", "A", do=False)
    assert not any(r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.RRSIG) for r in nx.authority)
    nx_do = ask(world, APPLIANCE, "nothing.secure.tld.", "A", do=True)
    assert any(r.rdtype == dns.rdatatype.NSEC for r in nx_do.authority)


@pytest.mark.parametrize("name, code", [("www.broken.tld.", 6), ("www.expired.tld.", 7), ("www.nokey.tld.", 9)])
def test_bogus_is_servfail_with_its_extended_error_and_cd_gets_the_data(world, validating, name, code):
    for _ in range(2):
        reply = ask(world, APPLIANCE, name, "A")
        assert reply.rcode() == dns.rcode.SERVFAIL and ede_codes(reply) == [code]
    checking_disabled = ask(world, APPLIANCE, name, "A", cd=True)
    reference = ask(world, REFERENCE, name, "A", cd=True)
    assert summary(checking_disabled) == summary(reference)
    assert checking_disabled.rcode() == dns.rcode.NOERROR and not checking_disabled.flags & dns.flags.AD
    assert any(r.rdtype == dns.rdatatype.RRSIG for r in checking_disabled.answer)
    assert checking_disabled.flags & dns.flags.CD


def test_bogus_zone_logged_once_a_minute(world):
    proc = appliance(world, "--trust-anchor", str(world.anchor_file))
    for name in ("www.broken.tld.", "mail.broken.tld.", "www.broken.tld."):
        assert ask(world, APPLIANCE, name, "A").rcode() == dns.rcode.SERVFAIL
    out = stop(proc)
    lines = [line for line in out.splitlines() if "bogus" in line and "broken.tld" in line]
    assert len(lines) == 1, out


def test_dnssec_no_relays_as_before(world):
    proc = appliance(world, "--dnssec", "no")
    try:
        broken = ask(world, APPLIANCE, "www.broken.tld.", "A")
        assert broken.rcode() == dns.rcode.NOERROR and not broken.flags & dns.flags.AD
        secure = ask(world, APPLIANCE, "www.secure.tld.", "A")
        assert secure.rcode() == dns.rcode.NOERROR and not secure.flags & dns.flags.AD
    finally:
        stop(proc)


class Stripper:
    """An upstream that relays to the iterator and drops every RRSIG, as
    some middleboxes and old forwarders do."""

    def __init__(self, ns: Namespace) -> None:
        with ns.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((STRIPPER, 53))
            self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                reply = dns.query.udp(dns.message.from_wire(wire), UPSTREAM, timeout=3, sock=self.out)
            except Exception:
                continue
            for section in (reply.answer, reply.authority):
                section[:] = [r for r in section if r.rdtype != dns.rdatatype.RRSIG]
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()
        self.out.close()


def test_an_upstream_that_strips_dnssec_is_named_and_answers_are_servfail(world):
    stripper = Stripper(world.ns)
    try:
        proc = appliance(world, "--trust-anchor", str(world.anchor_file), forward=STRIPPER)
        reply = ask(world, APPLIANCE, "www.secure.tld.", "A")
        out = stop(proc)
    finally:
        stripper.close()
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert sum("strips DNSSEC" in line for line in out.splitlines()) == 1, out
