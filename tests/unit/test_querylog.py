"""unikernel.ops.querylog: the JSON lines, and the rate limit on a virtual clock."""
from __future__ import annotations

import json

import dns.message

from netstack.counters import Counters
from tests.stackutil import Clock
from unikernel import wire
from unikernel.ops.querylog import QueryLog


def key_of(name: str, qtype: str = "A", **kw) -> bytes:
    return wire.parse_query(dns.message.make_query(name, qtype, **kw).to_wire())[0]


def make_log(**kw):
    lines: list[str] = []
    clock = Clock(100.0)
    counters = Counters()
    log = QueryLog(lines.append, clock=clock, wall_clock=lambda: 1764637200.5, counters=counters, **kw)
    return log, lines, clock, counters


def test_one_json_object_a_line():
    log, lines, clock, _ = make_log()
    log.record(clock(), "tcp", 0xC0000201, 40001, key_of("WWW.example.com", "AAAA", want_dnssec=True), 0x8580, 3,
               "zone", 0.00125)
    assert len(lines) == 1 and lines[0].endswith("\n") and lines[0].count("\n") == 1
    assert json.loads(lines[0]) == {
        "time": "2025-12-02T01:00:00.500Z", "client": "192.0.2.1", "port": 40001, "qname": "www.example.com.",
        "qtype": "AAAA", "transport": "tcp", "rcode": "NXDOMAIN", "source": "zone", "latency_ms": 1.25,
        "flags": ["aa", "rd", "ra", "do"]}


def test_rate_limit_counts_what_it_leaves_out_and_says_so():
    log, lines, clock, counters = make_log(rate=10, burst=5)
    for _ in range(20):                         # a burst: 5 pass, 15 held back
        log.record(clock(), "udp", 1, 1, key_of("a.example"), 0, 0, "cache", 0.0)
    assert len(lines) == 5 and counters["querylog.suppressed"] == 15
    clock.advance(0.15)                         # one token back (and a half)
    log.record(clock(), "udp", 1, 1, key_of("b.example"), 0, 0, "cache", 0.0)
    assert json.loads(lines[5]) == {"time": "2025-12-02T01:00:00.500Z", "suppressed": 15}
    assert json.loads(lines[6])["qname"] == "b.example."
    clock.advance(100)                          # refills to the burst, not beyond
    for _ in range(8):
        log.record(clock(), "udp", 1, 1, key_of("c.example"), 0, 0, "cache", 0.0)
    assert len(lines) == 7 + 5 and counters["querylog.written"] == 11
