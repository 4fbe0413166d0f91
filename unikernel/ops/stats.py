"""What the appliance answered, in bounded tables: for /metrics and the dashboard.

The server calls :meth:`QueryStats.record` once for every reply it sends, on
the fast path as on the slow one, so the call is cheap: it appends the
reply's fields to a flat list, and every :data:`BATCH` replies (or when a page
reads) :meth:`QueryStats.drain` counts them with C-level passes over each
field. The question is handed over as the fast path's key
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
from collections.abc import Callable, Hashable, Iterable
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


_QTYPE_BYTES = slice(-5, -3)     # of a fast-path key: name wire, qtype, qclass, EDNS byte
_QTYPE_HIGH, _QTYPE_LOW = -5, -4
_NAME_BYTES = slice(None, -5)
_QTYPE_LABELS_BY_LOW_BYTE = {code[1]: label for code, label in QTYPE_LABELS.items() if code[0] == 0}
# the Observe arguments' places
_FIELDS = 9
_ARRIVED, _TRANSPORT, _CLIENT, _KEY, _RCODE, _SOURCE, _LATENCY = 0, 1, 2, 4, 6, 7, 8


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

    def observe_sorted(self, values: list[float]) -> None:
        """:meth:`observe` each of ``values``, given in ascending order: a bisect per bucket they reach."""
        counts = self.counts
        below = 0
        for bucket, bound in enumerate(self.bounds):
            upto = bisect.bisect_right(values, bound, below)
            counts[bucket] += upto - below
            below = upto
            if below == len(values):
                break
        else:
            counts[-1] += len(values) - below
        self.total += sum(values)
        self.count += len(values)

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
    counters (Misra and Gries's "frequent" algorithm, in the mergeable form of
    Agarwal et al.): items are counted exactly, a batch at a time, and once the
    table holds more than ``capacity`` counters every counter gives up the
    (capacity + 1)-th largest count and those left at zero leave. A count is
    never above the truth and at most ``decrements`` below it; each round takes
    ``floor`` from at least capacity + 1 counters, so ``decrements`` stays at
    most n / (capacity + 1) of n, and every item seen more often is kept."""

    __slots__ = ("capacity", "counts", "decrements")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.counts: collections.Counter[Item] = collections.Counter()
        self.decrements = 0

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, item: Item, weight: int = 1) -> None:
        """``weight`` more of ``item``."""
        self.counts[item] += weight
        if len(self.counts) > self.capacity:
            self._trim()

    def update(self, items: Iterable[Item]) -> None:
        """One more of each of ``items`` (counted at C speed, then trimmed once)."""
        self.counts.update(items)
        if len(self.counts) > self.capacity:
            self._trim()

    def _trim(self) -> None:
        counts = self.counts
        floor = sorted(counts.values(), reverse=True)[self.capacity]
        self.decrements += floor
        kept = itertools.compress(counts.items(), map(operator.gt, counts.values(), itertools.repeat(floor)))
        self.counts = collections.Counter({item: n - floor for item, n in kept})

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
    the rate, all bounded (see the module's doc).

    :attr:`record` is the server's observer: it only appends the reply's
    arguments to one flat list of at most :data:`BATCH` replies; :meth:`drain`
    counts that batch field by field with C-level passes (strided slices,
    Counter, sort, bisect over the sorted latencies), so the tables are touched once per distinct label in a
    batch rather than once per reply. What only a page shows (the names as
    text, the sum per transport or per source) is made when a page asks."""

    def __init__(self, *, top: int = 100, recent: int = 100, window: int = 600) -> None:
        # answers by (transport, qtype label) and by (source, rcode): the pages read these two sums, never
        # the four labels together
        self.by_query: dict[tuple[str, str], int] = {}
        self.by_answer: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {source: Histogram() for source in SOURCES}
        self.names: TopK[bytes] = TopK(top)           # question names (wire, lowercased)
        self.clients: TopK[int] = TopK(top)
        self.recent: collections.deque = collections.deque(maxlen=recent)
        self.rate = RateRing(window)
        self.record: Observe = self._recorder()

    def _recorder(self) -> Observe:
        # a closure, not a method: the list's extend is a cell away, not an attribute lookup on every reply;
        # one flat list, not a tuple per reply, so drain takes each field as one strided slice
        pending: list = []
        extend = pending.extend
        self._pending = pending
        drain = self.drain
        limit = BATCH * _FIELDS

        def record(*event) -> None:
            """One reply sent, with the :data:`Observe` arguments: queued, counted by :meth:`drain`."""
            extend(event)
            if len(pending) >= limit:
                drain()
        return record

    def drain(self) -> None:
        """Counts the queued replies into the tables (every reader calls it)."""
        flat = self._pending
        if not flat:
            return
        last = flat[-(self.recent.maxlen or 0) * _FIELDS:]
        self.recent.extend(zip(*[iter(last)] * _FIELDS))          # in the order they were sent
        arrived, transports, clients, keys, rcodes, sources, latencies = (flat[field::_FIELDS] for field in (
            _ARRIVED, _TRANSPORT, _CLIENT, _KEY, _RCODE, _SOURCE, _LATENCY))
        flat.clear()
        self._count_seconds(arrived)
        self._count_questions(transports, keys)
        self._count_answers(sources, rcodes, latencies)
        self.names.update(map(operator.getitem, keys, itertools.repeat(_NAME_BYTES)))
        self.clients.update(clients)

    def _count_seconds(self, arrived: list[float]) -> None:
        first, last = int(min(arrived)), int(max(arrived))
        if first == last:                 # the common case: the whole batch arrived within one second
            self.rate.add(first, len(arrived))
        else:
            for second, n in collections.Counter(map(int, arrived)).items():
                self.rate.add(second, n)

    def _count_questions(self, transports: list[str], keys: list[bytes]) -> None:
        if any(map(operator.getitem, keys, itertools.repeat(_QTYPE_HIGH))):
            # a qtype above 255 (CAA, an unassigned one): the two bytes, rare enough to pay for their slices
            qtypes: Iterable = map(operator.getitem, keys, itertools.repeat(_QTYPE_BYTES))
            labels: dict = QTYPE_LABELS
        else:
            # the low byte alone says it: an int, which indexing a bytes makes without allocating
            qtypes = map(operator.getitem, keys, itertools.repeat(_QTYPE_LOW))
            labels = _QTYPE_LABELS_BY_LOW_BYTE
        qtypes = list(qtypes)
        kinds = set(transports)
        most = max(kinds, key=transports.count) if len(kinds) > 1 else transports[0]
        # the most used transport's count is what the others leave: one pass over the batch, and one more
        # (a compress) for each other transport in it, rather than a Counter of (transport, qtype) pairs
        counted = collections.Counter(qtypes)
        for transport in kinds - {most}:
            theirs = collections.Counter(itertools.compress(qtypes, map(operator.eq, transports,
                                                                        itertools.repeat(transport))))
            counted.subtract(theirs)
            self._count_qtypes(transport, theirs, labels)
        self._count_qtypes(most, counted, labels)

    def _count_qtypes(self, transport: str, counted: collections.Counter, labels: dict) -> None:
        by_query = self.by_query
        for qtype, n in counted.items():
            if n:
                label = (transport, labels.get(qtype, "other"))
                by_query[label] = by_query.get(label, 0) + n

    def _count_answers(self, sources: list[str], rcodes: list[int], latencies: list[float]) -> None:
        by_answer = self.by_answer
        sizes = sorted(collections.Counter(sources).items())
        if len(sizes) > 1:
            # each source's replies side by side (a stable sort of the indices by source, which is the order
            # of ``sizes``), so each has one slice of rcodes and one of latencies
            order = sorted(range(len(sources)), key=sources.__getitem__)
            rcodes = list(map(rcodes.__getitem__, order))
            latencies = list(map(latencies.__getitem__, order))
        start = 0
        for source, size in sizes:
            end = start + size
            for rcode, n in collections.Counter(rcodes[start:end]).items():
                by_answer[(source, rcode)] = by_answer.get((source, rcode), 0) + n
            histogram = self.latency.get(source)
            if histogram is not None:
                histogram.observe_sorted(sorted(latencies[start:end]))
            start = end

    # -- read by the pages ------------------------------------------------------------
    def queries(self) -> collections.Counter[tuple[str, str]]:
        """Answers by (transport, qtype label)."""
        self.drain()
        return collections.Counter(self.by_query)

    def answers(self) -> collections.Counter[tuple[str, int]]:
        """Answers by (source, rcode)."""
        self.drain()
        return collections.Counter(self.by_answer)

    def total(self) -> int:
        self.drain()
        return sum(self.by_answer.values())

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
