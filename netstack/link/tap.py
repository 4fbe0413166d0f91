"""A Linux TAP device (the unix target): raw Ethernet frames through /dev/net/tun."""
from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct

from . import Receive

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# How many frames one readiness callback takes before yielding to the loop.
READ_BATCH = 512


class TapLink:
    """Attaches to tap `name`, creating it when missing, and brings it up."""

    def __init__(self, name: str = "tap0", mtu: int = 1500) -> None:
        if len(name.encode()) >= 16:
            raise ValueError(f"interface name {name!r} is longer than 15 bytes")
        self.name, self.mtu = name, mtu
        self.mac: bytes | None = None
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
            _bring_up(name)
        except OSError:
            os.close(self.fd)
            raise
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, receive: Receive) -> None:
        self._loop = loop
        fd, read = self.fd, os.read

        def readable() -> None:
            for _ in range(READ_BATCH):
                try:
                    frame = read(fd, 65536)
                except BlockingIOError:
                    return
                except OSError:
                    return
                receive(frame)

        loop.add_reader(fd, readable)

    def send(self, frame: bytes) -> bool:
        try:
            os.write(self.fd, frame)
        except OSError:
            # The device's queue is full (or it went away): drop, as a NIC would.
            return False
        return True

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1


def _bring_up(name: str, via: socket.socket | None = None) -> None:
    """Sets the interface up. The ioctls go through ``via`` when given: any
    socket will do, and a kernel without IPv4 (the appliance's own) offers no
    AF_INET socket to make them on."""
    if via is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _bring_up(name, s)
        return
    ifreq = struct.pack("16sH14x", name.encode(), 0)
    flags = struct.unpack_from("16sH", fcntl.ioctl(via, SIOCGIFFLAGS, ifreq))[1]
    if not flags & IFF_UP:
        fcntl.ioctl(via, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))
