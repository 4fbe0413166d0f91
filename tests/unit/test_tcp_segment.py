"""TCP segments: scapy builds, we parse; we build, scapy parses and checks."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP

from netstack.tcp.segment import ACK, FIN, PSH, RST, SYN, TcpError, TcpSegment, TcpView

SRC = int(ipaddress.IPv4Address("192.0.2.1"))
DST = int(ipaddress.IPv4Address("192.0.2.2"))


def scapy_segment(tcp: TCP) -> bytes:
    """The TCP bytes of a scapy packet, checksum computed by scapy over the pseudo-header."""
    packet = IP(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / tcp))
    return bytes(packet[TCP])


def test_parse_scapy_syn_with_options():
    raw = scapy_segment(TCP(sport=40000, dport=53, seq=123456789, ack=0, flags="S", window=64240,
                            options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)),
                                     ("NOP", None), ("WScale", 7)]))
    seg = TcpSegment.parse(SRC, DST, raw)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (40000, 53, 123456789, 0)
    assert seg.flags == SYN and seg.window == 64240
    assert seg.mss == 1460 and seg.wscale == 7 and seg.payload == b""
    assert seg.seq_len == 1


def test_parse_scapy_data_segment():
    raw = scapy_segment(TCP(sport=53, dport=40000, seq=0xFFFFFFF0, ack=77, flags="PA", window=512) / b"hello")
    seg = TcpSegment.parse(SRC, DST, raw)
    assert seg.flags == PSH | ACK and seg.payload == b"hello" and seg.seq == 0xFFFFFFF0
    assert seg.mss is None and seg.wscale is None and seg.seq_len == 5


def test_window_scale_above_14_is_taken_as_14():
    raw = scapy_segment(TCP(sport=1, dport=2, flags="S", options=[("WScale", 20)]))
    assert TcpSegment.parse(SRC, DST, raw).wscale == 14


@pytest.mark.parametrize("seg", [
    TcpSegment(40000, 53, 1, 0, SYN, 65535, mss=1460, wscale=3),
    TcpSegment(53, 40000, 2**32 - 1, 12345, SYN | ACK, 29200, mss=536),
    TcpSegment(53, 40000, 5, 6, ACK | PSH, 100, b"x" * 1001),
    TcpSegment(53, 40000, 5, 6, ACK | FIN, 0),
    TcpSegment(53, 40000, 0, 6, RST | ACK, 0),
])
def test_emit_is_parsed_by_scapy(seg):
    raw = seg.emit(SRC, DST)
    pkt = IP(src="192.0.2.1", dst="192.0.2.2", proto=6) / TCP(raw)
    parsed = IP(bytes(pkt))[TCP]
    assert parsed.sport == seg.src_port and parsed.dport == seg.dst_port
    assert parsed.seq == seg.seq and parsed.ack == seg.ack
    assert int(parsed.flags) == seg.flags and parsed.window == seg.window
    assert bytes(parsed.payload) == seg.payload
    opts = dict(parsed.options)
    assert opts.get("MSS") == seg.mss and opts.get("WScale") == seg.wscale
    # scapy recomputes the checksum from scratch: ours must be what it computes
    original = parsed.chksum
    del parsed.chksum
    recomputed = IP(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / parsed))[TCP].chksum
    assert original == recomputed
    assert TcpSegment.parse(SRC, DST, raw) == seg


def test_emit_writes_every_header_byte():
    # emit fills every field: two very different segments share no stale bytes
    a = TcpSegment(0xA5A5, 0xA5A5, 0xA5A5A5A5, 0xA5A5A5A5, ACK, 0xA5A5).emit(SRC, DST)
    b = TcpSegment(1, 2, 3, 4, ACK, 5).emit(SRC, DST)
    assert b[:16] == bytes.fromhex("0001000200000003000000045010" "0005")
    assert len(a) == len(b) == 20


def test_checksum_covers_the_pseudo_header():
    raw = TcpSegment(1, 2, 3, 4, ACK, 5, b"abc").emit(SRC, DST)
    TcpSegment.parse(SRC, DST, raw)
    with pytest.raises(TcpError) as e:
        TcpSegment.parse(SRC, DST + 1, raw)      # delivered to someone else: the sum fails
    assert e.value.reason == "tcp.bad_checksum.drop"


@pytest.mark.parametrize("raw, reason", [
    (b"\x00" * 19, "tcp.truncated.drop"),
    (bytes(12) + b"\x40" + bytes(7), "tcp.bad_offset.drop"),              # data offset 4 words
    (bytes(12) + b"\xf0" + bytes(7), "tcp.truncated.drop"),               # 60-byte header in 20 bytes
])
def test_integrity_errors(raw, reason):
    with pytest.raises(TcpError) as e:
        TcpSegment.parse(SRC, DST, raw, verify_checksum=False)
    assert e.value.reason == reason


@pytest.mark.parametrize("options", [
    b"\x01\x02\x04\x05",      # MSS cut short by the header end
    b"\x02\x03\x05\xb4",      # MSS with length 3
    b"\x08\x00\x00\x00",      # length 0 would loop forever
    b"\x03\x04\x07\x00",      # window scale with length 4
    b"\x01\x01\x01\x05",      # a kind with no length byte
])
def test_bad_options_are_errors(options):
    raw = TcpSegment(1, 2, 3, 4, SYN, 5).emit(SRC, DST)
    header = bytearray(raw[:12]) + bytes([(20 + len(options)) // 4 << 4]) + raw[13:20] + options
    with pytest.raises(TcpError) as e:
        TcpSegment.parse(SRC, DST, bytes(header), verify_checksum=False)
    assert e.value.reason == "tcp.bad_option.drop"


def test_sanity_errors():
    for seg, reason in [(TcpSegment(0, 2, 3, 4, ACK, 5), "tcp.bad_port.drop"),
                        (TcpSegment(1, 2, 3, 4, SYN | FIN, 5), "tcp.bad_flags.drop"),
                        (TcpSegment(1, 2, 3, 4, SYN | RST, 5), "tcp.bad_flags.drop")]:
        with pytest.raises(TcpError) as e:
            TcpSegment.parse(SRC, DST, seg.emit(SRC, DST))
        assert e.value.reason == reason


def test_view_checks_lengths_once():
    raw = TcpSegment(1, 2, 3, 4, SYN, 5, mss=1000).emit(SRC, DST)
    view = TcpView.checked(raw + b"payload")
    assert view.header_len == 24 and view.options == b"\x02\x04\x03\xe8" and view.payload == b"payload"
