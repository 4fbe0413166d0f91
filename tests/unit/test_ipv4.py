"""IPv4 parsing, building, fragmentation and reassembly against scapy."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, defragment, fragment
from scapy.layers.l2 import Ether

from netstack import ipv4
from netstack.counters import Counters
from tests.stackutil import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack, prime_arp

SRC = int.from_bytes(bytes([192, 0, 2, 1]), "big")
DST = int.from_bytes(bytes([192, 0, 2, 2]), "big")


def test_parses_scapy_headers_with_options():
    raw = bytes(IP(src=PEER_IP, dst=OUR_IP, ttl=7, id=4242, options=b"\x01\x01\x01\x00") / UDP() / b"data")
    hdr = ipv4.parse(raw)
    assert (hdr.header_len, hdr.ttl, hdr.ident, hdr.protocol) == (24, 7, 4242, 17)
    assert (hdr.src, hdr.dst, hdr.total_len) == (SRC, DST, len(raw))


def test_our_header_parses_in_scapy_with_a_valid_checksum():
    raw = ipv4.header(DST, SRC, 17, 12, ident=77, ttl=64) + b"\xa5" * 12
    packet = IP(raw)
    assert packet.src == OUR_IP and packet.dst == PEER_IP and packet.id == 77 and packet.len == 32
    rebuilt = IP(bytes(packet))
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == packet.chksum


def corrupt(raw, offset, value):
    return raw[:offset] + bytes([value]) + raw[offset + 1:]


GOOD = bytes(IP(src=PEER_IP, dst=OUR_IP) / UDP() / b"abc")


@pytest.mark.parametrize("raw, reason", [
    (GOOD[:19], "ipv4.truncated.drop"),
    (corrupt(GOOD, 0, 0x65), "ipv4.bad_version.drop"),
    (corrupt(GOOD, 0, 0x44), "ipv4.bad_ihl.drop"),
    (bytes(IP(src=PEER_IP, dst=OUR_IP, len=200) / b"abc"), "ipv4.bad_length.drop"),
    (corrupt(GOOD, 10, GOOD[10] ^ 0xFF), "ipv4.bad_checksum.drop"),
    (bytes(IP(src=PEER_IP, dst=OUR_IP, ttl=0) / UDP()), "ipv4.ttl_zero.drop"),
    (bytes(IP(src=PEER_IP, dst=OUR_IP, flags=4) / UDP()), "ipv4.reserved_flag.drop"),
])
def test_bad_headers_are_counted_by_reason(raw, reason):
    stack, link, _ = make_stack()
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC, type=0x0800)) + raw)
    assert stack.counters[reason] == 1
    assert link.take() == []


def test_fragments_we_send_reassemble_in_scapy():
    payload = bytes(random.Random(1).randrange(256) for _ in range(5000))
    pieces = ipv4.fragment(DST, SRC, 17, payload, ident=9, mtu=1500)
    assert len(pieces) == 4 and all(len(p) <= 1500 for p in pieces)
    whole = defragment([IP(p) for p in pieces])
    assert len(whole) == 1 and bytes(whole[0].payload) == payload


def test_dont_fragment_is_honoured():
    with pytest.raises(ipv4.Ipv4Error) as e:
        ipv4.fragment(DST, SRC, 17, b"x" * 2000, ident=1, mtu=1500, dont_fragment=True)
    assert e.value.reason == "ipv4.needs_fragmentation_df.drop"
    [packet] = ipv4.fragment(DST, SRC, 17, b"x" * 100, ident=1, mtu=1500, dont_fragment=True)
    assert IP(packet).flags == "DF"


def _scapy_fragments(size, fragsize=800, seed=0):
    rng = random.Random(seed)
    datagram = IP(src=PEER_IP, dst=OUR_IP, id=rng.randrange(65536)) / ICMP(id=1, seq=1) / bytes(rng.randrange(256) for _ in range(size))
    return datagram, [bytes(f) for f in fragment(datagram, fragsize=fragsize)]


@pytest.mark.parametrize("order", ["in", "reversed", "shuffled", "duplicated"])
def test_reassembles_scapy_fragments_in_any_order(order):
    datagram, pieces = _scapy_fragments(4000)
    if order == "reversed":
        pieces.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(pieces)
    elif order == "duplicated":
        pieces = pieces[:3] + pieces[1:3] + pieces[3:]
    counters = Counters()
    r = ipv4.Reassembler(counters)
    out = [r.input(0.0, ipv4.parse(p), p[20:]) for p in pieces]
    done = [o for o in out if o is not None]
    assert done == [bytes(datagram[ICMP])]
    assert counters["ipv4.frag.reassembled"] == 1 and r.held_bytes == 0


def test_overlapping_fragments_drop_the_datagram():
    datagram, pieces = _scapy_fragments(3000)
    evil = IP(pieces[1])
    evil.frag -= 1            # overlaps the first fragment by 8 bytes
    del evil.chksum
    counters = Counters()
    r = ipv4.Reassembler(counters)
    for p in [pieces[0], bytes(evil)] + pieces[2:] + pieces[1:2]:
        assert r.input(0.0, ipv4.parse(p), p[20:]) is None or counters["ipv4.frag.overlap.drop"] == 0
    assert counters["ipv4.frag.overlap.drop"] == 1
    assert counters["ipv4.frag.reassembled"] == 0


def test_incomplete_datagrams_time_out_and_tables_are_bounded():
    counters = Counters()
    r = ipv4.Reassembler(counters, max_datagrams=4, timeout=30)
    for i in range(10):
        _, pieces = _scapy_fragments(2000, seed=i)
        p = pieces[0]
        r.input(0.0, ipv4.parse(p), p[20:])
    assert len(r.buffers) == 4 and counters["ipv4.frag.table_full.drop"] == 6
    r.tick(29.0)
    assert len(r.buffers) == 4
    r.tick(31.0)
    assert not r.buffers and counters["ipv4.frag.timeout.drop"] == 4 and r.held_bytes == 0


def test_inconsistent_last_fragment_is_dropped():
    datagram, pieces = _scapy_fragments(3000)
    counters = Counters()
    r = ipv4.Reassembler(counters)
    last = IP(pieces[-1])
    shorter = IP(src=last.src, dst=last.dst, id=last.id, proto=last.proto, frag=last.frag, flags=0) / bytes(last.payload)[:8]
    for p in (pieces[-1], bytes(shorter)):
        r.input(0.0, ipv4.parse(p), p[20:])
    assert counters["ipv4.frag.inconsistent.drop"] == 1 and not r.buffers


def test_datagrams_for_other_addresses_are_dropped():
    stack, link, _ = make_stack()
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst="192.0.2.99") / ICMP()))
    assert stack.counters["ipv4.not_ours.drop"] == 1 and link.take() == []


def test_small_mtu_fragments_our_replies():
    stack, link, _ = make_stack(mtu=576)
    prime_arp(stack)
    request = Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / ICMP(id=5, seq=1) / (b"p" * 1200)
    stack.receive(bytes(request))
    frames = [Ether(f) for f in link.take()]
    assert len(frames) == 3 and all(len(f[IP]) <= 576 for f in frames)
    [reply] = defragment([f[IP] for f in frames])
    assert reply[ICMP].type == 0 and bytes(reply[ICMP].payload) == b"p" * 1200


@pytest.mark.parametrize("source", ["192.0.2.255", "255.255.255.255", "127.0.0.1", "224.0.0.1",
                                    "0.0.0.0", "240.0.0.1", OUR_IP])
def test_impossible_sources_get_no_reply(source):
    """A reply to a forged broadcast or multicast source would go to everyone."""
    stack, link, _ = make_stack()
    stack.udp.bind(53, lambda payload, *a: stack.udp.sendto(payload, 53, a[0], a[1]))
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=source, dst=OUR_IP) / ICMP()))
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=source, dst=OUR_IP) / UDP(dport=53) / b"q"))
    assert link.take() == []
    assert stack.counters["ipv4.bad_source.drop"] == 2


EDGE_SOURCES = ["192.0.2.255", "255.255.255.255", "127.0.0.1", "224.0.0.1", "0.0.0.0", "240.0.0.1", OUR_IP,
                PEER_IP, "192.0.2.0", "1.0.0.0", "126.255.255.255", "128.0.0.0", "223.255.255.255"]


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.sampled_from(EDGE_SOURCES), st.ip_addresses(v=4).map(str)))
def test_the_udp_hot_path_and_the_general_path_judge_a_source_alike(source):
    """The same datagram, once plain (the hot path's) and once with IP options
    (only the general path takes those), is delivered by both or by neither."""
    stack, _link, _ = make_stack()
    delivered = []
    stack.udp.bind(53, lambda payload, *a: delivered.append(payload))
    for options, payload in ((b"", b"plain"), (b"\x01\x01\x01\x00", b"options")):
        stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=source, dst=OUR_IP, options=options)
                            / UDP(sport=4000, dport=53) / payload))
    assert delivered in ([], [b"plain", b"options"])
    assert stack.counters["ipv4.bad_source.drop"] == (2 if not delivered else 0)
