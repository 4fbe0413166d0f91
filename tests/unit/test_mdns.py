"""The mDNS querier over a fake UDP layer and a virtual clock. Queries are read
back with dnspython; responses are written byte by byte here, the way
responders write them (cache-flush bits, compressed names in SRV and NSEC
rdata), since dnspython cannot write those."""
import asyncio
import ipaddress
import random
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from unikernel.sources import mdns
from unikernel.sources.mdns import MDNS_GROUP, MDNS_PORT, MdnsQuerier

OURS = ipaddress.IPv4Interface("192.0.2.2/24")
RESPONDER = int(ipaddress.IPv4Address("192.0.2.20"))
OTHER_RESPONDER = int(ipaddress.IPv4Address("192.0.2.30"))
OFF_LINK = int(ipaddress.IPv4Address("198.51.100.7"))
CLIENT = (ipaddress.IPv4Address("192.0.2.99"), 40000)
STRANGER = (ipaddress.IPv4Address("203.0.113.9"), 40000)
SERVER = (ipaddress.IPv4Address("192.0.2.2"), 53)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeUdp:
    def __init__(self):
        self.bindings = {}
        self.sent = []

    def bind_ephemeral_with_ttl(self, handler):
        self.bindings[40123] = handler
        return 40123

    def bind_with_ttl(self, port, handler):
        if port in self.bindings:
            raise OSError("bound")
        self.bindings[port] = handler

    def unbind(self, port):
        self.bindings.pop(port, None)

    def sendto(self, payload, src_port, dst_ip, dst_port, *, ttl=None):
        self.sent.append((payload, src_port, dst_ip, dst_port, ttl))


def make(**kw):
    udp, clock, counters, groups = FakeUdp(), Clock(), Counters(), []
    allow = ipaddress.IPv4Network("192.0.2.0/24")
    querier = MdnsQuerier(udp, interface=OURS, allowed=lambda ip: ipaddress.IPv4Address(ip) in allow,
                          join=groups.append, leave=groups.remove, counters=counters, clock=clock,
                          rng=random.Random(5), **kw)
    querier.start()
    return querier, udp, clock, counters, groups


# -- writing responses as responders do ----------------------------------------------
def wire_name(text):
    return dns.name.from_text(text).to_wire()


def rr(name, rdtype, rdata, ttl=120, flush=True, name_wire=None):
    rdclass = 1 | (0x8000 if flush else 0)
    return (name_wire or wire_name(name)) + struct.pack("!HHIH", dns.rdatatype.from_text(rdtype), rdclass, ttl,
                                                        len(rdata)) + rdata


def a(address):
    return ipaddress.IPv4Address(address).packed


def response(ident, records, question=None, extra=0):
    qd = b""
    if question is not None:
        qd = wire_name(question[0]) + struct.pack("!HH", dns.rdatatype.from_text(question[1]), 1)
    return struct.pack("!HHHHHH", ident, 0x8400, 1 if question else 0, len(records) + extra, 0, 0) + qd + b"".join(records)


def sent_query(udp, index=-1):
    payload, src_port, dst_ip, dst_port, ttl = udp.sent[index]
    assert (src_port, dst_ip, dst_port, ttl) == (40123, MDNS_GROUP, MDNS_PORT, 255)
    message = dns.message.from_wire(payload)
    assert not message.flags & dns.flags.RD and not message.flags & dns.flags.QR
    return message


def query(name, rdtype="A"):
    return dns.message.make_query(name, rdtype)


async def ask(querier, name, rdtype="A", src=CLIENT):
    task = asyncio.ensure_future(querier.process(src=src, dst=SERVER, query=query(name, rdtype)))
    await asyncio.sleep(0)
    return task


def reply(udp, data, src=RESPONDER, sport=5353, ttl=255, port=40123, dst=0xC0000202):
    udp.bindings[port](data, src, sport, dst, port, ttl)


def run(coro):
    return asyncio.run(coro)


def test_start_joins_the_group_and_binds_both_ports():
    querier, udp, clock, counters, groups = make()
    assert groups == [MDNS_GROUP] and set(udp.bindings) == {40123, MDNS_PORT}
    querier.close()
    assert groups == [] and udp.bindings == {}


def test_first_unicast_answer_ends_an_address_question_with_capped_ttl():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "Printer.local")
        q = sent_query(udp)
        assert q.question[0].name == dns.name.from_text("printer.local.") and q.question[0].rdtype == dns.rdatatype.A
        reply(udp, response(q.id, [rr("printer.local", "A", a("192.0.2.20"))], ("printer.local", "A")))
        answer = await task
        m = answer.message
        assert answer.final and not answer.static
        assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
        [rrset] = m.answer
        assert rrset.name == dns.name.from_text("Printer.local.") and rrset.ttl == 10
        assert rrset.rdclass == 1                                 # cache-flush bit gone
        assert [r.address for r in rrset] == ["192.0.2.20"]
        assert counters["mdns.query.sent"] == 1 and counters["mdns.reply.unicast"] == 1
        # kept: the same question within its TTL is not asked again, and its TTL counts down
        clock.now += 4
        again = await querier.process(src=CLIENT, dst=SERVER, query=query("printer.local"))
        assert len(udp.sent) == 1 and counters["mdns.cache.hit"] == 1
        assert again.message.answer[0].ttl == 6
        clock.now += 7
        await ask(querier, "printer.local")
        assert len(udp.sent) == 2                                # expired: asked again
    run(body())


def test_nobody_answers_nxdomain_after_the_timeout_with_soa():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "nobody.local")
        clock.now += 0.9
        querier.tick(clock.now)
        assert not task.done()
        clock.now += 0.2
        querier.tick(clock.now)
        m = (await task).message
        assert m.rcode() == dns.rcode.NXDOMAIN
        assert m.authority[0].rdtype == dns.rdatatype.SOA and m.authority[0].name == dns.name.from_text("local.")
        assert counters["mdns.nxdomain"] == 1
    run(body())


def test_identical_questions_in_flight_are_asked_once():
    async def body():
        querier, udp, clock, counters, _ = make()
        first = await ask(querier, "nas.local")
        second = await ask(querier, "NAS.local")
        assert len(udp.sent) == 1 and counters["mdns.query.merged"] == 1
        q = sent_query(udp)
        reply(udp, response(q.id, [rr("nas.local", "A", a("192.0.2.30"))], ("nas.local", "A")))
        assert [r.address for r in (await first).message.answer[0]] == ["192.0.2.30"]
        assert [r.address for r in (await second).message.answer[0]] == ["192.0.2.30"]
    run(body())


@pytest.mark.parametrize("kwargs,counter", [
    ({"src": OFF_LINK}, "mdns.reply.off_link.drop"),
    ({"src": OFF_LINK, "port": MDNS_PORT, "dst": MDNS_GROUP}, "mdns.reply.off_link.drop"),
    ({"ttl": 64, "port": MDNS_PORT, "dst": MDNS_GROUP}, "mdns.reply.ttl.drop"),     # matched by name: TTL 255 only
    ({"sport": 5000}, "mdns.reply.bad_port.drop"),
])
def test_responses_not_from_the_link_are_ignored(kwargs, counter):
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "printer.local")
        q = sent_query(udp)
        ident = 0 if kwargs.get("port") == MDNS_PORT else q.id
        reply(udp, response(ident, [rr("printer.local", "A", a("6.6.6.6"))], ("printer.local", "A")), **kwargs)
        assert counters[counter] == 1 and not task.done()
        clock.now += 1.1
        querier.tick(clock.now)
        assert (await task).message.rcode() == dns.rcode.NXDOMAIN
    run(body())


def test_unicast_reply_below_ttl_255_is_taken_as_zeroconf_sends_it_and_counted():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "printer.local")
        q = sent_query(udp)
        reply(udp, response(q.id, [rr("printer.local", "A", a("192.0.2.20"))], ("printer.local", "A")), ttl=64)
        assert [r.address for r in (await task).message.answer[0]] == ["192.0.2.20"]
        assert counters["mdns.reply.unicast.ttl_below_255"] == 1
    run(body())


def test_an_unreadable_record_is_skipped_and_an_empty_txt_read_as_one_empty_string():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "x._http._tcp.local", "TXT")
        q = sent_query(udp)
        reply(udp, response(q.id, [rr("x._http._tcp.local", "A", b"\x01"),          # 1-byte A: unreadable
                                   rr("x._http._tcp.local", "TXT", b"")], ("x._http._tcp.local", "TXT")))
        [txt] = (await task).message.answer
        assert [r.strings for r in txt] == [(b"",)]
        assert counters["mdns.record.unreadable.drop"] == 1
    run(body())


def test_wrong_id_wrong_question_and_error_rcode_are_ignored():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "printer.local")
        q = sent_query(udp)
        reply(udp, response(q.id ^ 1, [rr("printer.local", "A", a("6.6.6.6"))], ("printer.local", "A")))
        reply(udp, response(q.id, [rr("printer.local", "A", a("6.6.6.6"))], ("other.local", "A")))
        bad_rcode = bytearray(response(q.id, [rr("printer.local", "A", a("6.6.6.6"))], ("printer.local", "A")))
        bad_rcode[3] |= 3
        reply(udp, bytes(bad_rcode))
        as_query = bytearray(response(q.id, [rr("printer.local", "A", a("6.6.6.6"))], ("printer.local", "A")))
        as_query[2] &= 0x7F
        reply(udp, bytes(as_query))
        assert counters["mdns.reply.unknown_id.drop"] == 1
        assert counters["mdns.reply.wrong_question.drop"] == 1
        assert counters["mdns.reply.bad_opcode_rcode.drop"] == 1
        assert counters["mdns.query_seen.ignored"] == 1
        assert not task.done()
        reply(udp, response(q.id, [rr("printer.local", "A", a("192.0.2.20"))], ("printer.local", "A")))
        assert [r.address for r in (await task).message.answer[0]] == ["192.0.2.20"]
    run(body())


def test_records_for_names_not_asked_are_neither_answered_nor_kept():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "printer.local")
        q = sent_query(udp)
        reply(udp, response(q.id, [rr("bank.example", "A", a("6.6.6.6")), rr("evil.local", "A", a("6.6.6.6")),
                                   rr("printer.local", "A", a("192.0.2.20"))], ("printer.local", "A")))
        m = (await task).message
        assert [rrset.name.to_text() for rrset in m.answer + m.additional] == ["printer.local."]
        await ask(querier, "evil.local")
        assert len(udp.sent) == 2            # not taken from the earlier response
    run(body())


def test_multicast_response_answers_a_question_in_flight():
    async def body():
        querier, udp, clock, counters, _ = make()
        # nothing asked: multicast traffic is not even parsed
        reply(udp, b"garbage", port=MDNS_PORT, dst=MDNS_GROUP)
        assert counters["mdns.multicast.unasked.ignored"] == 1
        task = await ask(querier, "printer.local")
        reply(udp, response(0, [rr("printer.local", "A", a("192.0.2.20"))]), port=MDNS_PORT, dst=MDNS_GROUP)
        assert [r.address for r in (await task).message.answer[0]] == ["192.0.2.20"]
        assert counters["mdns.reply.multicast"] == 1
    run(body())


def srv(port, target_wire):
    return struct.pack("!HHH", 0, 0, port) + target_wire


def test_service_browse_collects_every_responder_for_a_while_with_their_records():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "_http._tcp.local", "PTR")
        q = sent_query(udp)
        # avahi style: answers and their data in one section, names compressed
        question = wire_name("_http._tcp.local") + struct.pack("!HH", 12, 1)
        head = struct.pack("!HHHHHH", q.id, 0x8400, 1, 4, 0, 0)
        instance = b"\x0bPrinter Web\xc0\x0c"        # "Printer Web" + pointer to the question's name
        off = len(head) + len(question)
        ptr = rr(None, "PTR", instance, name_wire=b"\xc0\x0c", flush=False)
        inst_at = off + len(ptr) - len(instance)
        txt = rr(None, "TXT", b"\x00", name_wire=struct.pack("!H", 0xC000 | inst_at))
        srv_rr = rr(None, "SRV", srv(80, b"\x07printer\x05local\x00"), name_wire=struct.pack("!H", 0xC000 | inst_at))
        host_at = off + len(ptr) + len(txt) + len(srv_rr) - len(b"\x07printer\x05local\x00")
        addr = rr(None, "A", a("192.0.2.20"), name_wire=struct.pack("!H", 0xC000 | host_at))
        reply(udp, head + question + ptr + txt + srv_rr + addr)
        assert not task.done()                     # a browse waits for other responders
        clock.now += 0.1
        reply(udp, response(q.id, [rr("_http._tcp.local", "PTR", b"\x03NAS" + wire_name("_http._tcp.local"), flush=False)],
                            ("_http._tcp.local", "PTR")), src=OTHER_RESPONDER)
        clock.now += 0.2
        querier.tick(clock.now)
        m = (await task).message
        [ptrs] = m.answer
        assert sorted(r.target.to_text() for r in ptrs) == ["NAS._http._tcp.local.", "Printer\\032Web._http._tcp.local."]
        extra = {(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype)) for rrset in m.additional}
        assert extra == {("Printer\\032Web._http._tcp.local.", "TXT"), ("Printer\\032Web._http._tcp.local.", "SRV"),
                         ("printer.local.", "A")}
    run(body())


def test_compressed_nsec_for_the_name_is_nodata_at_once():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "printer.local", "AAAA")
        q = sent_query(udp)
        question = wire_name("printer.local") + struct.pack("!HH", 28, 1)
        head = struct.pack("!HHHHHH", q.id, 0x8400, 1, 0, 0, 1)
        nsec = rr(None, "NSEC", b"\xc0\x0c" + b"\x00\x01\x40", name_wire=b"\xc0\x0c")   # next name compressed; A only
        reply(udp, head + question + nsec)
        m = (await task).message
        assert m.rcode() == dns.rcode.NOERROR and m.answer == [] and m.authority[0].rdtype == dns.rdatatype.SOA
        assert counters["mdns.nodata"] == 1
    run(body())


def test_clients_that_may_not_use_the_forwarder_are_refused_and_the_link_is_not_asked():
    async def body():
        querier, udp, clock, counters, _ = make()
        answer = await querier.process(src=STRANGER, dst=SERVER, query=query("printer.local"))
        assert answer.final and answer.message.rcode() == dns.rcode.REFUSED and udp.sent == []
        assert await querier.process(src=STRANGER, dst=SERVER, query=query("20.2.0.192.in-addr.arpa", "PTR")) is None
    run(body())


def test_reverse_names_of_our_subnet_are_asked_and_unclaimed_ones_fall_through():
    async def body():
        querier, udp, clock, counters, _ = make()
        assert await querier.process(src=CLIENT, dst=SERVER, query=query("1.0.0.10.in-addr.arpa", "PTR")) is None
        assert await querier.process(src=CLIENT, dst=SERVER, query=query("2.0.192.in-addr.arpa", "SOA")) is None
        assert udp.sent == []
        task = await ask(querier, "20.2.0.192.in-addr.arpa", "PTR")
        q = sent_query(udp)
        reply(udp, response(q.id, [rr("20.2.0.192.in-addr.arpa", "PTR", wire_name("printer.local"))],
                            ("20.2.0.192.in-addr.arpa", "PTR")))
        assert (await task).message.answer[0][0].target == dns.name.from_text("printer.local.")
        nobody = await ask(querier, "77.2.0.192.in-addr.arpa", "PTR")
        clock.now += 1.1
        querier.tick(clock.now)
        assert await nobody is None                # the RFC 6303 empty zone (or the forwarder) answers
    run(body())


def test_a_unicast_domain_mapped_onto_local():
    async def body():
        querier, udp, clock, counters, _ = make(domain="lan.example")
        task = await ask(querier, "_http._tcp.lan.example", "PTR")
        q = sent_query(udp)
        assert q.question[0].name == dns.name.from_text("_http._tcp.local.")
        reply(udp, response(q.id, [rr("_http._tcp.local", "PTR", b"\x03NAS" + wire_name("_http._tcp.local"))],
                            ("_http._tcp.local", "PTR")))
        clock.now += 0.3
        querier.tick(clock.now)
        m = (await task).message
        assert m.answer[0].name == dns.name.from_text("_http._tcp.lan.example.")
        assert m.answer[0][0].target == dns.name.from_text("NAS._http._tcp.lan.example.")
        nobody = await ask(querier, "nobody.lan.example")
        clock.now += 1.1
        querier.tick(clock.now)
        m = (await nobody).message
        assert m.rcode() == dns.rcode.NXDOMAIN and m.authority[0].name == dns.name.from_text("lan.example.")
        for apex in ("lan.example", "local"):
            assert await querier.process(src=CLIENT, dst=SERVER, query=query(apex, "SOA")) is None
        assert len(udp.sent) == 2
        with pytest.raises(ValueError):
            make(domain="x.local")
    run(body())


@pytest.mark.parametrize("data,counter", [
    (struct.pack("!HHHHHH", 1, 0x8400, 0, 1, 0, 0) + b"\xc0\x0c" + b"\x00" * 10, "mdns.reply.malformed.drop"),  # pointer to itself
    (struct.pack("!HHHHHH", 1, 0x8400, 0, 1, 0, 0) + b"\xc0\x20" + b"\x00" * 40, "mdns.reply.malformed.drop"),  # forward pointer
    (struct.pack("!HHHHHH", 1, 0x8400, 0, 1, 0, 0) + b"\x07printer", "mdns.reply.malformed.drop"),
    (struct.pack("!HHHHHH", 1, 0x8400, 0, 300, 0, 0), "mdns.reply.malformed.drop"),                 # too many records
    (struct.pack("!HHHHHH", 1, 0x8400, 0, 1, 0, 0) + b"\x00" * 9000, "mdns.reply.malformed.drop"),   # bigger than 9000
    (struct.pack("!HHHHHH", 1, 0x8400, 0, 1, 0, 0) + rr("x.local", "A", b"\x01\x02"), "mdns.record.unreadable.drop"),
    (struct.pack("!HHHHHH", 1, 0x8400, 0, 1, 0, 0) + rr("x.local", "A", b"\x01\x02")[:-1], "mdns.reply.malformed.drop"),
])
def test_malformed_responses_are_counted_and_dropped(data, counter):
    async def body():
        querier, udp, clock, counters, _ = make()
        await ask(querier, "x.local")
        reply(udp, data)
        reply(udp, data, port=MDNS_PORT, dst=MDNS_GROUP)
        assert counters[counter] == 2
    run(body())


def test_a_flood_of_answers_for_one_question_is_bounded():
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "_http._tcp.local", "PTR")
        q = sent_query(udp)
        for n in range(200):
            reply(udp, response(q.id, [rr("_http._tcp.local", "PTR", bytes([4]) + b"s%03d" % n + wire_name("_http._tcp.local"))],
                                ("_http._tcp.local", "PTR")))
        clock.now += 0.3
        querier.tick(clock.now)
        m = (await task).message
        assert len(m.answer[0]) == mdns.MAX_ANSWER_RECORDS
        assert counters["mdns.answer.records_full.drop"] == 200 - mdns.MAX_ANSWER_RECORDS
    run(body())


def test_questions_in_flight_and_queries_sent_are_bounded():
    async def body():
        querier, udp, clock, counters, _ = make(max_in_flight=5)
        tasks = [await ask(querier, f"n{i}.local") for i in range(7)]
        assert len(udp.sent) == 5 and counters["mdns.in_flight_full.drop"] == 2
        assert [(await t).message.rcode() for t in tasks[5:]] == [dns.rcode.SERVFAIL] * 2
        querier.max_in_flight = 1000
        more = [await ask(querier, f"m{i}.local") for i in range(40)]
        assert len(udp.sent) == mdns.QUERY_BURST and counters["mdns.query.rate_limited.drop"] == 40 - (mdns.QUERY_BURST - 5)
        clock.now += 1.1
        querier.tick(clock.now)
        await asyncio.gather(*tasks[:5], *more)
    run(body())


def test_cache_is_bounded():
    async def body():
        querier, udp, clock, counters, _ = make(max_cache=3)
        for i in range(5):
            task = await ask(querier, f"h{i}.local")
            q = sent_query(udp)
            reply(udp, response(q.id, [rr(f"h{i}.local", "A", a("192.0.2.40"))], (f"h{i}.local", "A")))
            await task
            clock.now += 1.0        # past the query rate limit's refill
        assert len(querier.cache) == 3 and counters["mdns.cache.evicted"] == 2
    run(body())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data):
    async def body():
        querier, udp, clock, counters, _ = make()
        task = await ask(querier, "x.local")
        q = sent_query(udp)
        reply(udp, struct.pack("!HH", q.id, 0x8400) + data)
        reply(udp, struct.pack("!HH", 0, 0x8400) + data, port=MDNS_PORT, dst=MDNS_GROUP)
        clock.now += 1.1
        querier.tick(clock.now)
        await task
    run(body())
