"""Special-use names (RFC 6761, 6762, 7686, 8375) and locally served reverse
zones (RFC 6303): answered here, final, never forwarded."""
import asyncio
import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from unikernel.sources.special import special_process

SRC = (ipaddress.IPv4Address("192.0.2.99"), 5000)
DST = (ipaddress.IPv4Address("192.0.2.2"), 53)


def ask(name, rdtype="A", **kw):
    process = special_process(**kw)
    return asyncio.run(process(src=SRC, dst=DST, query=dns.message.make_query(name, rdtype)))


def test_localhost_is_loopback():
    a = ask("localhost.")
    assert a.final and a.static and a.message.flags & dns.flags.AA
    assert a.message.answer[0][0].address == "127.0.0.1"
    assert ask("LocalHost.", "AAAA").message.answer[0][0].address == "::1"
    assert ask("foo.localhost.").message.answer[0][0].address == "127.0.0.1"
    mx = ask("localhost.", "MX").message
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer and mx.authority[0].rdtype == dns.rdatatype.SOA


def test_loopback_reverse():
    ptr = ask(dns.reversename.from_address("127.0.0.1"), "PTR").message
    assert ptr.answer[0][0].target.to_text() == "localhost."
    ptr6 = ask(dns.reversename.from_address("::1"), "PTR").message
    assert ptr6.answer[0][0].target.to_text() == "localhost."
    other = ask(dns.reversename.from_address("127.0.0.2"), "PTR").message
    assert other.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("name", ["printer.local.", "x.invalid.", "a.test.", "abc.onion.", "nas.home.arpa."])
def test_special_domains_are_nxdomain(name):
    a = ask(name)
    assert a.final and a.message.rcode() == dns.rcode.NXDOMAIN
    soa = a.message.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and name.endswith(soa.name.to_text())


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.7", "169.254.1.1",
                                     "100.64.0.1", "100.127.0.1", "192.0.2.1", "0.1.2.3", "fd12::1",
                                     "fe80::1", "2001:db8::5"])
def test_private_reverse_zones_answered_locally(address):
    a = ask(dns.reversename.from_address(address), "PTR")
    assert a is not None and a.final and a.message.rcode() == dns.rcode.NXDOMAIN
    assert a.message.authority[0][0].mname == a.message.authority[0].name


@pytest.mark.parametrize("address", ["172.32.0.1", "8.8.8.8", "100.128.0.1", "2001:4860::1", "192.169.0.1"])
def test_public_reverse_names_fall_through(address):
    assert ask(dns.reversename.from_address(address), "PTR") is None


@pytest.mark.parametrize("name", ["example.com.", "example.", "localhost.example.com.", "local.example."])
def test_other_names_fall_through(name):
    assert ask(name) is None


def test_apex_soa_and_ns():
    soa = ask("168.192.in-addr.arpa.", "SOA").message
    assert soa.answer[0][0].rname.to_text() == "nobody.invalid." and soa.answer[0].ttl == 10800
    ns = ask("10.in-addr.arpa.", "NS").message
    assert ns.answer[0][0].target.to_text() == "10.in-addr.arpa."
    nodata = ask("10.in-addr.arpa.", "A").message
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer


def test_recursion_available_flag():
    assert ask("localhost.", recursion_available=True).message.flags & dns.flags.RA
    assert not ask("localhost.").message.flags & dns.flags.RA


def test_each_zones_records_are_made_when_first_asked(monkeypatch):
    """Setting up answers for the ~100 zones parses none of them (that was a
    fifth of the appliance's setup before its first answer under TCG); a
    zone's SOA and NS are made at its first query, once."""
    import unikernel.sources.special as special
    made = []
    real = special._soa_and_ns
    monkeypatch.setattr(special, "_soa_and_ns", lambda apex: made.append(apex) or real(apex))
    process = special.special_process(recursion_available=True)
    assert made == []
    for _ in range(2):
        a = asyncio.run(process(src=SRC, dst=DST, query=dns.message.make_query("x.10.in-addr.arpa.", "PTR")))
        assert a.message.rcode() == dns.rcode.NXDOMAIN
        assert a.message.authority[0].name.to_text() == "10.in-addr.arpa."
    assert [m.to_text() for m in made] == ["10.in-addr.arpa."]
