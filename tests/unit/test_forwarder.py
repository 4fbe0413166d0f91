"""The forwarder and the stub resolver over a fake stack and a fake clock.

The fake stack implements the stack's UDP contract (bind_ephemeral, unbind,
sendto) and delivers datagrams to scripted upstreams on the event loop; the
upstreams answer with dnspython. The cache's clock is a number the test moves.
"""
import asyncio
import ipaddress
import random
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from netstack.counters import Counters
from tests.unit.fake_stack import FakeUdp, kept_wire
from unikernel.config import AccessList, parse_upstream
from unikernel.resolver.cache import Cache
from unikernel.resolver.forwarder import Forwarder
from unikernel.resolver.stub import CaseMismatch, StubResolver, StubTimeout, randomize_case

CLIENT = (ipaddress.IPv4Address("192.0.2.99"), 40000)
OUTSIDER = (ipaddress.IPv4Address("203.0.113.5"), 40000)
SERVER = (ipaddress.IPv4Address("192.0.2.2"), 53)
UP1 = (int(ipaddress.IPv4Address("192.0.2.1")), 53)
UP2 = (int(ipaddress.IPv4Address("192.0.2.3")), 5353)


class UpstreamUdp(FakeUdp):
    """Datagrams to an upstream of the stack's go to it."""

    def __init__(self, stack):
        super().__init__()
        self.stack = stack

    def sendto(self, payload, src_port, dst_ip, dst_port):
        upstream = self.stack.upstreams.get((dst_ip, dst_port))
        if upstream is not None:
            upstream.receive(payload, src_port)

    def deliver(self, payload, src_ip, src_port, dst_port, delay=0.0):
        def run():
            handler = self.bindings.get(dst_port)
            if handler is not None:
                handler(payload, src_ip, src_port, 0, dst_port)
        asyncio.get_running_loop().call_later(delay, run)


class FakeStack:
    def __init__(self):
        self.counters = Counters()
        self.udp = UpstreamUdp(self)
        self.upstreams = {}


class FakeUpstream:
    """Answers from `records` {(name, type): [(ttl, text), ...]}; NXDOMAIN
    with a SOA otherwise. `alive=False` drops everything."""

    def __init__(self, stack, endpoint, records=None, *, alive=True, wildcard=None, delay=0.0,
                 lowercase=False, forge=None, truncate=False):
        self.stack, self.endpoint = stack, endpoint
        self.records = records or {}
        self.alive, self.wildcard, self.delay = alive, wildcard, delay
        self.lowercase, self.forge, self.truncate = lowercase, forge, truncate
        self.queries = []
        stack.upstreams[endpoint] = self

    def receive(self, wire, src_port):
        q = dns.message.from_wire(wire)
        self.queries.append(q)
        if not self.alive:
            return
        r = dns.message.make_response(q)
        if getattr(self, "no_edns", False) and q.edns >= 0:
            r.use_edns(False)
            r.set_rcode(dns.rcode.FORMERR)
            self.stack.udp.deliver(r.to_wire(), self.endpoint[0], self.endpoint[1], src_port)
            return
        r.flags |= dns.flags.RA
        name = q.question[0].name.canonicalize().to_text()
        rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
        found = self.records.get((name, rdtype))
        if found is not None:
            r.answer = [dns.rrset.from_text(q.question[0].name, ttl, "IN", rdtype, text) for ttl, text in found]
        elif self.wildcard and rdtype == "A":
            r.answer = [dns.rrset.from_text(q.question[0].name, 60, "IN", "A", self.wildcard)]
        elif any(n == name for n, _ in self.records):
            r.authority = [dns.rrset.from_text("example.com.", 3600, "IN", "SOA", "ns. host. 1 2 3 4 120")]
        else:
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority = [dns.rrset.from_text("example.com.", 3600, "IN", "SOA", "ns. host. 1 2 3 4 120")]
        if self.truncate:
            r.flags |= dns.flags.TC
            r.answer = []
        out = bytearray(r.to_wire())
        if self.lowercase:
            qlen = len(q.question[0].name.to_wire())
            out[12:12 + qlen] = bytes(out[12:12 + qlen]).lower()
        if self.forge:
            for forged, src, port in self.forge(bytes(out), src_port):
                self.stack.udp.deliver(forged, src, port, src_port, self.delay / 2)
        self.stack.udp.deliver(bytes(out), self.endpoint[0], self.endpoint[1], src_port, self.delay)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


RECORDS = {
    ("www.example.com.", "A"): [(300, "192.0.2.80")],
    ("www.example.com.", "MX"): [(300, "10 mail.example.com.")],
    ("mail.example.com.", "A"): [(60, "192.0.2.25")],
}


def make(upstreams=(UP1,), *, records=RECORDS, clock=None, **kw):
    stack = FakeStack()
    ups = [FakeUpstream(stack, ep, dict(records)) for ep in upstreams]
    clock = clock or Clock()
    serve_stale = kw.pop("serve_stale", False)
    cache = Cache(counters=stack.counters, serve_stale=kw.pop("serve_stale_cache", False) or serve_stale)
    kw.setdefault("deadline", 0.5)
    kw.setdefault("attempt_timeout", 0.1)
    rng = random.Random(1)
    stub = StubResolver(stack, counters=stack.counters, rng=rng)
    fwd = Forwarder(upstreams, stub=stub, cache=cache, allow=["192.0.2.0/24"], clock=clock, rng=rng, **kw)
    return stack, ups, fwd, clock


def ask(fwd, name="www.example.com.", rdtype="A", src=CLIENT, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return fwd(src=src, dst=SERVER, query=q)


def run(coro):
    return asyncio.run(coro)


def test_parse_upstream():
    assert parse_upstream("192.0.2.1") == (UP1[0], 53)
    assert parse_upstream("192.0.2.3:5353") == UP2
    assert parse_upstream("192.0.2.3#5353") == UP2
    for bad in ("example.com", "192.0.2.1:0", "192.0.2.1:x", "2001:db8::1"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_access_list():
    acl = AccessList(["192.0.2.0/24", "10.1.2.3/32"])
    assert acl(int(ipaddress.IPv4Address("192.0.2.200"))) and acl(int(ipaddress.IPv4Address("10.1.2.3")))
    assert not acl(int(ipaddress.IPv4Address("10.1.2.4")))


def test_forwards_with_rd_and_answers_with_ra():
    async def main():
        stack, (up,), fwd, _ = make()
        answer = await ask(fwd)
        m = answer.message
        assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.RA and not answer.static and not answer.final
        assert m.answer[0][0].address == "192.0.2.80" and m.answer[0].ttl == 300
        assert len(up.queries) == 1 and up.queries[0].flags & dns.flags.RD
        assert stack.counters["stub.reply.ok"] == 1 and stack.counters["forward.cache.miss"] == 1
        assert not stack.udp.bindings                    # the query's port was given back
    run(main())


def test_cache_hit_never_reaches_upstream_and_counts_down():
    async def main():
        stack, (up,), fwd, clock = make()
        await ask(fwd)
        clock.t += 100.4
        answer = await ask(fwd)
        assert len(up.queries) == 1 and stack.counters["forward.cache.hit"] == 1
        assert answer.message.answer[0].ttl == 200
        # and the fast path agrees
        from unikernel.resolver.cache import question_key
        key = question_key(dns.name.from_text("www.example.com."), 1, 1) + b"\x00"
        wire = kept_wire(fwd.fast_lookup(key, int(CLIENT[0]), clock.t))
        assert dns.message.from_wire(wire).answer[0].ttl == 200
        assert fwd.fast_lookup(key, int(OUTSIDER[0]), clock.t) is None
        clock.t += 200
        await ask(fwd)
        assert len(up.queries) == 2                      # expired: asked again
    run(main())


def test_negative_answers_are_cached():
    async def main():
        stack, (up,), fwd, clock = make()
        a = await ask(fwd, "nope.example.com.")
        assert a.message.rcode() == dns.rcode.NXDOMAIN and a.message.authority[0].ttl == 120
        clock.t += 60
        b = await ask(fwd, "nope.example.com.")
        assert b.message.rcode() == dns.rcode.NXDOMAIN and b.message.authority[0].ttl == 60
        nodata = await ask(fwd, "www.example.com.", "AAAA")
        assert nodata.message.rcode() == dns.rcode.NOERROR and not nodata.message.answer
        await ask(fwd, "www.example.com.", "AAAA")
        assert len(up.queries) == 2
    run(main())


def test_identical_questions_in_flight_go_upstream_once():
    async def main():
        stack, (up,), fwd, _ = make()
        up.delay = 0.05
        answers = await asyncio.gather(*(ask(fwd) for _ in range(5)))
        assert all(a.message.answer[0][0].address == "192.0.2.80" for a in answers)
        assert len(up.queries) == 1 and stack.counters["forward.inflight.joined"] == 4
    run(main())


def test_dead_upstream_gives_servfail_within_deadline_and_servfail_is_cached_briefly():
    async def main():
        stack, (up,), fwd, clock = make(deadline=0.3)
        up.alive = False
        # an answer, SERVFAIL, comes by the deadline (the bound here is generous)
        answer = await asyncio.wait_for(ask(fwd), timeout=0.3 + 2.0)
        assert answer.message.rcode() == dns.rcode.SERVFAIL and answer.message.flags & dns.flags.RA
        assert stack.counters["forward.servfail"] == 1
        sent = len(up.queries)
        assert sent >= 2                                 # retried within the deadline
        assert (await ask(fwd)).message.rcode() == dns.rcode.SERVFAIL
        assert len(up.queries) == sent                   # the SERVFAIL was cached
        clock.t += 3
        up.alive = True
        assert (await ask(fwd)).message.rcode() == dns.rcode.NOERROR
    run(main())


def test_failover_and_health():
    async def main():
        stack, (up1, up2), fwd, clock = make((UP1, UP2), deadline=1.0, attempt_timeout=0.05, max_fails=2)
        up1.alive = False
        for name in ("www.example.com.", "mail.example.com."):
            answer = await ask(fwd, name)
            assert answer.message.rcode() == dns.rcode.NOERROR
        assert fwd.upstreams[0].is_down(clock.t) and stack.counters["forward.upstream.marked_down"] == 1
        before = len(up1.queries)
        fwd.cache = Cache()                              # forget, so it must ask again
        fwd.cache  # noqa: B018
        answer = await ask(fwd, "www.example.com.", "MX")
        assert answer.message.rcode() == dns.rcode.NOERROR
        assert len(up1.queries) == before                # a down upstream is skipped
        # the health probe brings it back once it answers
        up1.alive = True
        await fwd.probe_health()
        assert not fwd.upstreams[0].is_down(clock.t) and stack.counters["forward.upstream.marked_up"] == 1
    run(main())


def test_down_upstreams_are_still_used_when_all_are_down():
    async def main():
        stack, (up1, up2), fwd, clock = make((UP1, UP2), attempt_timeout=0.05)
        for u in fwd.upstreams:
            u.fails, u.down_until = 5, clock.t + 100
        answer = await ask(fwd)
        assert answer.message.rcode() == dns.rcode.NOERROR
    run(main())


def test_forged_replies_are_ignored_and_counted():
    def forge(real, port):
        rid = struct.unpack_from("!H", real)[0]
        fake = dns.message.from_wire(real)
        fake.answer[0] = dns.rrset.from_text(fake.answer[0].name, 300, "IN", "A", "203.0.113.66")
        w = bytearray(fake.to_wire())
        wrong_id = bytearray(w)
        struct.pack_into("!H", wrong_id, 0, rid ^ 1)
        q2 = dns.message.make_query("other.example.com.", "A")
        q2.id = rid
        wrong_q = dns.message.make_response(q2).to_wire()
        return [(bytes(wrong_id), UP1[0], 53),          # wrong ID
                (bytes(w), UP1[0], 54),                 # wrong source port
                (bytes(w), UP1[0] + 1, 53),             # wrong source address
                (wrong_q, UP1[0], 53)]                  # wrong question

    async def main():
        stack, (up,), fwd, _ = make()
        up.forge, up.delay = forge, 0.02
        answer = await ask(fwd)
        assert answer.message.answer[0][0].address == "192.0.2.80"
        c = stack.counters
        assert (c["stub.reply.bad_id.drop"], c["stub.reply.bad_port.drop"],
                c["stub.reply.bad_address.drop"], c["stub.reply.bad_question.drop"]) == (1, 1, 1, 1)
    run(main())


def test_0x20_is_used_and_falls_back_for_an_upstream_that_lowercases():
    async def main():
        stack, (up,), fwd, _ = make()
        await ask(fwd, "www.example.com.")
        sent = up.queries[0].question[0].name.to_text()
        assert sent.lower() == "www.example.com." and sent != "www.example.com."
        up.lowercase = True
        answer = await ask(fwd, "mail.example.com.")
        assert answer.message.answer[0][0].address == "192.0.2.25"     # asked again in plain case
        assert up.queries[-1].question[0].name.to_text() == "mail.example.com."
        # one wrong-case reply (a forger's, perhaps) does not switch 0x20 off ...
        assert fwd.upstreams[0].use_0x20 and stack.counters["stub.reply.case_mismatch.drop"] == 1
        for name in ("a.example.com.", "b.example.com."):
            await ask(fwd, name)
        # ... an upstream that lowercases every time loses it
        assert not fwd.upstreams[0].use_0x20 and stack.counters["stub.reply.case_mismatch.drop"] == 3
        await ask(fwd, "c.example.com.")
        assert up.queries[-1].question[0].name.to_text() == "c.example.com."
        assert stack.counters["stub.reply.case_mismatch.drop"] == 3
    run(main())


def test_0x20_can_be_switched_off():
    async def main():
        stack, (up,), fwd, _ = make(randomize_case=False)
        await ask(fwd, "www.example.com.")
        assert up.queries[0].question[0].name.to_text() == "www.example.com."
    run(main())


def test_clients_outside_allow_get_nothing_to_refuse():
    async def main():
        stack, (up,), fwd, _ = make()
        assert await ask(fwd, src=OUTSIDER) is None
        assert not up.queries and stack.counters["forward.refused"] == 1
    run(main())


def test_bogus_nxdomain_configured():
    async def main():
        stack, (up,), fwd, _ = make(bogus_nxdomain=["192.0.2.80"])
        answer = await ask(fwd)
        assert answer.message.rcode() == dns.rcode.NXDOMAIN and not answer.message.answer
        assert stack.counters["forward.bogus_nxdomain"] == 1
        assert (await ask(fwd, "mail.example.com.")).message.rcode() == dns.rcode.NOERROR
    run(main())


def test_nxdomain_wildcarding_is_detected_and_undone(caplog):
    async def main():
        stack, (up,), fwd, _ = make()
        up.wildcard = "198.51.100.9"
        await fwd.probe_wildcards()
        assert fwd.upstreams[0].bogus == {"198.51.100.9"}
        answer = await ask(fwd, "typo.example.com.")
        assert answer.message.rcode() == dns.rcode.NXDOMAIN
        assert (await ask(fwd)).message.answer[0][0].address == "192.0.2.80"
    run(main())
    assert "rewrites NXDOMAIN" in caplog.text


def test_serve_stale_when_upstreams_are_down():
    async def main():
        stack, (up,), fwd, clock = make(serve_stale=True, deadline=0.2)
        await ask(fwd)
        up.alive = False
        clock.t += 299
        assert (await ask(fwd)).message.answer[0].ttl == 1       # still fresh: from cache
        clock.t += 10
        stale = await ask(fwd)
        assert stale.message.answer[0][0].address == "192.0.2.80" and stale.message.answer[0].ttl == 30
        assert stack.counters["forward.stale.served"] == 1
    run(main())

    async def without():
        stack, (up,), fwd, clock = make(deadline=0.2)
        await ask(fwd)
        up.alive = False
        clock.t += 309
        assert (await ask(fwd)).message.rcode() == dns.rcode.SERVFAIL
    run(without())


def test_truncated_reply_is_relayed_with_tc_without_tcp():
    async def main():
        stack, (up,), fwd, _ = make()
        up.truncate = True
        answer = await ask(fwd)
        assert answer.message.flags & dns.flags.TC and answer.message.flags & dns.flags.RA
        assert stack.counters["stub.truncated.relayed"] == 1
    run(main())


def test_zone_transfers_are_not_forwarded():
    async def main():
        stack, (up,), fwd, _ = make()
        assert await ask(fwd, "example.com.", "AXFR") is None and not up.queries
    run(main())


def test_do_bit_is_forwarded_and_cached_apart():
    async def main():
        stack, (up,), fwd, _ = make()
        await ask(fwd, use_edns=0, want_dnssec=True)
        assert up.queries[0].ednsflags & dns.flags.DO
        await ask(fwd, use_edns=0)
        assert len(up.queries) == 2 and not up.queries[1].ednsflags & dns.flags.DO
    run(main())


def test_stub_timeout_and_case_mismatch():
    async def main():
        stack = FakeStack()
        up = FakeUpstream(stack, UP1, dict(RECORDS), alive=False)
        stub = StubResolver(stack, rng=random.Random(3))
        with pytest.raises(StubTimeout):
            await stub.query(UP1, dns.name.from_text("www.example.com."), 1, timeout=0.05)
        up.alive, up.lowercase = True, True
        with pytest.raises(CaseMismatch):
            await stub.query(UP1, dns.name.from_text("www.example.com."), 1, timeout=1, use_0x20=True)
        reply = await stub.query(UP1, dns.name.from_text("www.example.com."), 1, timeout=1)
        assert reply.transport == "udp" and reply.message.answer
        assert not stack.udp.bindings
    run(main())


def test_randomize_case_only_touches_letters():
    wire = dns.name.from_text("a1-b.example.com.").to_wire()
    seen = {randomize_case(wire, random.Random(i)) for i in range(20)}
    assert len(seen) > 1
    assert all(s.lower() == wire for s in seen)
    assert all(s[0] == wire[0] and s[2:4] == wire[2:4] for s in seen)   # length and '1-' untouched


def test_lifecycle_start_stop():
    async def main():
        stack, (up,), fwd, _ = make(probe_interval=0.01)
        fwd.start()
        await asyncio.sleep(0.1)
        assert len(up.queries) >= 2 * fwd.wildcard_probes   # wildcard probes ran at start (A and AAAA)
        await fwd.stop()
        n = len(up.queries)
        await asyncio.sleep(0.05)
        assert len(up.queries) == n
    run(main())


def test_upstream_without_edns_is_asked_without():
    async def main():
        stack, (up,), fwd, _ = make()
        up.no_edns = True
        answer = await ask(fwd)
        assert answer.message.answer[0][0].address == "192.0.2.80"
        assert [q.edns for q in up.queries] == [0, -1] and not fwd.upstreams[0].edns
        assert fwd.upstreams[0].fails == 0
    run(main())


def test_refusing_upstream_fails_over():
    async def main():
        stack, (up1, up2), fwd, _ = make((UP1, UP2))
        up1.records = {}
        original = up1.receive

        def refuse(wire, src_port):
            q = dns.message.from_wire(wire)
            up1.queries.append(q)
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.REFUSED)
            stack.udp.deliver(r.to_wire(), UP1[0], UP1[1], src_port)
        up1.receive = refuse
        answer = await ask(fwd)
        assert answer.message.answer[0][0].address == "192.0.2.80"
        assert stack.counters["forward.upstream.refused"] == 1 and len(up2.queries) == 1
        del original
    run(main())


def test_all_upstreams_servfail_gives_servfail_quickly():
    async def main():
        stack, (up,), fwd, _ = make(deadline=5.0)

        def servfail(wire, src_port):
            q = dns.message.from_wire(wire)
            up.queries.append(q)
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.SERVFAIL)
            stack.udp.deliver(r.to_wire(), UP1[0], UP1[1], src_port)
        up.receive = servfail
        answer = await ask(fwd)
        assert answer.message.rcode() == dns.rcode.SERVFAIL and len(up.queries) == 1
        assert stack.counters["stub.timeout"] == 0      # gave up on the reply, not on the deadline
    run(main())


def test_dig_words():
    from unikernel.dig import UsageError, _parse_words
    o = _parse_words(["@192.0.2.1", "example.com", "MX", "+short", "+norec"], None)
    assert (o.server, o.name, o.rdtype, o.short, o.recurse) == ("192.0.2.1", "example.com", 15, True, False)
    r = _parse_words(["@192.0.2.1"], "192.0.2.10")
    assert r.name == "10.2.0.192.in-addr.arpa." and r.rdtype == dns.rdatatype.PTR
    assert _parse_words([], None).name == "."
    with pytest.raises(UsageError):
        _parse_words(["+bogus"], None)
    with pytest.raises(UsageError):
        _parse_words([], "not-an-address")


def test_dig_format_matches_dig_layout():
    from unikernel.dig import format_reply
    q = dns.message.make_query("www.example.com.", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    r.answer = [dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.80")]
    text = format_reply(r, command="@192.0.2.2 www.example.com", server="192.0.2.2#53(192.0.2.2)", size=60)
    assert f";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: {q.id}" in text
    assert ";; flags: qr rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1" in text
    assert ";www.example.com.\t\tIN\tA" in text             # as dig 9.18 lays it out
    assert "www.example.com.\t300\tIN\tA\t192.0.2.80" in text
    assert ";; MSG SIZE  rcvd: 60" in text


def test_stale_answer_given_early_while_the_refresh_goes_on():
    async def main():
        stack, (up,), fwd, clock = make(serve_stale=True, deadline=5.0, stale_answer_timeout=0.05)
        await ask(fwd)
        up.alive = False
        clock.t += 400
        stale = await ask(fwd)
        assert stale.message.answer[0].ttl == 30 and stack.counters["forward.stale.served_early"] == 1
        assert len(fwd._inflight) == 1               # the refresh is still asking upstream
    run(main())


def test_garbage_from_the_upstream_is_dropped_and_the_real_reply_wins():
    rng = random.Random(5)

    def garbage(real, port):
        rid = real[:2]
        out = [(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))), UP1[0], 53) for _ in range(20)]
        # right ID and question, then junk: parses badly
        out += [(real[:len(real) // 2], UP1[0], 53), (rid + b"\x80\x00" + b"\x00" * 8, UP1[0], 53)]
        return out

    async def main():
        stack, (up,), fwd, _ = make()
        up.forge, up.delay = garbage, 0.02
        answer = await ask(fwd)
        assert answer.message.answer[0][0].address == "192.0.2.80"
        drops = sum(v for k, v in stack.counters.items() if k.startswith("stub.reply.") and k.endswith(".drop"))
        assert drops == 22
    run(main())


def test_a_reply_in_the_right_case_forgives_earlier_mismatches():
    async def main():
        stack, (up,), fwd, _ = make()
        up.lowercase = True
        for name in ("a.example.com.", "b.example.com."):
            await ask(fwd, name)
        assert fwd.upstreams[0].case_mismatches == 2
        up.lowercase = False
        await ask(fwd, "c.example.com.")
        assert fwd.upstreams[0].case_mismatches == 0
        up.lowercase = True
        await ask(fwd, "d.example.com.")
        assert fwd.upstreams[0].use_0x20 and fwd.upstreams[0].case_mismatches == 1
    run(main())
