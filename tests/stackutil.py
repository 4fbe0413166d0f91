"""A stack on a link that records what it sends, driven by a virtual clock."""
from __future__ import annotations

import asyncio
import ipaddress

from netstack.link.tap import TapLink
from netstack.stack import Stack
from tests.netns import Namespace

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

    def send(self, frame: bytes) -> bool:
        self.sent.append(bytes(frame))
        return True

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


def stack_pair(**faults):
    """Two stacks (10.9.0.1 and .2) over a MemoryWire with `faults`, pumped by
    hand on one virtual clock: (wire, clock, a, b)."""
    from netstack.link.memory import MemoryWire
    wire = MemoryWire(**faults)
    a_end, b_end = wire.ends()
    clock = Clock()
    a = Stack(a_end, "10.9.0.1/24", clock=clock)
    b = Stack(b_end, "10.9.0.2/24", clock=clock)
    a_end.attach(None, a.receive)
    b_end.attach(None, b.receive)
    return wire, clock, a, b


def prime_arp(stack: Stack, ip: str = PEER_IP, mac: bytes = PEER_MAC) -> None:
    """Puts the peer in the ARP cache, as if it had asked for us."""
    from scapy.layers.l2 import ARP, Ether
    stack.receive(bytes(Ether(dst=OUR_MAC, src=mac) / ARP(op=1, hwsrc=mac, psrc=ip, pdst=OUR_IP)))
    stack.link.take()


# -- against the kernel: our stack on a tap inside a namespace ---------------------------
KERNEL_SIDE, STACK_SIDE = "192.0.2.1", "192.0.2.2"


def tap_link(ns: Namespace, lossy: int = 0) -> TapLink:
    """tap0 in `ns`, its kernel side at KERNEL_SIDE/24, opened from this
    process; `lossy` percent of frames are dropped each way by nftables."""
    ns.add_tap("tap0", f"{KERNEL_SIDE}/24")
    if lossy:
        ns.add_loss("tap0", lossy)
    with ns.entered():
        return TapLink("tap0")


def with_stack(body, *, lossy: int = 0):
    """Runs ``await body(ns, stack)`` with our stack on tap0 in a fresh namespace
    (see tap_link for `lossy`)."""
    with Namespace() as ns:
        link = tap_link(ns, lossy)

        async def main():
            stack = Stack(link, ipaddress.IPv4Interface(f"{STACK_SIDE}/24"), ipaddress.IPv4Address(KERNEL_SIDE))
            await stack.start()
            try:
                return await body(ns, stack)
            finally:
                stack.close()

        return asyncio.run(main())


async def serving(appliance, link, body, *, timeout: float = 10.0):
    """``await body()`` while ``unikernel.main.serve`` runs `appliance` on
    `link` (started, and ready, before; stopped, and waited for, after)."""
    from unikernel.main import serve
    stop = asyncio.Event()
    ready = asyncio.Event()
    server = asyncio.get_running_loop().create_task(serve(appliance, link, stop=stop, ready=lambda _line: ready.set()))
    await asyncio.wait_for(ready.wait(), timeout)
    try:
        return await body()
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout)
