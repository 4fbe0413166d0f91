"""A frame a link cannot take (its device queue is full) is dropped, as a NIC
would, and the drop reaches the stack's counters (link.tx.drop)."""
import os
import socket

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from netstack.link.packet import PacketLink
from netstack.link.tap import TapLink
from netstack.stack import Stack
from tests.stackutil import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC


def _full_pipe() -> tuple[int, int]:
    """A pipe whose write end, non-blocking, is full: the next write gets EAGAIN."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"\0" * 65536)
    except BlockingIOError:
        pass
    return read_end, write_end


def _tap_on(fd: int) -> TapLink:
    """A TapLink over `fd` instead of /dev/net/tun (which would need a device)."""
    link = TapLink.__new__(TapLink)
    link.name, link.mtu, link.mac, link.fd, link._loop = "tap-test", 1500, None, fd, None
    return link


def _packet_on(sock: socket.socket) -> PacketLink:
    link = PacketLink.__new__(PacketLink)
    link.name, link.mtu, link.mac, link.sock, link._loop = "eth-test", 1500, None, sock, None
    link.ring = None            # the socket's own send, a frame each (the rings need a real device)
    return link


def _ask_and_ping(stack: Stack) -> None:
    """An ARP request for us, then an echo request: two replies to send."""
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP)))
    stack.receive(bytes(Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP) / ICMP() / b"ping"))


def test_a_full_tap_queue_is_counted_by_the_stack():
    read_end, write_end = _full_pipe()
    try:
        link = _tap_on(write_end)
        assert link.send(b"\0" * 60) is False
        stack = Stack(link, f"{OUR_IP}/24", mac=OUR_MAC, clock=lambda: 0.0)
        _ask_and_ping(stack)
        assert stack.counters["icmp.echo.replied"] == 1
        assert stack.counters["link.tx.drop"] == 2     # the ARP reply, then the echo reply
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_full_packet_socket_is_counted_by_the_stack():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    try:
        while True:
            ours.send(b"\0" * 1024)
    except BlockingIOError:
        pass
    try:
        link = _packet_on(ours)
        assert link.send(b"\0" * 60) is False
        stack = Stack(link, f"{OUR_IP}/24", mac=OUR_MAC, clock=lambda: 0.0)
        _ask_and_ping(stack)
        assert stack.counters["link.tx.drop"] == 2
    finally:
        ours.close()
        theirs.close()

