"""The appliance's state as metric families: Prometheus's text format for
/metrics and the same families as JSON for /api/stats.

A *collector* is a callable returning a list of :class:`Family`; main hands
the HTTP side the collectors of the parts it built (the stack's counters, the
query statistics, the cache, the kept answers, TCP, the upstreams, the
process), so this module reads those parts and builds none of them.

Names follow Prometheus's rules (``dnsapp_`` prefix, base units, ``_total``
on counters); what varies goes in labels, never in the name: the stack's
dotted counters (``ipv4.bad_checksum.drop``) become
``dnsapp_dropped_total{layer="ipv4",reason="bad_checksum"}`` and every other
one ``dnsapp_events_total{layer="tcp",event="retransmit.rto"}``, so any counter
added later appears without a change here.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from unikernel.ops.stats import Histogram, QueryStats, rcode_text

PREFIX = "dnsapp_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Family:
    """One metric: ``kind`` is counter, gauge or histogram; each sample is
    ``(labels, value)``, a histogram's value an :class:`~unikernel.ops.stats.Histogram`."""

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], object]] = field(default_factory=list)


Collector = Callable[[], list[Family]]


# -- the text format ---------------------------------------------------------------------

def render_text(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            if isinstance(value, Histogram):
                for bound, count in value.cumulative():
                    lines.append(f"{family.name}_bucket{_labels({**labels, 'le': _number(bound)})} {count}")
                lines.append(f"{family.name}_sum{_labels(labels)} {_number(value.total)}")
                lines.append(f"{family.name}_count{_labels(labels)} {value.count}")
            else:
                lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def as_json(families: Iterable[Family]) -> list[dict]:
    out = []
    for family in families:
        samples = []
        for labels, value in family.samples:
            if isinstance(value, Histogram):
                samples.append({"labels": labels, "count": value.count, "sum": value.total,
                                "buckets": [[_number(b), c] for b, c in value.cumulative()]})
            else:
                samples.append({"labels": labels, "value": value})
        out.append({"name": family.name, "type": family.kind, "help": family.help, "samples": samples})
    return out


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, float)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


# -- collectors ---------------------------------------------------------------------------

def counter_families(counters: Mapping[str, int]) -> list[Family]:
    """Every dotted counter of the stack and the DNS side, as two labelled families."""
    dropped = Family(PREFIX + "dropped_total", "counter",
                     "Input dropped, by the layer that dropped it and why (the *.drop counters).")
    events = Family(PREFIX + "events_total", "counter",
                    "Every other outcome the stack and the DNS side count, by layer and event.")
    for name, value in sorted(counters.items()):
        layer, _, rest = name.partition(".")
        if rest.endswith(".drop") or rest == "drop":
            dropped.samples.append(({"layer": layer, "reason": rest[:-5] or "unspecified"}, value))
        else:
            events.samples.append(({"layer": layer, "event": rest or layer}, value))
    return [dropped, events]


def stats_families(stats: QueryStats) -> list[Family]:
    stats.drain()
    queries = Family(PREFIX + "queries_total", "counter", "Queries answered, by transport and query type.")
    for (transport, qtype), n in sorted(stats.queries().items()):
        queries.samples.append(({"transport": transport, "qtype": qtype}, n))
    answers = Family(PREFIX + "answers_total", "counter", "Answers sent, by what answered and response code.")
    for (source, rcode), n in sorted(stats.answers().items()):
        answers.samples.append(({"source": source, "rcode": rcode_text(rcode)}, n))
    latency = Family(PREFIX + "answer_duration_seconds", "histogram",
                     "Time from a query's arrival to its answer being sent, by what answered.")
    for source, histogram in stats.latency.items():
        if histogram.count:
            latency.samples.append(({"source": source}, histogram))
    return [queries, answers, latency]


def cache_families(cache) -> list[Family]:
    """The forwarder's cache: ``len(cache)`` entries and ``cache.size`` bytes."""
    return [Family(PREFIX + "cache_entries", "gauge", "Answers in the forwarder's cache.", [({}, len(cache))]),
            Family(PREFIX + "cache_bytes", "gauge", "Memory the cache's entries are counted as (bytes).",
                   [({}, cache.size)])]


def kept_answer_families(server) -> list[Family]:
    """The server's kept answers (the fast path's static table)."""
    return [Family(PREFIX + "kept_answers", "gauge", "Static answers kept as wire bytes for the fast path.",
                   [({}, len(server.kept_answers))]),
            Family(PREFIX + "kept_answer_bytes", "gauge", "Memory the kept answers are counted as (bytes).",
                   [({}, server.kept_bytes)])]


def tcp_families(tcp_layer) -> list[Family]:
    """The stack's TCP connections by state (every state, zeros included)."""
    from netstack.tcp.state import State

    counts = dict.fromkeys((s.value for s in State if s is not State.LISTEN), 0)
    for connection in list(tcp_layer.connections.values()):
        counts[connection.state.value] = counts.get(connection.state.value, 0) + 1
    family = Family(PREFIX + "tcp_connections", "gauge", "TCP connections in the stack's table, by state.")
    family.samples = [({"state": state}, n) for state, n in counts.items()]
    return [family]


def upstream_families(upstreams: Iterable, now: Callable[[], float],
                      rtt: Mapping[str, object] | None = None) -> list[Family]:
    """Upstream health (``name``, ``is_down(now)``, ``fails``) and, when given,
    RTT histograms by upstream name."""
    t = now()
    up = Family(PREFIX + "upstream_up", "gauge", "1 while the upstream resolver is in use, 0 while it is marked down.")
    fails = Family(PREFIX + "upstream_consecutive_failures", "gauge",
                   "Queries the upstream failed in a row since it last answered.")
    for upstream in upstreams:
        up.samples.append(({"upstream": upstream.name}, 0 if upstream.is_down(t) else 1))
        fails.samples.append(({"upstream": upstream.name}, upstream.fails))
    families = [up, fails]
    if rtt is not None:
        family = Family(PREFIX + "upstream_rtt_seconds", "histogram",
                        "Round-trip time of answered upstream queries, by upstream.")
        family.samples = [({"upstream": name}, histogram) for name, histogram in rtt.items()]
        families.append(family)
    return families


def zone_families(primary: Iterable, secondary: Iterable, now: Callable[[], float]) -> list[Family]:
    """The zones served: ``primary`` the loaded ones (``origin``, ``soa``,
    ``nodes``), ``secondary`` the pulled ones (``origin``, ``served`` as a
    loaded zone or None, ``expired(now)``): serial and names by zone and role."""
    serial = Family(PREFIX + "zone_serial", "gauge", "The SOA serial of each zone served, by role.")
    names = Family(PREFIX + "zone_names", "gauge", "Owner names in each zone served, by role.")
    expired = Family(PREFIX + "zone_expired", "gauge",
                     "1 while a secondary zone is expired or not yet transferred (answered SERVFAIL).")
    for zone in primary:
        labels = {"zone": zone.origin.to_text(), "role": "primary"}
        serial.samples.append((labels, zone.soa[0].serial))
        names.samples.append((labels, len(zone.nodes)))
    t = now()
    for zone in secondary:
        labels = {"zone": zone.origin.to_text(), "role": "secondary"}
        expired.samples.append(({"zone": labels["zone"]}, 1 if zone.expired(t) else 0))
        if zone.served is not None:
            serial.samples.append((labels, zone.served.soa[0].serial))
            names.samples.append((labels, len(zone.served.nodes)))
    return [serial, names, expired]


def blocklist_families(blocklist) -> list[Family]:
    """The blocklist source: ``len(blocklist)`` names, ``malformed`` lines at the last load."""
    return [Family(PREFIX + "blocklist_names", "gauge", "Distinct names the blocklists hold.",
                   [({}, len(blocklist))]),
            Family(PREFIX + "blocklist_malformed_lines", "gauge",
                   "Lines of the block- and allowlists that were not understood at the last load.",
                   [({}, blocklist.malformed)])]


def process_families(now: Callable[[], float], started: float,
                     statm: str = "/proc/self/statm") -> list[Family]:
    """Resident memory (from /proc) and uptime (on the injected clock)."""
    families = [Family(PREFIX + "uptime_seconds", "gauge", "Seconds since the appliance started serving.",
                       [({}, round(now() - started, 3))])]
    rss = resident_bytes(statm)
    if rss is not None:
        families.append(Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                               [({}, rss)]))
    return families


def resident_bytes(statm: str = "/proc/self/statm") -> int | None:
    try:
        with open(statm) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def build_families(version: str, inputs: str) -> list[Family]:
    return [Family(PREFIX + "build_info", "gauge",
                   "Always 1; the labels say which version and which image inputs (their SHA-256) run.",
                   [({"version": version, "inputs": inputs}, 1)])]


def gather(collectors: Iterable[Collector]) -> list[Family]:
    families: list[Family] = []
    for collect in collectors:
        families.extend(collect())
    return families
