"""An adversarial audit of the DNS side: each test is a way a packet (or a
LAN client) could make the appliance misbehave, kept as a regression test.

Peers are dnspython-built messages and hand-made bytes; the upstreams are the
scripted ones of tests/unit/test_forwarder.py."""
import asyncio
import ipaddress
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.unit import test_forwarder as tf
from tests.unit.fake_stack import FakeStack, exchange, kept_wire
from tests.unit.test_server import ZONE
from unikernel.config import AccessList
from unikernel.process import processor_of_process
from unikernel.resolver.cache import Cache, question_key
from unikernel.resolver.stub import StubError
from unikernel.serve.server import DnsServer
from unikernel.sources.zone import zone_process


def serve_zone(**options):
    stack = FakeStack()
    server = DnsServer(stack, 53, processor_of_process(zone_process([ZONE])), **options)
    server.start()
    return stack, server


def raw_query(qtype: int, name: bytes = b"\x03www\x04hard\x07example\x00") -> bytes:
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


# -- meta query types ---------------------------------------------------------------------

@pytest.mark.parametrize("qtype, rcode", [
    (dns.rdatatype.OPT, dns.rcode.FORMERR), (dns.rdatatype.TSIG, dns.rcode.FORMERR),
    (dns.rdatatype.TKEY, dns.rcode.FORMERR), (dns.rdatatype.MAILA, dns.rcode.NOTIMP),
    (dns.rdatatype.MAILB, dns.rcode.NOTIMP)])
def test_meta_qtypes_are_errors_not_answers(qtype, rcode):
    """OPT, TSIG and TKEY are no data a question can ask for (FORMERR, as BIND
    says); MAILA/MAILB are obsolete (NOTIMP). They were answered NOERROR from
    the zone and kept on the fast path, and forwarded upstream (see below)."""
    async def main():
        stack, server = serve_zone()
        reply = await exchange(stack, server, raw_query(qtype))
        server.close()
        return dns.message.from_wire(reply), stack.counters

    msg, counters = asyncio.run(main())
    assert msg.rcode() == rcode and not msg.answer and msg.id == 0x1234
    assert counters["dns.static.stored"] == 0


def test_a_client_cannot_switch_edns_off_or_mark_an_upstream_down_with_meta_qtypes():
    """An upstream that knows EDNS answers a question it dislikes FORMERR with
    an OPT record. That used to turn EDNS off for it for good, and every
    such reply counted against its health, so a client asking TKEY a few
    times downgraded (then sidelined) the upstream for everyone."""
    async def main():
        stack, (up,), fwd, _ = tf.make()
        original = up.receive

        def receive(wire, src_port):
            q = dns.message.from_wire(wire)
            if q.question[0].rdtype in (dns.rdatatype.TKEY, 65280):
                up.queries.append(q)
                r = dns.message.make_response(q)          # keeps the OPT of an EDNS query
                r.set_rcode(dns.rcode.FORMERR)
                stack.udp.deliver(r.to_wire(), up.endpoint[0], up.endpoint[1], src_port)
                return
            original(wire, src_port)

        up.receive = receive
        tkey = await tf.ask(fwd, rdtype="TKEY")
        for i in range(4):
            await tf.ask(fwd, f"x{i}.example.com.", rdtype="TYPE65280")
        upstream = fwd.upstreams[0]
        return tkey, upstream, fwd, up

    tkey, upstream, fwd, up = asyncio.run(main())
    assert tkey is None                                   # never forwarded: the server refuses it
    assert all(q.question[0].rdtype != dns.rdatatype.TKEY for q in up.queries)
    assert upstream.edns, "a FORMERR that carries an OPT does not mean 'no EDNS'"
    assert upstream.fails == 0 and not upstream.is_down(fwd.clock())


# -- the fast path and the access list ------------------------------------------------

def test_a_cache_hit_asks_the_access_list_once_and_nothing_else():
    """The fast path's hook was a method of the forwarder that called its
    list (two calls a hit, so that a replaced list took effect); it is the
    list itself now. Counted with the profiler's call events."""
    import sys

    async def main():
        stack, _, fwd, clock = tf.make()
        await tf.ask(fwd)
        key = question_key(dns.name.from_text("www.example.com."), 1, 1) + b"\x00"
        assert fwd.fast_lookup(key, int(tf.CLIENT[0]), clock.t) is not None     # rendered once
        calls = []
        sys.setprofile(lambda frame, event, arg: calls.append(frame.f_code.co_qualname) if event == "call" else None)
        try:
            found = fwd.fast_lookup(key, int(tf.CLIENT[0]), clock.t)
        finally:
            sys.setprofile(None)
        return found, calls

    found, calls = asyncio.run(main())
    assert found is not None
    assert [c for c in calls if "allowed" in c.lower() or "AccessList" in c] == ["AccessList.__call__"], calls


def test_fast_path_follows_a_changed_access_list():
    """The cache's hot-path hook captured the AccessList object at start, so
    replacing ``forwarder.allowed`` refused the slow path but the fast path
    kept serving cached answers to clients no longer allowed."""
    async def main():
        stack, _, fwd, clock = tf.make()
        await tf.ask(fwd)
        key = question_key(dns.name.from_text("www.example.com."), 1, 1) + b"\x00"
        assert fwd.fast_lookup(key, int(tf.CLIENT[0]), clock.t) is not None
        fwd.allowed = AccessList(["198.51.100.0/24"])
        slow = await tf.ask(fwd)
        fast = fwd.fast_lookup(key, int(tf.CLIENT[0]), clock.t)
        return slow, fast

    slow, fast = asyncio.run(main())
    assert slow is None                      # the slow path: not allowed any more
    assert fast is None                      # and the fast path agrees


def test_cache_fast_path_echoes_cd():
    """The cache's hot-path answers were patched by a copy of wire.patch that
    copied RD but not CD (RFC 4035 3.2.2): a CD query hitting the cache got
    its answer without CD."""
    async def main():
        _, _, fwd, clock = tf.make()
        await tf.ask(fwd)                                 # now in the cache

        async def nothing(src, dst, query):
            return None

        stack = FakeStack()
        server = DnsServer(stack, 53, nothing, fast_lookups=[fwd.fast_lookup], clock=clock)
        server.start()
        query = dns.message.make_query("www.example.com.", "A")
        query.flags |= dns.flags.CD
        reply = await exchange(stack, server, query.to_wire())
        server.close()
        return dns.message.from_wire(reply), stack.counters

    reply, counters = asyncio.run(main())
    assert counters["dns.fast.lookup_hit"] == 1
    assert reply.flags & dns.flags.CD and reply.flags & dns.flags.RD and reply.answer


# -- reflection loops --------------------------------------------------------------------

@pytest.mark.parametrize("src_port", [0, 7, 13, 19, 37])
def test_queries_from_port_zero_and_echo_like_services_are_dropped(src_port):
    """Port 0 is no port; echo, daytime, chargen and time answer whatever
    they get, so a query forged from one of them would start a packet loop
    (a FORMERR for the service's bytes, its bytes for our FORMERR...)."""
    async def main():
        stack, server = serve_zone()
        garbage = b"\x00\x01\x00\x00" + b"chargen-ish bytes!"     # QR clear: would get FORMERR
        replies = [await exchange(stack, server, garbage, src_port=src_port),
                   await exchange(stack, server, dns.message.make_query("www.hard.example.", "A").to_wire(),
                                  src_port=src_port)]
        server.close()
        return replies, stack.counters

    replies, counters = asyncio.run(main())
    assert replies == [None, None]
    assert counters["dns.bad_source_port.drop"] == 2


def test_a_query_from_port_53_is_still_answered():
    async def main():
        stack, server = serve_zone()
        reply = await exchange(stack, server, dns.message.make_query("www.hard.example.", "A").to_wire(),
                               src_port=53)
        server.close()
        return reply

    assert dns.message.from_wire(asyncio.run(main())).rcode() == dns.rcode.NOERROR


# -- the forwarder's retry loop ----------------------------------------------------------

def test_an_upstream_that_fails_at_once_does_not_spin_the_event_loop():
    """An attempt that fails immediately (StubError, OSError from a full port
    table...) left ``_ask_upstreams`` looping without awaiting until the
    next launch time: the whole appliance stalled for ``attempt_timeout``."""
    class FailingStub:
        def __init__(self, real):
            self.real = real

        async def query(self, server, *args, **kw):
            if server == tf.UP1:
                raise StubError("no route")
            return await self.real.query(server, *args, **kw)

    async def main():
        stack, ups, fwd, _ = tf.make((tf.UP1, tf.UP2), attempt_timeout=0.3, deadline=2.0)
        fwd.stub = FailingStub(fwd.stub)
        loop = asyncio.get_running_loop()
        real_time = loop.time
        calls = [0]

        def counted_time():
            calls[0] += 1
            return real_time()

        loop.time = counted_time
        try:
            answer = await tf.ask(fwd)
        finally:
            loop.time = real_time
        return answer, calls[0]

    answer, calls = asyncio.run(main())
    assert answer.message.answer[0][0].address == "192.0.2.80"
    assert calls < 1000, f"the event loop's clock was read {calls} times: a busy loop"


# -- memory bounds ---------------------------------------------------------------------

def _big_reply(name: dns.name.Name, size: int) -> dns.message.Message:
    r = dns.message.make_response(dns.message.make_query(name, "TXT"))
    strings = " ".join('"' + "x" * 250 + '"' for _ in range(size // 251))
    r.answer = [dns.rrset.from_text(name, 300, "IN", "TXT", strings)]
    return r


def test_cache_is_bounded_in_bytes_not_only_in_entries():
    """A client asking for many names whose answers are large (an upstream
    over TCP may give 64 KB) filled the 10,000 entries with megabytes each
    way (parsed records plus up to three rendered variants): far beyond a
    128 MiB VM. The cache now also keeps a byte budget."""
    cache = Cache()
    template = _big_reply(dns.name.from_text("t.example."), 30_000)
    wire_size = len(template.to_wire())
    for i in range(2000):                          # 2000 x 30 KB = 60 MB of answers
        name = dns.name.from_text(f"n{i}.example.")
        template.answer[0].name = name
        entry = cache.entry_from_reply(name, dns.rdatatype.TXT, 1, False, template, 0.0)
        cache.store(entry)
    assert len(cache) * wire_size <= 40 * 1024 * 1024
    assert cache.size <= cache.max_bytes
    assert cache.get(dns.name.from_text("n1999.example."), dns.rdatatype.TXT, 1, False, 1.0) is not None


def test_cache_rendered_variants_count_against_the_budget():
    cache = Cache(max_bytes=100_000)
    lookup = cache.fast_lookup(lambda ip: True)
    template = _big_reply(dns.name.from_text("t.example."), 1_000)     # fits an EDNS answer
    for i in range(30):
        name = dns.name.from_text(f"n{i}.example.")
        template.answer[0].name = name
        cache.store(cache.entry_from_reply(name, dns.rdatatype.TXT, 1, False, template, 0.0))
        key = question_key(name, dns.rdatatype.TXT, 1)
        for flags in (0, 1):
            assert kept_wire(lookup(key + bytes((flags,)), 1, 0.0)) is not None
    assert cache.size <= cache.max_bytes
    assert cache.size == sum(e.cost for e in cache._entries.values())
    held = sum(r is not None for e in cache._entries.values() for r in e.rendered)
    assert 0 < len(cache) < 30 and held <= 2 * len(cache)


def test_static_answers_are_bounded_in_bytes():
    """Every NXDOMAIN of a zone is a static answer: random long names filled
    100,000 entries of ~600 bytes (60 MB in a 128 MiB VM)."""
    async def main():
        stack, server = serve_zone(max_kept_bytes=60_000)
        for i in range(300):
            name = ".".join([f"{i:03d}" + "a" * 60] * 3) + ".hard.example."
            q = dns.message.make_query(name, "A", use_edns=0)
            reply = await exchange(stack, server, q.to_wire())
            assert dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN
            stack.udp.sent.clear()
        # the newest are kept and still served from the fast path
        hit_before = stack.counters["dns.fast.hit"]
        reply = await exchange(stack, server, q.to_wire())
        server.close()
        return server, reply, stack.counters["dns.fast.hit"] - hit_before

    server, reply, hits = asyncio.run(main())
    assert server.kept_bytes <= 60_000 and 0 < len(server.kept_answers) < 300
    assert hits == 1 and dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN


# -- forwarder poisoning ------------------------------------------------------------------

def _poisoning_upstream(stack, up):
    original = up.receive

    def receive(wire, src_port):
        q = dns.message.from_wire(wire)
        name = q.question[0].name
        if name.canonicalize() != dns.name.from_text("www.example.com."):
            return original(wire, src_port)
        up.queries.append(q)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA
        r.answer = [dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.80"),
                    dns.rrset.from_text("victim.example.net.", 86400, "IN", "A", "203.0.113.66")]
        r.additional = [dns.rrset.from_text("ns.victim.example.net.", 86400, "IN", "A", "203.0.113.67")]
        stack.udp.deliver(r.to_wire(), up.endpoint[0], up.endpoint[1], src_port)

    up.receive = receive


def test_records_for_other_names_are_never_served_for_those_names():
    async def main():
        stack, (up,), fwd, _ = tf.make(records={
            ("victim.example.net.", "A"): [(60, "192.0.2.9")],
            ("ns.victim.example.net.", "A"): [(60, "192.0.2.10")]})
        _poisoning_upstream(stack, up)
        await tf.ask(fwd)
        victim = await tf.ask(fwd, "victim.example.net.")
        ns = await tf.ask(fwd, "ns.victim.example.net.")
        return victim, ns, len(up.queries)

    victim, ns, asked = asyncio.run(main())
    assert victim.message.answer[0][0].address == "192.0.2.9"
    assert ns.message.answer[0][0].address == "192.0.2.10"
    assert asked == 3                                     # each went upstream, none from the cache


def test_answer_records_off_the_question_chain_are_not_relayed():
    """An answer section that holds RRsets the question does not lead to (not
    the name, not a CNAME target) is what a poisoner sends; they were cached
    and handed to every client (a caching client behind us would keep them)."""
    async def main():
        stack, (up,), fwd, clock = tf.make()
        _poisoning_upstream(stack, up)
        first = await tf.ask(fwd)
        second = await tf.ask(fwd)
        key = question_key(dns.name.from_text("www.example.com."), 1, 1) + b"\x00"
        fast = dns.message.from_wire(kept_wire(fwd.fast_lookup(key, int(tf.CLIENT[0]), clock.t)))
        return first, second, fast

    for message in (m if isinstance(m, dns.message.Message) else m.message for m in asyncio.run(main())):
        names = {r.name.to_text() for r in message.answer}
        assert names == {"www.example.com."}
        assert message.answer[0][0].address == "192.0.2.80"
        # the planted additional record (no record here names it) is scrubbed too
        assert message.additional == [] and message.authority == []


def test_cname_chains_are_kept_whole():
    async def main():
        stack, (up,), fwd, _ = tf.make(records={
            ("alias.example.com.", "A"): [(60, "x")]})

        def receive(wire, src_port):
            q = dns.message.from_wire(wire)
            up.queries.append(q)
            r = dns.message.make_response(q)
            r.answer = [dns.rrset.from_text(q.question[0].name, 60, "IN", "CNAME", "mid.example.org."),
                        dns.rrset.from_text("mid.example.org.", 60, "IN", "CNAME", "end.example.net."),
                        dns.rrset.from_text("end.example.net.", 60, "IN", "A", "192.0.2.44")]
            stack.udp.deliver(r.to_wire(), up.endpoint[0], up.endpoint[1], src_port)

        up.receive = receive
        return await tf.ask(fwd, "alias.example.com.")

    answer = asyncio.run(main())
    assert [r.name.to_text() for r in answer.message.answer] == [
        "alias.example.com.", "mid.example.org.", "end.example.net."]


# -- late replies -------------------------------------------------------------------------

def test_a_reply_after_the_deadline_is_neither_used_nor_cached():
    async def main():
        stack, (up,), fwd, clock = tf.make(deadline=0.2, attempt_timeout=0.1)
        up.delay = 0.5
        first = await tf.ask(fwd)
        await asyncio.sleep(0.6)                  # the late replies arrive now
        clock.t += 3                              # past the brief SERVFAIL
        up.delay = 0.0
        second = await tf.ask(fwd)
        return first, second, stack.counters

    first, second, counters = asyncio.run(main())
    assert first.message.rcode() == dns.rcode.SERVFAIL
    assert counters["forward.answered"] == 1      # only the second, on time
    assert second.message.answer[0][0].address == "192.0.2.80"


# -- DNS over TCP: what a client that does not read can make us hold ---------------------

class _Conn:
    """Just enough of netstack.tcp.connection.Connection for netstack.tcp.stream.wrap: a peer
    whose receive window is shut (it never reads), so nothing we write leaves."""

    def __init__(self):
        from netstack.tcp.state import State
        self.state = State.ESTABLISHED
        self.remote = (int(ipaddress.IPv4Address("192.0.2.1")), 40000)
        self.local = (int(ipaddress.IPv4Address("192.0.2.2")), 53)
        self.send_space = 0
        self.closed = False
        self.aborted = False
        self.on_data = self.on_close = self.on_send_space = self.on_state = self.on_finished = None

    def set_receive_paused(self, paused):
        pass

    def send(self, data):
        raise AssertionError("the window is shut")

    def close(self):
        pass

    def abort(self):
        self.aborted = True


class _Tcp:
    def __init__(self):
        from netstack.counters import Counters
        self.counters = Counters()
        self.listening = {}

    def listen(self, port, on_accept):
        self.listening[port] = on_accept

    def unlisten(self, port):
        self.listening.pop(port, None)


def test_tcp_answers_queued_for_a_client_that_does_not_read_are_bounded():
    """Each answer task released its slot before writing, so a client that
    pipelines many queries and never reads had every answer queued in the
    writer (64 KB each at worst) until the first drain timed out."""
    from unikernel.serve.tcp import DnsTcpServer

    answer = b"\x12\x34\x81\x80" + b"\x00" * 8 + b"z" * 20_000

    async def handle(src, dst, query):
        return answer

    async def main():
        tcp = _Tcp()
        server = DnsTcpServer(tcp, 53, handle, idle_timeout=0.5, max_pending=4)
        server.start()
        conn = _Conn()
        tcp.listening[53](conn)
        query = dns.message.make_query("www.hard.example.", "A").to_wire()
        conn.on_data((struct.pack("!H", len(query)) + query) * 100)
        writer = conn.on_send_space.__self__
        most = 0
        for _ in range(50):
            await asyncio.sleep(0.005)
            most = max(most, len(writer._queued))
        server.close()
        await server.wait_closed()
        return most, tcp.counters

    most, counters = asyncio.run(main())
    assert most <= 2 * (len(answer) + 2), f"{most} bytes queued for a client that reads nothing"


def test_a_cname_chain_ending_in_nxdomain_keeps_its_cnames():
    """The negative cache entry dropped the answer section, so ``alias ->
    gone`` was relayed as a bare NXDOMAIN: the client was told the alias
    itself does not exist (RFC 2308 2.1: the NXDOMAIN is the last name's)."""
    async def main():
        stack, (up,), fwd, clock = tf.make()

        def receive(wire, src_port):
            q = dns.message.from_wire(wire)
            up.queries.append(q)
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.answer = [dns.rrset.from_text(q.question[0].name, 300, "IN", "CNAME", "gone.example.com.")]
            r.authority = [dns.rrset.from_text("example.com.", 3600, "IN", "SOA", "ns. host. 1 2 3 4 120")]
            stack.udp.deliver(r.to_wire(), up.endpoint[0], up.endpoint[1], src_port)

        up.receive = receive
        slow = await tf.ask(fwd, "alias.example.com.")
        again = await tf.ask(fwd, "alias.example.com.")
        key = question_key(dns.name.from_text("alias.example.com."), 1, 1) + b"\x00"
        fast = dns.message.from_wire(kept_wire(fwd.fast_lookup(key, int(tf.CLIENT[0]), clock.t)))
        return [slow.message, again.message, fast], len(up.queries)

    messages, asked = asyncio.run(main())
    assert asked == 1
    for message in messages:
        assert message.rcode() == dns.rcode.NXDOMAIN
        # (the target's letter case may echo our 0x20 question: the reply compresses against it)
        assert [r.to_text().lower() for r in message.answer] == ["alias.example.com. 120 in cname gone.example.com."]


@pytest.mark.parametrize("src", ["192.0.2.255", "255.255.255.255", "224.0.0.251", "0.0.0.0",
                                 "127.0.0.1", "192.0.2.2"])
def test_queries_from_broadcast_multicast_loopback_or_ourselves_are_dropped(src):
    """The stack takes any source address; a reply to the subnet's broadcast
    address leaves as an Ethernet broadcast, to every host of the LAN (each
    may send an ICMP error back): a forged source must not make us do that.
    The real stack drops such a source before UDP (the one home of the rule):
    frames made by scapy cross a memory wire to it, and nothing comes back."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from netstack.link.memory import MemoryWire
    from netstack.stack import Stack

    peer_mac = bytes.fromhex("02aabbccddee")

    async def main():
        ours, peer = MemoryWire().ends()
        stack = Stack(ours, ipaddress.IPv4Interface("192.0.2.2/24"), None)
        ours.attach(None, stack.receive)
        back: list[bytes] = []
        peer.attach(None, back.append)
        server = DnsServer(stack, 53, processor_of_process(zone_process([ZONE])))
        server.start()
        query = dns.message.make_query("www.hard.example.", "A").to_wire()
        frame = (Ether(dst=stack.mac, src=peer_mac) / IP(src=src, dst="192.0.2.2")
                 / UDP(sport=40000, dport=53) / query)
        peer.send(bytes(frame))
        ours.wire.pump()
        while server.pending:
            await asyncio.gather(*list(server.pending))
        ours.wire.pump()
        server.close()
        return back, stack.counters

    back, counters = asyncio.run(main())
    assert back == [] and counters["ipv4.bad_source.drop"] == 1
    assert counters["dns.fast.miss"] == 0 and counters["dns.slow.answered"] == 0


def test_tcp_answers_held_for_clients_that_do_not_read_are_bounded_over_all_connections():
    """Per connection, pipelined answers still wait in memory for their turn
    to be written; across 64 connections x 32 queries x 64 KB that is
    128 MiB. Over a server-wide budget an answer is dropped and its
    connection reset."""
    from unikernel.serve.tcp import DnsTcpServer

    answer = b"\x12\x34\x81\x80" + b"\x00" * 8 + b"z" * 20_000

    async def handle(src, dst, query):
        return answer

    async def main():
        tcp = _Tcp()
        server = DnsTcpServer(tcp, 53, handle, idle_timeout=0.5, max_pending=8, max_answer_bytes=100_000)
        server.start()
        conns = [_Conn() for _ in range(4)]
        query = dns.message.make_query("www.hard.example.", "A").to_wire()
        for conn in conns:
            tcp.listening[53](conn)
            conn.on_data((struct.pack("!H", len(query)) + query) * 8)
        most = 0
        for _ in range(40):
            await asyncio.sleep(0.005)
            most = max(most, server.answer_bytes)
        server.close()
        await server.wait_closed()
        for _ in range(5):
            await asyncio.sleep(0)             # the cancelled answer tasks unwind
        return most, server.answer_bytes, tcp.counters, conns

    most, left, counters, conns = asyncio.run(main())
    assert 0 < most <= 100_000 and left == 0
    assert counters["dns_tcp.answer_memory.reset"] > 0 and any(c.aborted for c in conns)


def test_a_flapping_upstream_does_not_flood_the_log(caplog):
    """Each down/up change logged a line; a client asking for names whose
    authorities never answer can make an upstream flap on every query."""
    async def main():
        stack, (up,), fwd, clock = tf.make(deadline=0.15, attempt_timeout=0.05)
        for i in range(6):
            up.alive = False
            await tf.ask(fwd, f"slow{i}.example.com.")
            up.alive = True
            clock.t += 3
            await tf.ask(fwd, f"fast{i}.example.com.")
            clock.t += 3
        return stack.counters

    with caplog.at_level("WARNING", logger="unikernel.resolver.forwarder"):
        counters = asyncio.run(main())
    health_lines = [r for r in caplog.records if "answers again" in r.message or "not answering" in r.message]
    assert counters["forward.upstream.marked_down"] >= 5 and counters["forward.upstream.marked_up"] >= 5
    assert len(health_lines) <= 2


def _with_opt_options(options: bytes) -> bytes:
    """www.hard.example. A with an OPT (payload 1232) carrying ``options`` raw."""
    header = struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 1)
    question = b"\x03www\x04hard\x07example\x00\x00\x01\x00\x01"
    return header + question + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00" + struct.pack("!H", len(options)) + options


@pytest.mark.parametrize("options", [
    b"\x00\x0a\x00\x10abcdefgh",                  # an option running past the OPT's data
    b"\x00\x0a\x00\x03abc",                       # a COOKIE whose client part is not 8 bytes
    b"\x00\x08\x00\x04\x00\x03\x40\x00",          # an ECS option that is no ECS option
    b"\x00",                                       # a stray byte
])
def test_a_malformed_edns_option_gets_formerr_even_when_its_question_is_kept(options):
    """The fast path's key covers the question and the OPT's flags, not the
    options: once the question's answer was kept, a query with broken
    options got that answer instead of the FORMERR the slow path gives."""
    async def main():
        stack, server = serve_zone()
        kept = await exchange(stack, server, _with_opt_options(b""))
        broken = await exchange(stack, server, _with_opt_options(options))
        server.close()
        return kept, broken, stack.counters

    kept, broken, counters = asyncio.run(main())
    assert dns.message.from_wire(kept).rcode() == dns.rcode.NOERROR and counters["dns.static.stored"] == 1
    assert dns.message.from_wire(broken).rcode() == dns.rcode.FORMERR


def test_well_formed_cookies_still_take_the_fast_path():
    async def main():
        stack, server = serve_zone()
        await exchange(stack, server, _with_opt_options(b""))
        hits = stack.counters["dns.fast.hit"]
        client_cookie = b"\x00\x0a\x00\x08" + b"c" * 8
        with_server = b"\x00\x0a\x00\x18" + b"c" * 8 + b"s" * 16
        replies = [await exchange(stack, server, _with_opt_options(o))
                   for o in (client_cookie, with_server, b"\x00\x03\x00\x00")]       # and NSID
        server.close()
        return replies, stack.counters["dns.fast.hit"] - hits

    replies, hits = asyncio.run(main())
    assert hits == 3 and all(dns.message.from_wire(r).rcode() == dns.rcode.NOERROR for r in replies)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPTION = st.tuples(st.sampled_from([3, 8, 10, 11, 12, 15, 18, 65001]), st.binary(max_size=44))


@settings(max_examples=200, deadline=None)
@given(options=st.lists(_OPTION, max_size=3), garble=st.binary(max_size=3))
def test_with_any_edns_options_the_fast_path_answers_as_the_slow_path_would(options, garble):
    raw = b"".join(struct.pack("!HH", code, len(data)) + data for code, data in options) + garble

    async def main():
        stack, server = serve_zone()
        await exchange(stack, server, _with_opt_options(b""))       # the question's answer is kept
        served = await exchange(stack, server, _with_opt_options(raw))
        slow, _ = await server.respond(_with_opt_options(raw), (1, 40000), (2, 53), udp=True)
        server.close()
        return served, slow

    served, slow = asyncio.run(main())
    assert served[3] & 0x0F == slow[3] & 0x0F                       # same rcode
    assert served[2:] == slow[2:] or slow[3] & 0x0F == dns.rcode.NOERROR
