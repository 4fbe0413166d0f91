"""Hostile input: arbitrary bytes and mutated valid frames never raise out of
the receive path, and every frame ends in a counter."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import ARP, Ether

from tests.stackutil import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack

SEEDS = [
    bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / UDP(dport=53) / (b"q" * 30)),
    bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / ICMP() / (b"p" * 30)),
    bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP)),
    bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / TCP(dport=53, flags="S", options=[("MSS", 1460), ("WScale", 7)])),
    bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / TCP(dport=53, flags="PA", seq=1, ack=1) / b"\x00\x10data"),
    *[bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / f) for f in
      fragment(IP(src=PEER_IP, dst=OUR_IP, id=7) / ICMP() / (b"f" * 2000), fragsize=600)],
]

STACK, LINK, CLOCK = make_stack()
STACK.udp.bind(53, lambda payload, *a: STACK.udp.sendto(payload, 53, a[0], a[1]))
STACK.tcp.listen(53, lambda conn: setattr(conn, "on_data", conn.send))


def _check(frame: bytes) -> None:
    before = sum(STACK.counters.values())
    STACK.receive(frame)
    LINK.take()
    assert STACK.counters["stack.exception.drop"] == 0
    assert sum(STACK.counters.values()) > before      # every frame leaves a trace
    assert len(STACK.arp.cache) <= STACK.arp.cache_size
    assert len(STACK.reassembler.buffers) <= STACK.reassembler.max_datagrams


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=1600))
def test_arbitrary_bytes(frame):
    _check(frame)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1600), st.integers(0, 255)), max_size=6),
       st.integers(0, 1600))
def test_mutated_frames(seed, flips, cut):
    frame = bytearray(seed)
    for offset, value in flips:
        if offset < len(frame):
            frame[offset] = value
    _check(bytes(frame[:cut]) if cut < len(frame) else bytes(frame))
    CLOCK.advance(1.0)
    STACK.tick(CLOCK())
