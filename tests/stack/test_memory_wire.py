"""Two of our stacks over the in-memory wire, with seeded faults and a
virtual clock: ARP through loss, fragments through reordering and duplication,
corruption caught by checksums."""
import random

import pytest

from tests.stackutil import stack_pair as pair


def run(wire, clock, stacks, seconds, step=0.05):
    t = 0.0
    while t < seconds:
        wire.flush_held()
        wire.pump()
        clock.advance(step)
        for s in stacks:
            s.tick(clock())
        t += step
    wire.flush_held()
    wire.pump()


def test_datagrams_cross_a_clean_wire():
    wire, clock, a, b = pair()
    got = []
    b.udp.bind(9, lambda payload, *rest: got.append(payload))
    for i in range(5):
        a.udp.sendto(f"msg{i}".encode(), 1000, b.address, 9)
    run(wire, clock, (a, b), 0.1)
    assert got == [f"msg{i}".encode() for i in range(5)]
    assert a.counters["arp.request.sent"] == 1 and b.counters["arp.request.replied"] == 1


def test_arp_retries_through_loss():
    wire, clock, a, b = pair(seed=4, drop=0.5)
    got = []
    b.udp.bind(9, lambda payload, *rest: got.append(payload))
    a.udp.sendto(b"hello", 1000, b.address, 9)
    run(wire, clock, (a, b), 3.5)
    assert a.counters["arp.request.sent"] >= 2       # the first request or reply was lost
    assert got in ([b"hello"], [])                   # the datagram itself may be lost too
    assert a.counters["arp.timeout.drop"] + len(got) + wire.faults["dropped"] >= 1


@pytest.mark.parametrize("seed", range(5))
def test_fragments_survive_reordering_and_duplication(seed):
    wire, clock, a, b = pair(seed=seed, reorder=0.3, duplicate=0.3)
    got = []
    b.udp.bind(9, lambda payload, *rest: got.append(payload))
    payloads = [bytes(random.Random(seed * 10 + i).randrange(256) for _ in range(6000)) for i in range(4)]
    a.arp._learn(b.address, b.mac, clock())   # resolved already: ARP's queue is not under test
    for p in payloads:
        a.udp.sendto(p, 1000, b.address, 9)
    run(wire, clock, (a, b), 0.5)
    assert wire.faults["reordered"] > 0 and wire.faults["duplicated"] > 0
    # duplicated whole datagrams may arrive twice (UDP promises nothing else), but intact
    assert set(got) == set(payloads)
    assert b.counters["ipv4.frag.reassembled"] >= 4


def test_corruption_is_caught_never_delivered():
    wire, clock, a, b = pair(seed=11, corrupt=0.3)
    got = []
    b.udp.bind(9, lambda payload, *rest: got.append(payload))
    sent = [f"datagram number {i}".encode() * 3 for i in range(200)]
    for p in sent:
        a.udp.sendto(p, 1000, b.address, 9)
        run(wire, clock, (a, b), 0.05)
    assert wire.faults["corrupted"] > 20
    assert set(got) <= set(sent)                     # nothing corrupted got through
    dropped = sum(v for k, v in b.counters.items() if k.endswith(".drop"))
    assert dropped > 0 and b.counters["stack.exception.drop"] == 0


def test_truncation_is_counted():
    wire, clock, a, b = pair(seed=2, truncate=0.5)
    b.udp.bind(9, lambda payload, *rest: None)
    for _i in range(50):
        a.udp.sendto(b"x" * 100, 1000, b.address, 9)
        run(wire, clock, (a, b), 0.05)
    assert wire.faults["truncated"] > 0
    assert b.counters["stack.exception.drop"] == 0
    assert sum(v for k, v in b.counters.items() if k.endswith(".drop")) > 0
