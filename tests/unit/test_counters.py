"""Tallies: hot-path counters kept as plain integers, read as counters."""
from netstack.counters import Counters
from unikernel.ops.metrics import counter_families


def test_a_tally_reads_as_a_counter_through_every_view():
    counters = Counters()
    counters["udp.delivered"] += 2          # counted before the tally was taken: carried over
    counters["ipv4.bad_checksum.drop"] += 1
    tally = counters.tally("udp.delivered")
    assert counters.tally("udp.delivered") is tally
    tally.count += 3
    counters.tally("udp.sent")              # never moved: absent, as an untouched counter
    assert counters["udp.delivered"] == 5 and counters["udp.sent"] == 0
    assert counters.get("udp.delivered") == 5 and counters.get("udp.sent") is None
    assert "udp.delivered" in counters and "udp.sent" not in counters
    assert dict(counters) == {"udp.delivered": 5, "ipv4.bad_checksum.drop": 1} == dict(counters.items())
    assert sorted(counters) == sorted(counters.keys()) == ["ipv4.bad_checksum.drop", "udp.delivered"]
    assert sum(counters.values()) == 6 and len(counters) == 2 and counters.total() == 6
    assert counters.dump() == "ipv4.bad_checksum.drop 1\nudp.delivered 5"
    assert counters.copy() == {"udp.delivered": 5, "ipv4.bad_checksum.drop": 1}


def test_metrics_see_the_tallies():
    counters = Counters()
    counters.tally("dns.fast.hit").count += 7
    samples = [s for family in counter_families(counters) for s in family.samples]
    assert samples == [({"layer": "dns", "event": "fast.hit"}, 7)]


def test_one_name_is_read_without_a_snapshot_of_all(monkeypatch):
    """get and `in` answer as the snapshot does, for tallied names (moved or
    not), counted ones (zero included) and absent ones, without making it."""
    counters = Counters({"ipv4.bad_checksum.drop": 1, "arp.zero": 0})
    counters.tally("udp.delivered").count += 4
    counters.tally("udp.sent")
    expected = counters._snapshot()
    monkeypatch.setattr(Counters, "_snapshot", lambda self: (_ for _ in ()).throw(AssertionError("a snapshot")))
    for name in ("udp.delivered", "udp.sent", "ipv4.bad_checksum.drop", "arp.zero", "nothing", 7):
        assert counters.get(name, "none") == expected.get(name, "none"), name
        assert (name in counters) == (name in expected), name
