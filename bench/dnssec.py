"""DNSSEC: validated cache hits against unvalidated ones, and a cold validation
beside Unbound's, on the signed hierarchy of tests/dnssec_world.py.

Inside a network namespace this benchmark makes (and removes):

    NSD on 127.0.0.1             the test root, tld. and zones signed at start,
                                 plus bench.tld. (A, MX and TXT for each name)
    Unbound, iterator only       192.0.2.1:53 and 198.51.100.1:53: the upstream
    appliance, validating        192.0.2.2/24 on tap0, --trust-anchor (the test root's DS)
    appliance, --dnssec no       198.51.100.2/24 on tap1, the same upstream
    Unbound, validating          127.0.0.3, started fresh for its cold query

Cold validation: the first question each validator gets, www.secure.tld. A
(a chain of three zones: the root, tld., secure.tld.), timed from this
process (dnspython inside the namespace).
The appliance's upstream has the records cached (it answered the same
question while the hierarchy was checked), so the figure is the chain walk
and the signature checks; Unbound's also includes its own iteration to NSD.
Then both appliances' caches are filled with one pass over the queries and
dnsperf asks them for ``duration`` seconds, alternating (``rounds`` times
each): QPS, latency, CPU per 1,000 answers, and the validated/unvalidated ratio.

    .venv/bin/python -m bench.dnssec [--duration 10] [--rounds 1] [--names 300]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, BenchError, appliance_command, cpu_seconds, dnsperf_noerror, wait_ready

TAP0, TAP1 = ("192.0.2.1", "192.0.2.2"), ("198.51.100.1", "198.51.100.2")
COLD_UNBOUND = "127.0.0.3"
ZONE = "bench.tld."


def _zone(names: int) -> str:
    lines = [f"{ZONE} NS ns.tld.", f"mail.{ZONE} A 192.0.2.25"]
    for i in range(names):
        lines += [f"h{i}.{ZONE} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                  f"h{i}.{ZONE} MX 10 mail.{ZONE}",
                  f'h{i}.{ZONE} TXT "v=spf1 -all" "host {i}"']
    return "\n".join(lines) + "\n"


def _query_ms(ns, server: str, name: str) -> float:
    """Milliseconds until ``server`` answers ``name A`` validated (AD set),
    timed by this process inside the namespace."""
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    query = dns.message.make_query(name, "A", want_dnssec=True)
    with ns.entered():
        began = time.perf_counter()
        reply = dns.query.udp(query, server, timeout=10)
        elapsed = time.perf_counter() - began
    if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AD:
        raise BenchError(f"{server} did not answer {name} with a validated NOERROR: {reply}")
    return 1000 * elapsed


def run(duration: float = 10.0, rounds: int = 1, names: int = 300) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from tests.dnssec_world import SignedWorld, missing_tools
    missing = missing_tools() + [t for t in ("ip", "dnsperf") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        raise BenchError(f"needs root and {', '.join(missing) or 'nothing else'}")
    from tests.netns import Namespace
    with tempfile.TemporaryDirectory(prefix="dnssecbench") as tmp, Namespace("dnssecbench") as ns:
        d = Path(tmp)
        os.chmod(d, 0o755)
        ns.add_tap("tap0", f"{TAP0[0]}/24")
        ns.add_tap("tap1", f"{TAP1[0]}/24")
        world = SignedWorld(ns, d, upstream=[TAP0[0], TAP1[0]], extra_zones={ZONE: _zone(names)})
        world.__enter__()
        queries = d / "queries.txt"
        queries.write_text("".join(f"h{i}.{ZONE} {t}\n" for i in range(names) for t in ("A", "MX", "TXT")))
        size = str(4 * names + 100)
        validating = ns.popen(*appliance_command("--tap", "tap0", "--ipv4", f"{TAP0[1]}/24", "--ipv4-gateway", TAP0[0],
                                                 "--forward", f"{TAP0[0]}:53", "--cache-size", size,
                                                 "--trust-anchor", str(world.anchor_file)), cwd=str(ROOT))
        plain = ns.popen(*appliance_command("--tap", "tap1", "--ipv4", f"{TAP1[1]}/24", "--ipv4-gateway", TAP1[0],
                                            "--forward", f"{TAP1[0]}:53", "--cache-size", size, "--dnssec", "no"),
                         cwd=str(ROOT))
        wait_ready(validating, "the validating appliance")
        wait_ready(plain, "the appliance without validation")
        world.start_validator("cold", COLD_UNBOUND, wait=True)
        cold = {"appliance": _query_ms(ns, TAP0[1], "www.secure.tld."),
                "unbound": _query_ms(ns, COLD_UNBOUND, "www.secure.tld.")}

        targets = {"validated": (TAP0[1], validating.pid), "unvalidated": (TAP1[1], plain.pid)}
        for server, _ in targets.values():
            dnsperf_noerror(ns, server, 53, queries, passes=1)
        results: dict[str, list[dict]] = {k: [] for k in targets}
        for _ in range(rounds):
            for label, (server, pid) in targets.items():
                cpu0 = cpu_seconds(pid)
                r = dnsperf_noerror(ns, server, 53, queries, duration=duration)
                r["cpu"] = cpu_seconds(pid) - cpu0
                results[label].append(r)
    rows = []
    for label, runs in results.items():
        completed = sum(r["completed"] for r in runs)
        rows.append({"server": f"appliance, {label} hits", "qps": sum(r["qps"] for r in runs) / len(runs),
                     "latency_ms": sum(r["latency_ms"] for r in runs) / len(runs),
                     "cpu_per_1000": 1000 * sum(r["cpu"] for r in runs) / completed if completed else 0.0})
    # QPS on a shared machine follows the load; CPU per answer much less so:
    # its ratio is given as unvalidated/validated, so both read "≥ 0.9 is good"
    rows.append({"server": "ratio validated/unvalidated", "qps": rows[0]["qps"] / rows[1]["qps"] if rows[1]["qps"]
                 else 0.0, "latency_ms": 0.0,
                 "cpu_per_1000": rows[1]["cpu_per_1000"] / rows[0]["cpu_per_1000"] if rows[0]["cpu_per_1000"] else 0.0})
    rows.append({"server": "cold validation, appliance", "cold_ms": cold["appliance"]})
    rows.append({"server": "cold validation, Unbound", "cold_ms": cold["unbound"]})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'dnssec':<32}{'QPS':>12}{'avg latency ms':>16}{'CPU s/1000':>12}"]
    for r in rows:
        if "cold_ms" in r:
            lines.append(f"{r['server']:<32}{r['cold_ms']:>12.1f} ms")
        elif r["server"].startswith("ratio"):
            lines.append(f"{r['server']:<32}{r['qps']:>11.2f}x{'':>16}{r['cpu_per_1000']:>11.2f}x (CPU: unvalidated/validated)")
        else:
            lines.append(f"{r['server']:<32}{r['qps']:>12.0f}{r['latency_ms']:>16.3f}{r['cpu_per_1000']:>12.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.dnssec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--names", type=int, default=300)
    args, _ = parser.parse_known_args(argv)
    try:
        rows = run(args.duration, args.rounds, args.names)
    except BenchError as e:
        print(f"bench.dnssec: {e}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
