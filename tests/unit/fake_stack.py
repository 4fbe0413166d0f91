"""A stand-in for netstack.Stack's UDP contract, for the DNS server's unit tests:
``bind``/``bind_responder``/``unbind``/``sendto`` recorded, no frames."""
from __future__ import annotations

import asyncio
import random

from netstack.checksum import ones_sum
from netstack.counters import Counters

CLIENT_IP = 0xC0000201     # 192.0.2.1
SERVER_IP = 0xC0000202     # 192.0.2.2


class FakeUdp:
    """Binds as the stack does; `sendto` records (a subclass routes it), and
    ephemeral ports come from a seeded RNG, so a test's ports repeat."""

    def __init__(self, seed: int = 7) -> None:
        self.bindings = {}
        self.sent: list[tuple[bytes, int, int, int]] = []
        self.rng = random.Random(seed)

    def bind(self, port, on_datagram):
        if port in self.bindings:
            raise OSError("bound")
        self.bindings[port] = on_datagram

    def bind_responder(self, port, responder):
        """What the stack does with a responder's reply: sends it, once its
        sum is held to the payload's (the stack patches the checksum with it)."""
        def deliver(payload, src_ip, src_port, dst_ip, dst_port):
            reply = responder(payload, src_ip, src_port, dst_ip, dst_port)
            if reply is not None:
                if reply[1] % 0xFFFF != ones_sum(reply[0]):     # raised, not asserted: the fuzzers run it too
                    raise AssertionError("the responder's sum is not its payload's")
                self.sendto(reply[0], port, src_ip, src_port)
        self.bind(port, deliver)

    def bind_ephemeral(self, handler) -> int:
        while True:
            port = self.rng.randint(1024, 65535)
            if port not in self.bindings:
                self.bindings[port] = handler
                return port

    def unbind(self, port):
        self.bindings.pop(port, None)

    def sendto(self, payload, src_port, dst_ip, dst_port):
        self.sent.append((payload, src_port, dst_ip, dst_port))


class FakeStack:
    def __init__(self) -> None:
        self.udp = FakeUdp()
        self.counters = Counters()
        self.tcp = None
        self.address = SERVER_IP
        self.groups: set[int] = set()

    def now(self) -> float:
        return 0.0

    def join_group(self, group: int) -> None:
        self.groups.add(group)

    def leave_group(self, group: int) -> None:
        self.groups.discard(group)


async def exchange(stack: FakeStack, server, payload: bytes, src_port: int = 40000) -> bytes | None:
    """Delivers one datagram to the server's port and returns what it sent back
    (after the slow path's task, if any, has run)."""
    before = len(stack.udp.sent)
    stack.udp.bindings[server.port](payload, CLIENT_IP, src_port, SERVER_IP, server.port)
    while server.pending or server.forwarding:
        await asyncio.gather(*server.pending, *server.forwarding, return_exceptions=True)
    sent = stack.udp.sent[before:]
    assert len(sent) <= 1, "one query, at most one reply"
    if not sent:
        return None
    reply, src, dst_ip, dst_port = sent[0]
    assert (src, dst_ip, dst_port) == (server.port, CLIENT_IP, src_port)
    return reply


def kept_wire(kept) -> bytes | None:
    """A fast lookup's wire.KeptAnswer (or None) as the whole answer kept
    (ID 0, RD and CD clear), once its kept sum is held to that answer's: a
    sum that did not follow the TTLs counted down fails here."""
    if kept is None:
        return None
    flags = kept.rd_cleared << 8 | kept.flags_ad
    whole = flags.to_bytes(4, "big") + kept.tail
    assert len(whole) == kept.size and whole[12:12 + len(kept.name)] == kept.name
    assert (kept.tail_sum + flags) % 0xFFFF == ones_sum(whole), "the kept sum is not the answer's"
    return whole
