"""Multicast in the stack: group joins, IGMP v1/v2/v3 reports, multicast
datagrams to bound ports, TTL on send and on receive. Frames are made and
read by scapy (its IGMP and IGMPv3 layers), not by us."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.igmp import IGMP, IGMPv3_MQ, IGMPv3_MR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from tests.stackutil import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack

MDNS = "224.0.0.251"
MDNS_MAC = "01:00:5e:00:00:fb"
MDNS_INT = 0xE00000FB


def joined_stack():
    stack, link, clock = make_stack()
    stack.rng = stack.igmp.rng = random.Random(1)
    stack.join_group(MDNS_INT)
    return stack, link, clock


def igmp_frames(link):
    return [Ether(f) for f in link.take() if Ether(f).haslayer(IP) and Ether(f)[IP].proto == 2]


def v3_records(packet):
    return [(r.rtype, r.maddr, r.numsrc) for r in packet[IGMPv3_MR].records]


def group_mac(group):
    low = int.from_bytes(bytes(int(x) for x in group.split(".")), "big") & 0x7FFFFF
    return "01:00:5e:" + ":".join(f"{b:02x}" for b in low.to_bytes(3, "big"))


def query(igmp_layer, dst="224.0.0.1"):
    return bytes(Ether(dst=group_mac(dst), src=PEER_MAC) / IP(src=PEER_IP, dst=dst, ttl=1, proto=2) / igmp_layer)


def test_join_sends_a_v3_state_change_report_with_router_alert_and_ttl_1():
    stack, link, clock = joined_stack()
    [report] = igmp_frames(link)
    assert report[Ether].dst == "01:00:5e:00:00:16" and report[Ether].src == "02:00:00:c0:00:02"
    assert report[IP].dst == "224.0.0.22" and report[IP].src == OUR_IP and report[IP].ttl == 1
    assert [(o.option, o.length) for o in report[IP].options] == [(20, 4)]     # Router Alert
    assert report[IGMPv3_MR].type == 0x22
    assert v3_records(report) == [(4, MDNS, 0)]        # CHANGE_TO_EXCLUDE_MODE, no sources
    # checksums as scapy computes them
    for layer in (IP, IGMPv3_MR):
        fresh = report[layer].copy()
        del fresh.chksum
        assert layer(bytes(fresh)).chksum == report[layer].chksum
    # the unsolicited report is sent once more within a second (robustness 2), then no more
    clock.advance(1.0)
    stack.tick(clock.now)
    assert [v3_records(r) for r in igmp_frames(link)] == [[(4, MDNS, 0)]]
    clock.advance(5.0)
    stack.tick(clock.now)
    assert igmp_frames(link) == []


def test_general_v3_query_gets_one_current_state_report_within_max_response_time():
    stack, link, clock = joined_stack()
    stack.join_group(0xEFFFFFFA)      # 239.255.255.250 too
    clock.advance(2.0)
    stack.tick(clock.now)
    link.take()
    stack.receive(query(IGMPv3_MQ(mrcode=20, gaddr="0.0.0.0")))   # 2.0 s
    assert stack.counters["igmp.query.general"] == 1
    sent = []
    for _ in range(21):
        clock.advance(0.1)
        stack.tick(clock.now)
        sent += igmp_frames(link)
    [report] = sent
    assert report[IP].dst == "224.0.0.22"
    assert sorted(v3_records(report)) == [(2, MDNS, 0), (2, "239.255.255.250", 0)]   # MODE_IS_EXCLUDE


def test_query_flood_gives_at_most_one_report_per_tick():
    stack, link, clock = joined_stack()
    clock.advance(2.0)
    stack.tick(clock.now)
    link.take()
    for _ in range(500):
        stack.receive(query(IGMPv3_MQ(mrcode=1, gaddr="0.0.0.0")))
    clock.advance(0.2)
    stack.tick(clock.now)
    assert len(igmp_frames(link)) == 1
    assert stack.counters["igmp.query.general"] == 500


def test_v2_query_switches_to_v2_reports_to_the_group_and_v2_leave():
    stack, link, clock = joined_stack()
    clock.advance(2.0)
    stack.tick(clock.now)
    link.take()
    stack.receive(query(IGMP(type=0x11, mrcode=10, gaddr="0.0.0.0")))     # 8 bytes: v2, 1.0 s
    clock.advance(1.1)
    stack.tick(clock.now)
    [report] = igmp_frames(link)
    assert report[IP].dst == MDNS and report[Ether].dst == MDNS_MAC and report[IP].ttl == 1
    assert report[IGMP].type == 0x16 and report[IGMP].gaddr == MDNS
    stack.leave_group(MDNS_INT)
    [leave] = igmp_frames(link)
    assert leave[IP].dst == "224.0.0.2" and leave[IGMP].type == 0x17 and leave[IGMP].gaddr == MDNS
    # after the older-querier timeout, back to v3
    clock.advance(300.0)
    stack.join_group(MDNS_INT)
    [again] = igmp_frames(link)
    assert again[IP].dst == "224.0.0.22"


def test_v2_report_suppression_and_group_specific_query():
    stack, link, clock = joined_stack()
    clock.advance(2.0)
    stack.tick(clock.now)
    link.take()
    stack.receive(query(IGMP(type=0x11, mrcode=50, gaddr=MDNS), dst=MDNS))     # group-specific, v2
    assert stack.counters["igmp.query.group"] == 1
    other = Ether(dst=MDNS_MAC, src="02:11:11:11:11:11") / IP(src="192.0.2.7", dst=MDNS, ttl=1) / IGMP(type=0x16, gaddr=MDNS)
    stack.receive(bytes(other))
    assert stack.counters["igmp.report.suppressed"] == 1
    clock.advance(6.0)
    stack.tick(clock.now)
    assert igmp_frames(link) == []
    stack.receive(query(IGMP(type=0x11, mrcode=50, gaddr="239.1.1.1"), dst="239.1.1.1"))   # not ours: MAC not joined
    assert stack.counters["ethernet.not_ours.drop"] == 1


def test_v1_query_gets_v1_report_and_leave_sends_nothing():
    stack, link, clock = joined_stack()
    clock.advance(2.0)
    stack.tick(clock.now)
    link.take()
    stack.receive(query(IGMP(type=0x11, mrcode=0, gaddr="0.0.0.0")))
    clock.advance(10.1)
    stack.tick(clock.now)
    [report] = igmp_frames(link)
    assert report[IGMP].type == 0x12 and report[IP].dst == MDNS
    stack.leave_group(MDNS_INT)
    assert igmp_frames(link) == []


def test_close_leaves_every_group():
    stack, link, clock = joined_stack()
    stack._loop = object()          # as if started: close() then says goodbye
    link.take()
    stack.close()
    [leave] = igmp_frames(link)
    assert v3_records(leave) == [(3, MDNS, 0)]          # CHANGE_TO_INCLUDE_MODE {}


def test_query_from_unspecified_source_is_accepted_and_malformed_igmp_counted():
    stack, link, clock = joined_stack()
    stack.receive(bytes(Ether(dst="01:00:5e:00:00:01", src=PEER_MAC) / IP(src="0.0.0.0", dst="224.0.0.1", ttl=1)
                        / IGMPv3_MQ(mrcode=10)))
    assert stack.counters["igmp.query.general"] == 1
    bad = IGMP(type=0x11, mrcode=10, gaddr="0.0.0.0")
    bad.chksum = 1
    stack.receive(query(bad))
    stack.receive(query(b"\x11\x0a"))
    stack.receive(query(bytes(IGMP(type=0x11, mrcode=10, gaddr="0.0.0.0")) + b"\0\0"))   # 10 bytes: neither v2 nor v3
    assert stack.counters["igmp.bad_checksum.drop"] == 1
    assert stack.counters["igmp.truncated.drop"] == 1
    assert stack.counters["igmp.bad_length.drop"] == 1
    assert stack.counters["stack.exception.drop"] == 0


def mdns_frame(payload=b"hello", *, src=PEER_IP, dst=MDNS, ttl=255, mac=MDNS_MAC, dport=5353):
    return bytes(Ether(dst=mac, src=PEER_MAC) / IP(src=src, dst=dst, ttl=ttl) / UDP(sport=5353, dport=dport) / payload)


def test_multicast_datagram_reaches_bound_port_with_ttl_and_source():
    stack, link, clock = joined_stack()
    seen = []
    stack.udp.bind_with_ttl(5353, lambda *args: seen.append(args))
    stack.receive(mdns_frame(b"answer", ttl=255))
    stack.receive(mdns_frame(b"routed", ttl=17))
    assert seen == [(b"answer", 0xC0000201, 5353, MDNS_INT, 5353, 255),
                    (b"routed", 0xC0000201, 5353, MDNS_INT, 5353, 17)]
    assert stack.counters["ipv4.multicast.received"] == 2


def test_multicast_without_a_bound_port_is_dropped_without_icmp():
    stack, link, clock = joined_stack()
    link.take()
    stack.receive(mdns_frame(dport=5354))
    assert stack.counters["udp.multicast.closed_port.drop"] == 1
    assert link.take() == []


def test_unwanted_multicast_is_counted_and_dropped():
    stack, link, clock = joined_stack()
    seen = []
    stack.udp.bind_with_ttl(5353, lambda *args: seen.append(args))
    stack.receive(mdns_frame(mac="01:00:5e:00:00:fc", dst="224.0.0.252"))        # a group we are not in
    stack.receive(mdns_frame(dst="224.128.0.251"))                                # same MAC, other group
    stack.receive(mdns_frame(src="224.0.0.9"))                                   # multicast source
    stack.receive(mdns_frame(src="192.0.2.255"))                                 # broadcast source
    stack.receive(mdns_frame(src=OUR_IP))                                        # our own address
    stack.receive(bytes(Ether(dst=MDNS_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=MDNS) / ICMP()))   # not UDP
    assert seen == []
    assert stack.counters["ethernet.not_ours.drop"] == 1
    assert stack.counters["ipv4.not_ours.drop"] == 1
    assert stack.counters["ipv4.bad_source.drop"] == 3
    assert stack.counters["ipv4.multicast.unknown_protocol.drop"] == 1
    stack.leave_group(MDNS_INT)
    stack.receive(mdns_frame())
    assert stack.counters["ethernet.not_ours.drop"] == 2 and seen == []


def test_sending_to_a_group_uses_its_mac_and_the_ttl_asked_for_without_arp():
    stack, link, clock = make_stack()
    stack.udp.sendto(b"question", 40000, MDNS_INT, 5353, ttl=255)
    [frame] = [Ether(f) for f in link.take()]
    assert not frame.haslayer(ARP)
    assert frame[Ether].dst == MDNS_MAC and frame[IP].dst == MDNS and frame[IP].ttl == 255
    assert frame[UDP].dport == 5353 and bytes(frame[UDP].payload) == b"question"
    fresh = frame[UDP].copy()
    del fresh.chksum
    assert UDP(bytes(fresh)).chksum == frame[UDP].chksum


def test_unicast_to_a_port_bound_with_ttl_sees_the_ttl():
    stack, link, clock = make_stack()
    seen = []
    port = stack.udp.bind_ephemeral_with_ttl(lambda *args: seen.append(args))
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP, ttl=64)
                        / UDP(sport=5353, dport=port) / b"reply"))
    assert seen == [(b"reply", 0xC0000201, 5353, 0xC0000202, port, 64)]
    stack.udp.unbind(port)
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / UDP(sport=5353, dport=port)))
    assert stack.counters["udp.closed_port.drop"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 40), st.integers(0, 255))
def test_mutated_igmp_and_multicast_never_raise(noise, where, value):
    stack, link, clock = joined_stack()
    stack.udp.bind_with_ttl(5353, lambda *args: None)
    for frame in (query(IGMPv3_MQ(mrcode=10, gaddr="0.0.0.0")), mdns_frame(),
                  query(IGMP(type=0x16, gaddr=MDNS), dst=MDNS)):
        mutated = bytearray(frame)
        mutated[14 + where % (len(frame) - 14)] = value
        stack.receive(bytes(mutated))
        stack.receive(frame[:34] + noise)
    clock.advance(20)
    stack.tick(clock.now)
    assert stack.counters["stack.exception.drop"] == 0


def test_join_refuses_non_groups_and_is_bounded():
    stack, link, clock = make_stack()
    for bad in (0xC0000201, 0xE0000001):      # unicast; all-hosts (always in, never reported)
        with pytest.raises(ValueError):
            stack.join_group(bad)
    for n in range(stack.igmp.max_groups):
        stack.join_group(0xEF000001 + n)
    with pytest.raises(OSError):
        stack.join_group(0xEF0000FF)
    assert stack.counters["igmp.groups_full.drop"] == 1


def test_idle_ticks_add_no_counters():
    stack, link, clock = make_stack()
    for _ in range(3):
        clock.advance(0.05)
        stack.tick(clock.now)
    assert not [k for k in stack.counters if k.startswith("igmp.")]


def test_v3_max_response_codes_above_127_are_floating_point():
    from netstack import igmp
    # RFC 3376 4.1.1: (mant | 0x10) << (exp + 3) tenths; 0xFF is the largest, 3174.4 s
    assert igmp._v3_max_response(100) == 10.0
    assert igmp._v3_max_response(0x80) == 12.8
    assert igmp._v3_max_response(0xFF) == 3174.4
