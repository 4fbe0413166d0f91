"""Zone transfers out, checked by implementations that are not ours.

NSD, in the namespace, is a secondary of the appliance (our own stack on a
tap): it pulls the signed hard-cases zone by AXFR with TSIG at start, and
must then answer every question as the appliance does; a new version (new
serial, a record added and one removed, every signature new) loaded with
SIGHUP is NOTIFYed to NSD, which fetches it by IXFR and serves it within
5 s, identical again. dig (BIND's TSIG code) checks that each message of a
signed AXFR is signed, and that transfers unsigned or with a wrong key are
refused.
"""
from __future__ import annotations

import base64
import contextlib
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.integration.test_nsd_compare import ROOT, ZONES, ask_udp, diff, make, questions, serve_args, summary
from tests.knot import knot_conf
from tests.netns import Namespace, counter, needs_root, read_until
from tests.nsd import nsd_conf
from tests.signing import needs_ldns, sign_zone

pytestmark = [needs_root, needs_ldns, pytest.mark.skipif(shutil.which("nsd") is None, reason="needs NSD")]

SECRET = base64.b64encode(bytes(range(32))).decode()
KEY = f"xfr-key:hmac-sha256:{SECRET}"
UPDATE = "added IN TXT \"new in serial 2\"\n"


def nsd_secondary_conf(work, zone_file) -> Path:
    return nsd_conf(work, {"hard.example": zone_file}, address="192.0.2.1", port=5300, verbosity=2,
                    keys=f'key:\n    name: xfr-key\n    algorithm: hmac-sha256\n    secret: "{SECRET}"\n',
                    zone_options={"hard.example": "request-xfr: 192.0.2.2 xfr-key\nallow-notify: 192.0.2.2 xfr-key"})


def ask(sock, server: str, port: int, name: str, rdtype: str, do: bool = True) -> dict:
    return summary(ask_udp(make(name, rdtype, 0, 1232, do).to_wire(), server, port, sock))


def wait_serial(sock, serial: int, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        soa = ask(sock, "192.0.2.1", 5300, "hard.example", "SOA", do=False)
        if any(f" SOA ns1.hard.example. hostmaster.hard.example. {serial} " in line for line in soa["answer"]):
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"NSD does not serve serial {serial} after {timeout} s")


def differences(sock) -> list[str]:
    """Every question about hard.example, asked of NSD and of us. ANY is left
    out: NSD answers it with one RRset chosen by the order it stores them in,
    which for a zone that came by transfer is not the zone file's."""
    problems = []
    compared = [q for q in questions() if q[0].endswith("hard.example") and q[1] != "ANY"]
    for name, rdtype in compared + [("added.hard.example", "TXT")]:
        theirs = ask(sock, "192.0.2.1", 5300, name, rdtype)
        ours = ask(sock, "192.0.2.2", 53, name, rdtype)
        problems += diff(name, rdtype, "secondary", theirs, ours)
    return problems


@contextlib.contextmanager
def primary_for(tmp_path, notify: str):
    """The appliance in a namespace of its own, serving the first signed
    version of hard.example, transfers allowed to 192.0.2.1 with TSIG and
    NOTIFY sent to `notify`; yields the namespace, the appliance, the file
    it serves, the first signed version and a UDP socket in the namespace."""
    first = sign_zone(ZONES / "hard.example.zone", "hard.example", tmp_path / "zone", nsec3=True)
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        zone = tmp_path / "served.zone"
        zone.write_text(first.path.read_text())
        appliance = ns.popen(*serve_args([zone]), "--allow-transfer", "192.0.2.1/32", "--tsig", KEY,
                             "--notify", notify, cwd=str(ROOT))
        read_until(appliance, "ready")
        with ns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        yield ns, appliance, zone, first, sock


def publish_second(tmp_path, appliance, zone: Path, first, text: str) -> None:
    """Signs `text` (serial 2026113002, UPDATE added) with the first version's
    key, puts it where the appliance reads its zone and tells it (SIGHUP)."""
    source = tmp_path / "v2.zone"
    source.write_text(text)
    second = sign_zone(source, "hard.example", tmp_path / "zone", nsec3=True, extra=UPDATE, key=first.key)
    zone.write_text(second.path.read_text())
    appliance.send_signal(signal.SIGHUP)


def test_nsd_as_secondary_gets_axfr_then_ixfr(tmp_path):
    work = tmp_path / "nsd"
    work.mkdir()
    with primary_for(tmp_path, "192.0.2.1:5300") as (ns, appliance, zone, first, sock):
        ns.popen("nsd", "-d", "-c", str(nsd_secondary_conf(work, work / "hard.example.secondary")))
        wait_serial(sock, 2026113001, timeout=20)
        problems = differences(sock)
        assert not problems, "\n".join(problems[:20])

        # the next version: a record added, one removed, every signature new
        text = (ZONES / "hard.example.zone").read_text().replace("2026113001", "2026113002")
        publish_second(tmp_path, appliance, zone, first, text.replace("MiXeD       IN A     192.0.2.9\n", ""))
        read_until(appliance, "zone hard.example.: serial 2026113002", timeout=10)
        try:
            took = wait_serial(sock, 2026113002)
        except AssertionError as e:
            raise AssertionError(f"{e}\nNSD's log: {(work / 'nsd.log').read_text()[-1500:]}") from None
        problems = differences(sock)
        assert not problems, "\n".join(problems[:20])
        assert ask(sock, "192.0.2.1", 5300, "mixed.hard.example", "A", do=False)["rcode"] == "NXDOMAIN"
        assert counter(appliance, "transfer.ixfr") == 1
        assert counter(appliance, "transfer.axfr") == 1
        assert counter(appliance, "notify.answered") >= 1
        print(f"NOTIFY + IXFR served by NSD {took:.2f} s after SIGHUP")


@pytest.mark.parametrize("algorithm", ["hmac-sha256", "hmac-sha512"])
def test_dig_checks_signed_axfr_and_refusals(tmp_path, algorithm):
    signed = sign_zone(ZONES / "hard.example.zone", "hard.example", tmp_path / "zone", nsec3=True)
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        appliance = ns.popen(*serve_args([signed.path]), "--allow-transfer", "192.0.2.1/32",
                             "--tsig", f"xfr-key:{algorithm}:{SECRET}", cwd=str(ROOT))
        read_until(appliance, "ready")
        good = ns.run("dig", "-y", f"{algorithm}:xfr-key:{SECRET}", "@192.0.2.2", "hard.example", "AXFR",
                      "+onesoa", timeout=30)
        records = [line for line in good.stdout.splitlines() if line and not line.startswith(";")]
        expected = sum(1 for line in signed.path.read_text().splitlines() if line.strip() and not line.startswith(";"))
        assert "tsig verify failure" not in good.stdout and "Transfer failed" not in good.stdout, good.stdout[-500:]
        # every record once (the closing SOA left out by +onesoa), each message signed and checked by dig
        assert len([r for r in records if "\tTSIG\t" not in r]) == expected, good.stdout[-800:]
        assert len([r for r in records if "\tTSIG\t" in r]) >= 2      # one per message, and it takes several
        unsigned = ns.run("dig", "@192.0.2.2", "hard.example", "AXFR", timeout=30)
        assert "Transfer failed" in unsigned.stdout, unsigned.stdout[-300:]
        wrong = ns.run("dig", "-y", f"{algorithm}:xfr-key:{base64.b64encode(bytes(32)).decode()}", "@192.0.2.2",
                       "hard.example", "AXFR", timeout=30)
        assert "Transfer failed" in wrong.stdout or "tsig" in wrong.stdout.lower(), wrong.stdout[-300:]
        assert counter(appliance, "transfer.axfr") == 1
        assert counter(appliance, "transfer.refused.unsigned") == 1
        assert counter(appliance, "transfer.tsig.bad") == 1


def knot_secondary_conf(work) -> str:
    return knot_conf(work, "192.0.2.1@5301", SECRET, f"""remote:
  - id: primary
    address: 192.0.2.2@53
    key: xfr-key
acl:
  - id: primary
    address: 192.0.2.2
    key: xfr-key
    action: notify
template:
  - id: default
    storage: "{work}"
zone:
  - domain: hard.example
    file: hard.example.secondary
    master: primary
    acl: primary
""")


@pytest.mark.skipif(shutil.which("knotd") is None, reason="needs Knot (apt install knot)")
def test_knot_as_secondary_gets_axfr_then_ixfr(tmp_path):
    """Knot, a stricter IXFR client than NSD, as our secondary: AXFR at start,
    NOTIFY and IXFR after a reload; it serves what we serve (its answers are
    minimal, so rcode, AA and the answer section are compared, with DO)."""
    from tests.integration.test_signed_zones import VALIDATED

    work = tmp_path / "knot"
    work.mkdir()
    with primary_for(tmp_path, "192.0.2.1:5301") as (ns, appliance, zone, first, sock):
        ns.popen("knotd", "-c", knot_secondary_conf(work))

        def serial_at_knot() -> str:
            return " ".join(ask(sock, "192.0.2.1", 5301, "hard.example", "SOA", do=False)["answer"])

        def compare() -> list[str]:
            problems = []
            for name, rdtype in VALIDATED + [("added.hard.example", "TXT")]:
                theirs, ours = (ask(sock, server, port, name, rdtype) for server, port in (("192.0.2.1", 5301),
                                                                                          ("192.0.2.2", 53)))
                problems += diff(name, rdtype, "knot", *({k: v[k] for k in ("rcode", "aa", "answer")}
                                                         for v in (theirs, ours)))
            return problems

        deadline = time.monotonic() + 20
        while " 2026113001 " not in serial_at_knot():
            assert time.monotonic() < deadline, (work / "knot.log").read_text()[-1500:]
            time.sleep(0.2)
        assert not compare()
        publish_second(tmp_path, appliance, zone, first,
                       (ZONES / "hard.example.zone").read_text().replace("2026113001", "2026113002"))
        deadline = time.monotonic() + 5
        while " 2026113002 " not in serial_at_knot():
            assert time.monotonic() < deadline, (work / "knot.log").read_text()[-1500:]
            time.sleep(0.1)
        problems = compare()
        assert not problems, "\n".join(problems[:20])
        assert "IXFR, incoming" in (work / "knot.log").read_text() or counter(appliance, "transfer.ixfr") == 1
        assert counter(appliance, "transfer.ixfr") == 1
