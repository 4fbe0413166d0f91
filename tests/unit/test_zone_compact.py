"""Compact zones and cache entries (issue 14): what is kept is what dnspython
reads, without dnspython's objects, and memory stays bounded while loading.

The reference is dnspython's own reading of the same master file
(``dns.zone.from_file``), not our code; the answers themselves are held to
NSD's by tests/integration/test_nsd_compare.py and test_signed_zones.py."""
import random
import tracemalloc

import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import dns.zone

from bench.auth import write_zone
from tests.unit.fake_stack import kept_wire
from unikernel.resolver.cache import Cache, question_key
from unikernel.sources.compact import decode_node
from unikernel.sources.zone import load_zone

# Mixed case in owners and in names inside RDATA, an owner that comes back
# after others (its RRsets merge, and it keeps its first place), one RRset
# given twice with different TTLs (dnspython keeps the smaller), a duplicate
# record, RRSIGs covering different types, $GENERATE, a wildcard, a CNAME
# with its RRSIG, and a name holding NSEC3 records only.
TRICKY = """$ORIGIN Mixed.Example.
$TTL 300
@        IN SOA NS1.Mixed.Example. Host.Mixed.Example. 7 3600 900 86400 60
@        IN NS  ns1
@        IN NS  NS2.Elsewhere.Test.
ns1      IN A   192.0.2.1
Www      IN A   192.0.2.10
www      IN A   192.0.2.11
mail     IN MX  10 Ns1.Mixed.Example.
www  600 IN A   192.0.2.12
www      IN A   192.0.2.10
www      IN AAAA 2001:db8::10
www      IN RRSIG A 8 3 300 20300101000000 20200101000000 12345 mixed.example. AAAA
www      IN RRSIG AAAA 8 3 300 20300101000000 20200101000000 12345 mixed.example. AAAA
alias    IN CNAME Www.Mixed.Example.
alias    IN RRSIG CNAME 8 3 300 20300101000000 20200101000000 12345 mixed.example. AAAA
*.wild   IN TXT "any" "thing"
$GENERATE 1-20 host$ IN A 10.0.0.$
deep.er.nonterminal IN A 192.0.2.99
2vptu5timamqttgl4luu9kg21e0aor3s IN NSEC3 1 0 12 aabbccdd 2VPTU5TIMAMQTTGL4LUU9KG21E0AOR3T A RRSIG
"""


def _shape(node) -> list[tuple]:
    """A node as comparable data: its RRsets in order, each RDATA canonical."""
    return [(r.rdtype, r.covers, r.ttl, sorted(rd.to_digestable() for rd in r)) for r in node.rdatasets]


def test_compact_zone_holds_what_dnspython_reads(tmp_path):
    path = tmp_path / "mixed.example.zone"
    path.write_text(TRICKY)
    theirs = dns.zone.from_file(str(path), relativize=False)
    ours = load_zone(path)
    assert ours.origin == dns.name.from_text("mixed.example.")
    names = {name.canonicalize() for name in theirs.nodes}
    assert {*ours.nodes, *ours.hashed} == names and len(ours.nodes) + len(ours.hashed) == len(names)
    assert [n.canonicalize() for n in theirs.nodes if n in ours.nodes] == list(ours.nodes)   # dnspython's order
    for name, node in theirs.nodes.items():
        kept = ours.nodes.get(name) or ours.hashed.get(name)
        assert kept is not None and _shape(kept) == _shape(node), name
    www = ours.nodes[dns.name.from_text("WWW.mixed.example.")]
    assert www.get_rdataset(1, dns.rdatatype.A).ttl == 300 and len(www.get_rdataset(1, dns.rdatatype.A)) == 3
    mail = ours.nodes[dns.name.from_text("mail.mixed.example.")]
    assert mail.get_rdataset(1, dns.rdatatype.MX)[0].exchange.to_text() == "ns1.mixed.example."   # NSD's case
    assert dns.name.from_text("2vptu5timamqttgl4luu9kg21e0aor3s.mixed.example.") in ours.hashed
    assert dns.name.from_text("er.nonterminal.mixed.example.").to_wire() in ours.nonterminals


def test_nodes_are_bytes_and_each_read_is_a_fresh_node(tmp_path):
    path = tmp_path / "mixed.example.zone"
    path.write_text(TRICKY)
    zone = load_zone(path)
    assert all(type(k) is bytes and type(v) is bytes for k, v in zone.nodes.blobs.items())
    name = dns.name.from_text("www.mixed.example.")
    zone.nodes[name].rdatasets.clear()           # a caller's copy: the zone is not touched
    assert len(zone.nodes[name].rdatasets) == 4
    assert decode_node(zone.nodes.blobs[name.to_wire()]).rdatasets == zone.nodes[name].rdatasets


def test_loading_a_large_zone_keeps_its_peak_low(tmp_path):
    """dnspython's Zone held a kilobyte and more of objects a name, and twice
    that at the height of loading (2.5 GB for a million names): now the
    height of loading 2,000 names, file text included, stays under 600
    bytes a name."""
    path = tmp_path / "big.zone"
    write_zone(path, 2_000, random.Random(1))
    tracemalloc.start()
    try:
        zone = load_zone(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(zone.nodes) > 2_000
    assert peak < 600 * 2_000, peak


def _reply(name: str, address: str) -> dns.message.Message:
    reply = dns.message.make_response(dns.message.make_query(name, "A"))
    reply.answer = [dns.rrset.from_text(name, 3600, "IN", "A", address)]
    return reply


def test_a_stored_cache_entry_keeps_its_wire_only_and_answers_the_same():
    cache = Cache()
    name = dns.name.from_text("www.example.com.")
    reply = _reply("www.example.com.", "192.0.2.7")
    entry = cache.entry_from_reply(name, dns.rdatatype.A, 1, False, reply, 100.0)
    entry.answer = [dns.rrset.from_text("www.example.com.", 120, "IN", "A", "192.0.2.7")]   # as the forwarder may
    assert cache.store(entry)
    assert entry.wire is not None and entry._sections is None
    wire = kept_wire(cache.fast_lookup(lambda ip: True)(question_key(name, dns.rdatatype.A, 1) + b"\x00", 1, 100.0))
    assert wire == entry.wire
    answered = cache.response(dns.message.make_query("WWW.example.com.", "A"), entry, 110.0)
    assert answered.answer == [dns.rrset.from_text("www.example.com.", 110, "IN", "A", "192.0.2.7")]
    assert answered.answer[0].ttl == 110 and entry.question == (name, dns.rdatatype.A, 1)


def test_cache_entries_cost_less_than_a_kilobyte():
    """Each entry kept dnspython's RRsets beside its wire templates: 1,966
    bytes a cached A answer (226 MB per 100,000 in the bench); under 1,000 now."""
    cache = Cache(max_entries=100_000, max_bytes=1 << 30)
    lookup = cache.fast_lookup(lambda ip: True)
    replies = [(dns.name.from_text(f"c{i}.bench.example."), _reply(f"c{i}.bench.example.", f"10.64.{i >> 8}.{i & 255}"))
               for i in range(1000)]
    # CPython keeps up to 2,000 freed tuples of each size for reuse, which
    # tracemalloc never sees freed: filled here first, so that the temporary
    # tuples of a store are not counted as kept while the lists fill up
    held = [tuple(range(size)) for size in range(1, 12) for _ in range(2000)]
    del held
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name, reply in replies:
            cache.store(cache.entry_from_reply(name, dns.rdatatype.A, 1, False, reply, 0.0))
            key = question_key(name, dns.rdatatype.A, 1) + b"\x01"
            assert lookup(key, 1, 0.0) is not None and lookup(key, 1, 2.0) is not None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == 1000 and grown / 1000 < 1000, grown / 1000
