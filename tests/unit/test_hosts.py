"""Hosts overrides: parsing (errors with file:line) and the answers given."""
import asyncio
import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.reversename
import pytest

from unikernel.config import ConfigError
from unikernel.sources.hosts import HostsError, hosts_process, load_hosts, parse_hosts

SRC = (ipaddress.IPv4Address("192.0.2.99"), 5000)
DST = (ipaddress.IPv4Address("192.0.2.2"), 53)

HOSTS = """\
# comment line
192.0.2.10   printer.lan printer   # trailing comment
192.0.2.11   nas.lan
2001:db8::11 nas.lan
192.0.2.10   other-name.lan
   
"""  # noqa: W293 (a blank line of spaces is part of the test)


def ask(process, name, rdtype="A"):
    return asyncio.run(process(src=SRC, dst=DST, query=dns.message.make_query(name, rdtype)))


@pytest.fixture
def process():
    return hosts_process(parse_hosts(HOSTS, "hosts"), ttl=60)


def test_a_and_aaaa(process):
    a = ask(process, "printer.lan.")
    assert a.final and a.static and a.message.flags & dns.flags.AA
    assert [rd.address for rd in a.message.answer[0]] == ["192.0.2.10"] and a.message.answer[0].ttl == 60
    assert ask(process, "PRINTER.")  .message.answer[0][0].address == "192.0.2.10"   # single label, any case
    assert ask(process, "nas.lan.", "AAAA").message.answer[0][0].address == "2001:db8::11"
    both = ask(process, "nas.lan.", "ANY").message
    assert {r.rdtype for r in both.answer} == {1, 28}


def test_missing_family_is_nodata_and_final(process):
    a = ask(process, "printer.lan.", "AAAA")
    assert a.final and a.message.rcode() == dns.rcode.NOERROR and not a.message.answer


def test_other_names_and_types_fall_through(process):
    assert ask(process, "unknown.lan.") is None
    assert ask(process, "printer.lan.", "MX") is None
    assert ask(process, dns.reversename.from_address("192.0.2.99"), "PTR") is None


def test_ptr_points_to_the_first_name_of_the_first_line(process):
    ptr = ask(process, dns.reversename.from_address("192.0.2.10"), "PTR")
    assert ptr.final and ptr.message.answer[0][0].target.to_text() == "printer.lan."
    v6 = ask(process, dns.reversename.from_address("2001:db8::11"), "PTR")
    assert v6.message.answer[0][0].target.to_text() == "nas.lan."
    # a name on two lines collects both addresses; the second line's name also resolves
    assert ask(process, "other-name.lan.").message.answer[0][0].address == "192.0.2.10"


@pytest.mark.parametrize("text,where", [
    ("192.0.2.300 bad.lan\n", "f:1: bad address"),
    ("\n192.0.2.1\n", "f:2: address 192.0.2.1 without a name"),
    ("192.0.2.1 a..b\n", "f:1: bad name"),
    ("# x\n\n192.0.2.1 " + "x" * 64 + ".lan\n", "f:3: bad name"),
])
def test_errors_name_file_and_line(text, where):
    with pytest.raises(HostsError) as e:
        parse_hosts(text, "f")
    assert str(e.value).startswith(where)
    assert isinstance(e.value, ConfigError)


def test_load_hosts_files(tmp_path):
    one = tmp_path / "one"
    one.write_text("192.0.2.1 a.lan\n")
    two = tmp_path / "two"
    two.write_text("192.0.2.2 b.lan\n")
    table = load_hosts([one, two])
    assert len(table) == 2
    with pytest.raises(HostsError, match="missing: cannot be read"):
        load_hosts([tmp_path / "missing"])


def test_repository_hosts_file_parses():
    from unikernel.config import REPO
    table = load_hosts([REPO / "data" / "hosts"])
    assert len(table) >= 1
