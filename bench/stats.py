"""``python -m bench stats``: what the operator's statistics cost an answer,
in process: ``QueryStats.record`` for every reply of a realistic mix, then
``drain``, in CPU microseconds per answer (process_time, the best of several
rounds), beside the same loop handing the replies to an observer that does
nothing (what the server's call costs on its own). Target: 0.5 µs.

The mix is the authoritative benchmark's (3,000 names: A, TXT, MX, wildcard,
NXDOMAIN and NODATA questions, some with DO) from a few clients, answered by
the zone, the cache, the forwarder, the blocklist and the server itself with
their rcodes and latencies, over UDP and now and then TCP, at 20,000 a second."""
from __future__ import annotations

import argparse
import random
import time

from bench.auth import ORIGIN
from unikernel import wire
from unikernel.ops.stats import QueryStats

TARGET_US = 0.5
QPS = 20_000
# who answers, how often, with which rcodes, how fast (seconds, lognormal's median and spread)
ANSWERERS = (("zone", 0.5, (0, 0, 0, 3), 0.00002, 0.5), ("cache", 0.3, (0, 0, 0, 0, 3), 0.00001, 0.5),
             ("forward", 0.1, (0, 0, 0, 2, 3), 0.02, 1.0), ("blocked", 0.07, (3,), 0.00002, 0.5),
             ("server", 0.03, (1, 5), 0.00001, 0.5))


def question_key(name: str, qtype: int, want_dnssec: bool) -> bytes:
    """The fast path's key of a question (:func:`unikernel.wire.fast_key`'s layout)."""
    labels = b"".join(bytes([len(label)]) + label.encode() for label in name.lower().split(".") if label)
    return labels + b"\x00" + qtype.to_bytes(2, "big") + b"\x00\x01" + bytes([wire.EDNS_DO if want_dnssec else 0])


def replies(count: int, names: int, clients: int, seed: int = 14) -> list[tuple]:
    """``count`` Observe argument tuples of the mix (the module's doc)."""
    rng = random.Random(seed)
    hosts = [f"host{i}" for i in range(names)]
    keys = []
    for _ in range(count):
        roll, i = rng.random(), rng.randrange(names)
        if roll < 0.6:
            name, qtype = rng.choice([(hosts[i], 1), (hosts[i - i % 3], 16), (hosts[i - i % 10], 15),
                                      (f"x{i}.wild", 1)])
        elif roll < 0.8:
            name, qtype = f"nx{rng.randrange(names)}", 1
        else:
            name, qtype = hosts[i], 33
        keys.append(question_key(f"{name}.{ORIGIN}", qtype, rng.random() < 0.1))
    answerers = [answerer for answerer in ANSWERERS for _ in range(int(answerer[1] * 100))]
    client_ips = [0xC0000200 + 10 + c for c in range(clients)]
    out = []
    for n, key in enumerate(keys):
        source, _share, rcodes, median, spread = rng.choice(answerers)
        out.append((1000.0 + n / QPS, "tcp" if rng.random() < 0.02 else "udp", rng.choice(client_ips),
                    rng.randrange(1024, 65536), key, 0x8180 | (0x0400 if source == "zone" else 0), rng.choice(rcodes),
                    source, median * rng.lognormvariate(0, spread)))
    return out


def cost(events: list[tuple], rounds: int) -> tuple[float, float]:
    """CPU seconds of recording ``events`` then draining (best of ``rounds``,
    a fresh QueryStats each), and of the same loop into an observer that does nothing."""
    def nothing(arrived, transport, client_ip, client_port, key, flags, rcode, source, latency) -> None:
        return None

    def timed(observe, finish) -> float:
        start = time.process_time()
        for event in events:
            observe(*event)
        finish()
        return time.process_time() - start

    recorded, bare = [], []
    for _ in range(rounds):
        stats = QueryStats()
        recorded.append(timed(stats.record, stats.drain))
        bare.append(timed(nothing, lambda: None))
    return min(recorded), min(bare)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench stats")
    parser.add_argument("--replies", type=int, default=200_000)
    parser.add_argument("--names", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    events = replies(args.replies, args.names, args.clients)
    recorded, bare = cost(events, args.rounds)
    per_answer = recorded / len(events) * 1e6
    call = bare / len(events) * 1e6
    print(f"statistics: {per_answer:.3f} us an answer (record + drain; the call into an observer that does nothing "
          f"{call:.3f} us), CPU time, best of {args.rounds} x {len(events):,} replies, {args.names:,} names, "
          f"{args.clients} clients (target {TARGET_US} us)")
    return 0 if per_answer <= TARGET_US else 1
