"""The authoritative benchmark: our appliance against NSD, same zone, same
queries, same run.

In a fresh network namespace (removed afterwards): the appliance serves a
generated zone on a tap (host side 192.0.2.1/24, appliance 192.0.2.2/24) and
NSD serves the same zone on the namespace's loopback (rrl-ratelimit 0: Debian
rate-limits by default). dnsperf (Debian's) loads each for ``seconds``,
alternating appliance / NSD for ``rounds`` rounds, after one untimed pass
through the query file (which also fills the appliance's fast path, as any
server warms up). The query mix is hits (A, MX, TXT), NXDOMAIN and NODATA.

Printed: queries per second, average latency, and the server's CPU seconds
per 1,000 answers (utime + stime of the server's processes, from /proc), the
median of the rounds for each, and the appliance/NSD ratios.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "bench.example"
HOST_SIDE, APPLIANCE = "192.0.2.1/24", "192.0.2.2"
TARGET_RATIO = 0.5
OUTSTANDING = 100          # dnsperf -q: queries in flight (its default)


@dataclass
class Run:
    server: str
    qps: float
    latency_ms: float
    completed: int
    lost: int
    cpu_seconds: float

    @property
    def cpu_per_1000(self) -> float:
        return 1000 * self.cpu_seconds / self.completed if self.completed else float("nan")


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
            lines.append(f"{host} IN AAAA 2001:db8::{i:x}")
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


# -- processes -------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every descendant, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
        children.setdefault(ppid, []).append(int(entry))
        stats[int(entry)] = (utime, stime)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += sum(stats.get(p, (0, 0)))
        todo.extend(children.get(p, []))
    return total / tick


def wait_for_answer(ns, address: str, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = ns.run("dig", f"@{address}", name, "+tries=1", "+time=1", "+short", timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{address} does not answer {name}")


def dnsperf(ns, address: str, queries: Path, seconds: float, *, passes: int | None = None) -> dict:
    args = ["dnsperf", "-s", address, "-d", str(queries), "-t", "2", "-q", str(OUTSTANDING)]
    args += ["-n", str(passes)] if passes else ["-l", str(seconds)]
    r = ns.run(*args, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    out = r.stdout

    def number(pattern: str) -> float:
        m = re.search(pattern, out)
        if not m:
            raise RuntimeError(f"dnsperf output lacks {pattern!r}:\n{out}")
        return float(m.group(1))

    return {"qps": number(r"Queries per second:\s+([\d.]+)"),
            "latency": number(r"Average Latency \(s\):\s+([\d.]+)"),
            "completed": int(number(r"Queries completed:\s+(\d+)")),
            "lost": int(number(r"Queries lost:\s+(\d+)"))}


def measure(ns, name: str, pid: int, address: str, queries: Path, seconds: float) -> Run:
    before = cpu_seconds(pid)
    result = dnsperf(ns, address, queries, seconds)
    used = cpu_seconds(pid) - before
    return Run(name, result["qps"], result["latency"] * 1000, result["completed"], result["lost"], used)


def nsd_config(work: Path, zone: Path) -> Path:
    from tests.nsd import nsd_conf  # tests/ is put on sys.path by run()
    return nsd_conf(work, {ORIGIN: zone}, address="127.0.0.1", port=53)


# -- the whole benchmark ------------------------------------------------------------

def run(seconds: float = 10, rounds: int = 2, names: int = 3000, queries: int = 20000,
        seed: int = 1, out=sys.stdout, appliance_flags: tuple[str, ...] = ()) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.netns import Namespace

    for tool in ("dnsperf", "nsd", "dig", "ip"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing (make deps installs it)")
    if os.geteuid() != 0:
        raise RuntimeError("the benchmark needs root (network namespace and tap)")
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
        ns.add_tap("tap0", HOST_SIDE)
        appliance = ns.popen(sys.executable, "-m", "unikernel", "serve", "--forward", "none", "--tap", "tap0",
                             "--ipv4", f"{APPLIANCE}/24", "--ipv4-gateway", "none", "--zone", str(zone),
                             "--rrl-rate", "0",          # as NSD's rrl-ratelimit: 0: one client, full speed
                             *appliance_flags, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nsd = ns.popen("nsd", "-d", "-c", str(nsd_config(work, zone)),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_answer(ns, APPLIANCE, f"host1.{ORIGIN}")
        wait_for_answer(ns, "127.0.0.1", f"host1.{ORIGIN}")
        for address in (APPLIANCE, "127.0.0.1"):
            dnsperf(ns, address, query_file, 60, passes=1)       # warm-up, not counted
        runs: list[Run] = []
        for _ in range(rounds):
            runs.append(measure(ns, "appliance", appliance.pid, APPLIANCE, query_file, seconds))
            runs.append(measure(ns, "nsd", nsd.pid, "127.0.0.1", query_file, seconds))
        for p in (appliance, nsd):
            if p.poll() is not None:
                raise RuntimeError("a server died during the benchmark")
    return report(runs, out)


def report(runs: list[Run], out=sys.stdout) -> dict:
    print(f"\n{'server':<10} {'QPS':>10} {'latency ms':>11} {'CPU s/1000':>11} {'completed':>10} {'lost':>6}",
          file=out)
    for r in runs:
        print(f"{r.server:<10} {r.qps:>10.0f} {r.latency_ms:>11.3f} {r.cpu_per_1000:>11.4f} "
              f"{r.completed:>10} {r.lost:>6}", file=out)

    def median(server: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs if r.server == server)

    summary = {s: {a: median(s, a) for a in ("qps", "latency_ms", "cpu_per_1000")} for s in ("appliance", "nsd")}
    ratio_qps = summary["appliance"]["qps"] / summary["nsd"]["qps"]
    ratio_latency = summary["appliance"]["latency_ms"] / summary["nsd"]["latency_ms"]
    ratio_cpu = summary["appliance"]["cpu_per_1000"] / summary["nsd"]["cpu_per_1000"]
    print(f"\nmedian     appliance {summary['appliance']['qps']:.0f} QPS, NSD {summary['nsd']['qps']:.0f} QPS",
          file=out)
    print(f"ratios     QPS {ratio_qps:.2f}x NSD (target >= {TARGET_RATIO}), latency {ratio_latency:.2f}x, "
          f"CPU per answer {ratio_cpu:.2f}x", file=out)
    print("verdict    " + ("target met" if ratio_qps >= TARGET_RATIO else "target NOT met"), file=out, flush=True)
    return {"summary": summary, "ratio_qps": ratio_qps, "ratio_latency": ratio_latency, "ratio_cpu": ratio_cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench auth", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--names", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--appliance-flag", action="append", default=[], metavar="FLAG",
                        help="passed to the appliance, e.g. --appliance-flag=--metrics-port=0 (repeatable)")
    args = parser.parse_args(argv)
    try:
        result = run(args.seconds, args.rounds, args.names, args.queries,
                     appliance_flags=tuple(args.appliance_flag))
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    return 0 if result["ratio_qps"] >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
