"""A tee that writes every frame crossing a link to a pcap file (the classic
libpcap format, LINKTYPE_ETHERNET), which tcpdump and Wireshark open."""
from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

from . import Link, Receive

_GLOBAL = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
_RECORD = struct.Struct("<IIII")


class PcapTee:
    def __init__(self, link: Link, path: str, clock: Callable[[], float] = time.time) -> None:
        self.link, self.clock = link, clock
        self.mtu = link.mtu
        self.mac = getattr(link, "mac", None)
        self.file = open(path, "wb")
        self.file.write(_GLOBAL)
        self.file.flush()

    def _write(self, frame: bytes) -> None:
        if self.file.closed:
            return
        now = self.clock()
        seconds = int(now)
        self.file.write(_RECORD.pack(seconds, int((now - seconds) * 1e6), len(frame), len(frame)))
        self.file.write(frame)
        self.file.flush()

    def attach(self, loop: asyncio.AbstractEventLoop, receive: Receive) -> None:
        def tee(frame: bytes) -> None:
            self._write(frame)
            receive(frame)
        self.link.attach(loop, tee)

    def send(self, frame: bytes) -> bool:
        self._write(frame)
        return self.link.send(frame)

    def close(self) -> None:
        self.link.close()
        self.file.close()
