"""Forwarder cache hits: the appliance against dnsmasq, same upstream, same run.

Inside a network namespace this benchmark makes (and removes):

    tap0 host side 192.0.2.1/24   NSD on 192.0.2.1:53, the upstream, serving a
                                  generated zone (A, MX and TXT for each name)
    the appliance                 192.0.2.2/24 on tap0: `python -m unikernel
                                  serve --forward 192.0.2.1:53`
    dnsmasq                       127.0.0.1:5300 in the namespace,
                                  `--server=192.0.2.1 --cache-rr=ANY` (by
                                  default dnsmasq caches neither MX nor TXT)

Both caches are filled with one pass over the query file, then dnsperf asks
the same questions for ``duration`` seconds, alternating between the two
(``rounds`` times each). Every answer is a cache hit. Printed: QPS, average
latency, server CPU seconds per 1,000 answers, and the appliance/dnsmasq ratio.

    .venv/bin/python -m bench.forwarder [--duration 10] [--rounds 1] [--names 300]

``bench/__main__.py`` calls :func:`run` and prints its rows.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
HOST, APPLIANCE, DNSMASQ_PORT = "192.0.2.1", "192.0.2.2", 5300
ZONE = "bench.example."


class BenchError(RuntimeError):
    pass


def _zone(names: int) -> str:
    lines = [f"$ORIGIN {ZONE}", "$TTL 86400",
             f"@ IN SOA ns.{ZONE} host.{ZONE} 1 7200 900 1209600 3600",
             f"@ IN NS ns.{ZONE}", f"ns IN A {HOST}", f"mail IN A {HOST}"]
    for i in range(names):
        lines += [f"h{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                  f"h{i} IN MX 10 mail.{ZONE}",
                  f'h{i} IN TXT "v=spf1 -all" "host {i}"']
    return "\n".join(lines) + "\n"


def _queries(names: int) -> str:
    return "".join(f"h{i}.{ZONE} {t}\n" for i in range(names) for t in ("A", "MX", "TXT"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dnsperf(ns, server: str, port: int, queries: Path, *, duration: float | None = None,
             passes: int | None = None) -> dict:
    cmd = ["dnsperf", "-s", server, "-p", str(port), "-d", str(queries), "-c", "4", "-q", "64", "-t", "2"]
    cmd += ["-l", str(duration)] if duration else ["-n", str(passes or 1)]
    out = ns.run(*cmd, timeout=(duration or 60) + 60)
    text = out.stdout
    if out.returncode != 0 or "Queries per second" not in text:
        raise BenchError(f"dnsperf against {server}:{port} failed: {out.stdout[-400:]} {out.stderr[-400:]}")

    def number(label: str) -> float:
        m = re.search(label + r":\s+([0-9.]+)", text)
        return float(m.group(1)) if m else 0.0
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes is None or not codes.group(1).startswith("NOERROR") or "," in codes.group(1):
        raise BenchError(f"{server}:{port} did not answer everything with NOERROR: "
                         f"{codes.group(1) if codes else 'no response codes'}")
    return {"qps": number("Queries per second"), "latency_ms": number(r"Average Latency \(s\)") * 1000,
            "completed": number("Queries completed"), "lost": number("Queries lost")}


def _wait_ready(proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready" in line:
            return
        if not line and proc.poll() is not None:
            break
    raise BenchError(f"{what} did not become ready")


def run(duration: float = 10.0, rounds: int = 1, names: int = 300) -> list[dict]:
    """Rows: one per server (qps, latency_ms, cpu_per_1000), then the ratio."""
    missing = [t for t in ("ip", "dnsperf", "dnsmasq", "nsd") if shutil.which(t) is None
               and not Path(f"/usr/sbin/{t}").exists()]
    if os.geteuid() != 0 or missing:
        raise BenchError(f"needs root and {', '.join(missing) or 'nothing else'}")
    sys.path.insert(0, str(REPO))
    from tests.netns import Namespace
    with tempfile.TemporaryDirectory(prefix="fwdbench") as tmp, Namespace("fwdbench") as ns:
        d = Path(tmp)
        os.chmod(d, 0o755)
        (d / "bench.zone").write_text(_zone(names))
        from tests.nsd import nsd_conf
        nsd_conf(d, {ZONE: d / "bench.zone"}, address=HOST, port=53)
        queries = d / "queries.txt"
        queries.write_text(_queries(names))
        ns.add_tap("tap0", f"{HOST}/24")

        nsd = ns.popen(shutil.which("nsd") or "/usr/sbin/nsd", "-d", "-c", str(d / "nsd.conf"))
        appliance = ns.popen(PYTHON, "-m", "unikernel", "serve", "--tap", "tap0", "--ipv4", f"{APPLIANCE}/24", "--ipv4-gateway", HOST,
                             "--forward", f"{HOST}:53", "--cache-size", str(4 * names + 100),
                             "--rrl-rate", "0",                   # dnsmasq has no RRL: one client, full speed
                             "--dnssec", "no", cwd=str(REPO))     # an unsigned zone: bench/dnssec.py validates
        _wait_ready(appliance, "the appliance")
        dnsmasq = ns.popen(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "-k", "--conf-file=/dev/null",
                           "--no-resolv", "--no-hosts", "--pid-file=", f"--server={HOST}",
                           "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={DNSMASQ_PORT}",
                           f"--cache-size={4 * names + 100}", "--cache-rr=ANY", "--user=root")
        time.sleep(0.5)                      # NSD and dnsmasq print nothing when ready
        for proc, what in ((nsd, "nsd"), (dnsmasq, "dnsmasq")):
            if proc.poll() is not None:
                raise BenchError(f"{what} exited: {proc.stdout.read()[-400:]}")

        targets = {"appliance": (APPLIANCE, 53, appliance.pid), "dnsmasq": ("127.0.0.1", DNSMASQ_PORT, dnsmasq.pid)}
        for server, port, _ in targets.values():            # fill both caches
            _dnsperf(ns, server, port, queries, passes=1)
        results: dict[str, list[dict]] = {k: [] for k in targets}
        for _ in range(rounds):
            for label, (server, port, pid) in targets.items():
                cpu0 = _cpu_seconds(pid)
                r = _dnsperf(ns, server, port, queries, duration=duration)
                r["cpu"] = _cpu_seconds(pid) - cpu0
                results[label].append(r)

    rows = []
    for label, runs in results.items():
        completed = sum(r["completed"] for r in runs)
        rows.append({
            "benchmark": "forwarder cache hits",
            "server": "appliance" if label == "appliance" else "dnsmasq --cache-rr=ANY",
            "qps": sum(r["qps"] for r in runs) / len(runs),
            "latency_ms": sum(r["latency_ms"] for r in runs) / len(runs),
            "cpu_per_1000": 1000 * sum(r["cpu"] for r in runs) / completed if completed else 0.0,
            "lost": sum(r["lost"] for r in runs),
        })
    ratio = rows[0]["qps"] / rows[1]["qps"] if rows[1]["qps"] else 0.0
    rows.append({"benchmark": "forwarder cache hits", "server": "ratio appliance/dnsmasq", "qps": ratio,
                 "latency_ms": (rows[0]["latency_ms"] / rows[1]["latency_ms"]) if rows[1]["latency_ms"] else 0.0,
                 "cpu_per_1000": (rows[0]["cpu_per_1000"] / rows[1]["cpu_per_1000"]) if rows[1]["cpu_per_1000"] else 0.0,
                 "lost": 0})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'forwarder cache hits':<28}{'QPS':>12}{'avg latency ms':>16}{'CPU s/1000':>12}{'lost':>8}"]
    for r in rows:
        if r["server"].startswith("ratio"):
            lines.append(f"{r['server']:<28}{r['qps']:>11.2f}x{r['latency_ms']:>15.2f}x{r['cpu_per_1000']:>11.2f}x")
        else:
            lines.append(f"{r['server']:<28}{r['qps']:>12.0f}{r['latency_ms']:>16.3f}{r['cpu_per_1000']:>12.4f}"
                         f"{int(r['lost']):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.forwarder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--names", type=int, default=300)
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    try:
        rows = run(args.duration, args.rounds, args.names)
    except BenchError as e:
        print(f"bench.forwarder: {e}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
