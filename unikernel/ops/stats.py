"""What the appliance answered, in bounded tables: for /metrics and the dashboard.

The server calls :meth:`QueryStats.record` once for every reply it sends, on
the fast path as on the slow one, so the call is cheap: a few dict updates,
no dnspython. The question is handed over as the fast path's key
(:mod:`unikernel.wire`: lowercased name wire + qtype + qclass + EDNS byte) and
is only turned into text when a page asks for it.

Every table has a bound: the top names and top clients are Misra-Gries
summaries of ``top`` counters, the recent queries a ring of ``recent``, the
rate a ring of one count per second over ``window`` seconds, and the label
sets are closed: qtypes outside :data:`QTYPE_LABELS` count as ``other``, and
sources and transports are the server's own words.
"""
from __future__ import annotations

import bisect
import collections
import ipaddress
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import dns.name
import dns.rcode
import dns.rdatatype

# Who gave an answer: the sources, the resolver, or the server itself (an
# error it made: FORMERR, REFUSED, SERVFAIL...).
SOURCES = ("zone", "hosts", "special", "chaos", "blocked", "mdns", "cache", "forward", "server")
TRANSPORTS = ("udp", "tcp")
# Upper bounds of the answer-latency buckets, in seconds: the fast path answers
# in microseconds, a forwarded question in milliseconds to seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
_LABELLED_QTYPES = ("A", "AAAA", "ANY", "CAA", "CNAME", "DNAME", "DNSKEY", "DS", "HTTPS", "MX", "NAPTR", "NS",
                    "NSEC", "NSEC3", "NSEC3PARAM", "PTR", "RRSIG", "SOA", "SRV", "SSHFP", "SVCB", "TLSA", "TXT",
                    "AXFR", "IXFR")
QTYPE_LABELS: dict[bytes, str] = {dns.rdatatype.from_text(t).to_bytes(2, "big"): t for t in _LABELLED_QTYPES}

# flags as the server hands them over: the reply's header flags (16 bits)
# and the query's DO bit, which lives in EDNS, not the header
FLAG_DO = 0x10000
_FLAG_NAMES = ((0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"), (0x0080, "ra"), (0x0010, "cd"), (FLAG_DO, "do"))

Observe = Callable[[float, str, int, int, bytes, int, int, str, float], None]
"""``observe(now, transport, client_ip, client_port, key, flags, rcode, source, latency)``."""


def fan_out(observers: list[Observe]) -> Observe | None:
    """One observer calling each of ``observers`` (None for none)."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def observe_all(*event) -> None:
        for observe in observers:
            observe(*event)
    return observe_all


def qtype_label(key: bytes) -> str:
    return QTYPE_LABELS.get(key[-5:-3], "other")


def qtype_text(key: bytes) -> str:
    """The query type of a fast-path key, by its name (``TYPE65000`` for one without)."""
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(int.from_bytes(key[-5:-3], "big")))


def name_text(key: bytes) -> str:
    """The question's name from a fast-path key (or a bare name wire), as dig writes it."""
    try:
        return dns.name.from_wire(key, 0)[0].to_text()
    except Exception:     # a key always holds a valid name; never let a page fail on one
        return "?"


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in _FLAG_NAMES if flags & bit]


def rcode_text(rcode: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
    except ValueError:
        return str(rcode)


class Histogram:
    """Counts of observations at or below each bound (Prometheus's ``le``)."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)      # the last one: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)``, ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append((bound, running))
        return out


Item = TypeVar("Item", bound=Hashable)


class TopK(Generic[Item]):
    """The most frequent items of an unbounded stream in ``capacity``
    counters (Misra and Gries's "frequent" algorithm): a new item, once the
    table is full, takes one from every counter and the counters that reach
    zero leave. A count is never above the truth and at most ``decrements``
    below it, so every item seen more than n / (capacity + 1) times of n is
    kept. Each update is O(1) amortized (a round of decrements costs what the
    increments it undoes cost), and the common one, an item already counted,
    is one dict lookup: cheap enough for the fast path."""

    __slots__ = ("capacity", "counts", "decrements")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.counts: dict[Item, int] = {}
        self.decrements = 0

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, item: Item) -> None:
        counts = self.counts
        count = counts.get(item)
        if count is not None:
            counts[item] = count + 1
        elif len(counts) < self.capacity:
            counts[item] = 1
        else:
            self.decrements += 1
            self.counts = {kept: n - 1 for kept, n in counts.items() if n > 1}

    def top(self, n: int) -> list[tuple[Item, int, int]]:
        """``(item, count, error)`` for the ``n`` most counted, most first;
        the truth lies between count and count + error."""
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])[:n]
        return [(item, count, self.decrements) for item, count in ranked]


class RateRing:
    """One count per second of the injected clock, for the last ``seconds``
    seconds: a ring indexed by the second, whose stale slots are reset when
    they come round again."""

    __slots__ = ("seconds", "counts", "stamps")

    def __init__(self, seconds: int = 600) -> None:
        self.seconds = seconds
        self.counts = [0] * seconds
        self.stamps = [-1] * seconds

    def add(self, now: float) -> None:
        second = int(now)
        slot = second % self.seconds
        if self.stamps[slot] != second:
            self.stamps[slot] = second
            self.counts[slot] = 1
        else:
            self.counts[slot] += 1

    def series(self, now: float) -> list[int]:
        """Counts of the last ``seconds`` seconds, oldest first, the current (partial) second last."""
        last = int(now)
        n = self.seconds
        return [self.counts[s % n] if self.stamps[s % n] == s else 0 for s in range(last - n + 1, last + 1)]


class QueryStats:
    """Totals, latency histograms, top names and clients, the last queries and
    the rate, all bounded (see the module's doc)."""

    def __init__(self, *, top: int = 100, recent: int = 100, window: int = 600) -> None:
        # (transport, qtype label, source, rcode) -> answers: one dict update a
        # query; the per-label totals are sums of it, made when a page asks
        self.totals: dict[tuple[str, str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {source: Histogram() for source in SOURCES}
        self.names: TopK[bytes] = TopK(top)           # question names (wire, lowercased)
        self.clients: TopK[int] = TopK(top)
        self.recent: collections.deque = collections.deque(maxlen=recent)
        self.rate = RateRing(window)

    def record(self, now: float, transport: str, client_ip: int, client_port: int, key: bytes,
               flags: int, rcode: int, source: str, latency: float) -> None:
        """One reply sent (the :data:`Observe` signature)."""
        totals = self.totals
        label = (transport, QTYPE_LABELS.get(key[-5:-3], "other"), source, rcode)
        totals[label] = totals.get(label, 0) + 1
        histogram = self.latency.get(source)
        if histogram is not None:
            histogram.observe(latency)
        name = key[:-5]
        self.names.add(name)
        self.clients.add(client_ip)
        self.recent.append((now, client_ip, client_port, key, transport, flags, rcode, source, latency))
        self.rate.add(now)

    # -- read by the pages ------------------------------------------------------------
    def queries(self) -> collections.Counter[tuple[str, str]]:
        """Answers by (transport, qtype label)."""
        out: collections.Counter[tuple[str, str]] = collections.Counter()
        for (transport, qtype, _source, _rcode), n in self.totals.items():
            out[(transport, qtype)] += n
        return out

    def answers(self) -> collections.Counter[tuple[str, int]]:
        """Answers by (source, rcode)."""
        out: collections.Counter[tuple[str, int]] = collections.Counter()
        for (_transport, _qtype, source, rcode), n in self.totals.items():
            out[(source, rcode)] += n
        return out

    def total(self) -> int:
        return sum(self.totals.values())

    def by_source(self) -> dict[str, int]:
        out = dict.fromkeys(SOURCES, 0)
        for (source, _rcode), n in self.answers().items():
            out[source] = out.get(source, 0) + n
        return out

    def recent_queries(self, now: float) -> list[dict]:
        """The last queries, newest first, as the dashboard and the JSON API show them."""
        return [{"age_seconds": round(now - at, 3), "client": str(ipaddress.IPv4Address(ip)), "port": port,
                 "qname": name_text(key), "qtype": qtype_text(key), "transport": transport,
                 "rcode": rcode_text(rcode), "source": source, "latency_ms": round(latency * 1000, 3),
                 "flags": flag_names(flags)}
                for at, ip, port, key, transport, flags, rcode, source, latency in reversed(self.recent)]

    def top_names(self, n: int = 20) -> list[dict]:
        return [{"name": name_text(item), "count": count, "error": error}
                for item, count, error in self.names.top(n)]

    def top_clients(self, n: int = 20) -> list[dict]:
        return [{"client": str(ipaddress.IPv4Address(item)), "count": count, "error": error}
                for item, count, error in self.clients.top(n)]


class UpstreamRtt:
    """Round-trip times of answered upstream queries, a histogram per
    upstream (as many as are configured: the table is bounded by the config)."""

    def __init__(self, names: list[str]) -> None:
        self.histograms: dict[str, Histogram] = {name: Histogram() for name in names}

    def observe(self, name: str, seconds: float) -> None:
        histogram = self.histograms.get(name)
        if histogram is not None:
            histogram.observe(seconds)
