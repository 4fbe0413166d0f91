"""DNS over TLS both ways between two of our stacks on a memory wire: the
upstream side (unikernel.resolver.tls_upstream) against the serving side
(unikernel.serve.tls), with a handler made of dnspython. What each side does
on the wire is checked against real peers in tests/integration/test_dot.py;
here the pooling, pipelining, padding, timeouts and bounds are pinned by
counters."""
from __future__ import annotations

import asyncio
import ipaddress

import dns.message
import dns.name
import dns.rdatatype
import pytest

from netstack import tls
from netstack.link.memory import MemoryWire
from netstack.stack import Stack
from netstack.tcp.stream import open_connection
from tests.tlscerts import make_pki, needs_openssl
from unikernel.config import parse_tls_upstream
from unikernel.resolver.stub import StubError
from unikernel.resolver.tls_upstream import TlsUpstream, TlsVerifyError, padded_query
from unikernel.serve.tls import DnsTlsServer, padded_answer

pytestmark = [needs_openssl]
A, B = "10.9.0.1", "10.9.0.2"
B_INT = int(ipaddress.IPv4Address(B))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


class Handler:
    """Answers every A question with 192.0.2.<ID mod 256>; records query sizes;
    `hold` makes it wait for an event first."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.hold: asyncio.Event | None = None

    async def __call__(self, src, dst, query_wire: bytes) -> bytes:
        self.sizes.append(len(query_wire))
        if self.hold is not None:
            await self.hold.wait()
        query = dns.message.from_wire(query_wire)
        response = dns.message.make_response(query)
        name = query.question[0].name
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", f"192.0.2.{len(self.sizes) % 256}"))
        return response.to_wire()


def run(pki, body, *, timeout: float = 60, server_options=None, **faults):
    async def main():
        wire = MemoryWire(seed=3, **faults)
        a_end, b_end = wire.ends()
        a, b = Stack(a_end, f"{A}/24"), Stack(b_end, f"{B}/24")
        await a.start()
        await b.start()
        handler = Handler()
        server = DnsTlsServer(b.tcp, 853, handler, tls.server_context(str(pki.cert), str(pki.key)),
                              **(server_options or {}))
        server.start()
        try:
            return await asyncio.wait_for(body(a, b, server, handler), timeout)
        finally:
            server.close()
            a.close()
            b.close()
    return asyncio.run(main())


def upstream(a: Stack, pki, name: str | None = None, ca=None, **options) -> TlsUpstream:
    context = tls.client_context(str(ca or pki.ca))
    return TlsUpstream(a.tcp, B_INT, 853, name or pki.name, context, counters=a.counters, **options)


def test_parse_tls_upstream():
    assert parse_tls_upstream("tls://192.0.2.1#dns.example") == (0xC0000201, 853, "dns.example")
    assert parse_tls_upstream("TLS://192.0.2.1:8853#dns.example.") == (0xC0000201, 8853, "dns.example")
    for bad in ("tls://192.0.2.1", "tls://192.0.2.1#", "tls://name#x.example", "tls://192.0.2.1:0#a",
                "192.0.2.1#a", "tls://192.0.2.1:99999#a"):
        with pytest.raises(ValueError):
            parse_tls_upstream(bad)


def test_query_padding_is_a_multiple_of_128_and_parses():
    for length in (1, 20, 60, 200):
        name = dns.name.from_text("a" * min(length, 60) + ".example.")
        question = name.to_wire() + b"\x00\x01\x00\x01"
        wire = padded_query(7, question, do=True)
        assert len(wire) % 128 == 0
        message = dns.message.from_wire(wire)
        assert message.id == 7 and message.edns == 0 and message.ednsflags & 0x8000
        assert [o.otype for o in message.options] == [12]


def test_answer_padding_only_with_edns():
    query = dns.message.make_query("www.example.", "A", use_edns=0)
    response = dns.message.make_response(query)
    padded = padded_answer(response.to_wire())
    assert len(padded) % 468 == 0
    assert dns.message.from_wire(padded).id == query.id
    plain = dns.message.make_response(dns.message.make_query("www.example.", "A", use_edns=False)).to_wire()
    assert padded_answer(plain) == plain


def test_pipelined_queries_share_one_connection_and_are_padded(pki):
    async def body(a, b, server, handler):
        up = upstream(a, pki)
        names = [dns.name.from_text(f"host{i}.example.") for i in range(20)]
        replies = await asyncio.gather(*(up.query(n, dns.rdatatype.A, timeout=10) for n in names))
        for name, reply in zip(names, replies):
            assert reply.transport == "tls"
            assert reply.message.question[0].name == name
            assert reply.message.answer[0].name == name
            assert len(reply.wire) % 468 == 0          # the server padded (the query had EDNS)
        assert all(size % 128 == 0 for size in handler.sizes)
        c = a.counters
        assert c[up.prefix + ".handshake"] == 1
        assert c[up.prefix + ".reuse"] == 19
        assert b.counters["dns_tls.handshake.done"] == 1
        await up.close()
        assert up.connections == []
        await asyncio.sleep(0.5)
        assert server.sessions == {}          # our close_notify and FIN ended the server's side too
    run(pki, body)


def test_without_edns_the_query_has_no_opt_and_no_padding(pki):
    async def body(a, b, server, handler):
        up = upstream(a, pki)
        reply = await up.query(dns.name.from_text("old.example."), dns.rdatatype.A, timeout=10, payload=None)
        assert reply.message.edns == -1 and len(reply.wire) % 468 != 0
        assert handler.sizes == [12 + len(dns.name.from_text("old.example.").to_wire()) + 4]   # no OPT record
        await up.close()
    run(pki, body)


def test_more_in_flight_than_one_connection_takes_opens_a_second(pki):
    async def body(a, b, server, handler):
        up = upstream(a, pki, max_inflight=4, max_connections=2)
        handler.hold = asyncio.Event()
        queries = [asyncio.ensure_future(up.query(dns.name.from_text(f"h{i}.example."), dns.rdatatype.A,
                                                  timeout=10)) for i in range(10)]
        await asyncio.sleep(2)
        assert len(up.connections) == 2
        assert sum(len(c.pending) for c in up.connections) == 8      # the other two wait for a slot
        handler.hold.set()
        replies = await asyncio.gather(*queries)
        assert len(replies) == 10
        assert a.counters[up.prefix + ".handshake"] == 2
        await up.close()
    run(pki, body)


@pytest.mark.parametrize("wrong", ["name", "ca"])
def test_verification_failure_is_an_error_then_backoff(pki, wrong):
    async def body(a, b, server, handler):
        up = upstream(a, pki, name="other.test" if wrong == "name" else None,
                      ca=pki.other_ca if wrong == "ca" else None)
        with pytest.raises(TlsVerifyError):
            await up.query(dns.name.from_text("www.example."), dns.rdatatype.A, timeout=10)
        with pytest.raises(StubError):            # held off: no second handshake at once
            await up.query(dns.name.from_text("www.example."), dns.rdatatype.A, timeout=10)
        assert a.counters[up.prefix + ".verify_error"] == 1
        assert a.counters[up.prefix + ".backoff.fail"] == 1
        assert handler.sizes == []                  # nothing reached the server in any form
    run(pki, body)


def test_idle_connection_closes_and_the_next_one_resumes(pki):
    async def body(a, b, server, handler):
        up = upstream(a, pki, idle_timeout=0.5)
        await up.query(dns.name.from_text("one.example."), dns.rdatatype.A, timeout=10)
        await asyncio.sleep(1.5)
        assert up.connections == [] and a.counters["dot.idle.close"] == 1
        reply = await up.query(dns.name.from_text("two.example."), dns.rdatatype.A, timeout=10)
        assert reply.message.answer
        assert a.counters[up.prefix + ".handshake"] == 2
        assert a.counters[up.prefix + ".resumed"] == 1
        assert b.counters["dns_tls.handshake.resumed"] == 1
        await up.close()
    run(pki, body)


def test_a_connection_that_dies_with_queries_outstanding_resends_them_once(pki):
    async def body(a, b, server, handler):
        up = upstream(a, pki)
        handler.hold = asyncio.Event()
        queries = [asyncio.ensure_future(up.query(dns.name.from_text(f"r{i}.example."), dns.rdatatype.A,
                                                  timeout=10)) for i in range(3)]
        while len(handler.sizes) < 3:
            await asyncio.sleep(0.05)
        for conn in list(server.sessions):
            conn.abort()                             # the server resets with three queries in flight
        handler.hold.set()
        replies = await asyncio.gather(*queries)
        assert [r.message.question[0].name.to_text() for r in replies] == [f"r{i}.example." for i in range(3)]
        assert a.counters[up.prefix + ".resent"] == 3
        assert a.counters[up.prefix + ".handshake"] == 2
        await up.close()
    run(pki, body)


def test_server_bounds_handshakes_in_time_and_count(pki):
    async def body(a, b, server, handler):
        silent = [await open_connection(a.tcp, B, 853, timeout=5) for _ in range(3)]   # never say hello
        await asyncio.sleep(0.2)
        assert b.counters["dns_tls.handshake_limit.evicted"] == 1         # the third pushed out the first
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(silent[0][0].read(), 5)
        up = upstream(a, pki)                 # a real client gets through while the other two hold on
        reply = await up.query(dns.name.from_text("during.example."), dns.rdatatype.A, timeout=10)
        assert reply.message.answer
        assert b.counters["dns_tls.handshake_limit.evicted"] == 2
        await asyncio.sleep(1.5)
        assert b.counters["dns_tls.handshake.timeout"] == 1                # the last silent one
        reader, writer = await open_connection(a.tcp, B, 853, timeout=5)
        writer.write(b"\x00\x1d" + bytes(29))                  # DNS over TCP where TLS is expected
        await asyncio.sleep(0.5)
        assert b.counters["dns_tls.handshake.failed"] == 1
        assert server.handshaking == {}
        await up.close()
        for _r, w in silent:
            w.abort()
    run(pki, body, server_options={"max_handshakes": 2, "handshake_timeout": 1.0})


def test_lossy_wire_still_answers(pki):
    async def body(a, b, server, handler):
        up = upstream(a, pki)
        for i in range(5):
            reply = await up.query(dns.name.from_text(f"lossy{i}.example."), dns.rdatatype.A, timeout=30)
            assert reply.message.answer
        await up.close()
    run(pki, body, timeout=150, drop=0.15)



def test_a_transfer_over_tls_comes_whole_each_message_padded(pki):
    """XoT (RFC 9103): a handler's answer of several messages (a zone
    transfer) reaches the client message by message, each padded as any
    answer over TLS is (RFC 8467). Before, the padding step took the list for
    one message, failed to parse it and let every message go unpadded."""
    async def body(a, b, server, handler):
        async def transfer(src, dst, query_wire):
            query = dns.message.from_wire(query_wire)
            messages = []
            for i in range(3):
                response = dns.message.make_response(query)
                response.answer.append(dns.rrset.from_text(f"r{i}.example.", 60, "IN", "A", f"192.0.2.{i}"))
                messages.append(response.to_wire())
            return messages
        server.inner = transfer
        reader, writer = await open_connection(a.tcp, B, 853, timeout=5)
        plain_reader, plain_writer = await tls.client(reader, writer, tls.client_context(str(pki.ca)),
                                                      server_hostname=pki.name)
        query = dns.message.make_query("example.", "AXFR", use_edns=0).to_wire()
        plain_writer.write(len(query).to_bytes(2, "big") + query)
        received = []
        for _ in range(3):
            length = int.from_bytes(await asyncio.wait_for(plain_reader.readexactly(2), 10), "big")
            received.append(await plain_reader.readexactly(length))
        assert [dns.message.from_wire(m).answer[0].name.to_text() for m in received] == \
            ["r0.example.", "r1.example.", "r2.example."]
        assert all(len(m) % 468 == 0 for m in received)          # each padded (the query had EDNS)
        plain_writer.close()
    run(pki, body)
