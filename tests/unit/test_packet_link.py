"""Frames the host left with a partial checksum are completed, the rest untouched."""
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from netstack.link.packet import complete_checksum


def test_partial_checksums_are_completed():
    for l4, field_at in ((UDP(sport=5353, dport=53) / b"query", 6),
                         (UDP(sport=5353, dport=53) / b"odd", 6),
                         (TCP(sport=40000, dport=53, flags="PA") / b"xy", 16)):
        good = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                     IP(src="192.0.2.1", dst="192.0.2.2") / l4)
        partial = bytearray(good)
        partial[34 + field_at:36 + field_at] = b"\x12\x34"      # what CHECKSUM_PARTIAL leaves there
        assert complete_checksum(bytes(partial)) == good


def test_other_frames_are_left_alone():
    arp = bytes(Ether(type=0x0806) / (b"\x00" * 46))
    assert complete_checksum(arp) == arp
    fragment = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2", flags="MF") / UDP() / b"x")
    assert complete_checksum(fragment) == fragment
    assert complete_checksum(b"\x00" * 20) == b"\x00" * 20
    truncated = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2", len=200) / UDP() / b"x")
    assert complete_checksum(truncated) == truncated
