"""The unix target end to end: `python -m unikernel serve` on a tap in a
network namespace, queried by dig (BIND's, not ours).

Host side of the tap 192.0.2.1/24, appliance 192.0.2.2/24; and the tutorial's
default (no flags: tap0, 192.168.1.2/24, data/d1.signpo.st.zone) with the
host side at 192.168.1.1/24.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import Namespace, needs_root, read_until
from tests.upstream import TINY_UPSTREAM

ROOT = Path(__file__).resolve().parent.parent.parent
ZONES = Path(__file__).resolve().parent / "zones"
HARD = ZONES / "hard.example.zone"

needs_dig = pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (apt install dnsutils)")


def unikernel(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unikernel", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def dig(ns: Namespace, server: str, *query: str) -> str:
    result = ns.run("dig", f"@{server}", *query, "+tries=2", "+time=3", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- errors before anything is served (no root needed) -----------------------------

@pytest.mark.parametrize("args, expected", [
    (["serve", "--no-such-flag"], "unrecognized arguments"),
    (["serve", "--ipv4", "192.0.2.300/24"], "--ipv4"),
    (["serve", "--port", "fifty-three"], "--port"),
    (["serve", "--zone", "/nonexistent/example.zone"], "/nonexistent/example.zone"),
    ([], "serve"),
])
def test_bad_flags_exit_2_with_one_line(args, expected):
    result = unikernel(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert "ready" not in result.stdout


def test_zone_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.zone"
    bad.write_text(HARD.read_text() + "oops IN A 192.0.2.999\n")
    line = len(bad.read_text().splitlines())
    result = unikernel("serve", "--tap", "dnsbadzone0", "--zone", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() .startswith(f"{bad}:{line}:")
    assert len(result.stderr.strip().splitlines()) == 1


# -- serving ------------------------------------------------------------------------

@pytest.fixture
def appliance():
    """The appliance on tap0 of a fresh namespace serving the hard-cases zone."""
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        proc = ns.serve("--zone", str(HARD), "--zone", str(ZONES / "sub.hard.example.zone"), ready=None)
        ready = read_until(proc, "ready")
        yield ns, proc, ready


@needs_root
@needs_dig
def test_dig_gets_answers_through_our_stack(appliance):
    ns, proc, ready = appliance
    assert "192.0.2.2:53" in ready
    out = dig(ns, "192.0.2.2", "www.hard.example", "A", "+norec")
    assert "status: NOERROR" in out and "flags: qr aa;" in out
    assert "192.0.2.80" in out
    out = dig(ns, "192.0.2.2", "WwW.HaRd.ExAmPlE", "A")
    assert "WwW.HaRd.ExAmPlE.\t3600\tIN\tA\t192.0.2.80" in out     # the question as asked
    out = dig(ns, "192.0.2.2", "nope.hard.example", "A")
    assert "status: NXDOMAIN" in out and "IN\tSOA" in out
    out = dig(ns, "192.0.2.2", "www.example.org", "A")
    assert "status: REFUSED" in out


@needs_root
@needs_dig
def test_truncated_over_udp_whole_over_tcp(appliance):
    ns, _, _ = appliance
    out = dig(ns, "192.0.2.2", "big.hard.example", "TXT", "+noedns", "+ignore")
    assert "flags: qr aa tc" in out and "ANSWER: 0" in out
    out = dig(ns, "192.0.2.2", "big.hard.example", "TXT", "+tcp")
    assert "ANSWER: 10," in out and "(TCP)" in out


@needs_root
@needs_dig
def test_sigusr1_logs_counters_and_sigterm_stops_cleanly(appliance):
    ns, proc, _ = appliance
    dig(ns, "192.0.2.2", "www.hard.example", "A")
    proc.send_signal(signal.SIGUSR1)
    line = read_until(proc, "dns.slow.answered")
    assert line.split() == ["dns.slow.answered", "1"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "stopped" in out and "Traceback" not in out


@needs_root
def test_sigint_stops_cleanly(appliance):
    ns, proc, _ = appliance
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in out


@needs_root
@needs_dig
def test_no_flags_serves_the_tutorial_from_config_py():
    """`python -m unikernel serve` alone: tap0, 192.168.1.2/24, data/ zones."""
    with Namespace() as ns:
        ns.add_tap("tap0", "192.168.1.1/24")
        # config.py relays what its zones do not hold to the host side of tap0
        upstream = ns.popen(sys.executable, "-c", TINY_UPSTREAM, "192.168.1.1")
        assert upstream.stdout.readline().strip() == "listening"
        proc = ns.popen(sys.executable, "-m", "unikernel", "serve", cwd=str(ROOT))
        ready = read_until(proc, "ready")
        assert "192.168.1.2:53" in ready
        out = dig(ns, "192.168.1.2", "ns0.d1.signpo.st")
        assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
        assert "ns0.d1.signpo.st.\t3600\tIN\tA\t192.168.1.2" in out
        relayed = dig(ns, "192.168.1.2", "www.example.org")
        # relayed, and validated (config.py keeps DNSSEC on): this upstream
        # knows no root keys, so the answer cannot be trusted
        assert "status: SERVFAIL" in relayed and " ra" in relayed.split("flags:")[1].split(";")[0]
        assert "EDE: 9 (DNSKEY Missing)" in relayed, relayed
        ping = ns.run("ping", "-c", "1", "-W", "3", "192.168.1.2")
        assert ping.returncode == 0, ping.stdout


@needs_root
@needs_dig
def test_log_queries_and_pcap(tmp_path):
    """--log-queries logs one JSON line a query (slow path, then the hot path);
    --pcap writes what crossed the tap, readable by tcpdump."""
    trace = tmp_path / "trace.pcap"
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        proc = ns.serve("--zone", str(HARD), "--log-queries", "--pcap", str(trace))
        for _ in range(2):
            assert "192.0.2.25" in dig(ns, "192.0.2.2", "mail.hard.example", "A")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["qname"], e["qtype"], e["rcode"], e["source"], e["transport"]) for e in logged] == \
        [("mail.hard.example.", "A", "NOERROR", "zone", "udp")] * 2     # the slow path, then the kept answer
    if shutil.which("tcpdump"):
        dump = subprocess.run(["tcpdump", "-nr", str(trace)], capture_output=True, text=True, timeout=30)
        assert dump.stdout.count("A? mail.hard.example.") == 2       # two queries
        assert dump.stdout.count("1/2/3 A 192.0.2.25") == 2          # two answers


@needs_root
@needs_dig
def test_sighup_reloads_zones_and_keeps_the_old_ones_on_error(tmp_path):
    zone = tmp_path / "reload.test.zone"
    zone.write_text("$ORIGIN reload.test.\n$TTL 300\n"
                    "@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A 192.0.2.53\nwww A 192.0.2.80\n")
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        proc = ns.serve("--zone", str(zone))
        for _ in range(2):                     # the second answer comes from the kept bytes
            assert "192.0.2.80" in dig(ns, "192.0.2.2", "www.reload.test", "+short")
        zone.write_text(zone.read_text().replace("192.0.2.80", "192.0.2.81").replace(" 1 3600", " 2 3600"))
        proc.send_signal(signal.SIGHUP)
        assert "reloaded 1 zone file" in read_until(proc, "reloaded")
        assert dig(ns, "192.0.2.2", "www.reload.test", "+short").strip() == "192.0.2.81"
        zone.write_text(zone.read_text() + "broken IN A not-an-address\n")
        proc.send_signal(signal.SIGHUP)
        failed = read_until(proc, "reload failed")
        assert f"{zone}:7" in failed                          # file and line of the error
        assert dig(ns, "192.0.2.2", "www.reload.test", "+short").strip() == "192.0.2.81"
