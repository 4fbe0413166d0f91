"""The operator's side of the unix target in a namespace: CHAOS names beside
NSD's, blocklists seen by dig and kdig, /metrics read by curl and checked by
promtool and prometheus_client, the JSON query log, SIGHUP all or nothing."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.zone
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netns import Namespace, needs_root, read_until
from tests.nsd import nsd_conf
from tests.upstream import TINY_UPSTREAM

ROOT = Path(__file__).resolve().parent.parent.parent
ZONES = Path(__file__).resolve().parent / "zones"
HARD = ZONES / "hard.example.zone"
APPLIANCE = "192.0.2.2"
METRICS_URL = f"http://{APPLIANCE}:9153/metrics"

needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in ("dig", "curl")),
                                 reason="needs dig and curl (apt install dnsutils curl)")

BLOCKLIST = """# StevenBlack-style
0.0.0.0 ads.example.com
0.0.0.0 tracker.example.net
"""
DOMAINS = "||pixel.example.io^\nwww.hard.example\n"
ALLOW = "good.ads.example.com\n"


def dig(ns: Namespace, *query: str) -> str:
    result = ns.run("dig", f"@{APPLIANCE}", *query, "+tries=2", "+time=3", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def serve(ns: Namespace, tmp_path: Path, *extra: str):
    (tmp_path / "block.hosts").write_text(BLOCKLIST)
    (tmp_path / "domains.txt").write_text(DOMAINS)
    (tmp_path / "allow.txt").write_text(ALLOW)
    proc = ns.serve("--zone", str(HARD), "--blocklist", str(tmp_path / "block.hosts"),
                    "--blocklist", str(tmp_path / "domains.txt"), "--allowlist", str(tmp_path / "allow.txt"),
                    "--identity", "test-dns", *extra, ipv4=f"{APPLIANCE}/24", stderr=subprocess.PIPE)
    return proc


@pytest.fixture
def appliance(tmp_path):
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        yield ns, serve(ns, tmp_path, "--log-queries"), tmp_path


def metrics(ns: Namespace) -> dict:
    result = ns.run("curl", "-sS", "--max-time", "10", METRICS_URL)
    assert result.returncode == 0, result.stderr
    return {f.name: f for f in text_string_to_metric_families(result.stdout)}


def sample(families: dict, name: str, family: str | None = None, **labels) -> float:
    values = [s.value for s in families[family or name].samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(values)


# -- CHAOS ------------------------------------------------------------------------------------

CHAOS_QUESTIONS = [("id.server", "TXT"), ("hostname.bind", "TXT"), ("version.server", "TXT"), ("version.bind", "ANY"),
                   ("ID.Server", "TXT"), ("id.server", "A"), ("foo.bind", "TXT")]


def chaos_view(out: str, with_text: bool) -> tuple:
    """What must agree with NSD: status, flags, each answer's owner, TTL, class,
    type (and text, but for the version, which is each server's own), EDE."""
    status = out.split("status: ")[1].split(",")[0]
    flags = out.split("flags: ")[1].split(";")[0]
    answers = [line.split("\t") for line in out.split("ANSWER SECTION:\n")[1].split("\n\n")[0].splitlines()] \
        if "ANSWER SECTION:" in out else []
    ede = out.split("; EDE: ")[1].split(" ")[0] if "; EDE: " in out else None
    return status, flags, [(a[0], *a[-4:-1], a[-1] if with_text else "") for a in answers], ede


@needs_root
@needs_tools
@pytest.mark.skipif(shutil.which("nsd") is None, reason="needs nsd")
def test_chaos_names_answer_as_nsd_does(appliance, tmp_path):
    ns, _, _ = appliance
    work = tmp_path / "nsd"
    work.mkdir()
    conf = nsd_conf(work, {"hard.example": HARD}, address="192.0.2.1")
    conf.write_text(conf.read_text().replace("    verbosity: 0\n", '    verbosity: 0\n    identity: "test-dns"\n'))
    ns.popen("nsd", "-d", "-c", str(conf))
    for _ in range(50):
        if "NOERROR" in ns.run("dig", "@192.0.2.1", "-c", "CH", "-t", "TXT", "-q", "id.server", "+time=1").stdout:
            break
        time.sleep(0.1)
    for name, rdtype in CHAOS_QUESTIONS:
        ours = dig(ns, "-c", "CH", "-t", rdtype, "-q", name, "+norec")
        nsd = ns.run("dig", "@192.0.2.1", "-c", "CH", "-t", rdtype, "-q", name, "+norec", "+time=3").stdout
        with_text = "version" not in name
        assert chaos_view(ours, with_text) == chaos_view(nsd, with_text), (name, rdtype, ours, nsd)
    assert '"0.1.0"' in dig(ns, "-c", "CH", "-t", "TXT", "-q", "version.bind")
    assert '"test-dns"' in dig(ns, "-c", "CH", "-t", "TXT", "-q", "hostname.bind")


@needs_root
@needs_tools
def test_hide_version_refuses_the_version_names(tmp_path):
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        serve(ns, tmp_path, "--hide-version")
        out = dig(ns, "-c", "CH", "-t", "TXT", "-q", "version.bind")
        assert "status: REFUSED" in out and "EDE: 21" in out
        assert '"test-dns"' in dig(ns, "-c", "CH", "-t", "TXT", "-q", "id.server")


# -- blocklists, metrics, the query log -----------------------------------------------------------

@needs_root
@needs_tools
def test_blocked_names_metrics_and_query_log(appliance):
    ns, proc, _ = appliance
    for name in ("ads.example.com", "x.ads.example.com", "tracker.example.net", "a.pixel.example.io"):
        out = dig(ns, name, "A")
        assert "status: NXDOMAIN" in out and "EDE: 15 (Blocked)" in out, out
    if shutil.which("kdig"):
        out = ns.run("kdig", f"@{APPLIANCE}", "deep.tracker.example.net", "AAAA", "+edns", timeout=30).stdout
        assert "NXDOMAIN" in out and "EDE: 15 (Blocked)" in out, out
    # never before local zones and hosts: www.hard.example is listed but the zone has it
    assert "192.0.2.80" in dig(ns, "www.hard.example", "A")
    # the allowlist wins: nothing here serves the name, so (authoritative-only) REFUSED, not blocked
    out = dig(ns, "good.ads.example.com", "A")
    assert "status: REFUSED" in out and "EDE: 15" not in out
    assert "status: NOERROR" in dig(ns, "mail.hard.example", "A", "+tcp")

    families = metrics(ns)
    assert sample(families, "dnsapp_answers_total", "dnsapp_answers", source="blocked", rcode="NXDOMAIN") == 5
    assert sample(families, "dnsapp_answers_total", "dnsapp_answers", source="zone") == 2
    assert sample(families, "dnsapp_queries_total", "dnsapp_queries", transport="tcp", qtype="A") == 1
    assert sample(families, "dnsapp_events_total", "dnsapp_events", layer="blocklist", event="blocked") == 5
    assert sample(families, "dnsapp_build_info", version="0.1.0") == 1
    hard = dns.zone.from_file(str(HARD), relativize=False)       # dnspython's reading of the same file
    assert sample(families, "dnsapp_zone_serial", zone="hard.example.", role="primary") == \
        hard.get_rdataset(hard.origin, "SOA")[0].serial
    assert sample(families, "dnsapp_zone_names", zone="hard.example.", role="primary") == len(hard.nodes)
    assert sample(families, "process_resident_memory_bytes") > 10_000_000
    assert sample(families, "dnsapp_tcp_connections", state="ESTABLISHED") >= 1       # curl's own
    assert sample(families, "dnsapp_answer_duration_seconds_count", "dnsapp_answer_duration_seconds",
                  source="blocked") == 5
    if shutil.which("promtool"):
        check = ns.run("sh", "-c", f"curl -sS --max-time 10 {METRICS_URL} | promtool check metrics")
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    blocked = [entry for entry in logged if entry["source"] == "blocked"]
    assert [entry["qname"] for entry in blocked][:2] == ["ads.example.com.", "x.ads.example.com."]
    first = blocked[0]
    assert set(first) == {"time", "client", "port", "qname", "qtype", "transport", "rcode", "source", "latency_ms",
                          "flags"}
    assert (first["client"], first["qtype"], first["transport"], first["rcode"]) == ("192.0.2.1", "A", "udp",
                                                                                    "NXDOMAIN")
    assert "rd" in first["flags"] and first["latency_ms"] >= 0
    assert any(entry["transport"] == "tcp" and entry["source"] == "zone" for entry in logged)
    assert "Traceback" not in err


@needs_root
@needs_tools
def test_sighup_reloads_blocklists_with_the_zones_all_or_nothing(appliance, tmp_path):
    ns, proc, work = appliance
    (work / "block.hosts").write_text(BLOCKLIST + "0.0.0.0 new.example.org\n")
    proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        if "EDE: 15" in dig(ns, "new.example.org", "A"):
            break
        time.sleep(0.1)
    assert "EDE: 15" in dig(ns, "new.example.org", "A")
    assert "EDE: 15" in dig(ns, "ads.example.com", "A")
    # a blocklist that cannot be read: nothing is reloaded, the old lists stay
    (work / "domains.txt").unlink()
    (work / "block.hosts").write_text("0.0.0.0 other.example.org\n")
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert "EDE: 15" in dig(ns, "new.example.org", "A")
    assert "EDE: 15" not in dig(ns, "other.example.org", "A")
    assert "EDE: 15" in dig(ns, "a.pixel.example.io", "A")
    families = metrics(ns)
    assert sample(families, "dnsapp_events_total", "dnsapp_events", layer="dns", event="reload.failed") == 1
    assert sample(families, "dnsapp_events_total", "dnsapp_events", layer="dns", event="reload.done") == 1


@needs_root
@needs_tools
def test_metrics_port_only_for_allowed_clients(tmp_path):
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        serve(ns, tmp_path, "--allow", "198.51.100.0/24")
        result = ns.run("curl", "-sS", "--max-time", "5", METRICS_URL)
        assert result.returncode != 0 and "dnsapp_" not in result.stdout


@needs_root
@needs_tools
def test_forwarded_and_cached_answers_upstreams_and_a_reload_that_blocks_a_cached_name(tmp_path):
    blocklist = tmp_path / "later.txt"
    blocklist.write_text("other.example\n")
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        upstream = ns.popen(sys.executable, "-c", TINY_UPSTREAM, "192.0.2.1")
        assert upstream.stdout.readline().strip() == "listening"
        proc = ns.serve("--blocklist", str(blocklist),
                        "--dnssec", "no",             # the tiny upstream signs nothing
                        ipv4=f"{APPLIANCE}/24", forward="192.0.2.1")
        for _ in range(2):                         # relayed, then from the cache (its fast path)
            assert "198.51.100.9" in dig(ns, "www.example.org", "A")
        families = metrics(ns)
        assert sample(families, "dnsapp_answers_total", "dnsapp_answers", source="forward", rcode="NOERROR") == 1
        assert sample(families, "dnsapp_answers_total", "dnsapp_answers", source="cache", rcode="NOERROR") == 1
        assert sample(families, "dnsapp_upstream_up", upstream="192.0.2.1#53") == 1
        assert sample(families, "dnsapp_upstream_consecutive_failures", upstream="192.0.2.1#53") == 0
        assert sample(families, "dnsapp_upstream_rtt_seconds_count", "dnsapp_upstream_rtt_seconds",
                      upstream="192.0.2.1#53") >= 1
        assert sample(families, "dnsapp_cache_entries") >= 1
        # the name is blocked from now on: not answered from the cache any more
        blocklist.write_text("example.org\n")
        proc.send_signal(signal.SIGHUP)
        read_until(proc, "reloaded")
        out = dig(ns, "www.example.org", "A")
        assert "status: NXDOMAIN" in out and "EDE: 15 (Blocked)" in out, out


@needs_root
@needs_tools
def test_sighup_reloads_hosts_files_too_and_a_bad_one_reloads_nothing(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.70 printer.lan\n")
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        proc = serve(ns, tmp_path, "--hosts", str(hosts))
        assert "192.0.2.70" in dig(ns, "printer.lan", "A", "+short")
        hosts.write_text("192.0.2.71 printer.lan\n")
        proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if "192.0.2.71" in dig(ns, "printer.lan", "A", "+short"):
                break
            time.sleep(0.1)
        assert "192.0.2.71" in dig(ns, "printer.lan", "A", "+short")
        # a hosts file with an error: the blocklist changed beside it is not taken either
        hosts.write_text("192.0.2.999 printer.lan\n")
        (tmp_path / "block.hosts").write_text("0.0.0.0 fresh.example.org\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert "192.0.2.71" in dig(ns, "printer.lan", "A", "+short")
        assert "EDE: 15" in dig(ns, "ads.example.com", "A")
        assert "EDE: 15" not in dig(ns, "fresh.example.org", "A")


@pytest.mark.parametrize("args, expected", [
    (["--block-answer", "refuse"], "block-answer"),
    (["--blocklist", "/nonexistent/list.txt"], "/nonexistent/list.txt"),
    (["--metrics-port", "53"], "metrics-port"),
    (["--metrics-port", "70000"], "metrics-port"),
])
def test_bad_operator_flags_exit_2_with_one_line(args, expected):
    result = subprocess.run([sys.executable, "-m", "unikernel", "serve", "--tap", "dnsbadops0", *args],
                            capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


@needs_root
@needs_tools
def test_null_block_answers(tmp_path):
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        serve(ns, tmp_path, "--block-answer", "null")
        out = dig(ns, "ads.example.com", "A")
        assert "status: NOERROR" in out and "\t0.0.0.0" in out and "EDE: 15 (Blocked)" in out, out
        out = dig(ns, "x.tracker.example.net", "AAAA")
        assert "status: NOERROR" in out and "\t::" in out, out
        out = dig(ns, "ads.example.com", "MX")
        assert "status: NOERROR" in out and "ANSWER: 0," in out
