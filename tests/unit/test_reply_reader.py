"""unikernel.resolver.reply.read against dnspython's own reader
(``dns.message.from_wire``), the judge of what a reply holds: for every
reply it reads, the same message (RRsets, rdata objects, TTLs, flags, OPT);
for every reply dnspython refuses, None; for what it leaves to dnspython
(other types, options, TSIG...), None. Replies are made by dnspython's
renderer (compressed as a server compresses), then cut, flipped and spliced
at random: the reader never accepts what dnspython refuses."""
import random

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import dns.tsigkeyring
import pytest

from unikernel.resolver.reply import read


def reply(qname="m1.Bench.tld.", qtype="A", answer=(), authority=(), additional=(), *, edns=0, do=False,
          rcode=dns.rcode.NOERROR, payload=1232) -> bytes:
    query = dns.message.make_query(qname, qtype, use_edns=edns, want_dnssec=do, payload=payload)
    message = dns.message.make_response(query, our_payload=payload)
    message.flags |= dns.flags.RA
    message.set_rcode(rcode)
    message.answer = [dns.rrset.from_text(*r) for r in answer]
    message.authority = [dns.rrset.from_text(*r) for r in authority]
    message.additional = [dns.rrset.from_text(*r) for r in additional]
    return message.to_wire()


NS = ("bench.tld.", 3600, "IN", "NS", "ns.tld.", "NS2.bench.tld.")
GLUE = ("ns2.bench.tld.", 3600, "IN", "A", "192.0.2.1")
SOA = ("bench.tld.", 300, "IN", "SOA", "ns.tld. hostmaster.Bench.tld. 7 3600 900 86400 60")
READ = {
    "A with NS and glue": reply(answer=[("m1.bench.tld.", 3600, "IN", "A", "10.0.0.1", "10.0.0.2")],
                                authority=[NS], additional=[GLUE]),
    "no EDNS": reply(answer=[("m1.bench.tld.", 60, "IN", "A", "10.0.0.1")], edns=-1),
    "DO and a big payload": reply(answer=[("m1.bench.tld.", 60, "IN", "A", "10.0.0.1")], do=True, payload=4096),
    "AAAA": reply(qtype="AAAA", answer=[("m1.bench.tld.", 60, "IN", "AAAA", "2001:db8::1", "2001:db8::2")]),
    "a CNAME chain": reply(answer=[("m1.bench.tld.", 60, "IN", "CNAME", "www.Other.tld."),
                                   ("www.other.tld.", 30, "IN", "CNAME", "x.other.tld."),
                                   ("x.other.tld.", 20, "IN", "A", "10.1.1.1")]),
    "a DNAME": reply(qname="a.x.tld.", answer=[("x.tld.", 60, "IN", "DNAME", "y.tld."),
                                                ("a.x.tld.", 60, "IN", "CNAME", "a.y.tld.")]),
    "MX and PTR": reply(qtype="MX", answer=[("m1.bench.tld.", 60, "IN", "MX", "10 mail.bench.tld."),
                                            ("m1.bench.tld.", 60, "IN", "MX", "20 mail2.Bench.tld.")],
                        additional=[("mail.bench.tld.", 60, "IN", "A", "10.0.0.9"),
                                    ("4.3.2.1.in-addr.arpa.", 60, "IN", "PTR", "m1.bench.tld.")]),
    "NXDOMAIN with SOA": reply(rcode=dns.rcode.NXDOMAIN, authority=[SOA]),
    "NODATA with SOA": reply(qtype="AAAA", authority=[SOA]),
    "the root": reply(qname=".", qtype="NS", answer=[(".", 518400, "IN", "NS", "a.root-servers.net.")]),
    "TXT": reply(qtype="TXT", answer=[("m1.bench.tld.", 60, "IN", "TXT", '"v=spf1 -all" "two" ""')]),
    "signed, with DO": reply(do=True, answer=[
        ("m1.bench.tld.", 60, "IN", "A", "10.0.0.1"),
        ("m1.bench.tld.", 60, "IN", "RRSIG", "A 13 3 60 20300101000000 20200101000000 4711 Bench.tld. AAAA"),
        ("m1.bench.tld.", 60, "IN", "RRSIG", "A 8 3 60 20300101000000 20200101000000 4712 bench.tld. AAAB")],
        authority=[NS, ("bench.tld.", 3600, "IN", "RRSIG",
                        "NS 13 2 3600 20300101000000 20200101000000 4711 bench.tld. AAAC")]),
    "DNSKEY and DS": reply(qname="bench.tld.", qtype="DNSKEY", do=True, answer=[
        ("bench.tld.", 3600, "IN", "DNSKEY", "257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+"
                                             "KkxLbxILfDLUT0rAK9iUzy1L53eKGQ=="),
        ("bench.tld.", 3600, "IN", "DS", "4711 13 2 " + "ab" * 32)]),
}


@pytest.mark.parametrize("wire", READ.values(), ids=READ.keys())
def test_a_reply_is_read_as_dnspython_reads_it(wire):
    ours, theirs = read(wire), dns.message.from_wire(wire)
    assert ours is not None
    _same(ours, theirs)


def _same(ours: dns.message.Message, theirs: dns.message.Message) -> None:
    assert ours.to_text() == theirs.to_text()           # TTLs, rdata, flags, rcode, EDNS
    assert ours == theirs
    assert (ours.id, ours.flags, ours.edns, ours.ednsflags, ours.payload, ours.rcode()) == \
        (theirs.id, theirs.flags, theirs.edns, theirs.ednsflags, theirs.payload, theirs.rcode())
    for mine, other in zip(ours.sections, theirs.sections):
        assert [(r.name.labels, r.ttl, type(r.rdtype), r.covers, [type(rd) for rd in r]) for r in mine] == \
            [(r.name.labels, r.ttl, type(r.rdtype), r.covers, [type(rd) for rd in r]) for r in other]
    assert ours.wire == theirs.wire
    for number, section in enumerate(theirs.sections[1:], 1):        # found as in dnspython's message
        for rrset in section:
            found = ours.find_rrset(number, rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
            assert found == rrset and found.ttl == rrset.ttl


def test_records_of_one_rrset_are_gathered_as_dnspython_gathers_them():
    """Apart in the section, the same owner in another case, a duplicate,
    differing TTLs (the smallest kept), a TTL above 2^31 - 1 (read as 0),
    two CNAMEs for one owner (the last kept)."""
    wire = bytearray(reply(answer=[("m1.bench.tld.", 300, "IN", "A", "10.0.0.1"),
                                   ("m2.bench.tld.", 300, "IN", "A", "10.0.0.2"),
                                   ("M1.BENCH.tld.", 100, "IN", "A", "10.0.0.3"),
                                   ("m1.bench.tld.", 50, "IN", "A", "10.0.0.1"),
                                   ("c.bench.tld.", 60, "IN", "CNAME", "a.tld."),
                                   ("c.bench.tld.", 70, "IN", "CNAME", "b.tld."),
                                   ("big.bench.tld.", 60, "IN", "A", "10.0.0.4")]))
    # dnspython renders one RRset a time: write each record as its own RRset
    message = dns.message.from_wire(bytes(wire), one_rr_per_rrset=True)
    assert len(message.answer) >= 6
    spread = bytearray(message.to_wire())
    at = spread.rfind(bytes((10, 0, 0, 4))) - 6                # the last record's TTL field
    spread[at:at + 4] = (0x80000000).to_bytes(4, "big")
    ours, theirs = read(bytes(spread)), dns.message.from_wire(bytes(spread))
    assert ours is not None
    _same(ours, theirs)
    assert theirs.answer[-1].ttl == 0 and theirs.answer[0].ttl == 50


LEFT_TO_DNSPYTHON = {
    "NSEC": reply(authority=[SOA, ("m0.bench.tld.", 60, "IN", "NSEC", "m2.bench.tld. A RRSIG NSEC")]),
    "SRV": reply(qtype="SRV", answer=[("m1.bench.tld.", 60, "IN", "SRV", "0 0 53 ns.tld.")]),
    "an EDNS option": None,
    "class CH": reply(qname="bind.", qtype="NS", answer=[("bind.", 0, "CH", "NS", "version.bind.")]),
    "TSIG": None,
}


def _with_option() -> bytes:
    query = dns.message.make_query("m1.bench.tld.", "A", use_edns=0)
    message = dns.message.make_response(query)
    message.use_edns(0, 0, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode.OTHER, "x")])
    return message.to_wire()


def _signed() -> bytes:
    keyring = dns.tsigkeyring.from_text({"k.": "MTIzNDU2Nzg5MDEyMzQ1Ng=="})
    query = dns.message.make_query("m1.bench.tld.", "A")
    message = dns.message.make_response(query)
    message.use_tsig(keyring, "k.")
    return message.to_wire()


LEFT_TO_DNSPYTHON["an EDNS option"] = _with_option()
LEFT_TO_DNSPYTHON["TSIG"] = _signed()


@pytest.mark.parametrize("wire", LEFT_TO_DNSPYTHON.values(), ids=LEFT_TO_DNSPYTHON.keys())
def test_what_it_does_not_read_is_left_to_dnspython(wire):
    assert read(wire) is None


def test_cut_flipped_and_spliced_replies_are_read_as_dnspython_reads_them_or_left_to_it():
    rng = random.Random(53)
    seeds = list(READ.values())
    accepted = refused = 0
    for _ in range(20000):
        wire = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if len(wire) <= 13:
                break
            kind = rng.random()
            if kind < 0.5:
                wire[rng.randrange(len(wire))] = rng.randrange(256)
            elif kind < 0.7:
                del wire[rng.randrange(len(wire)):]
            elif kind < 0.85:
                at = rng.randrange(len(wire))
                wire[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            else:
                at = rng.randrange(12, len(wire))
                wire[at:at + 2] = bytes((0xC0 | rng.randrange(4), rng.randrange(256)))   # a pointer anywhere
        ours = read(bytes(wire))
        try:
            theirs = dns.message.from_wire(bytes(wire))
        except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
            assert ours is None, bytes(wire).hex()
            refused += 1
            continue
        if ours is not None:
            _same(ours, theirs)
            accepted += 1
    assert accepted > 1000 and refused > 1000            # both sides of the rule were tried
