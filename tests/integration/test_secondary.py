"""The secondary role, with Knot DNS as the hidden primary.

Knot (in the namespace, on the tap's host side) serves sec.example with a
TSIG key; the appliance, with ``--secondary sec.example@192.0.2.1:5301``,
pulls it by AXFR at start and answers as Knot does; a change made with
``knotc zone-begin/set/commit`` reaches it by NOTIFY and IXFR within 5 s; a
NOTIFY from another address is refused; with Knot stopped it keeps serving
until the SOA's expire, then answers SERVFAIL.
"""
from __future__ import annotations

import base64
import shutil
import signal
import socket
import sys
import time

import pytest

from tests.integration.test_nsd_compare import ROOT, ask_udp, diff, make, summary
from tests.knot import knot_conf
from tests.netns import Namespace, counter, needs_root, read_until

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("knotd") is None, reason="needs Knot (apt install knot)")]

SECRET = base64.b64encode(bytes(range(32, 64))).decode()
KEY = f"xfr-key:hmac-sha256:{SECRET}"
# refresh 2 s, retry 1 s, expire 8 s: the timers run inside the test's time
ZONE = """$ORIGIN sec.example.
$TTL 300
@       SOA ns1 hostmaster 1 2 1 8 60
        NS  ns1
ns1     A   192.0.2.1
www     A   192.0.2.80
        AAAA 2001:db8::80
*.wild  TXT "wildcard"
mail    MX  10 www
"""
QUESTIONS = [("sec.example", "SOA"), ("sec.example", "NS"), ("www.sec.example", "A"), ("www.sec.example", "TXT"),
             ("x.wild.sec.example", "TXT"), ("nope.sec.example", "A"), ("mail.sec.example", "MX")]


def primary_conf(work, appliances: tuple[str, ...] = ("192.0.2.2",)) -> str:
    """Knot as the hidden primary of sec.example, notifying `appliances` and letting them transfer."""
    (work / "sec.example.zone").write_text(ZONE)
    remotes = "".join(f"  - id: appliance{i}\n    address: {a}@53\n    key: xfr-key\n" for i, a in enumerate(appliances))
    return knot_conf(work, "192.0.2.1@5301", SECRET, f"""control:
    listen: "{work}/knot.sock"
remote:
{remotes}
acl:
  - id: appliances
    address: [{", ".join(appliances)}]
    key: xfr-key
    action: transfer
template:
  - id: default
    storage: "{work}"
zone:
  - domain: sec.example
    file: sec.example.zone
    notify: [{", ".join(f"appliance{i}" for i in range(len(appliances)))}]
    acl: appliances
""")


def ask(sock, server: str, port: int, name: str, rdtype: str) -> dict:
    return summary(ask_udp(make(name, rdtype, 0, 1232, False).to_wire(), server, port, sock))


def wait_for(check, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_secondary_of_knot(tmp_path):
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        ns.ip("addr", "add", "192.0.2.3/24", "dev", "tap0")
        conf = primary_conf(tmp_path)
        knot = ns.popen("knotd", "-c", conf)
        with ns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.bind(("192.0.2.3", 0))
        wait_for(lambda: ask(sock, "192.0.2.1", 5301, "sec.example", "SOA")["rcode"] == "NOERROR", 20, "Knot up")
        appliance = ns.popen(sys.executable, "-m", "unikernel",
                             "serve", "--forward", "none", "--tap", "tap0", "--ipv4", "192.0.2.2/24",
                             "--ipv4-gateway", "none", "--secondary", "sec.example@192.0.2.1:5301", "--tsig", KEY,
                             cwd=str(ROOT))
        read_until(appliance, "ready")
        wait_for(lambda: ask(sock, "192.0.2.2", 53, "sec.example", "SOA")["rcode"] == "NOERROR", 10, "first AXFR")
        problems = []
        for name, rdtype in QUESTIONS:
            # Knot answers minimally (no NS in authority, fewer additionals), we as NSD does:
            # the data must agree, the rcode, AA and the answer
            theirs, ours = (ask(sock, server, port, name, rdtype) for server, port in (("192.0.2.1", 5301),
                                                                                      ("192.0.2.2", 53)))
            problems += diff(name, rdtype, "secondary", *({k: v[k] for k in ("rcode", "aa", "answer")}
                                                          for v in (theirs, ours)))
        assert not problems, "\n".join(problems)

        # a change on the primary: served within 5 s (NOTIFY, then IXFR)
        for command in (["zone-begin", "sec.example"], ["zone-set", "sec.example", "new", "300", "A", "192.0.2.99"],
                        ["zone-commit", "sec.example"]):
            result = ns.run("knotc", "-c", conf, *command)
            assert result.returncode == 0, (command, result.stdout + result.stderr)
        took = wait_for(lambda: ask(sock, "192.0.2.2", 53, "new.sec.example", "A")["answer"], 5, "the change")
        print(f"change on Knot served by the appliance {took:.2f} s after zone-commit")
        assert ask(sock, "192.0.2.2", 53, "sec.example", "SOA")["answer"] == \
            ask(sock, "192.0.2.1", 5301, "sec.example", "SOA")["answer"]
        assert counter(appliance, "notify.in.accepted") >= 1
        assert "IXFR, outgoing, remote 192.0.2.2" in (tmp_path / "knot.log").read_text()   # Knot's word for it
        assert counter(appliance, "secondary.transfer.done") >= 2

        # a NOTIFY from an address that is not the primary is refused
        notify = make("sec.example", "SOA", -1, 0, False)
        notify.set_opcode(4)
        reply = ask_udp(notify.to_wire(), "192.0.2.2", 53, other)
        assert reply[3] & 0x0F == 5, reply        # REFUSED
        assert counter(appliance, "notify.in.refused") == 1

        # the primary gone: still served until expire (8 s), then SERVFAIL
        knot.send_signal(signal.SIGTERM)
        knot.wait(10)
        stopped = time.monotonic()
        assert ask(sock, "192.0.2.2", 53, "www.sec.example", "A")["rcode"] == "NOERROR"
        wait_for(lambda: ask(sock, "192.0.2.2", 53, "www.sec.example", "A")["rcode"] == "SERVFAIL", 12, "expiry")
        assert time.monotonic() - stopped > 4       # not before the data could have expired
        assert counter(appliance, "secondary.transfer.failed") >= 1


def serve_secondary(ns, tap: str, address: str):
    return ns.serve("--secondary", "sec.example@192.0.2.1:5301", "--tsig", KEY, tap=tap, ipv4=f"{address}/24",
                    ready=None)


def test_three_appliances_scale_out(tmp_path):
    """A hidden primary (Knot) and three appliances at the edge, each on its
    own tap on one bridge: a change reaches all three within 5 s; with the
    primary gone they serve until expire, then SERVFAIL."""
    addresses = ("192.0.2.2", "192.0.2.3", "192.0.2.4")
    with Namespace() as ns:
        ns.ip("link", "add", "br0", "type", "bridge")
        ns.ip("addr", "add", "192.0.2.1/24", "dev", "br0")
        ns.ip("link", "set", "br0", "up")
        appliances = []
        for i in range(len(addresses)):
            ns.ip("tuntap", "add", "dev", f"tap{i}", "mode", "tap")
            ns.ip("link", "set", f"tap{i}", "master", "br0")
            ns.ip("link", "set", f"tap{i}", "up")
        conf = primary_conf(tmp_path, addresses)
        knot = ns.popen("knotd", "-c", conf)
        with ns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        wait_for(lambda: ask(sock, "192.0.2.1", 5301, "sec.example", "SOA")["rcode"] == "NOERROR", 20, "Knot up")
        for i, address in enumerate(addresses):
            appliances.append(serve_secondary(ns, f"tap{i}", address))
        for proc in appliances:
            read_until(proc, "ready")
        for address in addresses:
            wait_for(lambda a=address: ask(sock, a, 53, "www.sec.example", "A")["rcode"] == "NOERROR", 10,
                     f"first AXFR by {address}")
        for command in (["zone-begin", "sec.example"], ["zone-set", "sec.example", "edge", "300", "TXT", "v2"],
                        ["zone-commit", "sec.example"]):
            result = ns.run("knotc", "-c", conf, *command)
            assert result.returncode == 0, (command, result.stdout + result.stderr)
        committed = time.monotonic()
        for address in addresses:
            wait_for(lambda a=address: ask(sock, a, 53, "edge.sec.example", "TXT")["answer"],
                     5 - (time.monotonic() - committed), f"the change at {address}")
        print(f"all three serve the change {time.monotonic() - committed:.2f} s after zone-commit")
        knot.send_signal(signal.SIGTERM)
        knot.wait(10)
        for address in addresses:
            assert ask(sock, address, 53, "edge.sec.example", "TXT")["rcode"] == "NOERROR"
        for address in addresses:
            wait_for(lambda a=address: ask(sock, a, 53, "edge.sec.example", "TXT")["rcode"] == "SERVFAIL", 12,
                     f"expiry at {address}")
