"""The operator's port: what each path serves (``/metrics``, ``/api/stats``, ``/``).

``OpsSite(stats, collectors, clock=...)`` turns the query statistics and the
metric families of the parts main built into pages; ``routes()`` is what
:class:`unikernel.ops.http.HttpServer` serves. /api/stats carries every
family /metrics has (under ``metrics``) and, for the dashboard, a summary
read from them (rate, sources, cache hit ratio, blocked share, upstreams,
top names and clients, recent queries).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from unikernel.ops import dashboard, metrics
from unikernel.ops.http import Route
from unikernel.ops.metrics import Collector, Family
from unikernel.ops.stats import Histogram, QueryStats, rcode_text

TOP = 15          # rows of the dashboard's top tables
RECENT = 30       # and of its recent queries


class OpsSite:
    def __init__(self, stats: QueryStats, collectors: Iterable[Collector], *, clock: Callable[[], float],
                 identity: str = "", version: str = "") -> None:
        self.stats = stats
        self.collectors = [lambda: metrics.stats_families(stats), *collectors]
        self.clock = clock
        self.identity = identity
        self.version = version

    def routes(self) -> dict[str, Route]:
        return {"/metrics": self.metrics_page, "/api/stats": self.stats_page, "/": self.dashboard_page}

    def metrics_page(self) -> tuple[str, bytes]:
        return metrics.CONTENT_TYPE, metrics.render_text(metrics.gather(self.collectors)).encode()

    def dashboard_page(self) -> tuple[str, bytes]:
        return "text/html; charset=utf-8", dashboard.PAGE

    def stats_page(self) -> tuple[str, bytes]:
        return "application/json", json.dumps(self.summary()).encode()

    def summary(self) -> dict:
        self.stats.drain()
        families = metrics.gather(self.collectors)
        by_name = {family.name: family for family in families}
        now = self.clock()
        stats = self.stats
        sources = stats.by_source()
        total = sum(sources.values())
        resolved = sources["cache"] + sources["forward"]
        return {
            "identity": self.identity,
            "version": self.version,
            "uptime_seconds": _value(by_name.get("dnsapp_uptime_seconds")),
            "queries_total": total,
            "qps": stats.rate.series(now),
            "answers_by_source": sources,
            "rcodes": _rcodes(stats),
            "cache": {"entries": _value(by_name.get("dnsapp_cache_entries")),
                      "bytes": _value(by_name.get("dnsapp_cache_bytes")),
                      "hits": sources["cache"], "misses": sources["forward"],
                      "hit_ratio": sources["cache"] / resolved if resolved else None},
            "blocked": sources["blocked"],
            "blocked_share": sources["blocked"] / total if total else None,
            "upstreams": _upstreams(by_name),
            "top_names": stats.top_names(TOP),
            "top_clients": stats.top_clients(TOP),
            "recent": stats.recent_queries(now)[:RECENT],
            "metrics": metrics.as_json(families),
        }


def _value(family: Family | None) -> object:
    if family is None or not family.samples:
        return None
    return family.samples[0][1]


def _rcodes(stats: QueryStats) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_source, rcode), n in stats.answers().items():
        out[rcode_text(rcode)] = out.get(rcode_text(rcode), 0) + n
    return out


def _upstreams(by_name: dict[str, Family]) -> list[dict]:
    rows: dict[str, dict] = {}
    for labels, value in by_name.get("dnsapp_upstream_up", Family("", "", "")).samples:
        rows[labels["upstream"]] = {"name": labels["upstream"], "up": bool(value), "failures": 0,
                                    "rtt_ms": None, "answered": 0}
    for labels, value in by_name.get("dnsapp_upstream_consecutive_failures", Family("", "", "")).samples:
        if labels["upstream"] in rows:
            rows[labels["upstream"]]["failures"] = value
    for labels, value in by_name.get("dnsapp_upstream_rtt_seconds", Family("", "", "")).samples:
        if labels["upstream"] in rows and isinstance(value, Histogram) and value.count:
            rows[labels["upstream"]]["rtt_ms"] = round(value.total / value.count * 1000, 2)
            rows[labels["upstream"]]["answered"] = value.count
    return list(rows.values())
