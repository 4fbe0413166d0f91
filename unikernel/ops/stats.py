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
import itertools
import operator
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import dns.name
import dns.rcode
import dns.rdatatype

from unikernel.wire import EDNS_DO

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

# the reply's header flags, as the server hands them over (16 bits)
_FLAG_NAMES = ((0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"), (0x0080, "ra"), (0x0010, "cd"))
BATCH = 1024                # replies recorded before they are counted into the tables

Observe = Callable[[float, str, int, int, bytes, int, int, str, float], None]
"""``observe(arrived, transport, client_ip, client_port, key, flags, rcode, source, latency)``:
``flags`` the reply's header flags, ``key`` the question's fast-path key (its
last byte says whether the query set DO)."""


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


_QTYPE_BYTES = slice(-5, -3)     # of a fast-path key: name wire, qtype, qclass, EDNS byte
_NAME_BYTES = slice(None, -5)


def qtype_text(key: bytes) -> str:
    """The query type of a fast-path key, by its name (``TYPE65000`` for one without)."""
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(int.from_bytes(key[-5:-3], "big")))


def name_text(key: bytes) -> str:
    """The question's name from a fast-path key (or a bare name wire), as dig writes it."""
    try:
        return dns.name.from_wire(key, 0)[0].to_text()
    except Exception:     # a key always holds a valid name; never let a page fail on one
        return "?"


def flag_names(flags: int, key: bytes) -> list[str]:
    """The reply's flags set, and ``do`` when the query asked for DNSSEC records."""
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    return names + ["do"] if key[-1] == EDNS_DO else names


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

    def add(self, item: Item, weight: int = 1) -> None:
        """``weight`` more of ``item`` (the weighted form: once the table
        overflows, every counter gives up the smallest count among them)."""
        counts = self.counts
        count = counts.get(item)
        if count is not None:
            counts[item] = count + weight
        elif len(counts) < self.capacity:
            counts[item] = weight
        else:
            counts[item] = weight
            floor = min(counts.values())
            self.decrements += floor
            self.counts = {kept: n - floor for kept, n in counts.items() if n > floor}

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

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        slot = second % self.seconds
        if self.stamps[slot] != second:
            if second < self.stamps[slot]:
                return                  # older than what the slot holds: outside the window
            self.stamps[slot] = second
            self.counts[slot] = count
        else:
            self.counts[slot] += count

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
        self._pending: list[tuple] = []                # recorded, not yet counted (at most BATCH)

    def record(self, *event) -> None:
        """One reply sent, with the :data:`Observe` arguments. On the fast
        path, so it only queues the event; :meth:`drain` counts a batch at a
        time, with C-level passes (Counter, map) rather than Python per reply."""
        pending = self._pending
        pending.append(event)
        if len(pending) >= BATCH:
            self.drain()

    def drain(self) -> None:
        """Counts the queued replies into the tables (every reader calls it)."""
        events, self._pending = self._pending, []
        if not events:
            return
        arrived, transports, clients, _ports, keys, _flags, rcodes, sources, latencies = map(list, zip(*events))
        # one C-level count over what varies; a key's hash is already cached
        # (the fast path looked it up), so this costs little per reply
        buckets = map(bisect.bisect_left, itertools.repeat(LATENCY_BUCKETS), latencies)
        totals = self.totals
        names: collections.Counter[bytes] = collections.Counter()
        for (key, transport, source, rcode, bucket), n in collections.Counter(zip(keys, transports, sources, rcodes,
                                                                                  buckets)).items():
            label = (transport, QTYPE_LABELS.get(key[_QTYPE_BYTES], "other"), source, rcode)
            totals[label] = totals.get(label, 0) + n
            names[key[_NAME_BYTES]] += n
            histogram = self.latency.get(source)
            if histogram is not None:
                histogram.counts[bucket] += n
                histogram.count += n
        for source in set(sources):
            histogram = self.latency.get(source)
            if histogram is not None:
                histogram.total += sum(itertools.compress(latencies, map(operator.eq, sources,
                                                                         itertools.repeat(source))))
        for name, n in names.items():
            self.names.add(name, n)
        for client, n in collections.Counter(clients).items():
            self.clients.add(client, n)
        if int(arrived[0]) == int(arrived[-1]):          # the common case: all within one second
            self.rate.add(arrived[0], len(arrived))
        else:
            for second, n in collections.Counter(map(int, arrived)).items():
                self.rate.add(second, n)
        self.recent.extend(events[-(self.recent.maxlen or 0):])

    # -- read by the pages ------------------------------------------------------------
    def queries(self) -> collections.Counter[tuple[str, str]]:
        """Answers by (transport, qtype label)."""
        self.drain()
        out: collections.Counter[tuple[str, str]] = collections.Counter()
        for (transport, qtype, _source, _rcode), n in self.totals.items():
            out[(transport, qtype)] += n
        return out

    def answers(self) -> collections.Counter[tuple[str, int]]:
        """Answers by (source, rcode)."""
        self.drain()
        out: collections.Counter[tuple[str, int]] = collections.Counter()
        for (_transport, _qtype, source, rcode), n in self.totals.items():
            out[(source, rcode)] += n
        return out

    def total(self) -> int:
        self.drain()
        return sum(self.totals.values())

    def by_source(self) -> dict[str, int]:
        out = dict.fromkeys(SOURCES, 0)
        for (source, _rcode), n in self.answers().items():
            out[source] = out.get(source, 0) + n
        return out

    def recent_queries(self, now: float) -> list[dict]:
        """The last queries, newest first, as the dashboard and the JSON API show them."""
        self.drain()
        return [{"age_seconds": round(now - at, 3), "client": str(ipaddress.IPv4Address(ip)), "port": port,
                 "qname": name_text(key), "qtype": qtype_text(key), "transport": transport,
                 "rcode": rcode_text(rcode), "source": source, "latency_ms": round(latency * 1000, 3),
                 "flags": flag_names(flags, key)}
                for at, transport, ip, port, key, flags, rcode, source, latency in reversed(self.recent)]

    def top_names(self, n: int = 20) -> list[dict]:
        self.drain()
        return [{"name": name_text(item), "count": count, "error": error}
                for item, count, error in self.names.top(n)]

    def top_clients(self, n: int = 20) -> list[dict]:
        self.drain()
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
