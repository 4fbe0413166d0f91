"""Response rate limiting on the unix target, seen from the kernel's UDP and
BIND's dig in a network namespace: a burst from one client gets its share,
then truncated empty answers (every second limited one) and silence; dig,
over TCP (which RRL leaves alone) still gets the answer."""
from __future__ import annotations

import socket
import time

import dns.flags
import dns.message
import pytest

from tests.integration.test_serve import HARD, dig, needs_dig
from tests.netns import Namespace, needs_root

RATE = 20


@pytest.fixture
def limited():
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        proc = ns.serve("--zone", str(HARD), "--rrl-rate", str(RATE), "--rrl-slip", "2",
                        "--rrl-exempt-allowed", "no")
        yield ns, proc


@needs_root
@needs_dig
def test_a_burst_from_one_client_is_limited_and_dig_falls_back_to_tcp(limited):
    ns, _ = limited
    dig(ns, "192.0.2.2", "www.hard.example", "A")           # ARP resolved, the answer kept
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    query = dns.message.make_query("big.hard.example.", "TXT", use_edns=0, payload=1232)
    burst = 200
    try:
        time.sleep(2.1)                                        # a fresh second for the bucket
        for i in range(burst):
            query.id = i
            sock.sendto(query.to_wire(), ("192.0.2.2", 53))
        replies = []
        while True:
            try:
                replies.append(dns.message.from_wire(sock.recv(4096)))
            except TimeoutError:
                break
    finally:
        sock.close()
    whole = [r for r in replies if not r.flags & dns.flags.TC]
    slipped = [r for r in replies if r.flags & dns.flags.TC]
    assert 0 < len(whole) <= 3 * RATE                          # the client's share, not the burst
    assert all(not r.answer and r.question for r in slipped)
    assert len(replies) < burst and abs(len(slipped) - (burst - len(whole)) / 2) <= 2
    # still limited over UDP; TCP (where a source cannot be forged) is not
    out = dig(ns, "192.0.2.2", "big.hard.example", "TXT", "+tcp")
    assert "ANSWER: 10," in out and "(TCP)" in out
