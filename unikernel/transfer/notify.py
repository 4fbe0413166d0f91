"""NOTIFY (RFC 1996): telling secondaries that a zone has a new serial.

:class:`Notifier` is the protocol without I/O: ``zone_changed`` queues one
NOTIFY per secondary, ``due(now)`` gives the datagrams to send (first at
once, then again after each interval of :data:`RETRY_AFTER` until the
secondary answers, at most :data:`ATTEMPTS` times), ``on_reply`` matches an
answer by address, ID and zone. Timers are data (``next_at``); the driver,
:class:`NotifyService`, sends what is due over the stack's UDP and sleeps
until the next deadline.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdatatype
import dns.rrset
import dns.tsig

log = logging.getLogger("unikernel.transfer.notify")

RETRY_AFTER = 2.0         # seconds between attempts (BIND: 15 s; a secondary on the link answers at once)
ATTEMPTS = 5
MAX_PENDING = 1024        # NOTIFYs waiting for an answer; beyond, the oldest is given up (counted)

Target = tuple[int, int]  # IPv4 address as an int, port


def parse_target(text: str) -> Target:
    """``ADDR`` or ``ADDR:PORT`` (53 by default)."""
    address, _, port = text.partition(":")
    number = int(port) if port else 53
    if not 0 < number < 65536:
        raise ValueError(f"notify {text}: port out of range")
    return int(ipaddress.IPv4Address(address)), number


@dataclass
class Pending:
    zone: dns.name.Name
    target: Target
    message: bytes
    query_id: int
    attempts: int = 0
    next_at: float = 0.0


class Notifier:
    def __init__(self, targets: Iterable[Target], *, key: dns.tsig.Key | None, counters,
                 rng: random.Random | None = None) -> None:
        self.targets = list(targets)
        self.key = key
        self.counters = counters
        self.rng = rng or random.SystemRandom()
        self.pending: dict[tuple[dns.name.Name, Target], Pending] = {}

    def zone_changed(self, origin: dns.name.Name, soa: dns.rrset.RRset, now: float) -> None:
        """Queues a NOTIFY for ``origin`` to every secondary (replacing one
        still unanswered for an older serial)."""
        for target in self.targets:
            query_id = self.rng.randrange(65536)
            message = dns.message.make_query(origin, dns.rdatatype.SOA, id=query_id)
            message.flags = dns.flags.AA          # (the opcode lives in the flags: set it after)
            message.set_opcode(dns.opcode.NOTIFY)
            message.answer.append(soa)   # RFC 1996 3.7: the new SOA, as a hint
            if self.key is not None:
                message.use_tsig(self.key)
            if len(self.pending) >= MAX_PENDING and (origin, target) not in self.pending:
                oldest = next(iter(self.pending))
                del self.pending[oldest]
                self.counters["notify.overflow.drop"] += 1
            self.pending[(origin, target)] = Pending(origin, target, message.to_wire(), query_id, 0, now)

    def due(self, now: float) -> list[tuple[bytes, Target]]:
        """What to send now; entries out of attempts are given up."""
        out = []
        for key, entry in list(self.pending.items()):
            if entry.next_at > now:
                continue
            if entry.attempts >= ATTEMPTS:
                del self.pending[key]
                self.counters["notify.unanswered"] += 1
                log.warning("NOTIFY of %s to %s:%d unanswered after %d attempts", entry.zone,
                            ipaddress.IPv4Address(entry.target[0]), entry.target[1], entry.attempts)
                continue
            entry.attempts += 1
            entry.next_at = now + RETRY_AFTER
            self.counters["notify.sent"] += 1
            out.append((entry.message, entry.target))
        return out

    def next_at(self) -> float | None:
        return min((entry.next_at for entry in self.pending.values()), default=None)

    def on_reply(self, payload: bytes, source: Target) -> None:
        try:
            reply = dns.message.from_wire(payload, question_only=True)
        except Exception:
            self.counters["notify.reply.malformed.drop"] += 1
            return
        if not reply.flags & dns.flags.QR or reply.opcode() != dns.opcode.NOTIFY or len(reply.question) != 1:
            self.counters["notify.reply.unexpected.drop"] += 1
            return
        entry = self.pending.get((reply.question[0].name, source))
        if entry is None or entry.query_id != reply.id:
            self.counters["notify.reply.unexpected.drop"] += 1
            return
        del self.pending[(entry.zone, source)]
        self.counters["notify.answered"] += 1


class NotifyService:
    """Drives a :class:`Notifier` on the stack's UDP: one ephemeral port,
    a task that sends what is due and sleeps until the next deadline."""

    def __init__(self, stack, notifier: Notifier, clock: Callable[[], float]) -> None:
        self.stack = stack
        self.notifier = notifier
        self.clock = clock
        self.port: int | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.port = self.stack.udp.bind_ephemeral(self._on_datagram)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def zone_changed(self, origin: dns.name.Name, soa: dns.rrset.RRset) -> None:
        self.notifier.zone_changed(origin, soa, self.clock())
        self.wake.set()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.port is not None:
            self.stack.udp.unbind(self.port)

    def _on_datagram(self, payload: bytes, src_ip: int, src_port: int, dst_ip: int, dst_port: int) -> None:
        self.notifier.on_reply(payload, (src_ip, src_port))

    async def _run(self) -> None:
        assert self.port is not None
        while True:
            for message, (address, port) in self.notifier.due(self.clock()):
                self.stack.udp.sendto(message, self.port, address, port)
            deadline = self.notifier.next_at()
            self.wake.clear()
            timeout = None if deadline is None else max(deadline - self.clock(), 0.01)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass
