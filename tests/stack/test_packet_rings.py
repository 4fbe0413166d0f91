"""The AF_PACKET link (netstack/link/packet.py) on a veth pair whose other
end is the kernel's: frames made by scapy and by the kernel's own UDP cross
it both ways unchanged, through the PACKET_MMAP rings and through the
socket's own calls alike; a frame longer than a ring slot arrives whole; a
batch's replies leave at its end; a full TX ring drops and says so."""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from netstack.link import packet
from netstack.link.packet import PacketLink
from tests.netns import Namespace, needs_root

pytestmark = needs_root
PEER_MAC, OUR_MAC = "02:00:00:00:00:aa", "02:00:00:00:00:bb"


class Wire:
    def __init__(self, ns: Namespace, link: PacketLink, peer: socket.socket) -> None:
        self.ns, self.link, self.peer = ns, link, peer
        self.loop = asyncio.new_event_loop()
        self.received: list[bytes] = []

    def frames_from_peer(self) -> list[bytes]:
        """What reached the link from the test's frames (the kernel's own on
        veth0, IPv6 neighbour discovery and the like, left out)."""
        return [f for f in self.received if f[6:12] == bytes.fromhex(PEER_MAC.replace(":", ""))]

    def run_until(self, done, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.loop.run_until_complete(asyncio.sleep(0.01))

    def peer_frames(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """Frames the link sent, as the peer's socket reads them."""
        self.peer.settimeout(timeout)
        got = []
        try:
            while len(got) < count:
                frame, address = self.peer.recvfrom(65536)
                if address[2] != packet.PACKET_OUTGOING and frame[6:12] == bytes.fromhex(OUR_MAC.replace(":", "")):
                    got.append(frame)
        except TimeoutError:
            pass
        return got


@pytest.fixture(params=[True, False], ids=["rings", "socket-calls"])
def wire(request) -> Iterator[Wire]:
    with Namespace() as ns:
        ns.add_veth(mtu=9000)        # room on the wire for frames over a ring slot
        with ns.entered():
            link = PacketLink("veth1", rings=request.param)
            peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(packet.ETH_P_ALL))
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)    # a whole TX ring's worth at once
            peer.bind(("veth0", 0))
        assert (link.ring is not None) == request.param
        w = Wire(ns, link, peer)
        try:
            yield w
        finally:
            link.close()
            peer.close()
            w.loop.close()


def _frame(i: int, size: int = 64) -> bytes:
    return bytes(Ether(src=PEER_MAC, dst=OUR_MAC) / IP(src="192.0.2.1", dst="192.0.2.2")
                 / UDP(sport=40000 + i, dport=53) / (b"q%04d" % i).ljust(size, b"."))


def _reply(i: int) -> bytes:
    return bytes(Ether(src=OUR_MAC, dst=PEER_MAC) / IP(src="192.0.2.2", dst="192.0.2.1")
                 / UDP(sport=53, dport=40000 + i) / (b"r%04d" % i))


def test_frames_arrive_whole_and_in_order(wire):
    sent = [_frame(i) for i in range(100)] + [_frame(100, size=5000)]    # the last over a 2 KiB slot
    wire.link.attach(wire.loop, wire.received.append)
    for frame in sent:
        wire.peer.send(frame)
    wire.run_until(lambda: len(wire.frames_from_peer()) >= len(sent))
    assert wire.frames_from_peer() == sent
    assert wire.link.frames_too_long == (1 if wire.link.ring is not None else 0)


def test_replies_sent_while_reading_reach_the_peer(wire):
    """Each query answered from inside the link's readable callback: with the
    rings the replies wait in the TX ring for the batch's end, and all leave."""
    def answer(frame: bytes) -> None:
        wire.received.append(frame)
        if frame[6:12] == bytes.fromhex(PEER_MAC.replace(":", "")):
            assert wire.link.send(_reply(int(frame[43:47])))
    wire.link.attach(wire.loop, answer)
    for i in range(150):
        wire.peer.send(_frame(i))
    wire.run_until(lambda: len(wire.frames_from_peer()) >= 150)
    assert sorted(wire.peer_frames(150)) == sorted(_reply(i) for i in range(150))


def test_a_send_outside_a_batch_leaves_at_once(wire):
    wire.link.attach(wire.loop, wire.received.append)
    wire.loop.call_soon(wire.link.send, _reply(7))       # e.g. a timer's retransmission
    wire.run_until(lambda: False, timeout=0.05)
    assert wire.peer_frames(1, timeout=2) == [_reply(7)]


# the socket's own send has no ring to fill: tests/unit/test_link_drops.py holds its drop
@pytest.mark.parametrize("wire", [True], ids=["rings"], indirect=True)
def test_a_full_tx_ring_drops_what_it_cannot_hold(wire):
    results: list[bool] = []

    def flood(frame: bytes) -> None:
        if frame[6:12] == bytes.fromhex(PEER_MAC.replace(":", "")) and not results:
            results.extend(wire.link.send(_reply(i)) for i in range(packet.TX_SLOTS + 20))
    wire.link.attach(wire.loop, flood)
    wire.peer.send(_frame(0))
    wire.run_until(lambda: bool(results))
    assert results.count(True) == packet.TX_SLOTS and results[packet.TX_SLOTS:] == [False] * 20
    assert sorted(wire.peer_frames(packet.TX_SLOTS)) == sorted(_reply(i) for i in range(packet.TX_SLOTS))
    assert wire.link.send(_reply(1))            # the kernel gave the slots back


def test_the_kernels_udp_arrives_with_its_checksum(wire):
    """The kernel's own UDP over a veth leaves its checksum to "hardware"
    (CHECKSUM_PARTIAL): the link completes it, so the stack sees a frame whose
    checksum scapy accepts."""
    wire.link.attach(wire.loop, wire.received.append)
    wire.ns.ip("neigh", "add", "192.0.2.2", "lladdr", OUR_MAC, "dev", "veth0")
    wire.ns.run("python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "[s.sendto(b'kernel-%d' % i, ('192.0.2.2', 53)) for i in range(5)]", check=True)
    udp = lambda: [f for f in wire.received if f[12:14] == b"\x08\x00" and f[23] == 17 and b"kernel-" in f]  # noqa: E731
    wire.run_until(lambda: len(udp()) >= 5)
    frames = udp()
    assert len(frames) == 5
    for frame in frames:
        parsed = Ether(frame)
        claimed = parsed[UDP].chksum
        del parsed[UDP].chksum
        assert Ether(bytes(parsed))[UDP].chksum == claimed, "the UDP checksum was left incomplete"
    assert wire.link.checksums_completed == 5

@pytest.mark.parametrize("wire", [True], ids=["rings"], indirect=True)
def test_a_burst_over_the_rx_ring_drops_the_excess_and_the_link_reads_on(wire):
    """Frames sent while nobody reads: the ring holds RX_SLOTS of them and the
    kernel drops the rest; the link then reads what it holds, and what comes after."""
    burst = packet.RX_SLOTS * 3
    for i in range(burst):
        wire.peer.send(_frame(i % 10000))
    wire.link.attach(wire.loop, wire.received.append)
    wire.run_until(lambda: False, timeout=0.3)
    held = len(wire.frames_from_peer())
    assert 0 < held <= packet.RX_SLOTS
    wire.peer.send(_frame(9999))
    wire.run_until(lambda: wire.frames_from_peer()[-1:] == [_frame(9999)])
    assert wire.frames_from_peer()[-1] == _frame(9999)
