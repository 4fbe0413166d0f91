"""The image on QEMU's ``-netdev dgram``: no root, no tap, no namespace.

QEMU carries each Ethernet frame of the guest's NIC as one UDP datagram
between two loopback sockets; this test holds the other socket and plays the
host on the wire with frames made and read by scapy: it answers the guest's
ARP, asks ns0.d1.signpo.st over UDP and pings it. All traffic stays on
127.0.0.1.
"""
from __future__ import annotations

import socket
import time

import dns.flags
import dns.message
import dns.rcode
import pytest
import qemu  # noqa: E402  (build/, put on the path by conftest)

from .conftest import needs_qemu

pytestmark = [pytest.mark.qemu, needs_qemu]

HOST_MAC = "02:00:00:00:00:01"
HOST_IP, GUEST_IP = "192.0.2.1", "192.0.2.2"
BOOT_TIMEOUT = 300


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Wire:
    """Our end of the dgram link: sends frames, answers ARP for HOST_IP."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peer: tuple[str, int] | None = None
        self.guest_mac: str | None = None

    def send(self, frame) -> None:
        self.sock.sendto(bytes(frame), self.peer)

    def receive(self, timeout: float):
        """The next frame that is not ARP for us (ARP is answered here)."""
        from scapy.all import ARP, Ether
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                return None
            frame = Ether(data)
            if frame.haslayer(ARP):
                arp = frame[ARP]
                self.guest_mac = arp.hwsrc
                if arp.op == 1 and arp.pdst == HOST_IP:
                    self.send(Ether(src=HOST_MAC, dst=arp.hwsrc) /
                              ARP(op=2, hwsrc=HOST_MAC, psrc=HOST_IP, hwdst=arp.hwsrc, pdst=arp.psrc))
                continue
            return frame
        return None


def test_boot_on_dgram_answers_and_pings(image, tmp_path):
    from scapy.all import ICMP, IP, UDP, Ether
    wire = Wire()
    guest_port = free_udp_port()
    wire.peer = ("127.0.0.1", guest_port)
    monitor = tmp_path / "monitor.sock"
    cmd = qemu.command(qemu.IMAGES / "dns.vmlinuz", qemu.IMAGES / "dns.initrd", memory=128, monitor=monitor,
                       net=qemu.Dgram(local=("127.0.0.1", guest_port), remote=("127.0.0.1", wire.port)),
                       append=f"ipv4={GUEST_IP}/24 ipv4-gateway={HOST_IP}")
    with qemu.Machine(cmd, monitor=monitor) as vm:
        assert vm.wait_for(b"ready:", BOOT_TIMEOUT) is not None, vm.console.decode(errors="replace")[-3000:]
        guest_mac = "52:54:00:12:34:56"       # QEMU's default for the first NIC
        query = dns.message.make_query("ns0.d1.signpo.st", "A")
        wire.send(Ether(src=HOST_MAC, dst=guest_mac) / IP(src=HOST_IP, dst=GUEST_IP) /
                  UDP(sport=40000, dport=53) / query.to_wire())
        reply = None
        while (frame := wire.receive(30)) is not None:
            if frame.haslayer(UDP) and frame[UDP].sport == 53:
                reply = dns.message.from_wire(bytes(frame[UDP].payload))
                break
        assert reply is not None, "no DNS reply frame"
        assert reply.id == query.id and reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert [rr.address for rr in reply.answer[0]] == ["192.168.1.2"]
        assert frame[Ether].src == guest_mac and frame[IP].src == GUEST_IP

        wire.send(Ether(src=HOST_MAC, dst=guest_mac) / IP(src=HOST_IP, dst=GUEST_IP) /
                  ICMP(type=8, id=7, seq=1) / b"ping from the test")
        echo = None
        while (frame := wire.receive(30)) is not None:
            if frame.haslayer(ICMP):
                echo = frame[ICMP]
                break
        assert echo is not None and echo.type == 0 and echo.id == 7 and bytes(echo.payload) == b"ping from the test"

        vm.send_monitor("system_powerdown")
        assert vm.wait_exit(60) == 0
        assert b"poweroff: clean (power button)" in vm.console
    wire.sock.close()
