"""unikernel.sources.blocklist: the list formats, what is blocked, the answers."""
from __future__ import annotations

import asyncio
import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import pytest

from unikernel.config import ConfigError
from unikernel.sources.blocklist import Blocklist, BlocklistError

SRC = (ipaddress.IPv4Address("192.0.2.1"), 5353)
DST = (ipaddress.IPv4Address("192.0.2.2"), 53)

STEVENBLACK = """# Title: StevenBlack/hosts
#
127.0.0.1 localhost
127.0.0.1 localhost.localdomain
255.255.255.255 broadcasthost
::1 localhost
0.0.0.0 0.0.0.0

# [ads]
0.0.0.0 ads.example.com
0.0.0.0 Tracker.Example.NET.  # trailing dot and case
127.0.0.1 one.example two.example
"""
DOMAINS = """! AdGuard-style comment
ads2.example.org
||pixel.example.io^
*.wild.example

metrics.example.com
"""


def names(*texts: str) -> list[tuple[bytes, ...]]:
    return [dns.name.from_text(t).canonicalize().labels for t in texts]


@pytest.fixture
def lists(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(STEVENBLACK)
    domains = tmp_path / "domains.txt"
    domains.write_text(DOMAINS)
    return hosts, domains


def test_formats_comments_and_hosts_own_names(lists):
    blocklist = Blocklist(lists)
    assert len(blocklist) == 8 and blocklist.malformed == 0
    for name in ("ads.example.com", "tracker.example.net", "one.example", "two.example", "ads2.example.org",
                 "pixel.example.io", "wild.example", "metrics.example.com"):
        (labels,) = names(name)
        assert blocklist.blocks(labels), name
    for name in ("localhost", "broadcasthost", "example.com", "0.0.0.0", "example.net", "localhost.localdomain"):
        (labels,) = names(name)
        assert not blocklist.blocks(labels), name


def test_names_below_a_listed_name_are_blocked_and_above_not(lists):
    blocklist = Blocklist(lists)
    for labels in names("x.ads.example.com", "a.b.c.tracker.example.net", "deep.wild.example"):
        assert blocklist.blocks(labels)
    for labels in names("example.com", "notads.example.com", "com", "."):
        assert not blocklist.blocks(labels)


def test_allowlist_the_most_specific_listing_decides(tmp_path, lists):
    allow = tmp_path / "allow.txt"
    allow.write_text("good.ads.example.com\nmetrics.example.com\n")
    blocklist = Blocklist(lists, [allow])
    assert not blocklist.blocks(*names("good.ads.example.com"))
    assert not blocklist.blocks(*names("x.good.ads.example.com"))
    assert blocklist.blocks(*names("bad.ads.example.com"))
    assert not blocklist.blocks(*names("metrics.example.com"))       # in both: the allowlist wins


def test_malformed_lines_are_counted_and_reported_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("fine.example\nnot a domain line\n0.0.0.0 bad_name!.example\n-\n"
                   "too.many..dots\n" + "x" * 64 + ".example\nalso-fine.example\n192.0.2.7\n")
    blocklist = Blocklist([bad])
    assert len(blocklist) == 2
    assert blocklist.malformed == 6
    assert [line.split(": ")[0] for line in blocklist.report] == [f"{bad}:{n}" for n in (2, 3, 4, 5, 6, 8)]


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(BlocklistError, match="nope.txt"):
        Blocklist([tmp_path / "nope.txt"])
    assert issubclass(BlocklistError, ConfigError)


def test_a_label_holding_a_dot_matches_nothing_through_it(tmp_path):
    listed = tmp_path / "l.txt"
    listed.write_text("b.example.com\nexample.org\n")
    blocklist = Blocklist([listed])
    # the name a\.b.example.com has labels ("a.b", "example", "com"): not below b.example.com
    assert not blocklist.blocks((b"a.b", b"example", b"com", b""))
    assert blocklist.blocks((b"x", b"a.b", b"example", b"org", b""))    # but still below example.org


def ask(blocklist, name: str, rdtype: str = "A", **kw):
    query = dns.message.make_query(name, rdtype, **kw)
    return asyncio.run(blocklist.process(src=SRC, dst=DST, query=query))


def test_blocked_answers_nxdomain_with_ede_15(lists):
    blocklist = Blocklist(lists)
    answer = ask(blocklist, "x.Ads.Example.com", "AAAA", use_edns=0)
    message = answer.message
    assert answer.final and answer.static
    assert message.rcode() == dns.rcode.NXDOMAIN and not message.answer
    assert message.flags & dns.flags.RA and not message.flags & dns.flags.AA
    assert [(o.otype, o.code) for o in message.options] == [(dns.edns.OptionType.EDE, 15)]
    assert ask(blocklist, "example.com") is None
    assert ask(blocklist, "ads.example.com", rdclass="CH") is None
    assert blocklist.counters["blocklist.blocked"] == 1


def test_null_mode_answers_unspecified_addresses(lists):
    blocklist = Blocklist(lists, mode="null")
    a = ask(blocklist, "ads.example.com", "A", use_edns=0).message
    aaaa = ask(blocklist, "ads.example.com", "AAAA").message
    mx = ask(blocklist, "ads.example.com", "MX").message
    assert a.rcode() == aaaa.rcode() == mx.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in a.answer[0]] == ["0.0.0.0"]
    assert [r.to_text() for r in aaaa.answer[0]] == ["::"]
    assert not mx.answer
    assert [(o.otype, o.code) for o in a.options] == [(dns.edns.OptionType.EDE, 15)]


def test_bad_mode_is_a_config_error(lists):
    with pytest.raises(ConfigError, match="block-answer"):
        Blocklist(lists, mode="refuse")


def test_stage_reads_everything_before_the_swap(tmp_path):
    listed = tmp_path / "l.txt"
    listed.write_text("one.example\n")
    extra = tmp_path / "extra.txt"
    extra.write_text("two.example\n")
    blocklist = Blocklist([listed, extra])
    extra.unlink()
    with pytest.raises(BlocklistError):
        blocklist.stage()
    assert blocklist.blocks(*names("two.example"))                  # nothing changed
    extra.write_text("three.example\n")
    commit = blocklist.stage()
    assert blocklist.blocks(*names("two.example"))                  # not before the commit
    commit()
    assert not blocklist.blocks(*names("two.example")) and blocklist.blocks(*names("three.example"))
