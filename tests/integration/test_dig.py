"""Our dig client (``python -m unikernel dig``) end to end: it resolves
through its own stack on tap1 in the namespace of test_forwarder.py, against
the appliance relaying to that file's upstream (a small dnspython server),
and prints what the real dig prints."""
from __future__ import annotations

import pytest

from tests.integration import test_forwarder as forwarder_net
from tests.integration.test_forwarder import APPLIANCE, PY, REPO, Appliance
from tests.netns import needs_root

pytestmark = [needs_root, pytest.mark.root]
# the namespace, the appliance's taps and the upstreams, as test_forwarder.py builds them
net = forwarder_net.net
upstreams = forwarder_net.upstreams


def test_our_dig_client_resolves_and_reverse_resolves(net, upstreams, tmp_path):
    ns, a, _ = net
    # (words before the options: cli.py's `dig` subparser does not yet take an option first)
    client = ["--tap", "tap1", "--ipv4", "198.51.100.2/24", "--ipv4-gateway", "198.51.100.1"]
    with Appliance(ns, tmp_path, allow=["192.0.2.0/24", "198.51.100.0/24"]):
        out = ns.run(PY, "-m", "unikernel", "dig", f"@{APPLIANCE}", "www.example.com", "A", *client,
                     cwd=str(REPO))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "status: NOERROR" in out.stdout and ";; flags: qr rd ra;" in out.stdout
        assert "www.example.com.\t300\tIN\tA\t192.0.2.80" in out.stdout
        reverse = ns.run(PY, "-m", "unikernel", "dig", f"@{APPLIANCE}", "-x", "192.0.2.11", *client,
                         cwd=str(REPO))
        assert reverse.returncode == 0, reverse.stdout + reverse.stderr
        assert "PTR\tnas.lan." in reverse.stdout
        short = ns.run(PY, "-m", "unikernel", "dig", f"@{APPLIANCE}", "example.com", "MX", "+short", *client,
                       cwd=str(REPO))
        assert short.stdout.strip() == "10 mail.example.com."
        # over TCP, ours to ours: asked directly, and after a truncated UDP reply
        tcp = ns.run(PY, "-m", "unikernel", "dig", f"@{APPLIANCE}", "www.example.com", "+tcp", *client,
                     cwd=str(REPO))
        assert tcp.returncode == 0 and "192.0.2.80" in tcp.stdout and "(TCP)" in tcp.stdout, tcp.stdout + tcp.stderr
        big = ns.run(PY, "-m", "unikernel", "dig", f"@{APPLIANCE}", "big.example.com", "TXT", "+noedns", *client,
                     cwd=str(REPO))
        assert big.returncode == 0 and "Truncated, retrying in TCP mode" in big.stdout, big.stdout + big.stderr
        assert all(f'"{i:02d}' + "x" * 200 + '"' in big.stdout for i in range(12))
    # and directly against the upstream, on the client's own subnet's gateway path
    silent = ns.run(PY, "-m", "unikernel", "dig", "@192.0.2.9", "www.example.com", "+time=1", "+tries=1",
                    *client, cwd=str(REPO))
    assert silent.returncode == 9 and "no servers could be reached" in silent.stdout
