"""Cache misses forwarded over DNS over TLS, beside plain UDP and beside Unbound
forwarding over TLS to the same upstream, in the same run.

Inside a network namespace this benchmark makes (and removes):

    NSD             127.0.0.1:5300, the authority for a generated zone
    Unbound (up)    192.0.2.1:53 and :853 (TLS) on tap0's host side, resolving
                    the zone from NSD; primed with one pass, so it answers
                    from its cache and the forwarders are what is measured
    the appliance   192.0.2.2/24 on tap0, `--forward 192.0.2.1:53` or
                    `--forward tls://192.0.2.1#bench.test`
    Unbound (fwd)   127.0.0.1:5301, `forward-tls-upstream: yes` to 192.0.2.1@853

Every forwarder is started fresh for each round (an empty cache), then
dnsperf asks each of ``names`` questions once: every answer is a cache miss
relayed upstream. Printed: QPS, average latency, server CPU seconds per
1,000 answers, the ratios to the appliance over UDP, and verdict lines
(reported, no numeric target) for QPS and CPU per answer over TLS against
Unbound's. Certificates are made with openssl for the run.

    .venv/bin/python -m bench.dot [--rounds 1] [--names 5000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.common import ROOT, BenchError, appliance_command, cpu_seconds, dnsperf_noerror, verdict, wait_ready

HOST, APPLIANCE, UNBOUND_FWD_PORT = "192.0.2.1", "192.0.2.2", 5301
ZONE, NAME = "dot.bench.", "bench.test"


def _zone(names: int) -> str:
    lines = [f"$ORIGIN {ZONE}", "$TTL 86400", f"@ IN SOA ns.{ZONE} host.{ZONE} 1 7200 900 1209600 3600",
             f"@ IN NS ns.{ZONE}", "ns IN A 127.0.0.1"]
    lines += [f"m{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(names)]
    return "\n".join(lines) + "\n"


def _unbound(work: Path, name: str, body: str) -> Path:
    conf = work / f"{name}.conf"
    conf.write_text(textwrap.dedent(f"""
        server:
            username: ""
            chroot: ""
            directory: "{work}"
            pidfile: "{work}/{name}.pid"
            use-syslog: no
            logfile: ""
            verbosity: 0
            module-config: "iterator"
            qname-minimisation: no
            do-not-query-localhost: no
            access-control: 0.0.0.0/0 allow
            num-threads: 1
            msg-cache-size: 64m
            rrset-cache-size: 64m
    """) + textwrap.dedent(body))
    return conf


def run(rounds: int = 1, names: int = 5000) -> list[dict]:
    missing = [t for t in ("ip", "dnsperf", "unbound", "nsd", "openssl") if shutil.which(t) is None
               and not Path(f"/usr/sbin/{t}").exists()]
    if os.geteuid() != 0 or missing:
        raise BenchError(f"needs root and {', '.join(missing) or 'nothing else'}")
    sys.path.insert(0, str(ROOT))
    from tests.netns import Namespace
    from tests.nsd import nsd_conf
    from tests.tlscerts import make_pki
    with tempfile.TemporaryDirectory(prefix="dotbench") as tmp, Namespace("dotbench") as ns:
        d = Path(tmp)
        os.chmod(d, 0o755)
        pki = make_pki(d / "pki", name=NAME, addresses=(HOST,))
        (d / "bench.zone").write_text(_zone(names))
        nsd_conf(d, {ZONE: d / "bench.zone"}, address="127.0.0.1", port=5300)
        queries = d / "queries.txt"
        queries.write_text("".join(f"m{i}.{ZONE} A\n" for i in range(names)))
        ns.add_tap("tap0", f"{HOST}/24")
        ns.popen(shutil.which("nsd") or "/usr/sbin/nsd", "-d", "-c", str(d / "nsd.conf"))
        upstream = _unbound(d, "upstream", f"""
                interface: {HOST}@53
                interface: {HOST}@853
                tls-port: 853
                tls-service-key: "{pki.key}"
                tls-service-pem: "{pki.cert}"
                incoming-num-tcp: 100
            stub-zone:
                name: "{ZONE}"
                stub-addr: 127.0.0.1@5300
        """)
        up = ns.popen("unbound", "-d", "-c", str(upstream))
        time.sleep(1)
        if up.poll() is not None:
            raise BenchError(f"unbound exited: {up.stdout.read()[-400:]}")
        dnsperf_noerror(ns, HOST, 53, queries, passes=1)     # prime the upstream's cache
        forward_tls = _unbound(d, "forwarder", f"""
                interface: 127.0.0.1@{UNBOUND_FWD_PORT}
                tls-cert-bundle: "{pki.ca}"
            forward-zone:
                name: "."
                forward-tls-upstream: yes
                forward-addr: {HOST}@853#{NAME}
        """)

        def appliance(forward: list[str]):
            args = [a for f in forward for a in ("--forward", f)]
            command = appliance_command("--tap", "tap0", "--ipv4", f"{APPLIANCE}/24", "--ipv4-gateway", HOST,
                                        *args, "--tls-ca", str(pki.ca), "--cache-size", str(names + 100),
                                        "--dnssec", "no")     # the upstream's zone is unsigned
            proc = ns.popen(*command, cwd=str(ROOT))
            wait_ready(proc, "the appliance")
            return proc, APPLIANCE, 53

        def unbound_forwarder():
            proc = ns.popen("unbound", "-d", "-c", str(forward_tls))
            time.sleep(1)
            return proc, "127.0.0.1", UNBOUND_FWD_PORT

        targets = {"appliance over UDP": lambda: appliance([f"{HOST}:53"]),
                   "appliance over TLS": lambda: appliance([f"tls://{HOST}#{NAME}"]),
                   "Unbound over TLS": unbound_forwarder}
        results: dict[str, list[dict]] = {k: [] for k in targets}
        for _ in range(rounds):
            for label, start in targets.items():
                proc, server, port = start()
                try:
                    cpu0 = cpu_seconds(proc.pid)
                    r = dnsperf_noerror(ns, server, port, queries, passes=1)
                    r["cpu"] = cpu_seconds(proc.pid) - cpu0
                    results[label].append(r)
                finally:
                    proc.terminate()
                    proc.wait(10)

    rows = []
    for label, runs in results.items():
        completed = sum(r["completed"] for r in runs)
        rows.append({"server": label, "qps": sum(r["qps"] for r in runs) / len(runs),
                     "latency_ms": sum(r["latency_ms"] for r in runs) / len(runs),
                     "cpu_per_1000": 1000 * sum(r["cpu"] for r in runs) / completed if completed else 0.0,
                     "lost": sum(r["lost"] for r in runs)})
    base = rows[0]
    for row in rows[1:]:
        rows.append({"server": f"ratio {row['server']} / UDP", "qps": row["qps"] / base["qps"] if base["qps"] else 0,
                     "latency_ms": row["latency_ms"] / base["latency_ms"] if base["latency_ms"] else 0,
                     "cpu_per_1000": 0.0, "lost": 0})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'cache misses forwarded':<34}{'QPS':>10}{'avg latency ms':>16}{'CPU s/1000':>12}{'lost':>8}"]
    for r in rows:
        if r["server"].startswith("ratio"):
            lines.append(f"{r['server']:<34}{r['qps']:>9.2f}x{r['latency_ms']:>15.2f}x")
        else:
            lines.append(f"{r['server']:<34}{r['qps']:>10.0f}{r['latency_ms']:>16.3f}{r['cpu_per_1000']:>12.4f}"
                         f"{int(r['lost']):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.dot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--names", type=int, default=5000)
    args, _ = parser.parse_known_args(argv)
    try:
        rows = run(args.rounds, args.names)
    except BenchError as e:
        print(f"bench.dot: {e}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    ours, theirs = (next(r for r in rows if r["server"] == label) for label in ("appliance over TLS", "Unbound over TLS"))
    print(verdict("cache-miss QPS over TLS / Unbound over TLS", ours["qps"] / theirs["qps"])[0])
    print(verdict("cache-miss CPU per answer over TLS / Unbound over TLS",
                  ours["cpu_per_1000"] / theirs["cpu_per_1000"])[0], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
