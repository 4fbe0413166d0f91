"""The authoritative benchmark: our appliance against NSD, same zone, same
queries, same run.

In a fresh network namespace (removed afterwards): the appliance serves a
generated zone on a tap (host side 192.0.2.1/24, appliance 192.0.2.2/24) and
NSD serves the same zone on the namespace's loopback (rrl-ratelimit 0: Debian
rate-limits by default). dnsperf (Debian's) loads each for ``seconds``,
alternating appliance / NSD for ``rounds`` rounds, after one untimed pass
through the query file (which also fills the appliance's fast path, as any
server warms up). The query mix is hits (A, MX, TXT), NXDOMAIN and NODATA.

Beside them, the floor: bench/bare.py, a Python loop that writes each
query back as its reply on a tap of its own (what the tap lets Python reach).

``--link``: the appliance's link. ``tap`` (the default: the unix target's),
or ``packet``, AF_PACKET on one end of a veth pair whose other end the
namespace's kernel holds, as the VM image does on its NIC: through its
PACKET_MMAP rings, or a system call a frame with ``packet-norings``; the
bare responder then reads and writes an AF_PACKET socket on a veth pair too.

Printed: queries per second, average latency, and the server's CPU seconds
per 1,000 answers (utime + stime of the server's processes, from /proc), the
median of the rounds for each, and the appliance/NSD ratios; then each
server's latency at a fixed load below saturation (dnsperf -Q 10000, every
answer's latency from dnsperf -v), p50 and p99, medians of the rounds. A
verdict per target: QPS >= 1.0x NSD's, CPU per answer <= 1.3x NSD's.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    FIXED_LOAD_QPS,
    LINKS,
    PYTHON,
    ROOT,
    BenchError,
    Throughput,
    appliance_command,
    appliance_link,
    check_build,
    dnsperf,
    median,
    percentile,
    server_link,
    verdict,
    wait_for_answer,
)

ORIGIN = "bench.example"
HOST_SIDE, APPLIANCE = "192.0.2.1/24", "192.0.2.2"
# the bare responder (bench/bare.py) on a tap of its own, the kernel told its MAC
BARE_HOST_SIDE, BARE, BARE_MAC = "198.51.100.1/24", "198.51.100.2", "02:00:00:00:00:02"
TARGET_QPS = 1.0           # x NSD's
TARGET_CPU = 1.3           # x NSD's CPU per answer, at most
LATENCY_SECONDS = 3        # per round of the fixed-load run


# -- the zone and the queries --------------------------------------------------

def write_zone(path: Path, names: int, rng: random.Random) -> list[str]:
    """A zone with ``names`` hosts (A; every third one AAAA and TXT too; every
    tenth an MX); returns the host labels."""
    hosts = [f"host{i}" for i in range(names)]
    lines = [f"$ORIGIN {ORIGIN}.", "$TTL 3600",
             "@ IN SOA ns1 hostmaster 1 7200 900 1209600 300", "@ IN NS ns1", "@ IN NS ns2",
             "ns1 IN A 192.0.2.53", "ns2 IN A 192.0.2.54", "@ IN MX 10 mail", "mail IN A 192.0.2.25"]
    for i, host in enumerate(hosts):
        lines.append(f"{host} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        if i % 3 == 0:
            lines.append(f"{host} IN AAAA 2001:db8::{i >> 16:x}:{i & 0xFFFF:x}")   # groups of 16 bits
            lines.append(f'{host} IN TXT "host number {i}"')
        if i % 10 == 0:
            lines.append(f"{host} IN MX 10 mail")
    lines.append("*.wild IN A 192.0.2.99")
    path.write_text("\n".join(lines) + "\n")
    return hosts


def write_queries(path: Path, hosts: list[str], count: int, rng: random.Random) -> dict[str, int]:
    """``count`` queries: 60% hits, 20% NXDOMAIN, 20% NODATA (a fixed set of
    names, so every server sees the same file)."""
    mix = {"hit": 0, "nxdomain": 0, "nodata": 0}
    out = []
    for _ in range(count):
        roll = rng.random()
        i = rng.randrange(len(hosts))
        if roll < 0.6:
            kind, line = "hit", rng.choice([f"{hosts[i]}.{ORIGIN} A", f"{hosts[i - i % 3]}.{ORIGIN} TXT",
                                             f"{hosts[i - i % 10]}.{ORIGIN} MX", f"x{i}.wild.{ORIGIN} A"])
        elif roll < 0.8:
            kind, line = "nxdomain", f"nx{rng.randrange(len(hosts))}.{ORIGIN} A"
        else:
            kind, line = "nodata", f"{hosts[i]}.{ORIGIN} SRV"
        mix[kind] += 1
        out.append(line)
    path.write_text("\n".join(out) + "\n")
    return mix


# -- the whole benchmark ------------------------------------------------------------

def nsd_config(work: Path, zones: dict[str, Path]) -> Path:
    from tests.nsd import nsd_conf  # tests/ is put on sys.path by run()
    return nsd_conf(work, zones, address="127.0.0.1", port=53)


def run(seconds: float = 5, rounds: int = 3, names: int = 3000, queries: int = 20000,
        seed: int = 1, out=sys.stdout, appliance_flags: tuple[str, ...] = (), link: str = "tap") -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.netns import Namespace

    for tool in ("dnsperf", "nsd", "dig", "ip"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is missing (make deps installs it)")
    if os.geteuid() != 0:
        raise BenchError("the benchmark needs root (network namespace and tap)")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="dnsbench") as tmp, Namespace("dnsbench") as ns:
        work = Path(tmp)
        zone = work / f"{ORIGIN}.zone"
        hosts = write_zone(zone, names, rng)
        query_file = work / "queries.txt"
        mix = write_queries(query_file, hosts, queries, rng)
        print(f"zone {ORIGIN}: {names} hosts; {queries} queries: {mix['hit']} hits, "
              f"{mix['nxdomain']} NXDOMAIN, {mix['nodata']} NODATA; dnsperf {seconds:g} s x {rounds} rounds",
              file=out, flush=True)
        print(f"link       the appliance's: {link}", file=out, flush=True)
        attach = appliance_link(ns, link, HOST_SIDE)
        command = appliance_command("--forward", "none", *attach, "--ipv4", f"{APPLIANCE}/24",
                                    "--ipv4-gateway", "none", "--zone", str(zone), *appliance_flags)
        appliance = ns.popen(*command, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nsd = ns.popen("nsd", "-d", "-c", str(nsd_config(work, {ORIGIN: zone})),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kernel_side, bare_on = server_link(ns, link, BARE_HOST_SIDE, number=1)
        ns.ip("neigh", "add", BARE, "lladdr", BARE_MAC, "dev", kernel_side)
        bare = ns.popen(PYTHON, "-m", "bench.bare", *bare_on, cwd=str(ROOT), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        servers = {"appliance": (APPLIANCE, appliance.pid), "nsd": ("127.0.0.1", nsd.pid),
                   "bare": (BARE, bare.pid)}
        for (address, _), proc in zip(servers.values(), (appliance, nsd, bare)):
            wait_for_answer(ns, address, f"host1.{ORIGIN}", proc=proc)     # the bare responder echoes: NOERROR
            dnsperf(ns, address, query_file, passes=1)       # warm-up, not counted
        check_build(appliance.pid)
        runs: dict[str, list[Throughput]] = {name: [] for name in servers}
        latencies: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, (address, pid) in servers.items():
                runs[name].append(dnsperf(ns, address, query_file, seconds=seconds, pid=pid)[0])
        for _ in range(rounds):
            for name, (address, _pid) in servers.items():
                _, each = dnsperf(ns, address, query_file, seconds=LATENCY_SECONDS, max_qps=FIXED_LOAD_QPS,
                                  verbose=True)
                latencies[name].append((percentile(each, 0.5), percentile(each, 0.99)))
        for p in (appliance, nsd, bare):
            if p.poll() is not None:
                raise BenchError("a server died during the benchmark")
    return report(runs, latencies, out, link)


def report(runs: dict[str, list[Throughput]], latencies: dict[str, list[tuple[float, float]]],
           out=sys.stdout, link: str = "tap") -> dict:
    print(f"\n{'server':<10} {'QPS':>10} {'latency ms':>11} {'CPU s/1000':>11} {'completed':>10} {'lost':>6}",
          file=out)
    for name, rows in runs.items():
        for r in rows:
            print(f"{name:<10} {r.qps:>10.0f} {r.latency_ms:>11.3f} {r.cpu_per_1000:>11.4f} "
                  f"{r.completed:>10} {r.lost:>6}", file=out)
    summary = {name: {"qps": median(r.qps for r in rows), "cpu_per_1000": median(r.cpu_per_1000 for r in rows),
                      "p50_ms": median(p50 for p50, _ in latencies[name]),
                      "p99_ms": median(p99 for _, p99 in latencies[name])}
               for name, rows in runs.items()}
    ours, nsd = summary["appliance"], summary["nsd"]
    ratio = {key: ours[key] / nsd[key] if nsd[key] else float("nan") for key in ours}
    print(f"\nmedian     appliance {ours['qps']:.0f} QPS, {ours['cpu_per_1000']:.4f} CPU s/1000; "
          f"NSD {nsd['qps']:.0f} QPS, {nsd['cpu_per_1000']:.4f} CPU s/1000", file=out)
    print(f"latency    at {FIXED_LOAD_QPS} QPS: appliance p50 {ours['p50_ms']:.3f} ms p99 {ours['p99_ms']:.3f} ms; "
          f"NSD p50 {nsd['p50_ms']:.3f} ms p99 {nsd['p99_ms']:.3f} ms", file=out)
    bare = summary["bare"]
    print(f"floor      bare {link.split('-')[0]} responder (bench/bare.py) {bare['qps']:.0f} QPS, {bare['cpu_per_1000']:.4f} CPU s/1000:"
          f" appliance {ours['qps'] / bare['qps']:.2f}x its QPS, {ours['cpu_per_1000'] / bare['cpu_per_1000']:.2f}x "
          f"its CPU per answer; NSD {nsd['qps'] / bare['qps']:.2f}x its QPS", file=out)
    lines = [verdict("authoritative QPS / NSD", ratio["qps"], at_least=TARGET_QPS),
             verdict("CPU per answer / NSD", ratio["cpu_per_1000"], at_most=TARGET_CPU),
             verdict(f"p50 latency at {FIXED_LOAD_QPS} QPS / NSD", ratio["p50_ms"]),
             verdict(f"p99 latency at {FIXED_LOAD_QPS} QPS / NSD", ratio["p99_ms"])]
    for line, _ in lines:
        print(line, file=out, flush=True)
    return {"summary": summary, "ratio": ratio, "met": all(ok for _, ok in lines)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench auth", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--names", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--link", choices=LINKS, default="tap",
                        help="the appliance's link: a tap, or AF_PACKET on a veth with or without its rings")
    parser.add_argument("--appliance-flag", action="append", default=[], metavar="FLAG",
                        help="passed to the appliance, e.g. --appliance-flag=--metrics-port=0 (repeatable)")
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    if args.rounds < 3:
        parser.error("medians need at least 3 rounds")
    try:
        result = run(args.seconds, args.rounds, args.names, args.queries,
                     appliance_flags=tuple(args.appliance_flag), link=args.link)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
