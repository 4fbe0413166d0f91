"""unikernel.sources.chaos: NSD's answers to the CHAOS names (what NSD 4.6
sends was read with dig: TXT or ANY, TTL 0, no AA, REFUSED + EDE 21 else);
tests/integration/test_chaos_blocklist.py compares with a running NSD."""
from __future__ import annotations

import asyncio
import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from unikernel.sources.chaos import chaos_process

SRC = (ipaddress.IPv4Address("192.0.2.1"), 5353)
DST = (ipaddress.IPv4Address("192.0.2.2"), 53)


def ask(process, name: str, rdtype="TXT", rdclass="CH", **kw):
    query = dns.message.make_query(name, rdtype, rdclass, **kw)
    return asyncio.run(process(src=SRC, dst=DST, query=query))


@pytest.mark.parametrize("name, expected", [("id.server", "dns1"), ("hostname.bind", "dns1"),
                                            ("version.server", "0.1.0"), ("VERSION.Bind", "0.1.0")])
def test_names_answer_txt_with_ttl_0_and_no_aa(name, expected):
    for rdtype in ("TXT", "ANY"):
        answer = ask(chaos_process(identity="dns1", version="0.1.0"), name, rdtype)
        message = answer.message
        assert answer.final and answer.static
        assert message.rcode() == dns.rcode.NOERROR and not message.flags & dns.flags.AA
        (rrset,) = message.answer
        assert (rrset.rdclass, rrset.rdtype, rrset.ttl) == (dns.rdataclass.CH, dns.rdatatype.TXT, 0)
        assert [s.decode() for s in rrset[0].strings] == [expected]
        assert rrset.name.to_text() == name + "."         # the case as asked


@pytest.mark.parametrize("name, rdtype", [("id.server", "A"), ("foo.bind", "TXT"), ("sub.id.server", "TXT"),
                                          ("version.bind", "TXT")])
def test_other_questions_and_the_hidden_version_are_refused_with_ede_21(name, rdtype):
    answer = ask(chaos_process(identity="dns1", version=None), name, rdtype, use_edns=0)
    assert answer.final and answer.message.rcode() == dns.rcode.REFUSED and not answer.message.answer
    assert [(o.otype, o.code) for o in answer.message.options] == [(dns.edns.OptionType.EDE, 21)]


def test_internet_class_is_not_ours():
    assert ask(chaos_process(identity="dns1", version="0.1.0"), "id.server", rdclass="IN") is None
