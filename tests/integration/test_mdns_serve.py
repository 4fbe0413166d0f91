"""`.local` end to end: `python -m unikernel serve` on a tap in a namespace,
avahi-daemon or python-zeroconf on the tap's host side publishing the
devices, BIND's dig asking the appliance as a plain unicast client would."""
from __future__ import annotations

import re
import shutil
import signal
import threading

import pytest

from tests.mdns_peers import needs_avahi, start_avahi, start_zeroconf
from tests.netns import Namespace, needs_root, read_until

pytestmark = [pytest.mark.root, needs_root,
              pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (apt install dnsutils)")]

HOSTS = {"printer.local": "192.0.2.20", "nas.local": "192.0.2.30"}
APPLIANCE = "192.0.2.2"


def serve(ns: Namespace, *flags: str):
    ns.add_tap("tap0", "192.0.2.1/24")
    ns.ip("route", "add", "224.0.0.0/4", "dev", "tap0")
    return ns.serve(*flags, ipv4=f"{APPLIANCE}/24", forward=None)


def dig(ns: Namespace, *query: str) -> str:
    result = ns.run("dig", f"@{APPLIANCE}", *query, "+tries=1", "+time=4", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def answers(out: str) -> list[str]:
    section = out.split(";; ANSWER SECTION:\n")[1].split("\n\n")[0] if ";; ANSWER SECTION:" in out else ""
    return [line.split("\t")[-1] for line in section.splitlines()]


def query_time(out: str) -> int:
    return int(re.search(r"Query time: (\d+) msec", out).group(1))


@needs_avahi
def test_dig_finds_avahi_devices_without_a_forwarder_and_under_a_mapped_domain():
    with Namespace() as ns:
        serve(ns, "--forward", "none", "--mdns-domain", "lan.example")
        start_avahi(ns, interface="tap0", hosts=HOSTS, services=[("Printer Web", "_http._tcp", 631, "printer.local")])
        out = dig(ns, "printer.local")
        assert "status: NOERROR" in out and answers(out) == ["192.0.2.20"]
        assert re.search(r"printer\.local\.\s+(\d+)\s+IN\s+A", out) and \
            int(re.search(r"printer\.local\.\s+(\d+)\s+IN\s+A", out).group(1)) <= 10
        assert answers(dig(ns, "-x", "192.0.2.30")) == ["nas.local."]
        browse = dig(ns, "_http._tcp.local", "PTR")
        assert answers(browse) == ["Printer\\032Web._http._tcp.local."]
        assert "SRV\t0 0 631 printer.local." in browse
        mapped = dig(ns, "nas.lan.example")
        assert answers(mapped) == ["192.0.2.30"] and "nas.lan.example." in mapped
        nobody = dig(ns, "nobody-has-this.local")
        assert "status: NXDOMAIN" in nobody and query_time(nobody) < 2000


def test_dig_finds_zeroconf_devices_through_the_forwarding_appliance():
    with Namespace() as ns:
        serve(ns, "--forward", "192.0.2.1")           # nothing listens there: .local must never go to it
        start_zeroconf(ns, address="192.0.2.1",
                       services=[("NAS Web", "_http._tcp", 8080, "nas.local", "192.0.2.30")])
        out = dig(ns, "nas.local")
        assert "status: NOERROR" in out and answers(out) == ["192.0.2.30"]
        assert "flags: qr aa rd ra;" in out
        nodata = dig(ns, "nas.local", "AAAA")     # zeroconf's NSEC: the name has no AAAA
        assert "status: NOERROR" in nodata and answers(nodata) == [] and query_time(nodata) < 1000


def test_mdns_off_answers_nxdomain_at_once_and_asks_no_one():
    with Namespace() as ns:
        proc = serve(ns, "--forward", "192.0.2.1", "--mdns", "no")
        out = dig(ns, "printer.local")
        assert "status: NXDOMAIN" in out and query_time(out) < 500
        proc.send_signal(signal.SIGUSR1)               # every counter, sorted by name
        read_until(proc, "counters:")
        lines = []
        watchdog = threading.Timer(20, proc.kill)      # a silent appliance ends the wait
        watchdog.start()
        try:
            while (line := proc.stdout.readline()) and not line.startswith("udp.sent"):
                lines.append(line)
        finally:
            watchdog.cancel()
        assert line.startswith("udp.sent"), "".join(lines)
        assert not [line for line in lines if line.startswith(("mdns.", "igmp."))], "".join(lines)


def test_clients_outside_allow_are_refused():
    with Namespace() as ns:
        serve(ns, "--forward", "none", "--allow", "10.0.0.0/8")
        out = dig(ns, "printer.local")
        assert "status: REFUSED" in out
