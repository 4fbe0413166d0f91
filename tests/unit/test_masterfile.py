"""The quick master-file reader (unikernel.sources.masterfile) against
dnspython's (compact.read_master_file): whenever the quick one reads a file,
it reads what dnspython reads, byte for byte, in the same order; whenever
dnspython refuses a file, the quick one gives it back (None) for dnspython
to report. And it does read the plain files, or it would buy nothing."""
from __future__ import annotations

import io
import random
from pathlib import Path

import dns.exception
import dns.name
import dns.tokenizer
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unikernel.sources.compact import read_master_file
from unikernel.sources.masterfile import read_plain
from unikernel.sources.zone import load_zone

REPO = Path(__file__).resolve().parents[2]
ZONES = REPO / "tests" / "integration" / "zones"
ORIGIN = dns.name.from_text("ex.")


def both(text: str, origin: dns.name.Name | None = ORIGIN):
    """(quick, dnspython's) readings of `text`; dnspython's is the exception
    it raised when it refused the file."""
    quick = read_plain(io.StringIO(text), origin)
    try:
        theirs = read_master_file(dns.tokenizer.Tokenizer(io.StringIO(text)), origin)
    except (dns.exception.DNSException, ValueError) as e:
        theirs = e
    return quick, theirs


def assert_agree(text: str, origin: dns.name.Name | None = ORIGIN) -> bool:
    """True when the quick reader read `text` (and read it as dnspython does)."""
    quick, theirs = both(text, origin)
    if quick is None:
        return False
    assert not isinstance(theirs, Exception), f"dnspython refuses ({theirs}) what the quick reader took:\n{text}"
    assert quick.origin == theirs.origin
    assert list(quick.nodes.blobs.items()) == list(theirs.nodes.blobs.items()), text
    return True


@pytest.mark.parametrize("path", [REPO / "data" / "d1.signpo.st.zone", ZONES / "extra.test.zone",
                                  ZONES / "sub.hard.example.zone", ZONES / "x.y.hard.example.zone"])
def test_the_zones_we_serve_are_read_quickly_and_alike(path):
    text = path.read_text()
    origin = None if "$ORIGIN" in text else dns.name.from_text(path.name.removesuffix(".zone"))
    assert assert_agree(text, origin)


def test_the_hard_cases_are_alike_and_escapes_go_to_dnspython():
    text = (ZONES / "hard.example.zone").read_text()
    assert "\\" in text and read_plain(io.StringIO(text), None) is None
    plain = "".join(line for line in text.splitlines(keepends=True) if "\\" not in line)
    assert assert_agree(plain, None)


def test_load_zone_gives_what_dnspython_gives(tmp_path):
    """load_zone takes the quick reader; the zone it builds equals the one
    built from dnspython's reading."""
    from unikernel.sources.zone import AuthoritativeZone
    path = REPO / "data" / "d1.signpo.st.zone"
    loaded = load_zone(path)
    theirs = AuthoritativeZone(read_master_file(dns.tokenizer.Tokenizer(path.open()), None))
    assert loaded.origin == theirs.origin and loaded.nodes.blobs == theirs.nodes.blobs


# Lines of the kinds zone files hold, plain and awkward, right and wrong.
OWNERS = ["@", "www", "WWW", "a.b", "*.wild", "x.ex.", "ex.", "other.", "  ", "\t", "_sip._udp", "a..b",
          "-", "1", "ns"]
TTLS = ["", "300", "0", "1h", "1H30m", "4294967295", "4294967296", "1x"]
CLASSES = ["", "IN", "in", "CH", "ANY"]
RDATAS = [
    "A 192.0.2.1", "A 192.0.2.2", "a 10.0.0.1", "A 01.2.3.4", "A 256.1.1.1", "A 1.2.3", "A 1.2.3.4 5",
    "AAAA 2001:db8::1", "AAAA ::ffff:1.2.3.4", "AAAA 2001:db8::g",
    "NS ns", "NS ns.other.", "NS NS.EX.", "CNAME target", "CNAME www", "PTR host.ex.", "DNAME else.",
    "MX 10 mail", "MX 65536 mail", "MX x mail", "MX 0 .", "MX 5 @", "NS @", "CNAME a.@", "SRV 0 0 1 @",
    'TXT "hello world"', "TXT bare words", 'TXT ""', 'TXT "a;b"', 'TXT "a" "b"', 'TXT "unclosed',
    'TXT "x"y', "TXT " + "z" * 256, 'TXT "(paren)"',
    "SRV 0 5 5060 sip", "CAA 0 issue \"ca.example\"", "SSHFP 1 1 0123456789abcdef", "HINFO cpu os",
    "SOA ns hm 1 2 3 4 5", "SOA ( ns hm 1 2 3 4 5 )", "TYPE65280 \\# 2 abcd", "NSEC www A RRSIG",
    "BOGUS 1", "A",
]
DIRECTIVES = ["$TTL 600", "$TTL 1d", "$TTL x", "$ORIGIN sub", "$ORIGIN ex.", "$ORIGIN other.", "$INCLUDE x",
              "$GENERATE 1-3 h$ A 1.2.3.$"]
COMMENTS = ["", " ; a comment", " ; (not a paren)", ";"]

# The ones dnspython takes, mostly (CNAME beside other data aside).
PLAIN_OWNERS = ["@", "www", "WWW", "a.b", "*.wild", "x.ex.", "ex.", "  ", "_sip._udp", "1", "ns"]
PLAIN_TTLS = ["", "300", "0", "1h", "4294967295"]
PLAIN_RDATAS = ["A 192.0.2.1", "A 192.0.2.2", "a 10.0.0.1", "AAAA 2001:db8::1", "NS ns", "NS NS.EX.", "MX 10 mail",
                "PTR host.ex.", 'TXT "hello world"', "TXT bare words", 'TXT ""', 'TXT "a;b"', "SRV 0 5 5060 sip",
                "CAA 0 issue \"ca.example\"", "HINFO cpu os", "NSEC www A RRSIG"]


def spell(owner: str, ttl: str, rdclass: str, swapped: bool, rdata: str, comment: str) -> str:
    """One record's line: owner (or leading space), TTL and class in either
    order, type and RDATA, maybe a comment."""
    fields = (owner + ttl if owner.isspace() else owner), *((rdclass, ttl) if swapped else (ttl, rdclass)), rdata
    return " ".join(f for f in fields if f) + comment


def record(owners, ttls, classes, rdatas, comments):
    return st.tuples(st.sampled_from(owners), st.sampled_from(ttls), st.sampled_from(classes), st.booleans(),
                     st.sampled_from(rdatas), st.sampled_from(comments)).map(lambda t: spell(*t))


line = st.one_of(record(OWNERS, TTLS, CLASSES, RDATAS, COMMENTS), st.sampled_from(DIRECTIVES),
                 st.sampled_from(COMMENTS + ["", "   ", "www (", " 300 )", "A 192.0.2.9 )"]))
plain_line = st.one_of(record(PLAIN_OWNERS, PLAIN_TTLS, ["", "IN", "in"], PLAIN_RDATAS, COMMENTS[:3]),
                       st.sampled_from(["$TTL 600", "$ORIGIN sub.ex.", "$ORIGIN ex.", ""]))
APEX = "@ 3600 IN SOA ns hm 1 7200 900 1209600 300\n@ IN NS ns\n"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, max_size=12), st.booleans())
def test_generated_files_are_read_alike_or_given_back(lines, with_apex):
    text = (APEX if with_apex else "") + "\n".join(lines) + "\n"
    assert_agree(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_line, max_size=12))
def test_generated_plain_files_are_read_alike(lines):
    assert_agree(APEX + "\n".join(lines) + "\n")


def test_most_plain_files_are_read_quickly():
    """500 files of plain lines (seeded): all read alike, and most by the
    quick reader (the rest hold CNAME beside other data, dnspython's to refuse)."""
    rng = random.Random(5)
    quick = 0
    for _ in range(500):
        lines = [spell(rng.choice(PLAIN_OWNERS), rng.choice(PLAIN_TTLS), rng.choice(["", "IN", "in"]),
                       rng.random() < 0.5, rng.choice(PLAIN_RDATAS), rng.choice(COMMENTS[:3]))
                 for _ in range(rng.randrange(12))]
        quick += assert_agree(APEX + "\n".join(lines) + "\n")
    assert quick >= 250, f"{quick} of 500 read quickly"
    print(f"{quick} of 500 read quickly")


def test_the_rules_dnspython_keeps_are_kept():
    """TTL choice ($TTL, the last TTL, the SOA minimum), merging with the
    lowest TTL and without duplicates, RRset order by last record added,
    records in parentheses: each read quickly and as dnspython reads it."""
    cases = [
        "$TTL 500\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\na 300 A 1.1.1.1\na MX 10 mail\na 100 A 2.2.2.2\n",
        "@ SOA ns hm 1 2 3 4 77\n@ NS ns\nb A 1.1.1.1\nb 30 A 2.2.2.2\nc A 3.3.3.3\n",
        "@ 90 SOA ns hm 1 2 3 4 77\n@ NS ns\nb A 1.1.1.1\n$TTL 40\nc A 3.3.3.3\nb 10 A 1.1.1.1\n",
        "@ 60 IN SOA ns hm (\n  1 ; serial\n  2 3 4\n  5 )\n@ NS ns\n  TXT \"x\" \"y z\"\nw IN 70 TXT t\n",
        "$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nx CNAME y\nx RRSIG CNAME 8 2 60 20300101000000 "
        "20200101000000 1 ex. AAAA\nx NSEC y CNAME RRSIG NSEC\n",
        "$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\n$ORIGIN sub.ex.\nwww A 1.2.3.4\n$ORIGIN deep\n@ A 1.2.3.5\n",
        "@ 3600 IN SOA ns hm 1 7200 900 1209600 300\n@ IN NS ns\n@ SOA ns hm 2 2 3 4 5\nc CNAME a\nc 5 CNAME b\n",
    ]
    for text in cases:
        assert assert_agree(text), text


def test_what_dnspython_refuses_or_skips_goes_to_dnspython():
    """CNAME beside other data (refused), a record outside the zone
    (skipped), an SOA below the apex (refused): the quick reader gives each
    file back, and dnspython's reading is the one that counts."""
    for text, refused in (("$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nx CNAME y\nx A 1.2.3.4\n", True),
                          ("$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nelsewhere. A 1.2.3.4\n", False),
                          ("$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nwww SOA ns hm 1 2 3 4 5\n", True)):
        quick, theirs = both(text)
        assert quick is None and isinstance(theirs, Exception) == refused, text
