"""AF_PACKET on a NIC: raw frames inside the VM, where the kernel's own IP
stack is left unconfigured and the appliance owns the wire."""
from __future__ import annotations

import asyncio
import socket

from . import Receive
from .tap import READ_BATCH, _bring_up

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class PacketLink:
    def __init__(self, name: str = "eth0", mtu: int = 1500) -> None:
        self.name, self.mtu = name, mtu
        self.dropped = 0
        _bring_up(name)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((name, 0))
        self.sock.setblocking(False)
        self.mac: bytes | None = self.sock.getsockname()[4][:6] or None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, receive: Receive) -> None:
        self._loop = loop
        recvfrom = self.sock.recvfrom

        def readable() -> None:
            for _ in range(READ_BATCH):
                try:
                    frame, address = recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                if address[2] != PACKET_OUTGOING:   # our own frames echo back on ETH_P_ALL
                    receive(frame)

        loop.add_reader(self.sock.fileno(), readable)

    def send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError:
            self.dropped += 1

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
