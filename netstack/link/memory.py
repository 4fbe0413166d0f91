"""An in-process wire between two endpoints, with seeded faults, for tests.

Faults, each a probability per frame: drop, duplicate, reorder (hold a frame
back until the next one has passed), corrupt (flip one byte), truncate (cut at
a random length). The same seed gives the same faults. Attached to an asyncio
loop, frames are delivered with `call_soon`; attached with `loop=None`, they
wait in a queue until `pump()`, for deterministic tests with a virtual clock.
"""
from __future__ import annotations

import asyncio
import random
from collections import deque

from ..counters import Counters
from . import Receive


class MemoryEnd:
    def __init__(self, wire: MemoryWire, index: int, mac: bytes | None, mtu: int) -> None:
        self.wire, self.index, self.mac, self.mtu = wire, index, mac, mtu
        self.receive: Receive | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.held: bytes | None = None   # a frame being reordered

    @property
    def peer(self) -> MemoryEnd:
        return self.wire.endpoints[1 - self.index]

    def attach(self, loop: asyncio.AbstractEventLoop | None, receive: Receive) -> None:
        self.loop, self.receive = loop, receive

    def send(self, frame: bytes) -> bool:
        self.wire._carry(self, bytes(frame))
        return True   # what the wire loses is its faults, not a transmit drop

    def close(self) -> None:
        self.receive = None


class MemoryWire:
    def __init__(self, *, seed: int = 0, drop: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0, corrupt: float = 0.0, truncate: float = 0.0,
                 mtu: int = 1500, macs: tuple[bytes | None, bytes | None] = (None, None)) -> None:
        self.rng = random.Random(seed)
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.corrupt, self.truncate = corrupt, truncate
        self.faults = Counters()
        self.queue: deque[tuple[MemoryEnd, bytes]] = deque()
        self.endpoints = (MemoryEnd(self, 0, macs[0], mtu), MemoryEnd(self, 1, macs[1], mtu))

    def ends(self) -> tuple[MemoryEnd, MemoryEnd]:
        return self.endpoints

    def _carry(self, sender: MemoryEnd, frame: bytes) -> None:
        rng = self.rng
        if rng.random() < self.drop:
            self.faults["dropped"] += 1
            return
        if rng.random() < self.corrupt and frame:
            i = rng.randrange(len(frame))
            frame = frame[:i] + bytes([frame[i] ^ (1 << rng.randrange(8))]) + frame[i + 1:]
            self.faults["corrupted"] += 1
        if rng.random() < self.truncate and frame:
            frame = frame[:rng.randrange(len(frame))]
            self.faults["truncated"] += 1
        copies = 2 if rng.random() < self.duplicate else 1
        if copies == 2:
            self.faults["duplicated"] += 1
        if sender.held is None and rng.random() < self.reorder:
            sender.held = frame            # overtaken by the next frame
            self.faults["reordered"] += 1
            copies -= 1
        for _ in range(copies):
            self._deliver(sender.peer, frame)
        if sender.held is not None and sender.held is not frame:
            held, sender.held = sender.held, None
            self._deliver(sender.peer, held)

    def _deliver(self, to: MemoryEnd, frame: bytes) -> None:
        if to.loop is not None:
            to.loop.call_soon(self._receive, to, frame)
        else:
            self.queue.append((to, frame))

    @staticmethod
    def _receive(to: MemoryEnd, frame: bytes) -> None:
        if to.receive is not None:
            to.receive(frame)

    def flush_held(self) -> None:
        """Releases frames held back for reordering (nothing follows them)."""
        for end in self.endpoints:
            if end.held is not None:
                held, end.held = end.held, None
                self._deliver(end.peer, held)

    def pump(self, limit: int = 100_000) -> int:
        """Delivers queued frames (and what they cause) until quiet; returns the count."""
        delivered = 0
        while self.queue and delivered < limit:
            to, frame = self.queue.popleft()
            self._receive(to, frame)
            delivered += 1
        return delivered
