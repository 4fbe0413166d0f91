"""Cost as the work grows: the appliance and NSD on zones of growing size,
same zone files, same run.

For each size, in one network namespace (removed afterwards), the appliance
(on a tap) and NSD (on the namespace's loopback) start on the same generated
zone (bench/auth.py's: ``names`` hosts, A for each, AAAA and TXT for every
third, MX for every tenth); printed per server: the load time (start to the
first answer) and the CPU seconds its processes had used by then (the
steadier figure on a shared machine), the resident memory (the Pss of its processes) after a pass through the query file, the
peak resident memory of its main process (VmHWM: what loading the zone
needed at its height), and the median QPS of the rounds on the authoritative
mix (hits, NXDOMAIN, NODATA). Verdicts: at the largest size, the appliance's
Pss at most 3x NSD's, and its Pss and its peak under 512 MB (what a 512 MB
VM leaves it is less still).

    .venv/bin/python -m bench zones [--sizes 3000,100000] [--long]

``--long`` adds the million-name zone (minutes of loading: dnspython reads the file).
"""
from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.auth import APPLIANCE, HOST_SIDE, ORIGIN, nsd_config, write_queries, write_zone
from bench.common import (
    ROOT,
    BenchError,
    appliance_command,
    cpu_seconds,
    dnsperf,
    kill,
    median,
    rss_bytes,
    verdict,
    wait_for_answer,
)

SIZES = (3000, 100_000)
LONG_SIZES = (3000, 100_000, 1_000_000)
MAX_RSS_RATIO = 3.0
VM_BYTES = 512 * 1024 * 1024
LOAD_TIMEOUT = 1800


def _peak_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) * 1024 if m else 0


def _measure(ns, label: str, proc: subprocess.Popen, address: str, started: float, queries: Path,
             seconds: float, rounds: int) -> dict:
    wait_for_answer(ns, address, f"host1.{ORIGIN}", timeout=LOAD_TIMEOUT, proc=proc)
    loaded, load_cpu = time.monotonic() - started, cpu_seconds(proc.pid)
    dnsperf(ns, address, queries, passes=1)                 # warm-up (fills the fast path)
    rss, peak = rss_bytes(proc.pid), _peak_bytes(proc.pid)
    qps = median(dnsperf(ns, address, queries, seconds=seconds)[0].qps for _ in range(rounds))
    if proc.poll() is not None:
        raise BenchError(f"{label} died")
    return {"load_s": loaded, "load_cpu": load_cpu, "rss": rss, "peak": peak, "qps": qps}


def run(sizes: tuple[int, ...] = SIZES, seconds: float = 3, rounds: int = 3, out=sys.stdout) -> bool:
    sys.path.insert(0, str(ROOT))
    from tests.netns import Namespace

    met = True
    print(f"{'names':>9} {'server':<10} {'load s':>8} {'CPU s':>8} {'Pss MB':>8} {'peak MB':>8} {'QPS':>9}"
          "   ratios appliance/NSD", file=out)
    with tempfile.TemporaryDirectory(prefix="zonebench") as tmp, Namespace("zonebench") as ns:
        ns.add_tap("tap0", HOST_SIDE)
        for size in sizes:
            rng = random.Random(size)
            work = Path(tmp) / str(size)
            work.mkdir()
            zone, queries = work / f"{ORIGIN}.zone", work / "queries.txt"
            write_queries(queries, write_zone(zone, size, rng), 20000, rng)
            rows = {}
            started = time.monotonic()
            command = appliance_command("--forward", "none", "--tap", "tap0", "--ipv4", f"{APPLIANCE}/24",
                                        "--ipv4-gateway", "none", "--zone", str(zone))
            appliance = ns.popen(*command, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                rows["appliance"] = _measure(ns, "the appliance", appliance, APPLIANCE, started, queries,
                                             seconds, rounds)
            finally:
                kill(appliance)
            started = time.monotonic()
            nsd = ns.popen("nsd", "-d", "-c", str(nsd_config(work, {ORIGIN: zone})),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                rows["nsd"] = _measure(ns, "NSD", nsd, "127.0.0.1", started, queries, seconds, rounds)
            finally:
                kill(nsd)
            ours, theirs = rows["appliance"], rows["nsd"]
            for name, row in rows.items():
                ratios = "" if name == "nsd" else (
                    f"   load {ours['load_s'] / theirs['load_s']:.1f}x, CPU {ours['load_cpu'] / theirs['load_cpu']:.1f}x, Pss {ours['rss'] / theirs['rss']:.1f}x, "
                    f"QPS {ours['qps'] / theirs['qps']:.2f}x")
                print(f"{size:>9} {name:<10} {row['load_s']:>8.2f} {row['load_cpu']:>8.2f} {row['rss'] / 2**20:>8.1f} "
                      f"{row['peak'] / 2**20:>8.1f} {row['qps']:>9.0f}{ratios}", file=out, flush=True)
            if size == sizes[-1]:
                for line, ok in (verdict(f"Pss / NSD at {size} names", ours["rss"] / theirs["rss"],
                                         at_most=MAX_RSS_RATIO),
                                 verdict(f"Pss / 512 MB at {size} names", ours["rss"] / VM_BYTES, at_most=1.0),
                                 verdict(f"peak / 512 MB at {size} names", ours["peak"] / VM_BYTES, at_most=1.0)):
                    print(line, file=out, flush=True)
                    met = met and ok
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench zones", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="comma-separated zone sizes in names")
    parser.add_argument("--long", action="store_true", help="up to a million names")
    parser.add_argument("--zone-seconds", type=float, default=3, help="dnsperf seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    args, _ = parser.parse_known_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else LONG_SIZES if args.long else SIZES
    if not args.long and not args.sizes:
        print("(the million-name zone runs with --long)")
    try:
        return 0 if run(sizes, args.zone_seconds, max(args.rounds, 3)) else 1
    except BenchError as e:
        print(f"bench zones: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
