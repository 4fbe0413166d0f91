"""IPv4 parsing, building, fragmentation and reassembly against scapy."""
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, defragment, fragment
from scapy.layers.l2 import ARP, Ether

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


def _fragment(offset, payload, more, ident=99):
    """One hand-made fragment of datagram `ident` (offset in bytes)."""
    raw = bytes(IP(src=PEER_IP, dst=OUR_IP, id=ident, proto=17, frag=offset // 8, flags="MF" if more else 0) / payload)
    return ipv4.parse(raw), raw[20:]


def test_a_last_fragment_short_of_pieces_already_held_is_inconsistent():
    """[0,8)+MF, [32,40)+MF, then a last fragment [16,24): the byte count adds up
    to the total, but [32,40) lies past the end and [8,16) is a hole."""
    counters = Counters()
    r = ipv4.Reassembler(counters)
    results = [r.input(0.0, *_fragment(offset, bytes([offset]) * 8, more))
               for offset, more in ((0, True), (32, True), (16, False))]
    assert results == [None, None, None]
    assert counters["ipv4.frag.inconsistent.drop"] == 1 and counters["ipv4.frag.reassembled"] == 0
    assert not r.buffers and r.held_bytes == 0


def test_a_fragment_past_a_known_end_drops_the_datagram():
    counters = Counters()
    r = ipv4.Reassembler(counters)
    assert r.input(0.0, *_fragment(16, b"L" * 8, False)) is None
    assert r.input(0.0, *_fragment(24, b"X" * 8, True)) is None
    assert counters["ipv4.frag.inconsistent.drop"] == 1 and not r.buffers


def test_fragments_per_datagram_are_capped():
    """mirage-tcpip keeps at most 16 fragments of a datagram; a 17th drops it,
    so thousands of 8-byte fragments cannot make each arrival costlier."""
    counters = Counters()
    r = ipv4.Reassembler(counters)
    for i in range(ipv4.MAX_FRAGMENTS):
        assert r.input(0.0, *_fragment(8 * i, b"f" * 8, True)) is None
    assert len(r.buffers) == 1
    assert r.input(0.0, *_fragment(8 * ipv4.MAX_FRAGMENTS, b"f" * 8, True)) is None
    assert counters["ipv4.frag.too_many.drop"] == 1 and not r.buffers and r.held_bytes == 0


def test_sixteen_fragments_in_any_order_still_reassemble():
    payload = bytes(random.Random(4).randrange(256) for _ in range(16 * 64 - 8))
    datagram = IP(src=PEER_IP, dst=OUR_IP, id=5) / UDP(sport=1, dport=2) / payload
    pieces = [bytes(f) for f in fragment(datagram, fragsize=64)]
    assert len(pieces) == ipv4.MAX_FRAGMENTS
    random.Random(9).shuffle(pieces)
    counters = Counters()
    r = ipv4.Reassembler(counters)
    out = [r.input(0.0, ipv4.parse(p), p[20:]) for p in pieces]
    assert out[:-1] == [None] * 15 and out[-1] == bytes(datagram[UDP])


@pytest.mark.parametrize("udp_length", range(0, 9))
def test_the_udp_hot_path_and_the_general_path_judge_a_short_udp_length_alike(udp_length):
    """A UDP length below the 8-byte header is malformed: the hot path once
    delivered it as an empty payload while the general path dropped it."""
    stack, _link, _ = make_stack()
    delivered = []
    stack.udp.bind(53, lambda payload, *a: delivered.append(payload))
    for options in (b"", b"\x01\x01\x01\x00"):
        header_len = 20 + len(options)
        stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC)
                            / IP(src=PEER_IP, dst=OUR_IP, options=options, len=header_len + udp_length)
                            / UDP(sport=4000, dport=53, len=udp_length, chksum=0) / (b"\0" * 30)))
    if udp_length < 8:
        assert delivered == []
        assert stack.counters["udp.truncated.drop"] + stack.counters["udp.bad_length.drop"] == 2
    else:
        assert delivered == [b"", b""]


def _with_ip_checksum(frame: bytearray) -> bytes:
    """The frame with its IPv4 header checksum made right again (header length from the IHL)."""
    from netstack import checksum
    ihl = (frame[14] & 0x0F) * 4
    frame[24:26] = b"\0\0"
    if 20 <= ihl and 14 + ihl <= len(frame):
        frame[24:26] = checksum.checksum(bytes(frame[14:14 + ihl])).to_bytes(2, "big")
    return bytes(frame)


PLAIN_UDP = bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / UDP(sport=4000, dport=53) / (b"q" * 20))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(14, 45), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 30), st.booleans(), st.none() | st.integers(0, 60))
def test_the_udp_hot_path_never_decides_differently_from_the_general_path(flips, extra, fix_checksum, udp_length):
    """Mutated plain UDP frames (IPv4 header re-checksummed so they get past it,
    and sometimes a UDP length with the IPv4 total length to match): whatever
    the hot path delivers, the general path alone delivers too, and the reverse."""
    frame = bytearray(PLAIN_UDP + b"\0" * extra)
    for offset, value in flips:
        frame[offset] = value
    if udp_length is not None:
        frame[38:40] = udp_length.to_bytes(2, "big")
        frame[16:18] = (udp_length + 20).to_bytes(2, "big")
        frame[40:42] = b"\0\0"    # no UDP checksum: the length alone decides
    raw = _with_ip_checksum(frame) if fix_checksum else bytes(frame)
    outcomes = []
    for general_only in (False, True):
        stack, _link, _ = make_stack()
        delivered = []
        stack.udp.bind(53, lambda payload, *a, _d=delivered: _d.append((payload, *a)))
        if general_only:
            try:
                stack._input_frame(raw)
            except ipv4.DropError:
                pass
        else:
            stack.receive(raw)
        outcomes.append(delivered)
    assert outcomes[0] == outcomes[1]


GATEWAY_MAC = bytes.fromhex("02ee00000001")


def _udp_from(mac, source, options=b""):
    return bytes(Ether(dst=OUR_MAC, src=mac) / IP(src=source, dst=OUR_IP, options=options)
                 / UDP(sport=4000, dport=53) / b"q")


def _arp_answer(ip, mac):
    return bytes(Ether(dst=OUR_MAC, src=mac) / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=OUR_MAC, pdst=OUR_IP))


def _spoof_check_stack():
    from tests.stackutil import GATEWAY
    stack, link, clock = make_stack()
    prime_arp(stack, GATEWAY, GATEWAY_MAC)
    delivered = []
    stack.udp.bind(53, lambda payload, src, *a: delivered.append(str(ipaddress.IPv4Address(src))))
    return stack, link, clock, delivered


@pytest.mark.parametrize("options", [b"", b"\x01\x01\x01\x00"])   # the hot path, then the general path
def test_an_own_subnet_source_from_the_gateways_mac_is_a_spoof(options):
    """Only the gateway itself may be on our subnet behind the gateway's MAC:
    anything else there was forged off-link, to borrow `--allow`'s own-subnet
    default. ARP is asked who holds the address; nobody answers for a forgery,
    and its datagrams are dropped and counted, never answered."""
    from tests.stackutil import GATEWAY
    stack, link, clock, delivered = _spoof_check_stack()
    for mac, source in ((GATEWAY_MAC, "192.0.2.77"), (GATEWAY_MAC, GATEWAY), (GATEWAY_MAC, "198.51.100.7"),
                        (PEER_MAC, "192.0.2.78")):
        stack.receive(_udp_from(mac, source, options))
    stack.receive(bytes(Ether(dst=OUR_MAC, src=GATEWAY_MAC) / IP(src="192.0.2.77", dst=OUR_IP) / ICMP()))
    assert delivered == [GATEWAY, "198.51.100.7", "192.0.2.78"]
    assert stack.counters["ipv4.source_check.held"] == 2
    for _ in range(3):
        clock.advance(1.01)
        stack.tick(clock())
    assert stack.counters["ipv4.spoofed_via_gateway.drop"] == 2 and not stack._unverified
    sent = [Ether(f) for f in link.take()]
    assert sent and all(ARP in f and f[ARP].op == 1 and f[ARP].pdst == "192.0.2.77" for f in sent)


def test_a_source_arp_places_at_another_mac_is_dropped_at_once():
    stack, link, _clock, delivered = _spoof_check_stack()
    prime_arp(stack, "192.0.2.78", PEER_MAC)
    stack.receive(_udp_from(GATEWAY_MAC, "192.0.2.78"))
    assert delivered == [] and stack.counters["ipv4.spoofed_via_gateway.drop"] == 1 and link.take() == []


@pytest.mark.parametrize("options", [b"", b"\x01\x01\x01\x00"])
def test_a_second_address_the_gateway_holds_on_our_subnet_is_no_spoof(options):
    """A router may hold other addresses on the LAN (the integration tests'
    kernel does: 192.0.2.1 and .3). Once it has said so in ARP, on the link
    where no off-link sender can speak, its datagrams from there are its own."""
    stack, _link, _clock, delivered = _spoof_check_stack()
    prime_arp(stack, "192.0.2.3", GATEWAY_MAC)
    stack.receive(_udp_from(GATEWAY_MAC, "192.0.2.3", options))
    assert delivered == ["192.0.2.3"] and stack.counters["ipv4.source_check.held"] == 0


def test_an_unknown_own_subnet_source_behind_the_gateway_waits_for_arp():
    """The router already knows our MAC, so it need not ARP from a second
    address before using it. Its datagrams from there wait while ARP asks who
    holds the address; the router answers with its MAC and they are delivered,
    none lost."""
    stack, link, _clock, delivered = _spoof_check_stack()
    stack.receive(_udp_from(GATEWAY_MAC, "192.0.2.3"))
    [probe] = [Ether(f) for f in link.take()]
    assert probe.dst == "ff:ff:ff:ff:ff:ff" and probe[ARP].op == 1 and probe[ARP].pdst == "192.0.2.3"
    stack.receive(_udp_from(GATEWAY_MAC, "192.0.2.3"))     # still unanswered: held too, no second probe
    assert link.take() == [] and delivered == [] and stack.counters["ipv4.source_check.held"] == 2
    stack.receive(_arp_answer("192.0.2.3", GATEWAY_MAC))
    assert delivered == ["192.0.2.3", "192.0.2.3"]
    stack.receive(_udp_from(GATEWAY_MAC, "192.0.2.3"))
    assert delivered == ["192.0.2.3"] * 3 and stack.counters["ipv4.spoofed_via_gateway.drop"] == 0


def test_held_datagrams_are_dropped_when_another_mac_answers_and_the_wait_is_bounded():
    from netstack.stack import UNVERIFIED_QUEUE, UNVERIFIED_SOURCES
    stack, link, _clock, delivered = _spoof_check_stack()
    for _ in range(UNVERIFIED_QUEUE + 2):
        stack.receive(_udp_from(GATEWAY_MAC, "192.0.2.77"))
    for i in range(UNVERIFIED_SOURCES + 3):
        stack.receive(_udp_from(GATEWAY_MAC, f"192.0.2.{100 + i}"))
    assert len(stack._unverified) == UNVERIFIED_SOURCES and len(stack._unverified[0xC000024D]) == UNVERIFIED_QUEUE
    assert stack.counters["ipv4.spoofed_via_gateway.drop"] == 2 + 4
    stack.receive(_arp_answer("192.0.2.77", PEER_MAC))       # the real .77 answers, from its own MAC
    assert delivered == [] and stack.counters["ipv4.spoofed_via_gateway.drop"] == 6 + UNVERIFIED_QUEUE
