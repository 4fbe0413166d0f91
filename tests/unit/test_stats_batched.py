"""QueryStats counts a batch at a time; these hold its figures equal to a
plain count made reply by reply, over random mixes that cross batches, with
pages reading in between, slow answers recorded after faster ones that
arrived later, qtypes above 255 and a source without a histogram."""
from __future__ import annotations

import bisect
import collections
import random

import pytest

from unikernel.ops import stats
from unikernel.ops.stats import LATENCY_BUCKETS, QueryStats, TopK

QTYPES = (1, 28, 15, 16, 33, 255, 257, 65, 64, 65000, 0, 252)
SOURCES = ("zone", "cache", "forward", "blocked", "server", "mdns", "elsewhere")    # the last has no histogram


def key(name: bytes, qtype: int, edns: int) -> bytes:
    return name + qtype.to_bytes(2, "big") + b"\x00\x01" + bytes([edns])


def random_replies(rng: random.Random, count: int, names: int) -> list[tuple]:
    """Observe arguments: Zipf-ish names, arrivals over a few seconds, and
    now and then a slow answer recorded late (it arrived seconds earlier)."""
    wires = [bytes([len(f"n{i}")]) + f"n{i}".encode() + b"\x04test\x00" for i in range(names)]
    weights = [1 / (rank + 1) for rank in range(names)]
    now, out = 5000.0, []
    for _ in range(count):
        now += rng.expovariate(3000)
        slow = rng.random() < 0.05
        latency = rng.uniform(0.01, 3.0) if slow else rng.choice((0.00001, 0.0001, 0.00025, rng.random() / 1000))
        out.append((now - latency if slow else now, rng.choice(("udp", "udp", "udp", "tcp")),
                    0xC0000200 + rng.randrange(8), rng.randrange(65536),
                    key(rng.choices(wires, weights)[0], rng.choice(QTYPES), rng.choice((0, 1, 3))),
                    rng.randrange(65536), rng.choice((0, 0, 0, 2, 3, 5)), rng.choice(SOURCES), latency))
    return out


def plain_count(replies: list[tuple]) -> dict:
    """The figures, one reply at a time, written out without the module's batching."""
    queries: collections.Counter = collections.Counter()
    answers: collections.Counter = collections.Counter()
    buckets: dict[str, list[int]] = {}
    sums: collections.Counter = collections.Counter()
    seconds: collections.Counter = collections.Counter()
    for arrived, transport, _ip, _port, qkey, _flags, rcode, source, latency in replies:
        qtype = qkey[-5:-3]
        queries[(transport, stats.QTYPE_LABELS[qtype] if qtype in stats.QTYPE_LABELS else "other")] += 1
        answers[(source, rcode)] += 1
        if source in stats.SOURCES:
            buckets.setdefault(source, [0] * (len(LATENCY_BUCKETS) + 1))[
                bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
            sums[source] += latency
        seconds[int(arrived)] += 1
    return {"queries": queries, "answers": answers, "buckets": buckets, "sums": sums, "seconds": seconds}


@pytest.mark.parametrize("seed", range(6))
def test_batched_figures_equal_a_reply_by_reply_count(seed):
    rng = random.Random(seed)
    replies = random_replies(rng, rng.randrange(1, 3 * stats.BATCH + 500), names=rng.choice((5, 300)))
    qs = QueryStats(top=500, recent=7)          # more counters than names: the tops are exact
    for n, reply in enumerate(replies):
        qs.record(*reply)
        if rng.random() < 0.002 or n == 17:     # a page reads now and then, mid-batch
            qs.drain()
    truth = plain_count(replies)
    assert qs.queries() == truth["queries"]
    assert qs.answers() == truth["answers"]
    assert qs.total() == len(replies)
    for source in stats.SOURCES:
        histogram = qs.latency[source]
        assert histogram.counts == truth["buckets"].get(source, [0] * (len(LATENCY_BUCKETS) + 1)), source
        assert histogram.count == sum(histogram.counts)
        assert histogram.total == pytest.approx(truth["sums"][source], rel=1e-9, abs=1e-12)
    last = max(arrived for arrived, *_ in replies)
    assert qs.rate.series(last)[-5:] == [truth["seconds"][s] for s in range(int(last) - 4, int(last) + 1)]
    assert list(qs.recent) == replies[-7:]
    names = collections.Counter(reply[4][:-5] for reply in replies)
    assert {item: count for item, count, error in qs.names.top(500)} == names
    assert {item: count for item, count, error in qs.clients.top(500)} == collections.Counter(r[2] for r in replies)
    assert qs.names.decrements == 0 and qs.clients.decrements == 0


@pytest.mark.parametrize("seed", range(4))
def test_batched_top_names_keep_misra_gries_guarantee(seed):
    rng = random.Random(100 + seed)
    replies = random_replies(rng, 5 * stats.BATCH, names=2000)
    capacity = 20
    qs = QueryStats(top=capacity)
    for reply in replies:
        qs.record(*reply)
    truth = collections.Counter(reply[4][:-5] for reply in replies)
    top = qs.names.top(capacity)
    assert len(qs.names) <= capacity                              # the bound holds after every batch
    n = len(replies)
    kept = {item for item, _, _ in top}
    for item, count, error in top:
        assert count <= truth[item] <= count + error              # never above the truth, at most error below
        assert error <= n / (capacity + 1)
    for item, seen in truth.items():
        if seen > n / (capacity + 1):
            assert item in kept, (item, seen)                     # every heavy hitter is kept


def test_top_k_weighted_merge_against_a_plain_misra_gries_bound():
    """TopK.update (a batch at a time) against the bound, with a heavy item
    hidden among many light ones, and item by item add() giving the same guarantee."""
    rng = random.Random(3)
    stream = [("heavy" if rng.random() < 0.08 else f"light-{rng.randrange(5000)}") for _ in range(20_000)]
    truth = collections.Counter(stream)
    batched, single = TopK(10), TopK(10)
    for start in range(0, len(stream), 1024):
        batched.update(stream[start:start + 1024])
    for item in stream:
        single.add(item)
    for summary in (batched, single):
        assert len(summary) <= 10
        assert summary.top(1)[0][0] == "heavy"
        for item, count, error in summary.top(10):
            assert count <= truth[item] <= count + error and error <= len(stream) / 11
