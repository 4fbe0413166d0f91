"""unikernel.ops.stats and .metrics: the bounded tables, and the text format
checked by Prometheus's own tools (promtool, prometheus_client's parser)."""
from __future__ import annotations

import collections
import json
import random
import shutil
import subprocess

import dns.message
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netstack.counters import Counters
from unikernel import wire
from unikernel.ops import metrics, stats
from unikernel.ops.stats import QueryStats, RateRing, TopK

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="needs promtool (apt install prometheus)")


def key_of(name: str, qtype: str = "A", **kw) -> bytes:
    query = dns.message.make_query(name, qtype, **kw)
    return wire.parse_query(query.to_wire())[0]


# -- the top-k summary ------------------------------------------------------------------

def test_top_k_is_exact_below_capacity():
    summary = TopK(10)
    stream = [random.Random(1).choice("abcdefg") for _ in range(500)]
    for item in stream:
        summary.add(item)
    truth = collections.Counter(stream)
    assert {item: (count, error) for item, count, error in summary.top(10)} == \
        {item: (count, 0) for item, count in truth.items()}
    assert [count for _, count, _ in summary.top(3)] == [count for _, count in truth.most_common(3)]


def test_top_k_keeps_heavy_hitters_under_a_flood_of_unique_items():
    rng = random.Random(7)
    summary = TopK(20)
    stream = []
    for i in range(20_000):
        r = rng.random()
        stream.append("heavy" if r < 0.2 else "second" if r < 0.3 else f"once-{i}")
    for item in stream:
        summary.add(item)
    truth = collections.Counter(stream)
    assert len(summary) <= 20                       # bounded
    assert [item for item, _, _ in summary.top(2)] == ["heavy", "second"]
    for item, count, error in summary.top(20):
        # never above the truth, at most `error` below it, and error <= n / (k + 1)
        assert count <= truth[item] <= count + error
        assert error <= len(stream) / 21


# -- the rate ring -------------------------------------------------------------------

def test_rate_ring_counts_per_second_and_forgets_what_left_the_window():
    ring = RateRing(10)
    for t in (100.1, 100.5, 101.0, 103.9):
        ring.add(t)
    assert ring.series(104.2)[-5:] == [2, 1, 0, 1, 0]
    ring.add(110.5)                                  # slot of second 100 again: reset, not added
    series = ring.series(110.6)
    assert series[-1] == 1 and sum(series) == 3      # 100 left the window; 101 and 103 are in it


# -- histograms against prometheus_client's ---------------------------------------------

def test_histogram_buckets_match_prometheus_client():
    values = [0.0001, 0.00009, 0.0003, 0.001, 0.0011, 0.3, 7.0, 0.025]
    ours = stats.Histogram()
    registry = CollectorRegistry()
    theirs = Histogram("x_seconds", "x", buckets=stats.LATENCY_BUCKETS, registry=registry)
    for v in values:
        ours.observe(v)
        theirs.observe(v)
    expected = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "x_seconds_bucket":
                expected[float(sample.labels["le"])] = sample.value
    assert {bound: float(count) for bound, count in ours.cumulative()} == expected


# -- the query statistics ---------------------------------------------------------------

def test_query_stats_record_totals_tops_and_recent():
    qs = QueryStats(top=5, recent=3)
    for i in range(6):
        qs.record(1000.0 + i, "udp", 0xC0000201, 40000 + i, key_of("www.Example.com", "AAAA"), 0x8580, 0, "zone",
                  0.0002)
    qs.record(1007.0, "tcp", 0xC0000203, 5353, key_of("ads.example.net", want_dnssec=True), 0x8180, 3, "blocked",
              0.001)
    assert qs.queries() == {("udp", "AAAA"): 6, ("tcp", "A"): 1}
    assert qs.answers() == {("zone", 0): 6, ("blocked", 3): 1}
    assert qs.total() == 7 and qs.by_source()["blocked"] == 1
    assert qs.top_names(1) == [{"name": "www.example.com.", "count": 6, "error": 0}]
    assert qs.top_clients(2)[1] == {"client": "192.0.2.3", "count": 1, "error": 0}
    recent = qs.recent_queries(1008.0)
    assert len(recent) == 3
    assert recent[0] == {"age_seconds": 1.0, "client": "192.0.2.3", "port": 5353, "qname": "ads.example.net.",
                         "qtype": "A", "transport": "tcp", "rcode": "NXDOMAIN", "source": "blocked",
                         "latency_ms": 1.0, "flags": ["rd", "ra", "do"]}
    assert sum(qs.rate.series(1008.0)) == 7


def test_unknown_qtypes_share_one_label():
    qs = QueryStats()
    for qtype in (65000, 65001, 4000):
        key = key_of("x.example")[:-5] + qtype.to_bytes(2, "big") + b"\x00\x01\x00"
        qs.record(0.0, "udp", 1, 1, key, 0, 0, "forward", 0.01)
    assert qs.queries() == {("udp", "other"): 3}


# -- the text format ----------------------------------------------------------------------

def sample_families() -> list[metrics.Family]:
    counters = Counters({"ipv4.bad_checksum.drop": 3, "ipv4.frag.overlap.drop": 1, "tcp.retransmit.rto": 2,
                         "dns.fast.hit": 10, "forward.upstream.marked_down": 1})
    qs = QueryStats()
    qs.record(5.0, "udp", 1, 1, key_of("a.example"), 0x8400, 0, "zone", 0.00003)
    qs.record(5.0, "tcp", 1, 1, key_of("b.example", "TXT"), 0x8180, 2, "forward", 0.7)
    qs.record(5.0, "udp", 2, 1, key_of("c.example"), 0x8180, 3, "blocked", 0.0001)
    return [*metrics.counter_families(counters), *metrics.stats_families(qs),
            *metrics.build_families("0.1.0", "ab12"), *metrics.process_families(lambda: 12.5, 2.0)]


def test_counters_become_labelled_families():
    text = metrics.render_text(sample_families())
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    dropped = {(s.labels["layer"], s.labels["reason"]): s.value for s in parsed["dnsapp_dropped"].samples}
    assert dropped == {("ipv4", "bad_checksum"): 3, ("ipv4", "frag.overlap"): 1}
    events = {(s.labels["layer"], s.labels["event"]): s.value for s in parsed["dnsapp_events"].samples}
    assert events[("tcp", "retransmit.rto")] == 2 and events[("forward", "upstream.marked_down")] == 1
    answers = {(s.labels["source"], s.labels["rcode"]): s.value for s in parsed["dnsapp_answers"].samples}
    assert answers == {("zone", "NOERROR"): 1, ("forward", "SERVFAIL"): 1, ("blocked", "NXDOMAIN"): 1}
    latency = [s for s in parsed["dnsapp_answer_duration_seconds"].samples
               if s.name.endswith("_count") and s.labels["source"] == "forward"]
    assert latency[0].value == 1
    assert parsed["dnsapp_uptime_seconds"].samples[0].value == 10.5
    assert parsed["dnsapp_build_info"].samples[0].labels == {"version": "0.1.0", "inputs": "ab12"}


def test_label_values_are_escaped():
    family = metrics.Family("dnsapp_x", "gauge", 'a "help" \\ line\nnext', [({"v": 'q"\\\n'}, 1)])
    parsed = list(text_string_to_metric_families(metrics.render_text([family])))
    assert parsed[0].samples[0].labels == {"v": 'q"\\\n'}


@needs_promtool
def test_promtool_accepts_the_output():
    text = metrics.render_text(sample_families())
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""      # no lint warnings either


def test_json_has_the_same_families():
    families = sample_families()
    as_json = metrics.as_json(families)
    assert [f["name"] for f in as_json] == [f.name for f in families]
    answers = next(f for f in as_json if f["name"] == "dnsapp_answers_total")
    assert {"labels": {"source": "zone", "rcode": "NOERROR"}, "value": 1} in answers["samples"]


# -- the pages' summary ---------------------------------------------------------------------

class FakeUpstream:
    def __init__(self, name: str, down: bool, fails: int) -> None:
        self.name, self.down, self.fails = name, down, fails

    def is_down(self, now: float) -> bool:
        return self.down


def test_site_summary_reads_stats_and_families():
    from unikernel.ops.site import OpsSite

    qs = QueryStats()
    for _ in range(3):
        qs.record(10.0, "udp", 1, 1, key_of("a.example"), 0x8180, 0, "cache", 0.0001)
    qs.record(10.0, "udp", 1, 1, key_of("b.example"), 0x8180, 0, "forward", 0.02)
    qs.record(10.0, "udp", 2, 1, key_of("ads.example"), 0x8180, 3, "blocked", 0.0001)
    rtt = {"192.0.2.53#53": stats.Histogram()}
    rtt["192.0.2.53#53"].observe(0.004)
    rtt["192.0.2.53#53"].observe(0.006)
    upstreams = [FakeUpstream("192.0.2.53#53", False, 0), FakeUpstream("192.0.2.54#53", True, 3)]
    site = OpsSite(qs, [lambda: metrics.upstream_families(upstreams, lambda: 10.0, rtt)], clock=lambda: 10.5,
                   identity="me", version="0.1.0")
    summary = site.summary()
    assert summary["queries_total"] == 5
    assert summary["cache"]["hit_ratio"] == 0.75 and summary["blocked_share"] == 0.2
    assert summary["rcodes"] == {"NOERROR": 4, "NXDOMAIN": 1}
    assert summary["upstreams"] == [
        {"name": "192.0.2.53#53", "up": True, "failures": 0, "rtt_ms": 5.0, "answered": 2},
        {"name": "192.0.2.54#53", "up": False, "failures": 3, "rtt_ms": None, "answered": 0}]
    assert summary["qps"][-1] == 5 and len(summary["qps"]) == 600
    assert summary["top_names"][0] == {"name": "a.example.", "count": 3, "error": 0}
    content_type, body = site.routes()["/api/stats"]()
    assert content_type == "application/json" and json.loads(body)["queries_total"] == 5
    content_type, body = site.routes()["/metrics"]()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert {f.name for f in text_string_to_metric_families(body.decode())} >= {
        "dnsapp_answers", "dnsapp_upstream_up", "dnsapp_upstream_rtt_seconds"}
    content_type, body = site.routes()["/"]()
    assert content_type.startswith("text/html") and b"/api/stats" in body and b"http" not in body.replace(
        b"http://www.w3.org/2000/svg", b"")          # no external asset: the SVG namespace is a name, not a fetch


def test_collectors_read_the_real_parts():
    """The collectors against the objects main hands them (not stand-ins), so
    a renamed attribute fails here rather than as a 500 on /metrics."""
    from tests.stackutil import make_stack
    from tests.unit.fake_stack import FakeStack, exchange
    from unikernel.process import Answer, processor_of_process
    from unikernel.resolver.cache import Cache
    from unikernel.serve.server import DnsServer

    async def static(*, src, dst, query):
        return Answer(dns.message.make_response(query), final=True, static=True, source="zone")

    async def go():
        fake = FakeStack()
        server = DnsServer(fake, 53, processor_of_process(static))
        server.start()
        await exchange(fake, server, dns.message.make_query("kept.example", "A").to_wire())
        return server

    import asyncio
    server = asyncio.run(go())
    stack, _, _ = make_stack()
    families = {f.name: f for f in [*metrics.kept_answer_families(server), *metrics.tcp_families(stack.tcp),
                                    *metrics.cache_families(Cache())]}
    assert families["dnsapp_kept_answers"].samples == [({}, 1)]
    assert families["dnsapp_kept_answer_bytes"].samples[0][1] > 0
    assert ({"state": "ESTABLISHED"}, 0) in families["dnsapp_tcp_connections"].samples
    assert families["dnsapp_cache_entries"].samples == [({}, 0)]


def test_zone_families_report_primary_and_secondary_zones_as_prometheus_reads_them():
    import dns.name
    import dns.zone

    from unikernel.sources.zone import AuthoritativeZone
    from unikernel.transfer.secondary import SecondaryZone

    text = "$ORIGIN p.test.\n$TTL 60\n@ SOA ns host 7 60 60 600 60\n@ NS ns\nns A 192.0.2.53\nwww A 192.0.2.80\n"
    primary = AuthoritativeZone(dns.zone.from_text(text, relativize=False))
    pulled = SecondaryZone(dns.name.from_text("s.test."), (0xC0000201, 53))
    pulled.data = dns.zone.from_text(text.replace("p.test.", "s.test.").replace(" 7 ", " 9 "), relativize=False)
    pulled.transferred(100.0, changed=True)
    waiting = SecondaryZone(dns.name.from_text("w.test."), (0xC0000201, 53))      # never transferred
    families = metrics.zone_families([primary], [pulled, waiting], lambda: 101.0)
    parsed = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(metrics.render_text(families)) for s in f.samples}
    assert parsed[("dnsapp_zone_serial", (("role", "primary"), ("zone", "p.test.")))] == 7
    assert parsed[("dnsapp_zone_serial", (("role", "secondary"), ("zone", "s.test.")))] == 9
    assert parsed[("dnsapp_zone_names", (("role", "primary"), ("zone", "p.test.")))] == 3
    assert parsed[("dnsapp_zone_expired", (("zone", "s.test."),))] == 0
    assert parsed[("dnsapp_zone_expired", (("zone", "w.test."),))] == 1
    assert not any(name == "dnsapp_zone_serial" and ("zone", "w.test.") in labels for name, labels in parsed)
