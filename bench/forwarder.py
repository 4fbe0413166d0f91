"""Forwarder cache hits: the appliance against dnsmasq, same upstream, same run.

Inside a network namespace this benchmark makes (and removes):

    tap0 host side 192.0.2.1/24   NSD on 192.0.2.1:53, the upstream, serving a
                                  generated zone (A, MX and TXT for each name);
                                  `--link packet`: veth0, the appliance on
                                  veth1 through AF_PACKET (bench/auth.py)
    the appliance                 192.0.2.2/24 on tap0: `python -m unikernel
                                  serve --forward 192.0.2.1:53`
    dnsmasq                       127.0.0.1:5300 in the namespace,
                                  `--server=192.0.2.1 --cache-rr=ANY` (by
                                  default dnsmasq caches neither MX nor TXT)
    Unbound                       127.0.0.1:5301, num-threads 1, forwarding
                                  everything to 192.0.2.1 (iterator only: no
                                  validation, as the others)

Every cache is filled with one pass over the query file, then dnsperf asks
the same questions for ``duration`` seconds, server after server
(``rounds`` times each, at least 3). Every answer is a cache hit. Printed:
median QPS, average latency, server CPU seconds per 1,000 answers, ratios
against dnsmasq and Unbound, and a verdict (QPS >= 1.0x dnsmasq's).

Then the cache's memory: each server's Pss before and after one pass over
``fill`` further names (one A each, all distinct, all cached), as bytes per
100,000 cached answers (scaled linearly from ``fill``); dnsmasq allocates
its cache whole at start, so its figure is its Pss beside a dnsmasq of 150
entries, per entry.

    .venv/bin/python -m bench forwarder [--duration 5] [--rounds 3] [--names 300] [--fill 20000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    LINKS,
    BenchError,
    all_noerror,
    appliance_command,
    appliance_link,
    check_build,
    dnsperf,
    kill,
    median,
    rss_bytes,
    unbound_forwarder,
    verdict,
    wait_ready,
)

REPO = Path(__file__).resolve().parent.parent
HOST, APPLIANCE, DNSMASQ_PORT, UNBOUND_PORT = "192.0.2.1", "192.0.2.2", 5300, 5301
ZONE = "bench.example."
TARGET_QPS = 1.0            # x dnsmasq's


def _zone(names: int, fill: int) -> str:
    lines = [f"$ORIGIN {ZONE}", "$TTL 86400",
             f"@ IN SOA ns.{ZONE} host.{ZONE} 1 7200 900 1209600 3600",
             f"@ IN NS ns.{ZONE}", f"ns IN A {HOST}", f"mail IN A {HOST}"]
    for i in range(names):
        lines += [f"h{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                  f"h{i} IN MX 10 mail.{ZONE}",
                  f'h{i} IN TXT "v=spf1 -all" "host {i}"']
    lines += [f"c{i} IN A 10.{64 + (i >> 16 & 63)}.{i >> 8 & 255}.{i & 255}" for i in range(fill)]
    return "\n".join(lines) + "\n"


def _queries(names: int) -> str:
    return "".join(f"h{i}.{ZONE} {t}\n" for i in range(names) for t in ("A", "MX", "TXT"))


def run(duration: float = 5.0, rounds: int = 3, names: int = 300, fill: int = 20000, out=sys.stdout,
        link: str = "tap") -> bool:
    """Prints the cache-hit table, the cache memory table and the verdicts;
    returns whether the target is met."""
    missing = [t for t in ("ip", "dnsperf", "dnsmasq", "nsd", "unbound") if shutil.which(t) is None
               and not Path(f"/usr/sbin/{t}").exists()]
    if os.geteuid() != 0 or missing:
        raise BenchError(f"needs root and {', '.join(missing) or 'nothing else'}")
    sys.path.insert(0, str(REPO))
    from tests.netns import Namespace
    cache_entries = 4 * names + fill + 100
    with tempfile.TemporaryDirectory(prefix="fwdbench") as tmp, Namespace("fwdbench") as ns:
        d = Path(tmp)
        os.chmod(d, 0o755)
        (d / "bench.zone").write_text(_zone(names, fill))
        from tests.nsd import nsd_conf
        nsd_conf(d, {ZONE: d / "bench.zone"}, address=HOST, port=53)
        queries, fill_queries = d / "queries.txt", d / "fill.txt"
        queries.write_text(_queries(names))
        fill_queries.write_text("".join(f"c{i}.{ZONE} A\n" for i in range(fill)))
        attach = appliance_link(ns, link, f"{HOST}/24")
        print(f"link       the appliance's: {link}", file=out, flush=True)

        nsd = ns.popen(shutil.which("nsd") or "/usr/sbin/nsd", "-d", "-c", str(d / "nsd.conf"))
        command = appliance_command(*attach, "--ipv4", f"{APPLIANCE}/24", "--ipv4-gateway", HOST,
                                    "--forward", f"{HOST}:53", "--cache-size", str(cache_entries),
                                    "--dnssec", "no")         # an unsigned zone: bench/dnssec.py validates
        appliance = ns.popen(*command, cwd=str(REPO))
        wait_ready(appliance, "the appliance")
        check_build(appliance.pid)
        appliance.stdout.close()             # nothing more is read from it: let it not block on a full pipe
        dnsmasq = ns.popen(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "-k", "--conf-file=/dev/null",
                           "--no-resolv", "--no-hosts", "--pid-file=", f"--server={HOST}",
                           "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={DNSMASQ_PORT}",
                           f"--cache-size={cache_entries}", "--cache-rr=ANY", "--user=root")
        unbound = ns.popen(shutil.which("unbound") or "/usr/sbin/unbound", "-d", "-c",
                           str(unbound_forwarder(d, port=UNBOUND_PORT, upstream=HOST,
                                                 cache_entries=cache_entries)))
        time.sleep(1)                        # NSD, dnsmasq and Unbound print nothing when ready
        for proc, what in ((nsd, "nsd"), (dnsmasq, "dnsmasq"), (unbound, "unbound")):
            if proc.poll() is not None:
                raise BenchError(f"{what} exited: {proc.stdout.read()[-400:]}")

        targets = {"appliance": (APPLIANCE, 53, appliance.pid),
                   "dnsmasq --cache-rr=ANY": ("127.0.0.1", DNSMASQ_PORT, dnsmasq.pid),
                   "unbound num-threads 1": ("127.0.0.1", UNBOUND_PORT, unbound.pid)}
        for server, port, _ in targets.values():            # fill every cache
            all_noerror(dnsperf(ns, server, port=port, queries=queries, passes=1, clients=4, outstanding=64)[0],
                     server, port)
        results: dict[str, list] = {k: [] for k in targets}
        for _ in range(rounds):
            for label, (server, port, pid) in targets.items():
                r, _ = dnsperf(ns, server, port=port, queries=queries, seconds=duration, clients=4,
                               outstanding=64, pid=pid)
                results[label].append(all_noerror(r, server, port))
        # dnsmasq allocates its whole cache (--cache-size entries) at start, so
        # its growth reads 0: its cost is its Pss beside a dnsmasq of 150 entries
        small = ns.popen(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "-k", "--conf-file=/dev/null",
                         "--no-resolv", "--no-hosts", "--pid-file=", f"--server={HOST}",
                         "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={DNSMASQ_PORT + 10}",
                         "--cache-size=150", "--cache-rr=ANY", "--user=root")
        memory = {}
        for label, (server, port, pid) in targets.items():
            before = rss_bytes(pid)
            r, _ = dnsperf(ns, server, port=port, queries=fill_queries, passes=1, clients=4, outstanding=64)
            all_noerror(r, server, port)
            if label.startswith("dnsmasq"):
                memory[label] = (rss_bytes(pid) - rss_bytes(small.pid)) * 100_000 / (cache_entries - 150)
            else:
                memory[label] = (rss_bytes(pid) - before) * 100_000 / max(1, r.completed - r.lost)
        for proc in (appliance, dnsmasq, small, unbound, nsd):
            kill(proc)

    print(f"{'forwarder cache hits':<26}{'QPS':>10}{'avg latency ms':>16}{'CPU s/1000':>12}{'lost':>7}", file=out)
    summary = {}
    for label, runs in results.items():
        summary[label] = (median(r.qps for r in runs), median(r.latency_ms for r in runs),
                          median(r.cpu_per_1000 for r in runs), sum(r.lost for r in runs))
        qps, latency, cpu, lost = summary[label]
        print(f"{label:<26}{qps:>10.0f}{latency:>16.3f}{cpu:>12.4f}{lost:>7}", file=out)
    ours = summary["appliance"]
    for label in list(targets)[1:]:
        theirs = summary[label]
        print(f"{'appliance / ' + label.split()[0]:<26}{ours[0] / theirs[0]:>9.2f}x{ours[1] / theirs[1]:>15.2f}x"
              f"{ours[2] / theirs[2]:>11.2f}x", file=out)
    print(f"\ncache memory, Pss per 100,000 answers (growth over {fill} cached A answers; dnsmasq: "
          f"{cache_entries} entries beside 150)", file=out)
    for label, per in memory.items():
        ratios = "" if label != "appliance" else "   " + ", ".join(
            f"{memory[label] / memory[other]:.1f}x {other.split()[0]}" for other in list(memory)[1:] if memory[other] > 0)
        print(f"{label:<26}{per / 2**20:>9.1f} MB{ratios}", file=out)
    line, ok = verdict("cache-hit QPS / dnsmasq", ours[0] / summary["dnsmasq --cache-rr=ANY"][0], at_least=TARGET_QPS)
    print(line, file=out)
    print(verdict("cache-hit QPS / Unbound", ours[0] / summary["unbound num-threads 1"][0])[0], file=out, flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench forwarder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--names", type=int, default=300)
    parser.add_argument("--fill", type=int, default=20000, help="distinct answers cached for the memory figure")
    parser.add_argument("--link", choices=LINKS, default="tap",
                        help="the appliance's link: a tap, or AF_PACKET on a veth with or without its rings")
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    try:
        return 0 if run(args.duration, max(args.rounds, 3), args.names, args.fill, link=args.link) else 1
    except BenchError as e:
        print(f"bench forwarder: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
