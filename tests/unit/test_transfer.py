"""Zone transfers in-process: what the TransferServer sends, read back by
dnspython's own inbound transfer code (dns.xfr, not ours); the refusals and
their counters; NOTIFY out (timers on a virtual clock) and in."""
from __future__ import annotations

import base64
import ipaddress

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.xfr
import dns.zone
import pytest

from netstack.counters import Counters
from unikernel.config import ConfigError
from unikernel.sources.zone import Zones
from unikernel.transfer.notify import ATTEMPTS, RETRY_AFTER, Notifier
from unikernel.transfer.outbound import TransferServer
from unikernel.transfer.secondary import SecondaryZones, parse_secondary
from unikernel.transfer.tsig import parse_tsig

SECRET = base64.b64encode(bytes(range(32))).decode()
KEY = parse_tsig(f"xfr-key:hmac-sha256:{SECRET}")
CLIENT = ipaddress.IPv4Address("192.0.2.1")


def zone(serial: int, extra: str = "", drop: str = "") -> dns.zone.Zone:
    text = f"""$ORIGIN t.example.
$TTL 300
@ SOA ns h {serial} 3600 600 86400 60
@ NS ns
ns A 192.0.2.1
www A 192.0.2.80
gone A 192.0.2.9
big1 TXT {' '.join('"' + 'x' * 200 + '"' for _ in range(40))}
big2 TXT {' '.join('"' + 'y' * 200 + '"' for _ in range(40))}
huge TXT {' '.join('"' + 'z' * 200 + '"' for _ in range(100))}
{extra}"""
    text = text.replace(drop, "") if drop else text
    return dns.zone.from_text(text, relativize=False)


def server(*zones_, key=None) -> TransferServer:
    return TransferServer(Zones([zones_[0]]), allow=["192.0.2.0/24"], key=key, counters=Counters())


def ask(transfers, rdtype="AXFR", serial=None, key=None, source=CLIENT, name="t.example."):
    query = dns.message.make_query(name, rdtype)
    if serial is not None:
        query.authority.append(dns.rrset.from_text(name, 0, "IN", "SOA", f"ns.{name} h.{name} {serial} 0 0 0 0"))
    if key is not None:
        query.use_tsig(key)
    return query, transfers.handle(source, query.to_wire())


def receive(query, messages, into: dns.zone.Zone, serial=None) -> dns.zone.Zone:
    """dnspython's inbound transfer, applied to ``into``."""
    is_ixfr = query.question[0].rdtype == dns.rdatatype.IXFR
    ctx = None
    with dns.xfr.Inbound(into, query.question[0].rdtype, serial) as inbound:
        for wire in messages:
            reply = dns.message.from_wire(wire, keyring=query.keyring, request_mac=query.mac, xfr=True,
                                          tsig_ctx=ctx, multi=True, one_rr_per_rrset=is_ixfr)
            done = inbound.process_message(reply)
            ctx = reply.tsig_ctx
    assert done
    return into


def same(a: dns.zone.Zone, b: dns.zone.Zone) -> bool:
    """The same records (names compared case-folded, as DNS does)."""
    def records(z):
        return {line.lower() for name, node in z.nodes.items() for r in node.rdatasets
                for line in r.to_text(name, relativize=False).splitlines()}
    return records(a) == records(b)


def test_axfr_is_the_whole_zone_in_several_messages():
    transfers = server(zone(1))
    query, messages = ask(transfers)
    assert len(messages) >= 2 and sum(len(m) > 16384 + 256 for m in messages) == 1    # huge needs a big one
    assert same(receive(query, messages, dns.zone.Zone("t.example.", relativize=False)), zone(1))
    assert transfers.counters["transfer.axfr"] == 1


def test_ixfr_carries_the_differences_of_each_reload():
    transfers = server(zone(1))
    transfers.update(Zones([zone(2, extra="new A 192.0.2.2\n")]))
    transfers.update(Zones([zone(3, extra="new A 192.0.2.2\n", drop="gone A 192.0.2.9\n")]))
    query, messages = ask(transfers, "IXFR", serial=1)
    reply = dns.message.from_wire(messages[0], xfr=True, one_rr_per_rrset=True)
    assert len(reply.answer) == 8      # SOA 3, (SOA 1, SOA 2, new), (SOA 2, gone, SOA 3), SOA 3
    assert same(receive(query, messages, zone(1), serial=1), zone(3, extra="new A 192.0.2.2\n",
                                                                   drop="gone A 192.0.2.9\n"))
    assert transfers.counters["transfer.ixfr"] == 1


def test_ixfr_from_an_unknown_serial_is_the_whole_zone_and_from_ours_the_soa():
    transfers = server(zone(1))
    transfers.update(Zones([zone(2)]))
    query, messages = ask(transfers, "IXFR", serial=0)       # before anything the journal holds
    assert same(receive(query, messages, dns.zone.Zone("t.example.", relativize=False), serial=0), zone(2))
    assert transfers.counters["transfer.ixfr.as_axfr"] == 1
    _, messages = ask(transfers, "IXFR", serial=2)
    reply = dns.message.from_wire(messages[0], xfr=True)
    assert [r.rdtype for r in reply.answer] == [dns.rdatatype.SOA] and len(reply.answer[0]) == 1
    assert transfers.counters["transfer.ixfr.up_to_date"] == 1


def test_a_reload_with_the_same_serial_is_not_a_new_version():
    transfers = server(zone(1))
    assert transfers.update(Zones([zone(1)])) == []
    assert [z.origin.to_text() for z in transfers.update(Zones([zone(2)]))] == ["t.example."]


def test_signed_transfer_is_signed_in_every_message():
    transfers = server(zone(1), key=KEY)
    query, messages = ask(transfers, key=KEY)
    assert len(messages) >= 2
    for wire in messages:
        assert dns.message.from_wire(wire, question_only=True).id == query.id
    # dnspython checks each message's MAC against the running context (raises if one is wrong)
    assert same(receive(query, messages, dns.zone.Zone("t.example.", relativize=False)), zone(1))


@pytest.mark.parametrize("how, rcode, counter", [
    ("outside allow", dns.rcode.REFUSED, "transfer.refused.not_allowed"),
    ("unsigned", dns.rcode.REFUSED, "transfer.refused.unsigned"),
    ("wrong secret", dns.rcode.NOTAUTH, "transfer.tsig.bad"),
    ("unknown key", dns.rcode.NOTAUTH, "transfer.tsig.bad"),
    ("other zone", dns.rcode.NOTAUTH, "transfer.notauth"),
])
def test_refusals(how, rcode, counter):
    transfers = server(zone(1), key=KEY)
    kwargs = {"key": KEY}
    if how == "outside allow":
        kwargs["source"] = ipaddress.IPv4Address("198.51.100.1")
    elif how == "unsigned":
        kwargs = {}
    elif how == "wrong secret":
        kwargs["key"] = dns.tsig.Key("xfr-key.", bytes(32), dns.tsig.HMAC_SHA256)
    elif how == "unknown key":
        kwargs["key"] = dns.tsig.Key("other.", bytes(32), dns.tsig.HMAC_SHA256)
    elif how == "other zone":
        kwargs["name"] = "other.example."
    _, messages = ask(transfers, **kwargs)
    assert len(messages) == 1 and messages[0][3] & 0x0F == rcode
    assert transfers.counters[counter] == 1
    assert transfers.counters["transfer.axfr"] == 0


@pytest.mark.parametrize("text", ["k:hmac-md5:" + SECRET, "k:hmac-sha256:not base64!", "k:hmac-sha256", "k:hmac-sha256:YQ=="])
def test_bad_keys_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_tsig(text)


def test_hmac_sha512_keys():
    assert parse_tsig(f"k:HMAC-SHA512:{SECRET}").algorithm == dns.tsig.HMAC_SHA512


def test_notify_is_opcode_notify_and_retried_until_answered():
    counters = Counters()
    notifier = Notifier([(0xC0000201, 53)], key=None, counters=counters)
    soa = zone(2).find_rrset("t.example.", "SOA")
    notifier.zone_changed(dns.name.from_text("t.example."), soa, now=100.0)
    [(wire, target)] = notifier.due(100.0)
    message = dns.message.from_wire(wire)
    assert message.opcode() == dns.opcode.NOTIFY and message.flags & dns.flags.AA   # the bug: opcode lost
    assert message.answer[0][0].serial == 2 and target == (0xC0000201, 53)
    assert notifier.due(100.0 + RETRY_AFTER / 2) == []
    assert len(notifier.due(100.0 + RETRY_AFTER)) == 1          # not answered: again
    reply = dns.message.make_response(message)
    notifier.on_reply(reply.to_wire(), (0xC0000202, 53))         # from someone else: ignored
    assert counters["notify.reply.unexpected.drop"] == 1
    notifier.on_reply(reply.to_wire(), target)
    assert notifier.pending == {} and counters["notify.answered"] == 1


def test_notify_gives_up_after_its_attempts():
    counters = Counters()
    notifier = Notifier([(0xC0000201, 53)], key=None, counters=counters)
    notifier.zone_changed(dns.name.from_text("t.example."), zone(2).find_rrset("t.example.", "SOA"), now=0.0)
    sent = sum(len(notifier.due(i * RETRY_AFTER)) for i in range(ATTEMPTS + 2))
    assert sent == ATTEMPTS and notifier.pending == {} and counters["notify.unanswered"] == 1


def test_notify_in_only_from_the_primary_and_signed():
    counters = Counters()
    now = [10.0]
    secondaries = SecondaryZones(["t.example@192.0.2.53"], key=KEY, counters=counters, clock=lambda: now[0])
    zone_state = secondaries.zones[dns.name.from_text("t.example.")]
    zone_state.next_at = 1000.0
    notify = dns.message.make_query("t.example.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    unsigned = notify.to_wire()
    notify.use_tsig(KEY)
    signed = notify.to_wire()
    primary, other = int(ipaddress.IPv4Address("192.0.2.53")), int(ipaddress.IPv4Address("192.0.2.99"))
    keyring = {KEY.name: KEY}
    assert dns.message.from_wire(secondaries.handle_notify(other, signed), keyring=keyring,
                                 request_mac=notify.mac).rcode() == dns.rcode.REFUSED
    assert secondaries.handle_notify(primary, unsigned)[3] & 0x0F == dns.rcode.REFUSED
    assert counters["notify.in.refused"] == 2 and zone_state.next_at == 1000.0
    reply = dns.message.from_wire(secondaries.handle_notify(primary, signed), keyring=keyring, request_mac=notify.mac)
    assert reply.rcode() == dns.rcode.NOERROR and reply.opcode() == dns.opcode.NOTIFY
    assert zone_state.next_at == now[0] and counters["notify.in.accepted"] == 1


def test_secondary_timers_follow_the_soa_and_expiry_is_servfail():
    import asyncio

    counters = Counters()
    now = [0.0]
    secondaries = SecondaryZones(["t.example@192.0.2.53"], key=None, counters=counters, clock=lambda: now[0])
    state = secondaries.zones[dns.name.from_text("t.example.")]
    query = dns.message.make_query("www.t.example.", "A")
    ask_it = lambda: asyncio.run(secondaries.process(src=(CLIENT, 1), dst=(CLIENT, 53), query=query))
    assert ask_it().message.rcode() == dns.rcode.SERVFAIL           # nothing transferred yet
    state.data = zone(1)
    state.transferred(now[0], changed=True)
    secondaries.rebuild()
    assert (state.next_at, state.expire_at) == (3600.0, 86400.0)     # refresh, expire from the SOA
    assert ask_it().message.answer[0][0].address == "192.0.2.80"
    now[0] = 5000.0
    state.failed(now[0])
    assert state.next_at == 5600.0                                   # retry
    now[0] = 86400.0
    assert ask_it().message.rcode() == dns.rcode.SERVFAIL and counters["secondary.expired.servfail"] == 2


@pytest.mark.parametrize("text", ["t.example", "t.example@", "t.example@300.1.1.1", "t.example@192.0.2.1:0", "@192.0.2.1"])
def test_bad_secondary_declarations(text):
    with pytest.raises(ConfigError):
        parse_secondary(text)


def test_signed_soa_question_gets_a_signed_answer_and_a_bad_signature_notauth():
    """A secondary's refresh asks the SOA with TSIG (Knot does): it was FORMERR."""
    import asyncio

    from tests.unit.fake_stack import FakeStack
    from unikernel.process import processor_of_process
    from unikernel.serve.server import DnsServer
    from unikernel.sources.zone import zone_process

    server = DnsServer(FakeStack(), 53, processor_of_process(zone_process([zone(5)])))
    server.keyring = {KEY.name: KEY}
    query = dns.message.make_query("t.example.", "SOA")
    query.use_tsig(KEY)
    wire = query.to_wire()
    reply_wire, kept = asyncio.run(server.respond(wire, (0xC0000201, 1000), (0xC0000202, 53), udp=True))
    reply = dns.message.from_wire(reply_wire, keyring={KEY.name: KEY}, request_mac=query.mac)
    assert reply.had_tsig and reply.answer[0][0].serial == 5 and not kept
    forged = dns.message.make_query("t.example.", "SOA")
    forged.use_tsig(dns.tsig.Key("xfr-key.", bytes(32), dns.tsig.HMAC_SHA256))
    reply_wire, _ = asyncio.run(server.respond(forged.to_wire(), (0xC0000201, 1000), (0xC0000202, 53), udp=True))
    assert reply_wire[3] & 0x0F == dns.rcode.NOTAUTH and server.counters["dns.tsig.bad"] == 1


def test_no_bytes_crash_the_transfer_and_notify_handlers():
    """Whatever arrives (TCP to a transfer, a NOTIFY by UDP), an answer or a
    drop, never an exception: arbitrary bytes and mutated valid requests."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    transfers = server(zone(1), key=KEY)
    secondaries = SecondaryZones(["t.example@192.0.2.1"], key=KEY, counters=Counters(), clock=lambda: 0.0)
    query = dns.message.make_query("t.example.", "IXFR")
    query.authority.append(dns.rrset.from_text("t.example.", 0, "IN", "SOA", "ns.t.example. h.t.example. 0 0 0 0 0"))
    query.use_tsig(KEY)
    valid = query.to_wire()

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=300),
                     st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), max_size=6)
                     .map(lambda edits: bytes(_edit(valid, edits)))))
    def check(payload):
        if transfers.wants(payload):
            for message in transfers.handle(CLIENT, payload):
                assert len(message) >= 12
        secondaries.handle_notify(0xC0000201, payload)

    check()


def test_a_response_given_to_the_notify_handler_is_dropped_and_counted():
    """Found by the fuzz test above: a message with QR set that dnspython
    parses made ``make_response`` raise out of the handler."""
    counters = Counters()
    secondaries = SecondaryZones(["t.example@192.0.2.1"], key=KEY, counters=counters, clock=lambda: 0.0)
    response = dns.message.make_response(dns.message.make_query("t.example.", "SOA"))
    response.set_opcode(dns.opcode.NOTIFY)
    for payload in (response.to_wire(), bytes.fromhex("0000800000010000000100010000") + bytes(120), b"\x00\x01"):
        assert secondaries.handle_notify(0xC0000201, payload) is None
    assert counters["notify.in.response.drop"] == 3


def _edit(data: bytes, edits) -> bytearray:
    out = bytearray(data)
    for index, value in edits:
        out[index] = value
    return out


def test_a_transferred_record_costs_what_the_secondary_bound_assumes():
    """The secondary's record bound is its memory budget over RECORD_BYTES:
    a zone received by AXFR (as SecondaryService receives it, into a
    dnspython zone kept for the next IXFR) and made servable (compact) must
    cost no more than that a record, or the bound would not hold the budget."""
    import tracemalloc

    from unikernel.sources.zone import AuthoritativeZone
    from unikernel.transfer.secondary import RECORD_BYTES

    hosts = "".join(f"host{i} A 10.0.{i >> 8 & 255}.{i & 255}\n" + (f'host{i} TXT "host {i}"\n' if i % 3 == 0 else "")
                    + (f"host{i} MX 10 mail\n" if i % 10 == 0 else "") for i in range(6000))
    source = zone(7, extra=hosts)
    records = sum(len(rdataset) for node in source.nodes.values() for rdataset in node.rdatasets)
    query, messages = ask(server(source))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        into = receive(query, messages, dns.zone.Zone(source.origin, relativize=False))
        served = AuthoritativeZone(into)
        cost = (tracemalloc.get_traced_memory()[0] - before) / records
    finally:
        tracemalloc.stop()
    assert served.soa[0].serial == 7 and same(into, source)
    assert cost <= RECORD_BYTES, f"{cost:.0f} bytes a record"
    print(f"{cost:.0f} bytes a transferred record ({records} records)")
