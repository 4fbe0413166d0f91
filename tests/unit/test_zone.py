"""Zone loading (errors name the file and line) and the lookup rules, on the
hard-cases zone, in-process. The NSD comparison checks the same against NSD."""
import asyncio
import ipaddress
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from unikernel.config import ConfigError
from unikernel.sources.zone import Zones, load_zone, load_zones, zone_process

ZONES = Path(__file__).resolve().parent.parent / "integration" / "zones"
HEADER = "$ORIGIN t.example.\n$TTL 60\n@ IN SOA ns h 1 2 3 4 5\n@ IN NS ns\nns IN A 192.0.2.1\n"


@pytest.fixture(scope="module")
def zones():
    return Zones(load_zones([ZONES / "hard.example.zone", ZONES / "sub.hard.example.zone"]))


def lookup(zones, name, rdtype):
    return zones.lookup(dns.name.from_text(name), dns.rdatatype.from_text(rdtype))


def texts(rrsets):
    return sorted(line for r in rrsets for line in r.to_text().splitlines())


# -- loading ---------------------------------------------------------------------

def write(tmp_path, text, name="z.zone"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, line", [
    ("www IN A 300.1.1.1\n", 6),
    ("www IN BOGUS x\n", 6),
    ("\n\nwww IN A 192.0.2.1 (\n", 8),
])
def test_syntax_errors_name_file_and_line(tmp_path, body, line):
    path = write(tmp_path, HEADER + body)
    with pytest.raises(ConfigError) as e:
        load_zone(path)
    assert str(e.value).startswith(f"{path}:{line}:")


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nothere.zone"):
        load_zone(tmp_path / "nothere.zone")


def test_zone_without_ns_is_refused(tmp_path):
    path = write(tmp_path, "$ORIGIN t.example.\n@ 60 IN SOA ns h 1 2 3 4 5\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_zone(path)


def test_origin_from_the_soa_owner_without_origin_directive(tmp_path):
    path = write(tmp_path, "$TTL 60\nexample.net. IN SOA ns.example.net. h.example.net. 1 2 3 4 5\n"
                           "example.net. IN NS ns.example.net.\nns.example.net. IN A 192.0.2.9\n")
    assert load_zone(path).origin == dns.name.from_text("example.net.")


def test_relative_records_without_origin_are_an_error(tmp_path):
    path = write(tmp_path, "$TTL 60\n@ IN SOA ns h 1 2 3 4 5\n")
    with pytest.raises(ConfigError, match=rf"{path}:1:"):
        load_zone(path)


def test_same_zone_twice_is_an_error():
    with pytest.raises(ConfigError, match="twice"):
        load_zones([ZONES / "sub.hard.example.zone", ZONES / "sub.hard.example.zone"])


def test_tutorial_zone_loads():
    zone = load_zone(Path(__file__).resolve().parent.parent.parent / "data" / "d1.signpo.st.zone")
    assert zone.origin == dns.name.from_text("d1.signpo.st.")
    result = Zones([zone]).lookup(dns.name.from_text("ns0.d1.signpo.st."), dns.rdatatype.A)
    assert texts(result.answer) == ["ns0.d1.signpo.st. 3600 IN A 192.168.1.2"]


# -- lookups -------------------------------------------------------------------------

def test_positive_answer_has_apex_ns_and_glue(zones):
    r = lookup(zones, "www.hard.example.", "A")
    assert r.rcode == dns.rcode.NOERROR and r.authoritative
    assert texts(r.answer) == ["www.hard.example. 3600 IN A 192.0.2.80"]
    assert texts(r.authority) == ["hard.example. 3600 IN NS ns1.hard.example.",
                                  "hard.example. 3600 IN NS ns2.elsewhere.test."]
    assert texts(r.additional) == ["ns1.hard.example. 3600 IN A 192.0.2.53",
                                   "ns1.hard.example. 3600 IN AAAA 2001:db8::53"]


def test_nxdomain_and_nodata_carry_soa_with_negative_ttl(zones):
    nx = lookup(zones, "nope.hard.example.", "A")
    nodata = lookup(zones, "www.hard.example.", "MX")
    assert nx.rcode == dns.rcode.NXDOMAIN and nodata.rcode == dns.rcode.NOERROR
    for r in (nx, nodata):
        assert not r.answer and r.authority[0].rdtype == dns.rdatatype.SOA
        assert r.authority[0].ttl == 300       # min(SOA TTL 3600, MINIMUM 300)


def test_empty_non_terminal_is_nodata(zones):
    for name in ("ent.hard.example.", "b.ent.hard.example."):
        r = lookup(zones, name, "A")
        assert r.rcode == dns.rcode.NOERROR and not r.answer


def test_cname_chain_followed_and_loops_stopped(zones):
    r = lookup(zones, "alias1.hard.example.", "A")
    assert [x.rdtype for x in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.CNAME, dns.rdatatype.A]
    loop = lookup(zones, "loop1.hard.example.", "A")
    assert len(loop.answer) == 2 and not loop.authority
    out = lookup(zones, "out.hard.example.", "A")
    assert texts(out.answer) == ["out.hard.example. 3600 IN CNAME target.elsewhere.test."]
    assert not out.authority and not out.additional
    dangling = lookup(zones, "dangling.hard.example.", "A")
    assert dangling.rcode == dns.rcode.NXDOMAIN and len(dangling.answer) == 1


def test_wildcards(zones):
    r = lookup(zones, "a.b.wild.hard.example.", "A")
    assert texts(r.answer) == ["a.b.wild.hard.example. 3600 IN A 192.0.2.100"]
    assert lookup(zones, "exists.wild.hard.example.", "A").answer == []          # exists: no wildcard
    assert lookup(zones, "x.exists.wild.hard.example.", "A").rcode == dns.rcode.NXDOMAIN
    assert lookup(zones, "foo.wild.hard.example.", "MX").rcode == dns.rcode.NOERROR


def test_delegation_is_a_referral_with_glue(zones):
    r = lookup(zones, "www.child.hard.example.", "A")
    assert not r.authoritative and not r.answer
    assert texts(r.authority) == ["child.hard.example. 3600 IN NS ns.child.hard.example.",
                                  "child.hard.example. 3600 IN NS ns.elsewhere.test."]
    assert texts(r.additional) == ["ns.child.hard.example. 3600 IN A 192.0.2.200"]
    ds = lookup(zones, "child.hard.example.", "DS")
    assert ds.authoritative and ds.authority[0].rdtype == dns.rdatatype.SOA


def test_mx_and_srv_targets_get_addresses(zones):
    mx = lookup(zones, "hard.example.", "MX")
    assert "mail.hard.example. 3600 IN A 192.0.2.25" in texts(mx.additional)
    srv = lookup(zones, "_sip._udp.hard.example.", "SRV")
    assert {"www.hard.example. 3600 IN A 192.0.2.80",
            "www.hard.example. 3600 IN AAAA 2001:db8::80"} <= set(texts(srv.additional))


def test_most_specific_zone_wins_and_outside_is_none(zones):
    r = lookup(zones, "host.sub.hard.example.", "A")
    assert texts(r.authority) == ["sub.hard.example. 600 IN NS ns1.hard.example."]
    assert lookup(zones, "example.", "A") is None
    assert lookup(zones, "www.hard.example.org.", "A") is None


def test_any_returns_one_rrset(zones):
    assert [r.rdtype for r in lookup(zones, "txtfirst.hard.example.", "ANY").answer] == [dns.rdatatype.MX]
    assert [r.rdtype for r in lookup(zones, "rev.hard.example.", "ANY").answer] == [dns.rdatatype.AAAA]


def test_matching_is_case_insensitive(zones):
    assert texts(lookup(zones, "MIXED.HARD.EXAMPLE.", "A").answer) == ["MIXED.HARD.EXAMPLE. 3600 IN A 192.0.2.9"]


def test_process_is_final_and_static_and_silent_outside():
    process = zone_process([ZONES / "hard.example.zone"])
    src = (ipaddress.IPv4Address("192.0.2.1"), 1)
    dst = (ipaddress.IPv4Address("192.0.2.2"), 53)
    answer = asyncio.run(process(src=src, dst=dst, query=dns.message.make_query("nope.hard.example.", "A")))
    assert answer.final and answer.static and answer.message.rcode() == dns.rcode.NXDOMAIN
    assert answer.message.flags & dns.flags.AA
    assert asyncio.run(process(src=src, dst=dst, query=dns.message.make_query("x.org.", "A"))) is None
