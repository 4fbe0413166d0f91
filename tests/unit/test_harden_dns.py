"""Issue 10, the DNS half: each test is a hardening item, seen failing before
its fix. Peers are dnspython-built messages, hand-made bytes and the scripted
upstreams of tests/unit/test_forwarder.py; times are a clock the test moves."""
import asyncio
import random
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.unit import test_forwarder as tf
from tests.unit.fake_stack import FakeStack, exchange
from tests.unit.test_server import ZONE
from unikernel import wire
from unikernel.process import processor_of_process
from unikernel.resolver.cache import Cache, on_chain
from unikernel.resolver.stub import StubResolver
from unikernel.serve.server import DnsServer
from unikernel.sources.hosts import hosts_process, parse_hosts
from unikernel.sources.zone import zone_process

WWW = b"\x03www\x04hard\x07example\x00"


def serve_zone(**options):
    stack = FakeStack()
    server = DnsServer(stack, 53, processor_of_process(zone_process([ZONE])), **options)
    server.start()
    return stack, server


# -- queries with records in answer or authority: FORMERR, as NSD --------------------------

@pytest.mark.parametrize("ancount, nscount", [(1, 0), (0, 1), (0xFFFF, 0xFFFF)])
def test_a_query_with_answer_or_authority_records_gets_formerr(ancount, nscount):
    """NSD (query.c) answers FORMERR to a query whose ANCOUNT or NSCOUNT is not
    0, before reading any record; we parsed them with dnspython (up to 64 KB
    over TCP) and answered the question."""
    record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    payload = (struct.pack("!HHHHHH", 0x4242, 0x0100, 1, ancount, nscount, 0)
               + WWW + struct.pack("!HH", 1, 1) + record)

    async def main():
        stack, server = serve_zone()
        reply = await exchange(stack, server, payload)
        server.close()
        return reply, stack.counters

    reply, counters = asyncio.run(main())
    assert reply is not None and reply[:2] == b"\x42\x42" and reply[2] & 0x80
    assert reply[3] & 0x0F == dns.rcode.FORMERR and reply[4:12] == b"\x00" * 8
    assert counters["dns.formerr.records"] == 1 and counters["dns.slow.answered"] == 0


# -- hosts NODATA carries a SOA ----------------------------------------------------------

def test_hosts_nodata_carries_a_soa_for_negative_caching():
    """RFC 2308 section 5: a NODATA without SOA cannot be cached by the
    client's resolver, so glibc and every cache behind us asked again each
    time. Like an RFC 6303 empty zone, the name is answered with a SOA."""
    process = hosts_process(parse_hosts("192.0.2.10 printer.lan\n", "hosts"), ttl=60)
    query = dns.message.make_query("printer.lan.", "AAAA")
    answer = asyncio.run(process(src=tf.CLIENT, dst=tf.SERVER, query=query))
    message = answer.message
    assert answer.final and message.rcode() == dns.rcode.NOERROR and not message.answer
    (soa,) = message.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text("printer.lan.")
    assert soa.ttl == 60 and soa[0].minimum == 60
    # the positive answer is unchanged: no authority section
    a = asyncio.run(process(src=tf.CLIENT, dst=tf.SERVER, query=dns.message.make_query("printer.lan.", "A")))
    assert a.message.answer and not a.message.authority


# -- NODATA behind a CNAME: RFC 2308's negative TTL -----------------------------------

def _reply(q, answer=(), authority=(), rcode=dns.rcode.NOERROR):
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.answer = list(answer)
    r.authority = list(authority)
    return r


def test_nodata_behind_a_cname_is_cached_with_the_negative_ttl():
    """An answer that is a CNAME whose target has no record of the type is
    NODATA (RFC 2308 section 2.2): it was cached as a positive answer for
    min(CNAME TTL, SOA TTL), an hour here, not min(SOA TTL, MINIMUM)."""
    cache = Cache()
    q = dns.message.make_query("alias.example.com.", "AAAA")
    reply = _reply(q, [dns.rrset.from_text("alias.example.com.", 3600, "IN", "CNAME", "end.example.com.")],
                   [dns.rrset.from_text("example.com.", 3600, "IN", "SOA", "ns. host. 1 2 3 4 60")])
    entry = cache.entry_from_reply(q.question[0].name, dns.rdatatype.AAAA, 1, False, reply, 0.0)
    assert entry is not None and entry.kind == "negative" and entry.ttl == 60
    assert [r.rdtype for r in entry.answer] == [dns.rdatatype.CNAME]      # the chain is kept
    # capped by negative_max_ttl like any negative answer
    capped = Cache(negative_max_ttl=30).entry_from_reply(
        q.question[0].name, dns.rdatatype.AAAA, 1, False, reply, 0.0)
    assert capped.ttl == 30
    # a CNAME asked for itself is a positive answer
    cname_q = dns.message.make_query("alias.example.com.", "CNAME")
    positive = cache.entry_from_reply(cname_q.question[0].name, dns.rdatatype.CNAME, 1, False,
                                      _reply(cname_q, reply.answer, reply.authority), 0.0)
    assert positive.kind == "positive" and positive.ttl == 3600


def test_a_cname_without_its_target_and_without_soa_is_not_cached():
    cache = Cache()
    q = dns.message.make_query("alias.example.com.", "A")
    reply = _reply(q, [dns.rrset.from_text("alias.example.com.", 3600, "IN", "CNAME", "end.example.com.")])
    assert cache.entry_from_reply(q.question[0].name, dns.rdatatype.A, 1, False, reply, 0.0) is None


# -- on_chain is bounded ---------------------------------------------------------------------

def _shuffled_chain(length, rng):
    names = [dns.name.from_text(f"n{i}.example.") for i in range(length + 1)]
    rrsets = [dns.rrset.from_text(names[i], 60, "IN", "CNAME", names[i + 1].to_text()) for i in range(length)]
    rrsets.append(dns.rrset.from_text(names[-1], 60, "IN", "A", "192.0.2.1"))
    rng.shuffle(rrsets)
    return names[0], rrsets


def _noisy_chain(length, seed):
    """A shuffled chain and the noise an upstream may add: DNAMEs owned by
    names that are no ancestor, many records."""
    rng = random.Random(seed)
    qname, rrsets = _shuffled_chain(length, rng)
    rrsets += [dns.rrset.from_text(f"d{i}.other.", 60, "IN", "DNAME", "x.example.") for i in range(600)]
    rng.shuffle(rrsets)
    return qname, rrsets


def _counted_name_comparisons(monkeypatch) -> dict:
    """{"n": the Name.is_subdomain calls made from now on}."""
    calls = {"n": 0}
    real = dns.name.Name.is_subdomain

    def counting(self, other):
        calls["n"] += 1
        return real(self, other)

    monkeypatch.setattr(dns.name.Name, "is_subdomain", counting)
    return calls


def test_on_chain_work_is_linear_in_the_rrsets(monkeypatch):
    """on_chain looped over the answer until nothing changed, comparing every
    name with every DNAME: O(n^2) (O(n^3) with DNAMEs) in what an upstream
    sends. Counted, not timed: name comparisons per RRset."""
    calls = _counted_name_comparisons(monkeypatch)
    qname, rrsets = _noisy_chain(12, 3)
    kept = on_chain(qname, dns.rdatatype.A, rrsets)
    assert len(kept) == 13
    assert calls["n"] <= 4 * len(rrsets)


def test_on_chain_follows_at_most_a_bounded_number_of_cnames():
    from collections import Counter

    from unikernel.resolver.cache import MAX_CHAIN

    qname, rrsets = _shuffled_chain(40, random.Random(4))
    counters = Counter()
    kept = on_chain(qname, dns.rdatatype.A, rrsets, counters)
    assert len(kept) == MAX_CHAIN + 1         # the name's CNAME and MAX_CHAIN targets' records
    assert all(r.rdtype == dns.rdatatype.CNAME for r in kept)
    assert counters["forward.chain_too_long"] == 1


def test_on_chain_still_follows_dnames():
    rrsets = [dns.rrset.from_text("b.example.", 60, "IN", "A", "192.0.2.7"),
              dns.rrset.from_text("a.x.example.", 60, "IN", "CNAME", "a.y.example."),
              dns.rrset.from_text("x.example.", 60, "IN", "DNAME", "y.example."),
              dns.rrset.from_text("y.example.", 60, "IN", "DNAME", "b.example."),
              dns.rrset.from_text("a.y.example.", 60, "IN", "CNAME", "b.example."),
              dns.rrset.from_text("z.example.", 60, "IN", "A", "192.0.2.8")]
    kept = on_chain(dns.name.from_text("a.x.example."), dns.rdatatype.A, rrsets)
    assert [r.name.to_text() for r in kept] == ["b.example.", "a.x.example.", "x.example.", "y.example.",
                                                "a.y.example."]


# -- a wrong-case reply does not end the wait -------------------------------------------

def test_a_wrong_case_reply_does_not_end_the_wait_for_the_genuine_one():
    """A reply with our ID and port but another letter case ended the query
    (CaseMismatch), and the genuine reply arriving just after was dropped as
    late: a forger who guessed the ID but not the case still broke the query."""
    async def main():
        stack = tf.FakeStack()

        def forge(real, port):
            wrong = bytearray(real)
            wrong[12:12 + 17] = bytes(wrong[12:12 + 17]).swapcase()
            return [(bytes(wrong), tf.UP1[0], tf.UP1[1])]

        up = tf.FakeUpstream(stack, tf.UP1, dict(tf.RECORDS), forge=forge, delay=0.04)
        stub = StubResolver(stack, rng=random.Random(3))
        reply = await stub.query(tf.UP1, dns.name.from_text("www.example.com."), 1, timeout=1, use_0x20=True)
        return reply, stack.counters, up

    reply, counters, up = asyncio.run(main())
    assert reply.message.answer[0][0].address == "192.0.2.80"
    assert counters["stub.reply.case_mismatch.drop"] == 1 and counters["stub.reply.ok"] == 1
    assert len(up.queries) == 1


def test_an_upstream_that_changes_case_is_still_answered_quickly_through_the_forwarder():
    """The wait goes on, but the question is asked again in plain case at once."""
    async def main():
        # one attempt's time is the whole deadline: waiting it out would be SERVFAIL
        stack, (up,), fwd, _ = tf.make(deadline=1.0, attempt_timeout=1.0)
        up.lowercase = True
        answer = await tf.ask(fwd, "mail.example.com.")
        return answer, up

    answer, up = asyncio.run(main())
    assert answer.message.answer[0][0].address == "192.0.2.25"
    assert up.queries[-1].question[0].name.to_text() == "mail.example.com."


# -- downgrades are probed again ------------------------------------------------------------

def test_0x20_and_edns_are_tried_again_after_the_recheck_time():
    """Turning 0x20 or EDNS off for an upstream was for good: one bad hour of
    an upstream (or a middlebox) downgraded it for the life of the appliance.
    As Unbound's infra cache (infra-host-ttl, 900 s) forgets what it learnt."""
    async def main():
        stack, (up,), fwd, clock = tf.make()
        up.no_edns = True
        await tf.ask(fwd)
        assert not fwd.upstreams[0].edns
        up.no_edns = False
        up.lowercase = True
        for name in ("a.example.com.", "b.example.com.", "c.example.com."):
            await tf.ask(fwd, name)
        assert not fwd.upstreams[0].use_0x20
        up.lowercase = False
        clock.t += 899
        await tf.ask(fwd, "d.example.com.")
        assert up.queries[-1].edns < 0 and up.queries[-1].question[0].name.to_text() == "d.example.com."
        clock.t += 2
        await tf.ask(fwd, "e.example.com.")
        last = up.queries[-1]
        return last, fwd.upstreams[0], stack.counters

    last, upstream, counters = asyncio.run(main())
    assert last.edns == 0 and last.question[0].name.to_text() != "e.example.com."
    assert upstream.edns and upstream.use_0x20
    assert counters["forward.upstream.edns_retry"] == 1 and counters["forward.upstream.0x20_retry"] == 1


# -- kept answers keep what is asked for -----------------------------------------------

def _deliver(stack, server, payload, src_ip, src_port=40000):
    before = len(stack.udp.sent)
    stack.udp.bindings[server.port](payload, src_ip, src_port, 0xC0000202, server.port)
    return before


async def _settle(server):
    while server.pending or server.forwarding:
        await asyncio.gather(*server.pending, *server.forwarding, return_exceptions=True)


def test_a_flood_of_new_names_does_not_push_out_the_answers_asked_for():
    """Kept answers went first-in first-out and a hit did not refresh one: a
    random-subdomain NXDOMAIN flood under a served zone pushed the popular
    answers out of the fast path. Answers asked for again are protected."""
    popular = ["www.hard.example.", "mail.hard.example.", "ns1.hard.example."]

    async def main():
        stack, server = serve_zone(max_kept=40)
        for _ in range(3):
            for name in popular:
                await exchange(stack, server, dns.message.make_query(name, "A").to_wire())
        hits = stack.counters["dns.fast.hit"]
        for i in range(500):
            await exchange(stack, server, dns.message.make_query(f"r{i}x.hard.example.", "A").to_wire())
        before = stack.counters["dns.fast.hit"]
        for name in popular:
            reply = await exchange(stack, server, dns.message.make_query(name, "A").to_wire())
            assert dns.message.from_wire(reply).answer
        server.close()
        return hits, stack.counters["dns.fast.hit"] - before, server

    hits, after_flood, server = asyncio.run(main())
    assert hits == 6                       # asked three times: two hits each
    assert after_flood == 3                # still on the fast path after 500 new names
    assert len(server.kept_answers) <= 40 and server.counters["dns.static.evicted"] >= 460


def test_a_protected_answer_asked_for_again_survives_the_clock_hand():
    """The protected segment is a CLOCK: a hit sets a reference bit; when a
    promotion overfills the segment, the hand spares the referenced oldest
    (its bit cleared) and demotes the first one that was not asked for since."""
    names = [f"r{i}x.hard.example." for i in range(9)]

    def key(name):
        return wire.fast_key(dns.message.make_query(name, "A").to_wire())[0]

    async def main():
        stack, server = serve_zone(max_kept=10)            # protected holds 8
        for name in names[:8]:
            for _ in range(2):                              # kept, then a hit: protected
                await exchange(stack, server, dns.message.make_query(name, "A").to_wire())
        await exchange(stack, server, dns.message.make_query(names[0], "A").to_wire())   # its bit set
        for _ in range(2):
            await exchange(stack, server, dns.message.make_query(names[8], "A").to_wire())
        server.close()
        return server

    server = asyncio.run(main())
    assert server.max_protected == 8 and len(server._protected) == 8
    assert key(names[0]) in server._protected               # referenced: a second chance
    assert key(names[1]) in server._probation               # the oldest not asked for again
    assert key(names[8]) in server._protected
    assert list(server._protected)[-1] == key(names[0])    # to the young end, behind the promoted one
    assert len(server.kept_answers) == len(server._probation) + len(server._protected) == 9


# -- serve-stale: the failure recheck timer -----------------------------------------------

def test_after_a_failed_refresh_stale_answers_are_given_at_once_for_a_while():
    """RFC 8767 section 5 (and BIND's stale-refresh-time, 30 s): once a
    refresh failed, the stale answer is given at once, without asking again,
    for 30 s. Every query during an outage waited for the upstreams (1.8 s)."""
    async def main():
        stack, (up,), fwd, clock = tf.make(serve_stale=True, deadline=0.2)
        await tf.ask(fwd)
        up.alive = False
        clock.t += 400
        first = await tf.ask(fwd)                     # waits, the refresh fails, stale
        asked = len(up.queries)
        clock.t += 10
        second = await tf.ask(fwd)                    # at once, nothing asked upstream
        during = len(up.queries) - asked, len(fwd._inflight)
        clock.t += 21
        await tf.ask(fwd)                             # the recheck timer ran out: asked again
        return first, second, during, len(up.queries) - asked, stack.counters

    first, second, during, after, counters = asyncio.run(main())
    assert first.message.answer[0].ttl == 30 and second.message.answer[0].ttl == 30
    assert second.message.answer[0][0].address == "192.0.2.80"
    assert during == (0, 0)
    assert after >= 1
    assert counters["forward.stale.recheck_wait"] == 1


# -- SIGHUP: what a reloaded zone now serves leaves the cache ----------------------------

def test_a_reload_flushes_cached_forwarded_answers_that_a_new_zone_shadows(tmp_path):
    from unikernel import main as main_mod
    from unikernel.config import Appliance

    zone = tmp_path / "a.zone"
    zone.write_text("$ORIGIN a.test.\n$TTL 300\n@ SOA ns host 1 2 3 4 60\n@ NS ns\nns A 192.0.2.53\n")
    appliance = Appliance(ipv4="192.0.2.2/24", ipv4_gateway=None, zones=[str(zone)], forward=["192.0.2.1"],
                          mdns=False)     # the fake stack has no multicast
    loaded = main_mod.check(appliance)
    stack = tf.FakeStack()
    stack.now = lambda: 0.0
    lifecycle = main_mod.resolution_chain(appliance, stack, loaded).lifecycle
    (cache,) = [item for item in lifecycle if isinstance(item, Cache)]
    for name in ("www.b.test.", "www.c.test."):
        q = dns.message.make_query(name, "A")
        reply = _reply(q, [dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.9")])
        cache.store(cache.entry_from_reply(q.question[0].name, 1, 1, False, reply, 0.0))
    zone.write_text("$ORIGIN b.test.\n$TTL 300\n@ SOA ns host 1 2 3 4 60\n@ NS ns\nns A 192.0.2.53\n")

    class Server:
        forgotten = 0

        def forget_kept_answers(self):
            self.forgotten += 1

    server = Server()
    assert main_mod.reload_sources(lifecycle, server, stack.counters)
    assert cache.get(dns.name.from_text("www.b.test."), 1, 1, False, 1.0) is None
    assert cache.get(dns.name.from_text("www.c.test."), 1, 1, False, 1.0) is not None
    assert server.forgotten == 1 and stack.counters["cache.flushed"] == 1


# -- RA: only for clients that may recurse ---------------------------------------------

def test_ra_is_set_only_for_clients_allowed_to_recurse():
    """Clients outside --allow got hosts answers (and PTR) with RA set, on both
    paths, though recursion is not available to them."""
    from unikernel.config import AccessList
    from unikernel.process import compose

    hosts = hosts_process(parse_hosts("192.0.2.10 printer.lan\n", "hosts"), recursion_available=True)

    async def refuse(*, src, dst, query):
        return None

    async def main():
        stack = FakeStack()
        server = DnsServer(stack, 53, processor_of_process(compose(hosts, refuse)),
                           recursion_for=AccessList(["192.0.2.0/24"]))
        server.start()
        flags = {}
        for who, ip in (("outsider", 0xCB007105), ("insider", 0xC0000263)):
            for path in ("slow", "fast"):
                for name, rdtype in (("printer.lan.", "A"), ("10.2.0.192.in-addr.arpa.", "PTR")):
                    before = _deliver(stack, server, dns.message.make_query(name, rdtype).to_wire(), ip)
                    await _settle(server)
                    flags[who, path, rdtype] = dns.message.from_wire(stack.udp.sent[before][0]).flags
            before = _deliver(stack, server, dns.message.make_query("www.example.org.", "A").to_wire(), ip)
            await _settle(server)
            flags[who, "refused"] = dns.message.from_wire(stack.udp.sent[before][0])
        server.close()
        return flags, stack.counters

    flags, counters = asyncio.run(main())
    assert counters["dns.fast.hit"] == 6            # kept from the outsider's first queries on
    for path in ("slow", "fast"):
        for rdtype in ("A", "PTR"):
            assert not flags["outsider", path, rdtype] & dns.flags.RA
            assert flags["insider", path, rdtype] & dns.flags.RA
            assert flags["outsider", path, rdtype] & dns.flags.AA
    for who in ("outsider", "insider"):
        assert flags[who, "refused"].rcode() == dns.rcode.REFUSED
    assert not flags["outsider", "refused"].flags & dns.flags.RA


# -- the scrubber keeps what the chain accounts for ---------------------------------------

def test_scrub_keeps_the_zones_records_and_the_addresses_they_point_to():
    from collections import Counter

    from unikernel.resolver.scrub import scrub

    q = dns.message.make_query("www.example.com.", "MX")
    r = dns.message.make_response(q)
    r.answer = [dns.rrset.from_text("www.example.com.", 60, "IN", "MX", "10 mail.example.org.")]
    r.authority = [dns.rrset.from_text("example.com.", 60, "IN", "NS", "ns1.example.com.", "ns.other.net."),
                   dns.rrset.from_text("bank.example.", 60, "IN", "NS", "ns.evil.example."),
                   dns.rrset.from_text("www.example.com.", 60, "IN", "A", "203.0.113.1")]
    r.additional = [dns.rrset.from_text("mail.example.org.", 60, "IN", "A", "192.0.2.25"),
                    dns.rrset.from_text("ns1.example.com.", 60, "IN", "A", "192.0.2.53"),
                    dns.rrset.from_text("ns.other.net.", 60, "IN", "A", "203.0.113.53"),     # glue out of zone
                    dns.rrset.from_text("ns.evil.example.", 60, "IN", "A", "203.0.113.66"),
                    dns.rrset.from_text("mail.example.org.", 60, "IN", "TXT", "x")]
    counters = Counter()
    scrub(q.question[0].name, dns.rdatatype.MX, r, counters)
    assert [(x.name.to_text(), x.rdtype) for x in r.authority] == [("example.com.", dns.rdatatype.NS)]
    assert [x.name.to_text() for x in r.additional] == ["mail.example.org.", "ns1.example.com."]
    assert counters == {"forward.scrub.authority": 2, "forward.scrub.additional": 3}

    nx = dns.message.make_response(dns.message.make_query("a.b.example.com.", "A"))
    nx.set_rcode(dns.rcode.NXDOMAIN)
    nx.authority = [dns.rrset.from_text("example.com.", 60, "IN", "SOA", "ns. host. 1 2 3 4 60"),
                    dns.rrset.from_text("a.example.com.", 60, "IN", "NSEC", "c.example.com. A"),
                    dns.rrset.from_text("other.", 60, "IN", "SOA", "ns. host. 1 2 3 4 60")]
    scrub(dns.name.from_text("a.b.example.com."), dns.rdatatype.A, nx, counters)
    assert [x.name.to_text() for x in nx.authority] == ["example.com.", "a.example.com."]


# -- response rate limiting --------------------------------------------------------------

def test_responses_to_one_client_net_are_rate_limited_with_slip():
    """Up to 1,232-byte answers went to any source at any rate (about 30x
    amplification toward a forged victim). NSD's and BIND's RRL: per client
    /24, limited answers dropped, every second one truncated and empty."""
    from unikernel.serve.rrl import ResponseRateLimiter

    async def main():
        stack = FakeStack()
        limiter = ResponseRateLimiter(10, 2, counters=stack.counters, salt=0)
        server = DnsServer(stack, 53, processor_of_process(zone_process([ZONE])), rrl=limiter)
        clock = {"t": 100.0}
        server.clock = lambda: clock["t"]
        server.start()
        big = dns.message.make_query("big.hard.example.", "TXT", use_edns=0, payload=1232).to_wire()
        victim, neighbour, other = 0xC6336401, 0xC63364FE, 0xC6336501     # 198.51.100.1, .254, 198.51.101.1
        replies = []
        for i in range(100):
            before = _deliver(stack, server, big, victim if i % 2 else neighbour)
            await _settle(server)
            replies.append(stack.udp.sent[before][0] if len(stack.udp.sent) > before else None)
        before = _deliver(stack, server, big, other)
        await _settle(server)
        other_reply = stack.udp.sent[before][0]
        clock["t"] += 5                                  # quiet for a while: answered again
        before = _deliver(stack, server, big, victim)
        await _settle(server)
        later = stack.udp.sent[before][0] if len(stack.udp.sent) > before else None
        server.close()
        return replies, other_reply, later, stack.counters

    replies, other_reply, later, counters = asyncio.run(main())
    whole = [r for r in replies if r is not None and not r[2] & 0x02]
    slipped = [r for r in replies if r is not None and r[2] & 0x02]
    assert len(whole) == 19                               # the /24's share: under 2 x 10 this second
    assert counters["dns.rrl.limited"] == 81
    assert len(slipped) == counters["dns.rrl.slipped"] == 40
    assert replies.count(None) == counters["dns.rrl.dropped"] == 41
    message = dns.message.from_wire(slipped[0])
    assert message.flags & dns.flags.TC and not message.answer and not message.additional
    assert message.question[0].name == dns.name.from_text("big.hard.example.")
    assert len(slipped[0]) < 40 < len(whole[0])
    assert dns.message.from_wire(other_reply).answer            # another /24 is not limited
    assert later is not None and dns.message.from_wire(later).answer


def test_rrl_exempts_the_clients_we_serve_by_default_and_zero_turns_it_off():
    """A LAN's clients share one /24: limited, they would share 200 answers a
    second between them. By default the allowed clients (our subnet when
    `allow` is empty) are exempt, the rest of the world limited."""
    from collections import Counter

    from unikernel import main as main_mod
    from unikernel.config import Appliance
    from unikernel.serve.rrl import SEND

    counters = Counter()
    base = Appliance(ipv4="192.0.2.2/24", ipv4_gateway=None)
    assert main_mod.rate_limiter(base.replace(rrl_rate=0), counters) is None
    default = main_mod.rate_limiter(base.replace(rrl_rate=1), counters)
    assert default.rate_limit == 1 and default.slip == 2
    assert all(default.verdict(0xC0000263, 0.0) == SEND for _ in range(50))     # 192.0.2.99: our subnet
    assert any(default.verdict(0xCB007105, 0.0) != SEND for _ in range(50))     # 203.0.113.5: not
    strict = main_mod.rate_limiter(base.replace(rrl_rate=1, rrl_exempt_allowed=False), counters)
    assert strict.exempt is None
    assert any(strict.verdict(0xC0000264, 0.0) != SEND for _ in range(50))


def test_rrl_buckets_are_a_fixed_table():
    from collections import Counter

    from unikernel.serve.rrl import ResponseRateLimiter

    counters = Counter()
    limiter = ResponseRateLimiter(5, 2, counters=counters, buckets=16, salt=0)
    for net in range(1000):
        limiter.verdict(net << 8, 0.0)
    assert len(limiter._owner) == 16 and counters["dns.rrl.bucket_reset"] >= 1000 - 16


# -- local answers never wait behind forwarded ones ------------------------------------------

def test_forwarded_queries_that_never_end_do_not_starve_local_answers():
    """One pool of slow-path tasks served everything: queries for names whose
    upstream never answers filled it, and the zone's own names (not yet on
    the fast path) were dropped as overload. Forwarded work now has a pool
    of its own; past its bound it gets SERVFAIL at once."""
    gate = asyncio.Event()

    async def never(src, dst, query):
        await gate.wait()
        return None

    async def main():
        stack = FakeStack()
        server = DnsServer(stack, 53, processor_of_process(zone_process([ZONE])), forwarder=never,
                           max_pending=4, max_forwarded=4)
        server.start()
        for i in range(10):
            _deliver(stack, server, dns.message.make_query(f"n{i}.example.org.", "A").to_wire(), 0xC0000263, 2000 + i)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        waiting = len(server.forwarding), len(server.pending)
        servfails = [dns.message.from_wire(p).rcode() for p, *_ in stack.udp.sent]
        local = []
        for name in ("www.hard.example.", "mail.hard.example.", "ns1.hard.example.", "x.hard.example.",
                     "big.hard.example.", "alias1.hard.example."):
            before = _deliver(stack, server, dns.message.make_query(name, "A").to_wire(), 0xC0000263)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            local.append(stack.udp.sent[before][0] if len(stack.udp.sent) > before else None)
        gate.set()
        await _settle(server)
        server.close()
        return waiting, servfails, local, stack.counters

    waiting, servfails, local, counters = asyncio.run(main())
    assert waiting == (4, 0)
    assert servfails == [dns.rcode.SERVFAIL] * 6 and counters["dns.slow.forward_overload.servfail"] == 6
    assert all(reply is not None for reply in local) and counters["dns.slow.overload.drop"] == 0
    assert dns.message.from_wire(local[0]).answer[0][0].address == "192.0.2.80"


def test_scrub_keeps_the_denial_proof_of_a_signed_wildcard_answer():
    """A wildcard answer's NSEC3 proof comes without SOA or NS: the zone is
    the one that signed the answer, and the validator needs the proof."""
    from collections import Counter

    from unikernel.resolver.scrub import scrub

    q = dns.message.make_query("a.wild.example.com.", "A", want_dnssec=True)
    r = dns.message.make_response(q)
    sig = "A 13 3 60 20300101000000 20200101000000 12345 example.com. AAAA"
    r.answer = [dns.rrset.from_text("a.wild.example.com.", 60, "IN", "A", "192.0.2.1"),
                dns.rrset.from_text("a.wild.example.com.", 60, "IN", "RRSIG", sig)]
    nsec3 = "1 0 0 - 7MH2B5J5N0TNEJ0PH0DK3BF3NM6FBDL0 A RRSIG"
    r.authority = [dns.rrset.from_text("0p9mhaveqvm6t7vbl5lop2u3t2rp3tom.example.com.", 60, "IN", "NSEC3", nsec3),
                   dns.rrset.from_text("0p9mhaveqvm6t7vbl5lop2u3t2rp3tom.example.org.", 60, "IN", "NSEC3", nsec3)]
    scrub(q.question[0].name, dns.rdatatype.A, r, Counter())
    assert [x.name.to_text() for x in r.authority] == ["0p9mhaveqvm6t7vbl5lop2u3t2rp3tom.example.com."]


def test_the_validators_chain_walk_is_linear_in_the_rrsets_and_bounded(monkeypatch):
    """The validator picked the answer RRsets it judges with a walk of its
    own, the one on_chain had before it was made linear: passes over the
    answer until nothing changed, each RRset compared with all kept so far
    and each DNAME with every name on the chain, and no bound on the CNAMEs
    followed. An upstream's 64 KB answer (a shuffled chain, hundreds of
    DNAMEs elsewhere) made one validation cost ~10^5 name comparisons.
    Counted, not timed, as above; and only MAX_CHAIN targets are judged,
    as only those are relayed."""
    import asyncio

    from unikernel.resolver.cache import MAX_CHAIN
    from unikernel.resolver.dnssec.anchors import TrustAnchors
    from unikernel.resolver.dnssec.chain import ChainOfTrust
    from unikernel.resolver.dnssec.validator import Validator

    async def no_fetch(name, rdtype):
        raise AssertionError("nothing is under an anchor: no fetch")

    judged = []
    validator = Validator(ChainOfTrust(TrustAnchors([]), no_fetch))
    real_rrset = Validator._rrset

    async def counting_rrset(self, rrset, *args):
        judged.append(rrset)
        return await real_rrset(self, rrset, *args)

    monkeypatch.setattr(Validator, "_rrset", counting_rrset)
    calls = _counted_name_comparisons(monkeypatch)
    qname, rrsets = _noisy_chain(40, 5)
    message = dns.message.make_response(dns.message.make_query(qname, "A"))
    message.answer = rrsets
    verdict = asyncio.run(validator.validate(qname, dns.rdatatype.A, message, 0.0))
    assert verdict.security.value == "insecure"
    assert calls["n"] <= 4 * len(rrsets), calls["n"]
    assert len(judged) == MAX_CHAIN + 1 and all(r.rdtype == dns.rdatatype.CNAME for r in judged)


def test_the_stubs_random_numbers_come_from_the_os_csprng_a_page_at_a_time(monkeypatch):
    """IDs and 0x20 patterns are drawn from os.urandom, 4 KiB read at a
    time (SystemRandom made a system call per draw); every bit of a draw
    varies, and draws of any width stay in range."""
    import os

    from unikernel.resolver import stub as stub_mod

    reads = []
    real = os.urandom

    def counting(n):
        reads.append(n)
        return real(n)

    monkeypatch.setattr(stub_mod.os, "urandom", counting)
    rng = stub_mod.BufferedSystemRandom()
    draws = [rng.getrandbits(16) for _ in range(4096)]
    assert reads and all(n >= 4096 for n in reads) and len(reads) <= 3       # 8 KiB drawn, in pages
    assert all(0 <= d < 1 << 16 for d in draws) and len(set(draws)) > 3500
    for bit in range(16):
        share = sum(d >> bit & 1 for d in draws) / len(draws)
        assert 0.45 < share < 0.55, (bit, share)
    for width in (1, 7, 9, 33, 100, 40000):
        assert all(0 <= rng.getrandbits(width) < 1 << width for _ in range(20))
    assert rng.getrandbits(0) == 0
    assert isinstance(stub_mod.StubResolver(type("S", (), {"counters": {}})()).rng, stub_mod.BufferedSystemRandom)
