"""The frame fuzzer, short: `make test` runs a few thousand frames of it
(`make fuzz` runs a million), and its frame builders are checked against
scapy, so the frames it makes are the frames it means."""
from __future__ import annotations

import random

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from tests import fuzz_frames as ff


def _valid_checksums(packet) -> bool:
    """scapy recomputes each checksum from scratch: equal means ours were right."""
    fresh = packet.__class__(bytes(packet))
    for layer in (IP, UDP, TCP, ICMP):
        if layer in fresh:
            del fresh[layer].chksum
    rebuilt = fresh.__class__(bytes(fresh))
    return all(packet[layer].chksum == rebuilt[layer].chksum for layer in (IP, UDP, TCP, ICMP) if layer in packet)


def test_the_builders_make_what_scapy_reads():
    src = ff.ON_LINK_PEERS[0]
    udp_frame = Ether(ff.frame_from(src, ff.ipv4(src, ff.OUR_IP, 17, ff.udp(src, ff.OUR_IP, 4000, 53, b"odd"),
                                                 ident=7, options=b"\x01\x01\x01\x00")))
    assert udp_frame[IP].src == "192.0.2.1" and udp_frame[IP].ihl == 6 and udp_frame[UDP].dport == 53
    assert bytes(udp_frame[UDP].payload) == b"odd" and _valid_checksums(udp_frame)
    tcp_frame = Ether(ff.frame_from(src, ff.ipv4(src, ff.OUR_IP, 6, ff.tcp(
        src, ff.OUR_IP, 4000, 53, 0xFFFFFFFF, 5, ff.SYN | ff.ACK, 1234, b"data", b"\x02\x04\x05\xb4\x01"))))
    assert tcp_frame[TCP].seq == 0xFFFFFFFF and tcp_frame[TCP].flags == "SA" and tcp_frame[TCP].window == 1234
    assert tcp_frame[TCP].options[0] == ("MSS", 1460) and bytes(tcp_frame[TCP].payload) == b"data"
    assert _valid_checksums(tcp_frame)
    icmp_frame = Ether(ff.frame_from(src, ff.ipv4(src, ff.OUR_IP, 1, ff.icmp(3, 4, b"\0\0\x02\x40", b"q" * 28))))
    assert icmp_frame[ICMP].type == 3 and icmp_frame[ICMP].nexthopmtu == 576 and _valid_checksums(icmp_frame)
    arp_frame = Ether(ff.ether(ff.BROADCAST_MAC, ff.mac_of(src), 0x0806,
                               ff.arp(1, ff.mac_of(src), src, b"\0" * 6, ff.OUR_IP)))
    assert arp_frame[ARP].psrc == "192.0.2.1" and arp_frame[ARP].pdst == "192.0.2.2" and arp_frame[ARP].op == 1


def test_re_checksumming_after_a_mutation_is_what_scapy_computes():
    rng = random.Random(3)
    src = ff.OFF_LINK_PEERS[0]
    for _ in range(50):
        frame = bytearray(ff.frame_from(src, ff.ipv4(src, ff.OUR_IP, 17, ff.udp(src, ff.OUR_IP, 1, 53, b"x" * 9))))
        frame[rng.randrange(40, len(frame))] = rng.getrandbits(8)     # UDP payload or ports
        frame[rng.choice([22, 19])] = rng.getrandbits(8)              # TTL or id
        assert _valid_checksums(Ether(ff.fix_checksums(frame)))


def test_the_model_reassembler_agrees_with_scapy_on_clean_fragments():
    datagram = IP(src="192.0.2.1", dst="192.0.2.2", id=9, proto=17) / (b"m" * 3000)
    pieces = [IP(bytes(f)) for f in __import__("scapy.layers.inet", fromlist=["fragment"]).fragment(datagram, 800)]
    random.Random(1).shuffle(pieces)
    model = ff.ModelReassembler()
    out = [model.input(0.0, (1, 9), p.frag * 8, bytes(p.payload), bool(p.flags & 1)) for p in pieces]
    assert [o for o in out if o is not None] == [b"m" * 3000]


def test_a_short_fuzz_run_is_clean_and_reaches_the_state_machines():
    lines = []
    violations = ff.run(4000, seed=7, report=lines.append)
    text = "\n".join(lines)
    assert violations == 0, text
    reached = dict(item.rsplit(" ", 1) for item in lines[2].removeprefix("reached: ").split(", "))
    for counter in ("tcp.accept", "tcp.connect.established", "tcp.rx_bytes", "tcp.challenge_ack",
                    "ipv4.frag.reassembled", "udp.delivered",
                    "ipv4.frag.overlap.drop", "tcp.syn_cookie.accepted"):
        assert int(reached[counter]) > 0, f"the fuzzer no longer reaches {counter}:\n{text}"

