"""``--log-queries``: one JSON object a line for every answer sent.

Fields: ``time`` (UTC, ISO 8601 with milliseconds, from the injected wall
clock), ``client``, ``port``, ``qname``, ``qtype``, ``transport``, ``rcode``,
``source`` (what answered), ``latency_ms``, ``flags`` (the reply's aa, tc,
rd, ra, cd and the query's do).

A flood must not turn into a flood of log lines: a token bucket (``rate``
lines a second, bursts of ``burst``, on the injected monotonic clock) lets
lines through; what it holds back is counted (``querylog.suppressed``) and
the next line that passes is preceded by ``{"time": ..., "suppressed": N}``.
The log goes to its own stream (stdout by default); unstructured logs stay
on stderr.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Callable

from unikernel.ops.stats import flag_names, name_text, qtype_text, rcode_text

Write = Callable[[str], object]


class QueryLog:
    def __init__(self, write: Write, *, clock: Callable[[], float], wall_clock: Callable[[], float],
                 counters, rate: float = 100.0, burst: float = 200.0) -> None:
        self.write = write
        self.clock = clock
        self.wall_clock = wall_clock
        self.counters = counters
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.refilled_at: float | None = None
        self.suppressed = 0        # held back since the last line written

    def _take(self, now: float) -> bool:
        if self.refilled_at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate)
        self.refilled_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def record(self, now: float, transport: str, client_ip: int, client_port: int, key: bytes,
               flags: int, rcode: int, source: str, latency: float) -> None:
        """One reply sent (the :data:`unikernel.ops.stats.Observe` signature)."""
        if not self._take(now):
            self.suppressed += 1
            self.counters["querylog.suppressed"] += 1
            return
        stamp = datetime.datetime.fromtimestamp(self.wall_clock(), datetime.UTC).isoformat(timespec="milliseconds")
        stamp = stamp.replace("+00:00", "Z")
        if self.suppressed:
            self.write(json.dumps({"time": stamp, "suppressed": self.suppressed}) + "\n")
            self.suppressed = 0
        line = {"time": stamp, "client": str(ipaddress.IPv4Address(client_ip)), "port": client_port,
                "qname": name_text(key), "qtype": qtype_text(key), "transport": transport, "rcode": rcode_text(rcode),
                "source": source, "latency_ms": round(latency * 1000, 3), "flags": flag_names(flags, key)}
        self.write(json.dumps(line) + "\n")
        self.counters["querylog.written"] += 1

