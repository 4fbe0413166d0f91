"""Where frames come from and go.

A link has one small interface:

* ``attach(loop, receive)``: start delivering every received frame, as bytes,
  by calling ``receive(frame)`` on the loop;
* ``send(frame)``: put one Ethernet frame on the wire; never blocks: a frame the
  device cannot take right now is dropped, as a NIC would, and ``send``
  returns False (the stack counts it as ``link.tx.drop``);
* ``close()``.

Backends: ``tap`` (Linux TUN/TAP), ``packet`` (AF_PACKET on a NIC), ``memory``
(an in-process wire with seeded faults), and ``pcap.PcapTee``, which wraps any
link and writes what crosses it to a pcap file.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

Receive = Callable[[bytes], None]


class Link(Protocol):
    mac: bytes | None  # the device's own address, when it has one
    mtu: int

    def attach(self, loop: asyncio.AbstractEventLoop, receive: Receive) -> None: ...

    def send(self, frame: bytes) -> bool: ...

    def close(self) -> None: ...
