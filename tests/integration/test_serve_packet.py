"""The unix target on a NIC through AF_PACKET (`serve --packet IFNAME`, the
VM image's link), its rings on and off: the kernel's dig (UDP and TCP) and
ping get the answers they get from the target on a tap."""
from __future__ import annotations

import shutil

import pytest

from tests.netns import Namespace, needs_root, stop

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (apt install dnsutils)")]
ZONE = """$ORIGIN example.test.
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 300
@ IN NS ns1
ns1 IN A 192.0.2.2
www IN A 192.0.2.80
big IN TXT "{}" "{}" "{}" "{}" "{}" "{}"
""".format(*["x" * 250] * 6)


@pytest.mark.parametrize("rings", ["yes", "no"])
def test_dig_and_ping_over_the_packet_link(tmp_path, rings):
    zone = tmp_path / "example.test.zone"
    zone.write_text(ZONE)
    with Namespace() as ns:
        ns.add_veth()
        proc = ns.serve("--packet", "veth1", "--packet-rings", rings, "--zone", str(zone))
        try:
            dig = ("dig", "+tries=2", "+time=2", "@192.0.2.2")
            assert ns.run(*dig, "+short", "www.example.test").stdout.split() == ["192.0.2.80"]
            assert ns.run(*dig, "+short", "+tcp", "www.example.test").stdout.split() == ["192.0.2.80"]
            # 1.5 kB of TXT: truncated over UDP, then whole over TCP (segments both ways)
            big = ns.run(*dig, "+tcp", "big.example.test", "TXT")
            assert "status: NOERROR" in big.stdout and big.stdout.count("x" * 250) == 6
            assert ns.run(*dig, "nope.example.test").stdout.count("status: NXDOMAIN") == 1
            assert ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "192.0.2.2").returncode == 0
        finally:
            stop(proc)
        assert proc.returncode == 0
