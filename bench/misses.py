"""Forwarded cache misses over UDP, with DNSSEC validation off and on, each
beside Unbound forwarding to the same upstream in the same run.

Inside a network namespace this benchmark makes (and removes), on the signed
hierarchy of tests/dnssec_world.py with ``bench.tld.`` (one A per name) added:

    NSD              127.0.0.1, every zone (signed at start)
    Unbound (up)     192.0.2.1:53 on tap0's host side, iterator only; primed
                     with one pass, so it answers from its cache and the
                     forwarders are what is measured
    the appliance    192.0.2.2/24 on tap0, `--forward 192.0.2.1:53
                     --rrl-rate 0`, with `--dnssec no`, or validating with
                     the test root's anchor
    Unbound (fwd)    127.0.0.1:5301, num-threads 1, `forward-addr:
                     192.0.2.1@53`, iterator only or validating (same anchor)

Every forwarder is started fresh for each round (an empty cache), then
dnsperf (4 clients, 64 queries in flight) asks each of ``names`` distinct
questions once: every answer is a cache miss relayed upstream. Printed:
median QPS, average latency, server CPU per answer, answers lost, the
latency of a miss asked alone (one in flight, ``ALONE`` further names) and
of a hit (the same names again), the
ratios to Unbound in the same mode, a verdict line per mode (reported: no
numeric target), and the appliance's counters that say where misses could
wait (the forwarded pool, the in-flight table, RRL, the stub's timeouts).

``--in-process`` needs neither root nor a namespace: the DNS side of a miss
alone (the server's slow path, the forwarder, the cache, the stub resolver)
on a fake stack whose upstream answers at once from bytes prepared before
(an A, the zone's NS, a glue address, as Unbound answers here), ``names``
distinct misses 64 at a time, DNSSEC off; CPU microseconds per miss, the
best of ``rounds`` (process_time, so other jobs matter less). Its figure
has no peer: compare two trees with it, alternating, in one session.

``--profile plain|validating`` instead samples that appliance with py-spy
(``.venv/bin/pip install py-spy``) during one longer pass and prints where
its time goes, as bench/profile.py does for hits (give ``--names`` enough
for the seconds sampled: 20,000 for 10 s). ``--trace plain|validating``
times misses asked one at a time from tcpdump's timestamps on tap0: the
appliance's work before asking upstream, the upstream's, and its work after.

    .venv/bin/python -m bench misses [--rounds 3] [--names 3000] [--profile plain] [--trace plain] [--in-process]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import (
    ROOT,
    BenchError,
    all_noerror,
    appliance_command,
    cpu_seconds,
    dnsperf,
    dnsperf_noerror,
    median,
    percentile,
    unbound_forwarder,
    verdict,
    wait_ready,
)

HOST, APPLIANCE, UNBOUND_PORT, METRICS_PORT = "192.0.2.1", "192.0.2.2", 5301, 8053
ZONE = "bench.tld."
ALONE = 200                  # further names, asked one at a time: a miss's latency without a queue
MODES = ("plain", "validating")
# the appliance's counters that tell where a miss could wait or be turned away
WATCHED = ("dns.fast.miss", "dns.slow.overload.drop", "dns.slow.forward_overload.servfail", "dns.rrl.limited",
           "forward.cache.miss", "forward.inflight.joined", "forward.inflight_full.servfail",
           "forward.upstream.query", "forward.upstream.fail", "stub.timeout", "forward.servfail",
           "dnssec.chain.fetch", "dnssec.chain.hit", "dnssec.secure", "dnssec.bogus")


def _zone(names: int) -> str:
    return (f"{ZONE} NS ns.tld.\n"
            + "".join(f"m{i}.{ZONE} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(names))
            + "".join(f"s{i}.{ZONE} A 10.255.0.{i}\n" for i in range(ALONE)))


def _counters(ns) -> dict[str, int]:
    """The appliance's dotted counters, read back from its /metrics."""
    r = ns.run("curl", "-s", "--max-time", "5", f"http://{APPLIANCE}:{METRICS_PORT}/metrics", timeout=15)
    counters: dict[str, int] = {}
    for layer, kind, event, value in re.findall(
            r'^dnsapp_(?:events|dropped)_total\{layer="([^"]+)",(event|reason)="([^"]+)"\} (\S+)$', r.stdout, re.M):
        counters[f"{layer}.{event}" + (".drop" if kind == "reason" else "")] = int(float(value))
    return counters


def run(rounds: int = 3, names: int = 3000, profile: str | None = None, seconds: float = 10, top: int = 30,
        appliance_flags: tuple[str, ...] = (), trace: str | None = None, out=sys.stdout) -> bool:
    sys.path.insert(0, str(ROOT))
    from tests.dnssec_world import SignedWorld, missing_tools
    missing = missing_tools() + [t for t in ("ip", "dnsperf", "curl") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        raise BenchError(f"needs root and {', '.join(missing) or 'nothing else'}")
    from tests.netns import Namespace
    with tempfile.TemporaryDirectory(prefix="missbench") as tmp, Namespace("missbench") as ns:
        work = Path(tmp)
        os.chmod(work, 0o755)
        ns.add_tap("tap0", f"{HOST}/24")
        world = SignedWorld(ns, work, upstream=HOST, extra_zones={ZONE: _zone(names)})
        world.__enter__()
        queries = work / "queries.txt"
        queries.write_text("".join(f"m{i}.{ZONE} A\n" for i in range(names)))
        alone = work / "alone.txt"
        alone.write_text("".join(f"s{i}.{ZONE} A\n" for i in range(ALONE)))
        for primed in (queries, alone):                            # prime the upstream's cache
            dnsperf_noerror(ns, HOST, 53, primed, passes=1)

        def appliance(mode: str):
            validation = (["--trust-anchor", str(world.anchor_file)] if mode == "validating"
                          else ["--dnssec", "no"])
            command = appliance_command("--tap", "tap0", "--ipv4", f"{APPLIANCE}/24", "--ipv4-gateway", HOST,
                                        "--forward", f"{HOST}:53", "--cache-size", str(names + 100),
                                        "--metrics-port", str(METRICS_PORT), *validation, *appliance_flags)
            proc = ns.popen(*command, cwd=str(ROOT))
            wait_ready(proc, f"the appliance ({mode})")
            proc.stdout.close()              # nothing more is read from it: let it not block on a full pipe
            return proc, APPLIANCE, 53

        def unbound(mode: str):
            conf = unbound_forwarder(work, port=UNBOUND_PORT, upstream=HOST, name=f"forwarder-{mode}",
                                     validating=mode == "validating", anchor=world.anchor_file)
            proc = ns.popen("unbound", "-d", "-c", str(conf))
            for _ in range(50):              # Unbound answers version.server itself, asking no one
                if ns.run("dig", "@127.0.0.1", "-p", str(UNBOUND_PORT), "+time=1", "+tries=1", "version.server",
                          "TXT", "CH").returncode == 0:
                    break
            return proc, "127.0.0.1", UNBOUND_PORT

        if profile is not None:
            return _profile(ns, work, appliance(profile)[0], queries, seconds, top, out)
        if trace is not None:
            return _trace(ns, work, appliance(trace)[0], alone, out)
        results: dict[tuple[str, str], list[dict]] = {}
        counters: dict[str, dict[str, int]] = {}
        for _ in range(rounds):
            for mode in MODES:
                for server_name, start in (("appliance", appliance), ("Unbound", unbound)):
                    proc, server, port = start(mode)
                    try:
                        cpu0 = cpu_seconds(proc.pid)
                        r = dnsperf_noerror(ns, server, port, queries, passes=1)
                        r["cpu"] = cpu_seconds(proc.pid) - cpu0
                        one, _ = dnsperf(ns, server, alone, port=port, passes=1, clients=1, outstanding=1)
                        r["alone_ms"] = all_noerror(one, server, port).latency_ms
                        # the same names again, now cached: the floor of an exchange with this server
                        one, _ = dnsperf(ns, server, alone, port=port, passes=1, clients=1, outstanding=1)
                        r["hit_ms"] = all_noerror(one, server, port).latency_ms
                        results.setdefault((server_name, mode), []).append(r)
                        if server_name == "appliance":
                            counters[mode] = _counters(ns)
                    finally:
                        proc.terminate()
                        proc.wait(10)
    load = os.getloadavg()
    print(f"{'cache misses over UDP':<34}{'QPS':>10}{'avg latency ms':>16}{'CPU us/answer':>15}{'lost':>7}"
          f"{'one at a time: miss, hit ms':>29}", file=out)
    summary = {}
    for (server_name, mode), runs in results.items():
        summary[server_name, mode] = (median(r["qps"] for r in runs), median(r["latency_ms"] for r in runs),
                                      median(1e6 * r["cpu"] / r["completed"] for r in runs if r["completed"]),
                                      sum(r["lost"] for r in runs), median(r["alone_ms"] for r in runs),
                                      median(r["hit_ms"] for r in runs))
        qps, latency, cpu, lost, alone_ms, hit_ms = summary[server_name, mode]
        print(f"{server_name + ', ' + mode:<34}{qps:>10.0f}{latency:>16.3f}{cpu:>15.0f}{lost:>7}{alone_ms:>21.3f}"
              f"{hit_ms:>8.3f}", file=out)
    for mode in MODES:
        ours, theirs = summary["appliance", mode], summary["Unbound", mode]
        print(f"{'appliance / Unbound, ' + mode:<34}{ours[0] / theirs[0]:>9.2f}x{ours[1] / theirs[1]:>15.2f}x"
              f"{ours[2] / theirs[2]:>14.2f}x{'':>7}{ours[4] / theirs[4]:>20.2f}x{ours[5] / theirs[5]:>7.2f}x",
              file=out)
    print(f"\nthe appliance's counters after its last round ({names} misses, then {ALONE} asked alone, twice):", file=out)
    for name in WATCHED:
        print(f"{name:<40}" + "".join(f"{counters.get(mode, {}).get(name, 0):>12}" for mode in MODES), file=out)
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, shared)", file=out)
    for mode in MODES:
        ours, theirs = summary["appliance", mode], summary["Unbound", mode]
        print(verdict(f"cache-miss QPS / Unbound, {mode}", ours[0] / theirs[0])[0], file=out)
        print(verdict(f"cache-miss CPU per answer / Unbound, {mode}", ours[2] / theirs[2])[0], file=out, flush=True)
    return True


def _profile(ns, work: Path, proc: subprocess.Popen, queries: Path, seconds: float, top: int, out) -> bool:
    from bench.profile import summarise
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is missing (.venv/bin/pip install py-spy)")
    raw = work / "profile.txt"
    answered: list[dict] = []
    # one pass of distinct names: give --names enough for the seconds sampled
    load = threading.Thread(target=lambda: answered.append(dnsperf_noerror(ns, APPLIANCE, 53, queries, passes=1)),
                            daemon=True)
    load.start()
    time.sleep(0.5)
    subprocess.run([spy, "record", "--format", "raw", "-o", str(raw), "-r", "250", "-d", str(int(seconds)),
                    "-p", str(proc.pid)], check=True, capture_output=True)
    load.join()
    proc.terminate()
    proc.wait(10)
    qps = answered[0]["qps"] if answered else float("nan")
    print(f"{qps:.0f} QPS of misses under py-spy", file=out)
    print(summarise(raw, top), file=out)
    return True


def _trace(ns, work: Path, proc: subprocess.Popen, alone: Path, out) -> bool:
    """Misses asked one at a time while tcpdump records tap0, which every
    frame of an exchange crosses: the client's query in, ours to the
    upstream, its reply, ours to the client. Prints the median and 90th
    percentile of the three gaps between them (the appliance's work before
    asking, the upstream's, the appliance's after)."""
    pcap = work / "misses.pcap"
    dump = ns.popen("tcpdump", "-i", "tap0", "-n", "-U", "--immediate-mode", "-w", str(pcap), "udp port 53")
    # "listening on tap0, ...": capturing from here (a second's sleep was
    # too short on a loaded machine: 13 of 200 misses traced)
    line = dump.stdout.readline()
    if "listening on" not in line:
        raise BenchError(f"tcpdump did not start: {line.strip()}")
    one, _ = dnsperf(ns, APPLIANCE, alone, passes=1, clients=1, outstanding=1)
    time.sleep(0.5)
    dump.terminate()
    dump.wait(10)
    proc.terminate()
    proc.wait(10)
    text = subprocess.run(["tcpdump", "-n", "-tt", "-r", str(pcap)], capture_output=True, text=True).stdout
    frames = [(float(m[1]), m[2], m[3]) for m in re.finditer(r"^(\d+\.\d+) IP (\S+) > (\S+?):", text, re.M)]
    legs = ((lambda s, d: s.startswith(APPLIANCE + ".") and d == f"{HOST}.53"),     # ours to the upstream
            (lambda s, d: s == f"{HOST}.53" and d.startswith(APPLIANCE + ".")),     # its reply
            (lambda s, d: s == f"{APPLIANCE}.53"))                                   # ours to the client
    gaps: list[list[float]] = [[], [], []]
    i = 0
    while i < len(frames):
        if frames[i][2] != f"{APPLIANCE}.53":
            i += 1
            continue
        times, j = [frames[i][0]], i + 1
        for leg in legs:                    # one in flight: the next frames of each kind are this miss's
            while j < len(frames) and not leg(frames[j][1], frames[j][2]):
                j += 1
            if j < len(frames):
                times.append(frames[j][0])
                j += 1
        if len(times) == 4:
            for k in range(3):
                gaps[k].append(times[k + 1] - times[k])
        i = j
    print(f"one miss at a time, {len(gaps[0])} traced on tap0; dnsperf's average latency {one.latency_ms:.3f} ms",
          file=out)
    for label, values in zip(("query in -> ours upstream", "the upstream", "its reply -> ours out"), gaps):
        print(f"{label:<28}median {1000 * median(values):.3f} ms, 90th percentile "
              f"{1000 * percentile(values, 0.9):.3f} ms", file=out)
    return True


class _FakeUdp:
    """The stack's UDP as the server and the stub resolver use it; what goes
    to the upstream is answered by ``upstream`` (on the next loop turn)."""

    def __init__(self, upstream) -> None:
        self.bindings: dict = {}
        self.upstream = upstream
        self.replies = 0
        self.next_port = 1024

    def bind(self, port, handler):
        self.bindings[port] = handler

    def bind_responder(self, port, responder):
        def deliver(payload, src_ip, src_port, dst_ip, dst_port):
            reply = responder(payload, src_ip, src_port, dst_ip, dst_port)
            if reply is not None:
                self.sendto(reply[0], port, src_ip, src_port)
        self.bind(port, deliver)

    def bind_ephemeral(self, handler):
        while self.next_port in self.bindings:
            self.next_port = self.next_port + 1 if self.next_port < 65535 else 1024
        self.bindings[self.next_port] = handler
        return self.next_port

    def unbind(self, port):
        self.bindings.pop(port, None)

    def sendto(self, payload, src_port, dst_ip, dst_port):
        if (dst_ip, dst_port) == _UPSTREAM:
            self.upstream(payload, src_port)
        else:
            self.replies += 1

    def deliver(self, payload, src_ip, src_port, dst_port):
        handler = self.bindings.get(dst_port)
        if handler is not None:
            handler(payload, src_ip, src_port, _SERVER, dst_port)


_CLIENT, _SERVER, _UPSTREAM = 0xC0000263, 0xC0000202, (0xC0000201, 53)


async def _in_process_round(names: int) -> float:
    """CPU microseconds per miss over ``names`` distinct misses."""
    import asyncio
    import gc

    import dns.flags
    import dns.message
    import dns.rrset

    from netstack.counters import Counters
    from unikernel.process import processor_of_process
    from unikernel.resolver.cache import Cache
    from unikernel.resolver.forwarder import Forwarder
    from unikernel.resolver.stub import StubResolver
    from unikernel.serve.server import DnsServer

    answers: dict[bytes, bytes] = {}          # the question, lowercase -> the upstream's reply
    ns = dns.rrset.from_text(ZONE, 3600, "IN", "NS", "ns.tld.")
    glue = dns.rrset.from_text("ns.tld.", 3600, "IN", "A", HOST)
    for i in range(names):
        name = f"m{i}.{ZONE}"
        reply = dns.message.make_response(dns.message.make_query(name, "A", use_edns=0, payload=1232))
        reply.flags |= dns.flags.RA
        reply.answer = [dns.rrset.from_text(name, 3600, "IN", "A", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")]
        reply.authority, reply.additional = [ns], [glue]
        wire = reply.to_wire()
        answers[wire[12:wire.index(0, 12) + 5]] = wire

    def upstream(query: bytes, src_port: int) -> None:
        end = query.index(0, 12) + 5          # our names have no pointers: the question ends at its root
        template = answers[query[12:end].lower()]
        reply = query[:2] + template[2:12] + query[12:end] + template[end:]     # ID and case as asked
        loop.call_soon(udp.deliver, reply, *_UPSTREAM, src_port)

    loop = asyncio.get_running_loop()
    udp = _FakeUdp(upstream)
    stack = type("Stack", (), {"udp": udp, "tcp": None, "counters": Counters(), "now": staticmethod(loop.time)})()
    cache = Cache(counters=stack.counters, max_entries=names + 10)
    forwarder = Forwarder([_UPSTREAM], stub=StubResolver(stack, counters=stack.counters), cache=cache,
                          allow=["192.0.2.0/24"], clock=loop.time)

    async def not_ours(src, dst, query):
        return None

    server = DnsServer(stack, 53, processor_of_process(not_ours), forwarder=processor_of_process(forwarder),
                       clock=loop.time, fast_lookups=[forwarder.fast_lookup], recursion_for=forwarder.allowed)
    server.start()
    queries = [dns.message.make_query(f"m{i}.{ZONE}", "A", use_edns=0, payload=4096, id=i & 0xFFFF).to_wire()
               for i in range(names)]
    gc.collect()
    gc.freeze()                               # as the appliance does once ready
    started = time.process_time()
    for first in range(0, names, 64):         # dnsperf's 64 in flight
        for i in range(first, min(first + 64, names)):
            udp.deliver(queries[i], _CLIENT, 20000 + i % 30000, 53)
        while server.pending or server.forwarding:
            await asyncio.gather(*server.pending, *server.forwarding, return_exceptions=True)
    cpu = time.process_time() - started
    gc.unfreeze()
    server.close()
    await forwarder.stop()
    if udp.replies != names or stack.counters["forward.cache.miss"] != names:
        raise BenchError(f"{udp.replies} replies to {names} misses")
    return 1e6 * cpu / names


def _in_process(names: int, rounds: int, out) -> bool:
    import asyncio
    figures = [asyncio.run(_in_process_round(names)) for _ in range(rounds)]
    print(f"the DNS side of a miss, in process (DNSSEC off, {names} distinct names, 64 at a time): "
          f"best {min(figures):.0f} CPU us a miss, median {median(figures):.0f} of {rounds} rounds", file=out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench misses", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--names", type=int, default=3000)
    parser.add_argument("--profile", choices=MODES)
    parser.add_argument("--profile-seconds", type=float, default=10)
    parser.add_argument("--top", type=int, default=30, help="rows of each profile table")
    parser.add_argument("--trace", choices=MODES, help="time one miss at a time from tcpdump on tap0")
    parser.add_argument("--in-process", action="store_true",
                        help="the DNS side alone on a fake stack, CPU per miss (no root, no namespace)")
    parser.add_argument("--appliance-flag", action="append", default=[], metavar="FLAG",
                        help="passed to the appliance (after the bench's own), e.g. --appliance-flag=--rrl-rate=200")
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    try:
        if args.in_process:
            return 0 if _in_process(args.names, max(args.rounds, 1), sys.stdout) else 1
        return 0 if run(max(args.rounds, 1), args.names, args.profile, args.profile_seconds, args.top,
                         appliance_flags=tuple(args.appliance_flag), trace=args.trace) else 1
    except BenchError as e:
        print(f"bench misses: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
