"""A stack on a link that records what it sends, driven by a virtual clock."""
from __future__ import annotations

from netstack.stack import Stack

OUR_MAC = bytes.fromhex("020000c00002")
PEER_MAC = bytes.fromhex("02aabbccddee")
OUR_IP, PEER_IP, GATEWAY = "192.0.2.2", "192.0.2.1", "192.0.2.254"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CaptureLink:
    mtu = 1500
    mac = None

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def attach(self, loop, receive) -> None:
        self.receive = receive

    def send(self, frame: bytes) -> None:
        self.sent.append(bytes(frame))

    def close(self) -> None:
        pass

    def take(self) -> list[bytes]:
        sent, self.sent = self.sent, []
        return sent


def make_stack(mtu: int = 1500, gateway: str | None = GATEWAY):
    clock = Clock()
    link = CaptureLink()
    stack = Stack(link, f"{OUR_IP}/24", gateway, mtu=mtu, mac=OUR_MAC, clock=clock)
    return stack, link, clock


def prime_arp(stack: Stack, ip: str = PEER_IP, mac: bytes = PEER_MAC) -> None:
    """Puts the peer in the ARP cache, as if it had asked for us."""
    from scapy.layers.l2 import ARP, Ether
    stack.receive(bytes(Ether(dst=OUR_MAC, src=mac) / ARP(op=1, hwsrc=mac, psrc=ip, pdst=OUR_IP)))
    stack.link.take()
