"""ICMP echo and errors, and UDP, against scapy."""
import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether

from netstack import icmp, udp
from tests.stackutil import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack, prime_arp


def frame(*layers):
    packet = Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP)
    for layer in layers:
        packet = packet / layer
    return bytes(packet)


def test_echo_reply_mirrors_the_request():
    stack, link, _ = make_stack()
    prime_arp(stack)
    stack.receive(frame(ICMP(type=8, id=0x1234, seq=7), b"ping payload"))
    [reply] = [Ether(f) for f in link.take()]
    assert reply[IP].src == OUR_IP and reply[IP].dst == PEER_IP
    assert reply[ICMP].type == 0 and reply[ICMP].id == 0x1234 and reply[ICMP].seq == 7
    assert bytes(reply[ICMP].payload) == b"ping payload"
    good = reply[ICMP].copy()
    del good.chksum
    assert ICMP(bytes(good)).chksum == reply[ICMP].chksum


def test_bad_icmp_is_counted():
    stack, link, _ = make_stack()
    prime_arp(stack)
    stack.receive(frame(ICMP(type=8, chksum=1)))
    stack.receive(frame(ICMP(type=13)))    # timestamp: ignored
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP, proto=1) / b"\x08\x00"))  # too short
    assert stack.counters["icmp.bad_checksum.drop"] == 1
    assert stack.counters["icmp.type13.ignored"] == 1
    assert stack.counters["icmp.truncated.drop"] == 1
    assert link.take() == []


def test_datagrams_reach_bound_ports_with_checksums_checked():
    stack, link, _ = make_stack()
    got = []
    stack.udp.bind(53, lambda *args: got.append(args))
    stack.receive(frame(UDP(sport=3333, dport=53), b"query"))
    stack.receive(frame(UDP(sport=3333, dport=53, chksum=0), b"no checksum"))
    stack.receive(frame(UDP(sport=3333, dport=53, chksum=0x1234), b"bad"))
    stack.receive(frame(UDP(sport=3333, dport=53, len=4), b"short"))
    assert [g[0] for g in got] == [b"query", b"no checksum"]
    src_ip, src_port, dst_ip, dst_port = got[0][1:]
    assert (src_port, dst_port) == (3333, 53) and src_ip == stack.address - 1 and dst_ip == stack.address
    assert stack.counters["udp.bad_checksum.drop"] == 1 and stack.counters["udp.bad_length.drop"] == 1


def test_what_we_send_has_a_valid_udp_checksum():
    stack, link, _ = make_stack()
    prime_arp(stack)
    stack.udp.sendto(b"answer" * 5, 53, stack.address - 1, 4444)
    [sent] = [Ether(f) for f in link.take()]
    assert sent[UDP].sport == 53 and sent[UDP].dport == 4444 and bytes(sent[UDP].payload) == b"answer" * 5
    good = sent[IP].copy()
    del good[UDP].chksum
    assert IP(bytes(good))[UDP].chksum == sent[UDP].chksum != 0


def test_closed_port_gets_a_rate_limited_port_unreachable():
    stack, link, clock = make_stack()
    prime_arp(stack)
    for _ in range(15):
        stack.receive(frame(UDP(sport=4000, dport=9), b"hello?"))
    errors = [Ether(f) for f in link.take()]
    assert len(errors) == 10         # the burst; the rest are rate-limited
    e = errors[0]
    assert e[ICMP].type == 3 and e[ICMP].code == 3
    assert e[IPerror].src == PEER_IP and e[UDPerror].dport == 9 and e[UDPerror].sport == 4000
    assert stack.counters["icmp.port_unreachable.rate_limited"] == 5
    clock.advance(1.0)
    stack.receive(frame(UDP(sport=4000, dport=9), b"again"))
    assert len(link.take()) == 1


def test_udp_bindings():
    stack, _, _ = make_stack()
    stack.udp.bind(53, lambda *a: None)
    with pytest.raises(OSError):
        stack.udp.bind(53, lambda *a: None)
    ports = {stack.udp.bind_ephemeral(lambda *a: None) for _ in range(50)}
    assert len(ports) == 50 and all(1024 <= p <= 65535 for p in ports)
    stack.udp.unbind(53)
    stack.udp.bind(53, lambda *a: None)


def test_rate_limiter_refills_with_time():
    limiter = icmp.RateLimiter(rate=2, burst=2)
    assert [limiter.allow(0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow(0.5) and not limiter.allow(0.5)


def test_udp_parse_rejects_truncation():
    with pytest.raises(udp.UdpError):
        udp.parse(b"\x00" * 7, 1, 2)


def test_fragmentation_needed_reads_the_mtu_or_falls_back_to_rfc_1191_plateaus():
    quoted = bytes(IP(src=OUR_IP, dst=PEER_IP, flags="DF") / UDP() / (b"x" * 1472))[:28]
    for mtu, expected in ((1280, 1280), (0, 1492)):
        message = bytes(ICMP(type=3, code=4, nexthopmtu=mtu) / quoted)
        got, q = icmp.fragmentation_needed(message)
        assert got == expected and q.protocol == 17 and q.total_len == 1500 and len(q.payload) == 8


def test_a_fragmentation_needed_with_a_short_quote_is_counted():
    stack, link, _ = make_stack()
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP)
                        / ICMP(type=3, code=4, nexthopmtu=1000) / (b"\x45" + bytes(10))))
    assert stack.counters["icmp.bad_quote.drop"] == 1 and link.take() == []


@pytest.mark.parametrize("payload", [b"", b"x", b"answer" * 5, b"\xff" * 1471, bytes(range(256)) * 5])
@pytest.mark.parametrize("dst", [PEER_IP, "198.51.100.7"])      # on-link, and through the gateway
@pytest.mark.parametrize("ttl", [None, 255])
def test_the_one_pack_udp_frame_is_the_general_paths_bytes(payload, dst, ttl):
    """sendto packs Ethernet, IPv4 and UDP headers at once for a resolved next
    hop; the frame must be send_ip's, and its checksums scapy's."""
    from netstack import ipv4
    from tests.stackutil import GATEWAY
    stack, link, _ = make_stack()
    prime_arp(stack)
    prime_arp(stack, GATEWAY)
    dst_ip = int(ipaddress.IPv4Address(dst))
    stack._ident = 0xFFFF                    # the wrap to 0 is packed too
    stack.udp.sendto(payload, 53, dst_ip, 4444, ttl=ttl)
    stack._ident = 0xFFFF
    stack.send_ip(dst_ip, ipv4.PROTO_UDP, udp.build(stack.address, 53, dst_ip, 4444, payload),
                  ttl=ttl or ipv4.DEFAULT_TTL)
    one_pack, general = link.take()
    assert one_pack == general
    sent = Ether(one_pack)
    assert sent[IP].ttl == (ttl or 64) and sent[IP].id == 0 and bytes(sent[UDP].payload) == payload
    again = sent.copy()
    del again[IP].chksum, again[UDP].chksum
    again = Ether(bytes(again))
    assert (again[IP].chksum, again[UDP].chksum) == (sent[IP].chksum, sent[UDP].chksum)
