"""Ethernet and ARP, checked against scapy's encoders and decoders."""
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import str2mac

from netstack import ethernet
from netstack.arp import Arp, ArpError, ArpPacket
from netstack.counters import Counters
from tests.stackutil import GATEWAY, OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack, prime_arp


def test_answers_a_request_for_our_address():
    stack, link, _ = make_stack()
    request = Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(op="who-has", hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP)
    stack.receive(bytes(request))
    [reply] = link.take()
    frame = Ether(reply)
    assert frame.dst == str2mac(PEER_MAC) and frame.src == str2mac(OUR_MAC)
    assert frame[ARP].op == 2 and frame[ARP].psrc == OUR_IP and frame[ARP].hwsrc == str2mac(OUR_MAC)
    assert frame[ARP].pdst == PEER_IP and frame[ARP].hwdst == str2mac(PEER_MAC)
    assert stack.counters["arp.request.replied"] == 1


def test_request_for_someone_else_is_counted_and_not_answered():
    stack, link, _ = make_stack()
    stack.receive(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst="192.0.2.77")))
    assert link.take() == []
    assert stack.counters["arp.not_for_us.drop"] == 1


@pytest.mark.parametrize("packet", [
    bytes(ARP(op=1, psrc=PEER_IP, pdst=OUR_IP, hwsrc=PEER_MAC))[:20],            # truncated
    bytes(ARP(op=1, ptype=0x86DD, psrc=PEER_IP, pdst=OUR_IP, hwsrc=PEER_MAC)),  # not IPv4
    bytes(ARP(op=9, psrc=PEER_IP, pdst=OUR_IP, hwsrc=PEER_MAC)),                # unknown op
    bytes(ARP(op=1, psrc=PEER_IP, pdst=OUR_IP, hwsrc="01:00:5e:00:00:01")),     # multicast sender
])
def test_malformed_arp_is_counted_and_dropped_by_the_stack(packet):
    stack, link, _ = make_stack()
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC, type=0x0806)) + packet)
    assert stack.counters["arp.malformed.drop"] == 1 and stack.counters["stack.exception.drop"] == 0
    assert link.take() == []


def test_frames_for_other_stations_are_dropped():
    stack, link, _ = make_stack()
    stack.receive(bytes(Ether(dst="02:11:11:11:11:11", src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / UDP()))
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC, type=0x86DD) / (b"x" * 40)))
    stack.receive(b"\x01\x02")
    assert stack.counters["ethernet.not_ours.drop"] == 1
    assert stack.counters["ethernet.unknown_type.drop"] == 1
    assert stack.counters["ethernet.truncated.drop"] == 1
    assert link.take() == []


async def _started(stack):
    await stack.start()


def test_gratuitous_arp_at_start():
    import asyncio
    stack, link, _ = make_stack()

    async def main():
        await stack.start()
        stack.close()
    asyncio.run(main())
    [announce] = link.take()
    frame = Ether(announce)
    assert frame.dst == "ff:ff:ff:ff:ff:ff"
    assert frame[ARP].op == 1 and frame[ARP].psrc == OUR_IP == frame[ARP].pdst


def test_resolution_queues_then_releases_packets():
    stack, link, _ = make_stack()
    stack.udp.sendto(b"one", 5000, stack.address - 1, 53)   # 192.0.2.1, on-link
    stack.udp.sendto(b"two", 5000, stack.address - 1, 53)
    [request] = link.take()           # one request for both packets
    arp = Ether(request)[ARP]
    assert arp.op == 1 and arp.pdst == PEER_IP and Ether(request).dst == "ff:ff:ff:ff:ff:ff"
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=OUR_MAC, pdst=OUR_IP)))
    released = [Ether(f) for f in link.take()]
    assert [bytes(f[UDP].payload) for f in released] == [b"one", b"two"]
    assert all(f.dst == str2mac(PEER_MAC) for f in released)


def test_off_link_destinations_go_through_the_gateway():
    stack, link, _ = make_stack()
    stack.udp.sendto(b"far", 5000, int.from_bytes(bytes([198, 51, 100, 7]), "big"), 53)
    [request] = link.take()
    assert Ether(request)[ARP].pdst == GATEWAY


def test_no_gateway_means_no_route():
    stack, link, _ = make_stack(gateway=None)
    stack.udp.sendto(b"far", 5000, int.from_bytes(bytes([198, 51, 100, 7]), "big"), 53)
    assert link.take() == [] and stack.counters["ipv4.no_route.drop"] == 1


def test_retries_then_gives_up_with_a_count():
    stack, link, clock = make_stack()
    stack.udp.sendto(b"lost", 5000, stack.address - 1, 53)
    assert len(link.take()) == 1
    for _ in range(2):
        clock.advance(1.01)
        stack.tick(clock())
        assert len(link.take()) == 1       # a retry
    clock.advance(1.01)
    stack.tick(clock())
    assert link.take() == []
    assert stack.counters["arp.timeout.drop"] == 1 and not stack.arp.pending


def test_cache_entries_expire():
    stack, link, clock = make_stack()
    prime_arp(stack)
    assert stack.arp.lookup(stack.address - 1, clock()) == PEER_MAC
    clock.advance(stack.arp.entry_lifetime + 1)
    assert stack.arp.lookup(stack.address - 1, clock()) is None


def test_tables_are_bounded():
    arp = Arp(OUR_MAC, 1, Counters(), cache_size=8, max_pending=4, queue_limit=2)
    for i in range(100):     # requests for us from many senders
        arp.input(0.0, ArpPacket(1, bytes([2, 0, 0, 0, 0, i]), 1000 + i, b"\0" * 6, 1).emit())
    assert len(arp.cache) == 8 and arp.counters["arp.cache.evicted"] == 92
    for i in range(10):
        for _ in range(5):
            arp.resolve(0.0, 5000 + i, b"packet")
    assert len(arp.pending) == 4 and all(len(p.packets) == 2 for p in arp.pending.values())
    assert arp.counters["arp.pending_full.drop"] == 30 and arp.counters["arp.queue_full.drop"] == 12


@pytest.mark.parametrize("data", [b"", b"\x00" * 27, bytes(ARP(hwtype=6))[:28], bytes(ARP(ptype=0x86DD)), bytes(ARP(op=9))])
def test_malformed_arp_is_rejected(data):
    with pytest.raises(ArpError):
        ArpPacket.parse(data)


def test_our_arp_packets_parse_in_scapy():
    arp = Arp(OUR_MAC, int.from_bytes(bytes([192, 0, 2, 2]), "big"), Counters())
    parsed = ARP(arp.request(int.from_bytes(bytes([192, 0, 2, 9]), "big")))
    assert parsed.op == 1 and parsed.psrc == OUR_IP and parsed.pdst == "192.0.2.9"
    assert parsed.hwsrc == str2mac(OUR_MAC)


def test_mac_text_round_trip():
    assert ethernet.mac_from_str("02:00:C0:00:02:02") == bytes.fromhex("0200c0000202")
    with pytest.raises(ValueError):
        ethernet.mac_from_str("01:00:5e:00:00:01")   # multicast
    with pytest.raises(ValueError):
        ethernet.mac_from_str("zz:00")


def _udp_to_peer(stack):
    stack.udp.sendto(b"reply", 53, stack.address - 1, 4000)


def test_an_entry_in_use_is_refreshed_by_unicast_probe_before_it_expires():
    """Linux's way (STALE, DELAY, PROBE): an entry still in use is re-asked
    of the MAC it names, so traffic to the gateway never stalls behind a
    broadcast re-resolution every 120 s."""
    stack, link, clock = make_stack()
    prime_arp(stack)
    clock.advance(stack.arp.entry_lifetime - 3)          # in use close to its end
    _udp_to_peer(stack)
    assert [Ether(f).dst for f in link.take()] == [str2mac(PEER_MAC)]   # the datagram, straight out
    stack.tick(clock())
    [probe] = [Ether(f) for f in link.take()]
    assert probe.dst == str2mac(PEER_MAC) and probe[ARP].op == 1 and probe[ARP].pdst == PEER_IP
    assert stack.counters["arp.refresh.sent"] == 1
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP,
                                                              hwdst=OUR_MAC, pdst=OUR_IP)))
    clock.advance(10)                                    # past the old lifetime
    _udp_to_peer(stack)
    [frame] = [Ether(f) for f in link.take()]
    assert frame.dst == str2mac(PEER_MAC) and UDP in frame
    assert stack.counters["arp.cache.expired"] == 0 and stack.counters["arp.request.sent"] == 0


def test_an_unanswered_refresh_lets_the_entry_expire_and_an_idle_entry_is_not_probed():
    stack, link, clock = make_stack()
    prime_arp(stack)
    clock.advance(stack.arp.entry_lifetime - 3)
    stack.tick(clock())
    assert link.take() == []                             # not in use: no probe
    _udp_to_peer(stack)
    link.take()
    for _ in range(8):
        clock.advance(0.5)
        stack.tick(clock())
    probes = [Ether(f) for f in link.take()]
    assert len(probes) == stack.arp.retries and all(p.dst == str2mac(PEER_MAC) for p in probes)
    clock.advance(1)
    _udp_to_peer(stack)                                  # expired: resolved again by broadcast
    [request] = [Ether(f) for f in link.take()]
    assert request.dst == "ff:ff:ff:ff:ff:ff" and stack.counters["arp.cache.expired"] == 1
    assert not stack.arp.refreshing


def test_an_unsolicited_reply_for_us_is_learned_and_counted():
    """Found by the frame fuzzer: RFC 826 learns it, and it was the one ARP outcome with no counter."""
    stack, link, _ = make_stack()
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP,
                                                              hwdst=OUR_MAC, pdst=OUR_IP)))
    assert stack.counters["arp.reply.learned"] == 1 and sum(stack.counters.values()) == 1
    assert stack.arp.lookup(stack.address - 1, 0.0) == PEER_MAC and link.take() == []
