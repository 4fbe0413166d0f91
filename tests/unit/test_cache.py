"""The cache on its own: what it keeps, for how long, and its fast path.

Time is a number the tests pass in; answers are checked by parsing the wire
the fast path gives with dnspython.
"""
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from netstack.counters import Counters
from tests.unit.fake_stack import kept_wire
from unikernel import wire as wire_mod
from unikernel.resolver.cache import Cache, question_key, ttl_fields

NAME = dns.name.from_text("www.example.com.")
A, IN = dns.rdatatype.A, dns.rdataclass.IN


def reply(name="www.example.com.", rdtype="A", rcode=dns.rcode.NOERROR, answer=(), authority=(), additional=()):
    q = dns.message.make_query(name, rdtype)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.answer = [dns.rrset.from_text(*rr) for rr in answer]
    r.authority = [dns.rrset.from_text(*rr) for rr in authority]
    r.additional = [dns.rrset.from_text(*rr) for rr in additional]
    return r


SOA = ("example.com.", 3600, "IN", "SOA", "ns.example.com. host.example.com. 1 7200 900 1209600 300")


def key(name=NAME, rdtype=A, flags=1):
    return question_key(name, rdtype, IN) + bytes([flags])


def everyone(ip):
    return True


def bytes_lookup(cache, allowed=everyone):
    """The cache's fast lookup giving the whole answer's bytes (sums checked)."""
    lookup = cache.fast_lookup(allowed)
    return lambda key, src_ip, now: kept_wire(lookup(key, src_ip, now))


def test_positive_answer_counts_down_on_the_fast_path():
    cache = Cache(counters=Counters())
    entry = cache.entry_from_reply(NAME, A, IN, False, reply(answer=[("www.example.com.", 300, "IN", "A", "192.0.2.7")]), 1000.0)
    assert cache.store(entry)
    lookup = bytes_lookup(cache)
    wire = lookup(key(), 1, 1000.0)
    m = dns.message.from_wire(wire)
    assert m.id == 0 and m.flags & dns.flags.QR and m.flags & dns.flags.RA and not m.flags & dns.flags.AA
    assert m.edns == 0                              # flags byte 1: with OPT
    assert m.answer[0].ttl == 300 and m.answer[0][0].address == "192.0.2.7"
    assert dns.message.from_wire(lookup(key(), 1, 1100.9)).answer[0].ttl == 200
    assert dns.message.from_wire(lookup(key(flags=0), 1, 1299.5)).answer[0].ttl == 1
    assert dns.message.from_wire(lookup(key(flags=0), 1, 1299.5)).edns == -1
    assert lookup(key(), 1, 1300.0) is None          # expired: the slow path decides
    assert lookup(key(flags=3), 1, 1000.0) is None   # DO answers are a different entry
    assert cache.get(NAME, A, IN, False, 1300.0) is None and len(cache) == 0


def test_fast_key_matches_wire_question_lowercased():
    q = dns.message.make_query("WwW.ExAmple.COM.", "A", use_edns=0, want_dnssec=True)
    wire = q.to_wire()
    end = 12 + len(q.question[0].name.to_wire()) + 4
    assert question_key(q.question[0].name, A, IN) == wire[12:end].lower()
    # the key's last byte, as the server reads it from the query
    assert wire_mod.parse_query(wire)[0][-1] == 3
    assert wire_mod.parse_query(dns.message.make_query("a.", "A").to_wire())[0][-1] == 0
    assert wire_mod.parse_query(dns.message.make_query("a.", "A", use_edns=0).to_wire())[0][-1] == 1


def test_ttl_clamps():
    cache = Cache(min_ttl=60, max_ttl=600)
    short = cache.entry_from_reply(NAME, A, IN, False, reply(answer=[("www.example.com.", 5, "IN", "A", "192.0.2.7")]), 0.0)
    assert short.ttl == 60 and short.answer[0].ttl == 60
    long = cache.entry_from_reply(NAME, A, IN, False, reply(answer=[("www.example.com.", 86400, "IN", "A", "192.0.2.7")]), 0.0)
    assert long.ttl == 600


def test_entry_ttl_is_the_smallest_of_all_records():
    cache = Cache()
    r = reply(answer=[("www.example.com.", 3600, "IN", "CNAME", "web.example.com."),
                      ("web.example.com.", 120, "IN", "A", "192.0.2.8")])
    assert cache.entry_from_reply(NAME, A, IN, False, r, 0.0).ttl == 120


def test_negative_ttl_comes_from_the_soa():
    cache = Cache(counters=Counters())
    nx = cache.entry_from_reply(NAME, A, IN, False, reply(rcode=dns.rcode.NXDOMAIN, authority=[SOA]), 0.0)
    assert nx.kind == "negative" and nx.ttl == 300 and nx.authority[0].ttl == 300   # min(3600, MINIMUM 300)
    cache.store(nx)
    m = dns.message.from_wire(bytes_lookup(cache)(key(), 1, 100.0))
    assert m.rcode() == dns.rcode.NXDOMAIN and m.authority[0].ttl == 200 and not m.answer
    nodata = cache.entry_from_reply(NAME, A, IN, False, reply(authority=[("example.com.", 60, "IN", "SOA", SOA[4])]), 0.0)
    assert nodata.kind == "negative" and nodata.rcode == dns.rcode.NOERROR and nodata.ttl == 60
    # RFC 2308 section 5: no SOA, no negative caching
    assert cache.entry_from_reply(NAME, A, IN, False, reply(rcode=dns.rcode.NXDOMAIN), 0.0) is None
    assert cache.entry_from_reply(NAME, A, IN, False, reply(rcode=dns.rcode.REFUSED, authority=[SOA]), 0.0) is None


def test_negative_ttl_is_capped():
    cache = Cache(negative_max_ttl=30)
    nx = cache.entry_from_reply(NAME, A, IN, False, reply(rcode=dns.rcode.NXDOMAIN, authority=[SOA]), 0.0)
    assert nx.ttl == 30


def test_servfail_is_kept_briefly():
    cache = Cache(servfail_ttl=2)
    cache.store(cache.servfail_entry(NAME, A, IN, False, 10.0))
    lookup = bytes_lookup(cache)
    assert dns.message.from_wire(lookup(key(), 1, 11.5)).rcode() == dns.rcode.SERVFAIL
    assert lookup(key(), 1, 12.0) is None


def test_lru_eviction_keeps_recently_used():
    cache = Cache(max_entries=2, counters=Counters())
    names = [dns.name.from_text(f"n{i}.example.") for i in range(3)]
    for _i, n in enumerate(names[:2]):
        cache.store(cache.entry_from_reply(n, A, IN, False, reply(n.to_text(), answer=[(n.to_text(), 60, "IN", "A", "192.0.2.1")]), 0.0))
    assert cache.get(names[0], A, IN, False, 1.0) is not None        # n0 now most recent
    cache.store(cache.entry_from_reply(names[2], A, IN, False, reply(names[2].to_text(), answer=[(names[2].to_text(), 60, "IN", "A", "192.0.2.1")]), 1.0))
    assert len(cache) == 2 and cache.counters["cache.evict"] == 1
    assert cache.get(names[1], A, IN, False, 1.0) is None
    assert cache.get(names[0], A, IN, False, 1.0) is not None


def test_fast_lookup_refuses_clients_not_allowed():
    cache = Cache(counters=Counters())
    cache.store(cache.entry_from_reply(NAME, A, IN, False, reply(answer=[("www.example.com.", 60, "IN", "A", "192.0.2.7")]), 0.0))
    lookup = bytes_lookup(cache, lambda ip: ip == 7)
    assert lookup(key(), 7, 0.0) is not None
    assert lookup(key(), 8, 0.0) is None and cache.counters["cache.fast.refused"] == 1


def test_owner_names_are_lowercased():
    cache = Cache()
    r = reply("wWw.ExAmPle.com.", answer=[("wWw.ExAmPle.com.", 60, "IN", "A", "192.0.2.7")])
    entry = cache.entry_from_reply(dns.name.from_text("wWw.ExAmPle.com."), A, IN, False, r, 0.0)
    cache.store(entry)
    wire = bytes_lookup(cache)(key(), 1, 0.0)
    assert b"www\x07example" in wire and b"ExAm" not in wire


def test_serve_stale_keeps_expired_entries():
    cache = Cache(serve_stale=True, max_stale=100, stale_ttl=30)
    cache.store(cache.entry_from_reply(NAME, A, IN, False, reply(answer=[("www.example.com.", 60, "IN", "A", "192.0.2.7")]), 0.0))
    assert cache.get(NAME, A, IN, False, 61.0) is None
    stale = cache.get_stale(NAME, A, IN, False, 61.0)
    assert stale is not None
    q = dns.message.make_query("www.example.com.", "A")
    assert cache.response(q, stale, 61.0, stale=True).answer[0].ttl == 30
    # a SERVFAIL does not push out an answer that can still be served stale
    assert not cache.store(cache.servfail_entry(NAME, A, IN, False, 61.0))
    assert cache.get_stale(NAME, A, IN, False, 161.0) is None
    plain = Cache()
    plain.store(plain.entry_from_reply(NAME, A, IN, False, reply(answer=[("www.example.com.", 60, "IN", "A", "192.0.2.7")]), 0.0))
    assert plain.get_stale(NAME, A, IN, False, 61.0) is None


def test_slow_path_response_echoes_question_and_counts_down():
    cache = Cache()
    entry = cache.entry_from_reply(NAME, A, IN, False, reply(answer=[("www.example.com.", 60, "IN", "A", "192.0.2.7")]), 0.0)
    q = dns.message.make_query("WWW.example.COM.", "A")
    r = cache.response(q, entry, 15.2)
    assert r.id == q.id and r.question[0].name.to_text() == "WWW.example.COM."
    assert r.answer[0].ttl == 45 and r.flags & dns.flags.RA


def test_ttl_fields_skip_opt_and_match_dnspython():
    r = reply(answer=[("www.example.com.", 11, "IN", "A", "192.0.2.7")], authority=[SOA],
              additional=[("ns.example.com.", 22, "IN", "A", "192.0.2.53")])
    r.use_edns(0, dns.flags.DO, 1232)
    wire = r.to_wire()
    fields = ttl_fields(wire)
    assert [t for _, t in fields] == [11, 3600, 22]
    assert all(struct.unpack_from("!I", wire, off)[0] == t for off, t in fields)


@pytest.mark.parametrize("bad", [0, -1])
def test_cache_needs_room(bad):
    with pytest.raises(ValueError):
        Cache(max_entries=bad)


def test_fast_hits_count_as_use_for_lru():
    cache = Cache(max_entries=2)
    names = [dns.name.from_text(f"n{i}.example.") for i in range(3)]

    def put(n, t):
        cache.store(cache.entry_from_reply(n, A, IN, False, reply(n.to_text(), answer=[(n.to_text(), 60, "IN", "A", "192.0.2.1")]), t))
    put(names[0], 0.0)
    put(names[1], 0.0)
    assert bytes_lookup(cache)(key(names[0]), 1, 1.0) is not None
    put(names[2], 1.0)
    assert cache.get(names[0], A, IN, False, 1.0) is not None and cache.get(names[1], A, IN, False, 1.0) is None


def test_question_key_is_the_lowercased_name_on_the_wire():
    """cache.question_key writes the name from its labels: the bytes
    dnspython's canonicalize().to_wire() gives (the fast path's key)."""
    from unikernel.resolver.cache import question_key
    for text in (".", "www.Example.COM.", "a\\195\\169b.TLD.", "x" * 63 + ".y."):
        name = dns.name.from_text(text)
        assert question_key(name, 28, 1) == name.canonicalize().to_wire() + struct.pack("!HH", 28, 1)


def test_a_cached_answer_renders_as_one_from_dnspythons_make_response():
    """Cache.response starts from cache.reply_to (ID, opcode, RD, question;
    no OPT) instead of dns.message.make_response: the server renders both
    to the same bytes, for queries with and without EDNS, DO, CD, and an
    Extended DNS Error."""
    from unikernel.process import Answer
    from unikernel.resolver.cache import reply_to
    from unikernel.serve.render import render
    from unikernel.serve.server import _normalised

    name = dns.name.from_text("www.example.com.")
    cache = Cache()
    reply = dns.message.make_response(dns.message.make_query(name, "A"))
    reply.answer = [dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.7")]
    reply.authority = [dns.rrset.from_text("example.com.", 300, "IN", "NS", "ns.example.com.")]
    entry = cache.entry_from_reply(name, dns.rdatatype.A, 1, False, reply, 0.0)
    failed = cache.bogus_entry(name, dns.rdatatype.A, 1, False, 0.0, 60, (6, "bad"))
    for kept in (entry, failed):
        for options in ({"use_edns": -1}, {"use_edns": 0}, {"use_edns": 0, "want_dnssec": True}):
            query = dns.message.from_wire(dns.message.make_query("WWW.example.com.", "A", **options).to_wire())
            query.flags |= dns.flags.CD
            ours = cache.response(query, kept, 10.0)
            theirs = dns.message.make_response(query, our_payload=1232)
            theirs.flags |= dns.flags.RA
            theirs.set_rcode(kept.rcode)
            theirs.answer, theirs.authority = ours.answer, ours.authority
            if kept.ede is not None and query.edns >= 0:
                theirs.use_edns(0, query.ednsflags & dns.flags.DO, 1232, options=list(ours.options))
            assert reply_to(query).id == query.id
            assert render(_normalised(Answer(ours), query), query, 1232) == \
                render(_normalised(Answer(theirs), query), query, 1232)
