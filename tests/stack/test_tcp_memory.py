"""Our TCP against itself and against a scripted peer, over a deterministic
wire (seeded loss, duplication, reordering) with a virtual clock."""
from __future__ import annotations

import asyncio
import heapq
import itertools
import random

import pytest

from netstack.counters import Counters
from netstack.tcp.config import TcpConfig
from netstack.tcp.connection import Connection
from netstack.tcp.layer import TcpLayer
from netstack.tcp.segment import ACK, FIN, PSH, RST, SYN, TcpSegment
from netstack.tcp.sequence import seq_add
from netstack.tcp.state import State
from netstack.tcp.stream import open_connection, wrap
from unikernel.serve.tcp import DnsTcpServer

# -- the simulated network -------------------------------------------------------------------

A_IP = 0xC0000201  # 192.0.2.1
B_IP = 0xC0000202  # 192.0.2.2


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Net:
    """Segments in flight, delivered in time order. Fault rates apply per segment."""

    def __init__(self, *, seed: int = 1, drop: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 delay: float = 0.01, tick: float = 0.05) -> None:
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.drop, self.dup, self.reorder, self.delay, self.tick_interval = drop, dup, reorder, delay, tick
        self.queue: list[tuple[float, int, int, int, bytes]] = []
        self._order = itertools.count()
        self.endpoints: dict[int, object] = {}
        self.log: list[tuple[float, int, TcpSegment]] = []  # every segment sent, by sender ip
        self.next_tick = self.clock.t + tick
        self.filter = None   # optional callable(src_ip, seg) -> bool: False drops deterministically

    def layer(self, ip: int, *, config: TcpConfig | None = None, seed: int = 7, max_connections: int = 256) -> TcpLayer:
        layer = TcpLayer(ip, lambda dst, data, _src=ip: self.send(_src, dst, data), Counters(), self.clock,
                         max_connections=max_connections, rng=random.Random(seed), config=config)
        self.endpoints[ip] = layer
        return layer

    def send(self, src: int, dst: int, data: bytes) -> None:
        seg = TcpSegment.parse(src, dst, data)   # every segment we emit must parse, checksum included
        self.log.append((self.clock.t, src, seg))
        if self.filter is not None and not self.filter(src, seg):
            return
        copies = 1
        if self.rng.random() < self.drop:
            copies = 0
        elif self.rng.random() < self.dup:
            copies = 2
        for _ in range(copies):
            at = self.clock.t + self.delay
            if self.rng.random() < self.reorder:
                at += self.rng.uniform(0, 0.05)
            heapq.heappush(self.queue, (at, next(self._order), src, dst, data))

    def run(self, until: float | None = None, *, seconds: float | None = None, stop=None) -> None:
        """Delivers segments and runs ticks in time order until `until`, or until
        `stop()` is true."""
        if seconds is not None:
            until = self.clock.t + seconds
        while True:
            if stop is not None and stop():
                return
            nxt = self.queue[0][0] if self.queue else float("inf")
            if self.next_tick <= nxt:
                if until is not None and self.next_tick > until:
                    self.clock.t = until
                    return
                self.clock.t = self.next_tick
                self.next_tick += self.tick_interval
                for ep in list(self.endpoints.values()):
                    ep.tick(self.clock.t)
                continue
            if until is not None and nxt > until:
                self.clock.t = until
                return
            at, _, src, dst, data = heapq.heappop(self.queue)
            self.clock.t = at
            ep = self.endpoints.get(dst)
            if ep is not None:
                ep.input(at, src, dst, data)

    def sent_by(self, ip: int) -> list[TcpSegment]:
        return [seg for _, src, seg in self.log if src == ip]


class ScriptedPeer:
    """An endpoint the test drives by hand: it records what it receives and
    sends exactly the segments the test builds."""

    def __init__(self, net: Net, ip: int) -> None:
        self.net, self.ip = net, ip
        self.received: list[TcpSegment] = []
        net.endpoints[ip] = self

    def input(self, now: float, src: int, dst: int, data: bytes) -> None:
        self.received.append(TcpSegment.parse(src, dst, data))

    def tick(self, now: float) -> None:
        pass

    def send(self, dst: int, seg: TcpSegment) -> None:
        self.net.send(self.ip, dst, seg.emit(self.ip, dst))

    def take(self) -> list[TcpSegment]:
        got, self.received = self.received, []
        return got


class LoopNet:
    """Two TCP layers joined on a running asyncio loop (no faults unless asked):
    for the stream adapters and the DNS transport, which need a loop."""

    def __init__(self, *, seed: int = 1, drop: float = 0.0, config: TcpConfig | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(seed)
        self.drop = drop
        self.layers = {}
        for ip, s in ((A_IP, 21), (B_IP, 22)):
            self.layers[ip] = TcpLayer(ip, lambda dst, data, _src=ip: self._send(_src, dst, data), Counters(),
                                       self.loop.time, rng=random.Random(s), config=config)
        self._timer = self.loop.call_later(0.05, self._tick)

    def _send(self, src: int, dst: int, data: bytes) -> None:
        if self.rng.random() < self.drop:
            return
        layer = self.layers.get(dst)
        if layer is not None:
            self.loop.call_soon(lambda: layer.input(self.loop.time(), src, dst, data))

    def _tick(self) -> None:
        for layer in self.layers.values():
            layer.tick(self.loop.time())
        self._timer = self.loop.call_later(0.05, self._tick)

    def close(self) -> None:
        self._timer.cancel()


PAYLOAD = bytes(random.Random(5).randbytes(150_000))


def echo_pair(net: Net, **layer_kw):
    """A client layer at A and an echo server on B:7; returns (client conn, server state)."""
    a = net.layer(A_IP, seed=11, **layer_kw)
    b = net.layer(B_IP, seed=12, **layer_kw)
    server = {"conns": [], "got": bytearray(), "closed": []}

    def accept(conn):
        server["conns"].append(conn)

        def on_data(data):
            server["got"].extend(data)
            conn.send(data)

        def on_close(reason):
            server["closed"].append(reason)
            if reason is None:
                conn.close()
        conn.on_data = on_data
        conn.on_close = on_close

    b.listen(7, accept)
    return a, b, server


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("faults", [dict(), dict(drop=0.1), dict(drop=0.05, dup=0.1, reorder=0.3)])
def test_transfer_both_ways_and_close_under_faults(seed, faults):
    net = Net(seed=seed, **faults)
    a, b, server = echo_pair(net)
    conn = a.connect(B_IP, 7)
    echoed, events = bytearray(), []
    conn.on_established = lambda: events.append("established")
    conn.on_data = echoed.extend
    conn.on_close = events.append
    sent = 0

    def feed():
        nonlocal sent
        while sent < len(PAYLOAD) and conn.send_space > 0 and conn.state is State.ESTABLISHED:
            n = min(conn.send_space, len(PAYLOAD) - sent, 20_000)
            conn.send(PAYLOAD[sent:sent + n])
            sent += n
    conn.on_send_space = feed
    net.run(seconds=5, stop=lambda: conn.state is State.ESTABLISHED)
    feed()
    net.run(seconds=300, stop=lambda: len(echoed) == len(PAYLOAD))
    assert bytes(server["got"]) == PAYLOAD
    assert bytes(echoed) == PAYLOAD
    conn.close()
    net.run(seconds=60, stop=lambda: conn.state is State.TIME_WAIT and not b.connections)
    assert events == ["established", None]          # the server's FIN reached us
    assert server["closed"] == [None]
    assert conn.state is State.TIME_WAIT            # we closed first
    assert b.connections == {}                      # LAST_ACK ended with our ACK
    net.run(seconds=a.config.time_wait + 1)
    assert a.connections == {}
    if faults.get("drop"):
        assert a.counters["tcp.retransmit.timeout"] + a.counters["tcp.retransmit.fast"] > 0


def test_mss_and_window_scale_negotiated():
    net = Net()
    big = TcpConfig(rcv_window=1 << 20, mss=1200)
    a = net.layer(A_IP, config=big)
    b = net.layer(B_IP)
    accepted = []
    b.listen(80, accepted.append)
    conn = a.connect(B_IP, 80)
    net.run(seconds=1)
    syn, synack = net.log[0][2], net.log[1][2]
    assert syn.flags == SYN and syn.mss == 1200 and syn.wscale == 5   # 1 MiB >> 5 fits 16 bits
    assert synack.flags == SYN | ACK and synack.mss == 1460 and synack.wscale == 0
    assert conn.snd_mss == 1200 and accepted[0].snd_mss == 1200
    assert accepted[0].snd_wscale == 5 and conn.snd_wscale == 0
    # the server sees our scaled window: far more than 16 bits can say
    assert accepted[0].snd_wnd >= 1 << 19


def test_no_window_scale_when_the_peer_does_not_offer_it():
    net = Net()
    b = net.layer(B_IP, config=TcpConfig(rcv_window=1 << 20))
    peer = ScriptedPeer(net, A_IP)
    b.listen(80, lambda c: None)
    peer.send(B_IP, TcpSegment(4000, 80, 100, 0, SYN, 8192, mss=1000))
    net.run(seconds=0.1)
    [synack] = peer.take()
    assert synack.flags == SYN | ACK and synack.wscale is None and synack.ack == 101
    conn = next(iter(b.connections.values()))
    assert conn.snd_mss == 1000 and conn.rcv_wscale == 0


# -- a scripted peer against our listener ---------------------------------------------------


def handshake(net: Net, b, peer: ScriptedPeer, port: int = 80, isn: int = 5000):
    """Completes a passive open on b from the scripted peer; returns (conn, our iss)."""
    accepted = []
    b.listen(port, accepted.append)
    peer.send(B_IP, TcpSegment(4000, port, isn, 0, SYN, 65535, mss=1460))
    net.run(seconds=0.1)
    [synack] = peer.take()
    peer.send(B_IP, TcpSegment(4000, port, isn + 1, synack.seq + 1, ACK, 65535))
    net.run(seconds=0.1)
    assert len(accepted) == 1 and accepted[0].state is State.ESTABLISHED
    return accepted[0], synack.seq


def established(**layer) -> tuple[Net, TcpLayer, ScriptedPeer, Connection, int]:
    """A net with a layer at B_IP (made with `layer`'s keywords) and a scripted
    peer at A_IP that has completed a passive open on port 80."""
    net = Net()
    b = net.layer(B_IP, **layer)
    peer = ScriptedPeer(net, A_IP)
    conn, iss = handshake(net, b, peer)
    return net, b, peer, conn, iss


def test_closed_port_answers_rst():
    net = Net()
    b = net.layer(B_IP)
    peer = ScriptedPeer(net, A_IP)
    peer.send(B_IP, TcpSegment(4000, 81, 777, 0, SYN, 1000))
    peer.send(B_IP, TcpSegment(4000, 81, 900, 12345, ACK, 1000, b"x"))
    peer.send(B_IP, TcpSegment(4000, 81, 900, 12345, RST, 1000))   # never answered
    net.run(seconds=0.1)
    r1, r2 = peer.take()
    assert r1.flags == RST | ACK and r1.seq == 0 and r1.ack == 778
    assert r2.flags == RST and r2.seq == 12345
    assert b.counters["tcp.no_listener.rst"] == 2 and b.counters["tcp.no_listener.drop"] == 1


def test_rfc5961_blind_rst_gets_challenge_ack():
    net, b, peer, conn, iss = established()
    closed = []
    conn.on_close = closed.append
    # in the window but not exactly rcv_nxt: only a challenge ACK
    peer.send(B_IP, TcpSegment(4000, 80, 5001 + 1000, 0, RST, 0))
    net.run(seconds=0.1)
    [challenge] = peer.take()
    assert challenge.flags == ACK and challenge.ack == 5001 and challenge.seq == iss + 1
    assert conn.state is State.ESTABLISHED and b.counters["tcp.rst_in_window.challenge"] == 1
    # outside the window: silently dropped
    peer.send(B_IP, TcpSegment(4000, 80, 5001 + 10_000_000, 0, RST, 0))
    net.run(seconds=0.1)
    assert peer.take() == [] and conn.state is State.ESTABLISHED
    assert b.counters["tcp.out_of_window_rst.drop"] == 1
    # exactly rcv_nxt: the connection is reset
    peer.send(B_IP, TcpSegment(4000, 80, 5001, 0, RST, 0))
    net.run(seconds=0.1)
    assert closed == ["reset"] and b.connections == {}


def test_rfc5961_syn_on_established_connection_gets_challenge_ack():
    net, b, peer, conn, iss = established()
    for seq in (5001, 5001 + 100, 123):     # in the window or not, a SYN never resets
        peer.send(B_IP, TcpSegment(4000, 80, seq, 0, SYN, 1000))
    net.run(seconds=0.1)
    replies = peer.take()
    assert [r.flags for r in replies] == [ACK, ACK, ACK]
    assert all(r.ack == 5001 and r.seq == iss + 1 for r in replies)
    assert conn.state is State.ESTABLISHED
    assert b.counters["tcp.syn_in_window.challenge"] == 2 and b.counters["tcp.out_of_window.ack"] == 1


def test_rfc5961_ack_for_unsent_data_is_refused():
    net, b, peer, conn, iss = established()
    got = []
    conn.on_data = got.append
    peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 1 + 5000, ACK | PSH, 1000, b"data"))
    net.run(seconds=0.1)
    [challenge] = peer.take()
    assert challenge.ack == 5001 and got == []    # the data came with a bad ACK: dropped
    assert b.counters["tcp.ack_unsent.challenge"] == 1


def test_challenge_acks_are_rate_limited():
    net, b, peer, _, _ = established(config=TcpConfig(challenge_acks_per_second=5))
    for i in range(20):
        peer.send(B_IP, TcpSegment(4000, 80, 5001 + 10 + i, 0, RST, 0))
    net.run(seconds=0.02)
    assert len(peer.take()) == 5
    assert b.counters["tcp.challenge_ack.limited"] == 15


def test_out_of_order_segments_are_reassembled():
    net, b, peer, conn, iss = established()
    got = bytearray()
    conn.on_data = got.extend
    closed = []
    conn.on_close = closed.append
    parts = [(5001, b"aaaa"), (5005, b"bbbb"), (5009, b"cccc")]
    peer.send(B_IP, TcpSegment(4000, 80, 5013, iss + 1, ACK | FIN, 65535, b"dd"))
    for seq, data in reversed(parts[1:]):
        peer.send(B_IP, TcpSegment(4000, 80, seq, iss + 1, ACK, 65535, data))
    peer.send(B_IP, TcpSegment(4000, 80, 5003, iss + 1, ACK, 65535, b"aabb"))  # overlaps both sides
    net.run(seconds=0.1)
    assert got == b"" and closed == []
    acks = peer.take()
    assert all(a.ack == 5001 for a in acks) and len(acks) == 4   # a duplicate ACK for each hole-filler
    peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 1, ACK, 65535, b"aaaa"))
    net.run(seconds=0.1)
    assert bytes(got) == b"aaaabbbbccccdd"
    assert closed == [None] and conn.state is State.CLOSE_WAIT
    assert peer.take()[-1].ack == 5016
    assert b.counters["tcp.ooo.kept"] == 4


def test_out_of_order_storage_is_bounded():
    net, b, peer, conn, iss = established(config=TcpConfig(max_ooo_segments=8))
    for i in range(1, 30):
        peer.send(B_IP, TcpSegment(4000, 80, 5001 + 100 * i, iss + 1, ACK, 65535, b"z" * 10))
    net.run(seconds=0.1)
    assert len(conn.ooo) == 8
    assert b.counters["tcp.ooo.full.drop"] == 21


def test_rto_backs_off_exponentially_then_gives_up():
    net, b, peer, conn, iss = established(config=TcpConfig(max_retries=5))
    closed = []
    conn.on_close = closed.append
    conn.send(b"hello")
    net.run(seconds=200)       # the peer never acknowledges
    sends = [(t, seg) for t, src, seg in net.log if src == B_IP and seg.payload == b"hello"]
    times = [t for t, _ in sends]
    gaps = [b2 - a2 for a2, b2 in zip(times, times[1:])]
    assert len(sends) == 6     # the original and 5 retransmissions
    for g1, g2 in zip(gaps, gaps[1:]):
        assert g2 == pytest.approx(2 * g1, abs=0.06)
    assert gaps[0] >= 0.2 - 0.06
    assert closed == ["timeout"] and b.connections == {}
    assert net.sent_by(B_IP)[-1].flags & RST
    assert b.counters["tcp.retransmit.gave_up"] == 1


def test_fast_retransmit_on_third_duplicate_ack():
    net, b, peer, conn, iss = established()
    conn.send(b"x" * 1460 * 5)
    net.run(seconds=0.05)
    segs = peer.take()
    assert len(segs) == 5 and conn.rto_at is not None
    first = iss + 1
    peer.send(B_IP, TcpSegment(4000, 80, 5001, first, ACK, 65535))   # first lost: dup ACKs
    net.run(seconds=0.02)
    assert peer.take() == []
    for _ in range(2):
        peer.send(B_IP, TcpSegment(4000, 80, 5001, first, ACK, 65535))
    net.run(seconds=0.02)        # far less than the RTO
    [again] = peer.take()
    assert again.seq == first and len(again.payload) == 1460
    assert b.counters["tcp.retransmit.fast"] == 1 and b.counters["tcp.retransmit.timeout"] == 0
    # everything acknowledged: recovery ends, the timer stops
    peer.send(B_IP, TcpSegment(4000, 80, 5001, seq_add(first, 1460 * 5), ACK, 65535))
    net.run(seconds=0.02)
    assert not conn.in_recovery and conn.rto_at is None and conn.send_buf == b""


def test_send_buffer_is_bounded():
    net, b, peer, conn, _ = established(config=TcpConfig(send_buffer=10_000))
    conn.send(b"a" * 9000)
    with pytest.raises(BufferError):
        conn.send(b"b" * 2000)
    assert conn.send_space == 1000


def test_zero_window_is_probed_and_reopens():
    net = Net()
    b = net.layer(B_IP)
    peer = ScriptedPeer(net, A_IP)
    accepted = []
    b.listen(80, accepted.append)
    peer.send(B_IP, TcpSegment(4000, 80, 5000, 0, SYN, 0, mss=1460))
    net.run(seconds=0.1)
    [synack] = peer.take()
    iss = synack.seq
    peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 1, ACK, 0))   # window shut
    net.run(seconds=0.1)
    conn = accepted[0]
    conn.send(b"q" * 100)
    net.run(seconds=0.1)
    assert peer.take() == []                     # nothing may be sent into a shut window
    net.run(seconds=1.5)
    probes = peer.take()
    assert probes and len(probes[0].payload) == 1 and b.counters["tcp.window_probe"] >= 1
    for _probe in probes:           # the peer answers each probe: still no room
        peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 1, ACK, 0))
    net.run(seconds=6)
    later = [(t, seg) for t, src, seg in net.log if src == B_IP and seg.payload]
    assert len(later) >= 4 and all(seg.payload == b"q" and seg.seq == iss + 1 for _, seg in later)
    gaps = [t2 - t1 for (t1, _), (t2, _) in zip(later, later[1:])]
    assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:]))     # probes back off
    peer.take()
    peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 1, ACK, 65535))   # window opens
    net.run(seconds=0.1)
    data = b"".join(s.payload for s in peer.take())
    assert data.endswith(b"q" * 99)


def test_paused_receiver_stops_the_sender():
    net = Net()
    a, b, server = echo_pair(net)
    conn = a.connect(B_IP, 7)
    net.run(seconds=1)
    srv = server["conns"][0]
    srv.on_data = server["got"].extend        # no echo this time
    srv.set_receive_paused(True)
    conn.send(PAYLOAD[:200_000] if len(PAYLOAD) >= 200_000 else PAYLOAD)
    net.run(seconds=5)
    assert len(server["got"]) <= 65535 + 1460      # at most the window offered before the pause
    assert conn.snd_wnd == 0
    srv.set_receive_paused(False)
    net.run(seconds=30, stop=lambda: len(server["got"]) == len(PAYLOAD))
    assert bytes(server["got"]) == PAYLOAD


def test_time_wait_acks_a_retransmitted_fin_and_expires():
    net, b, peer, conn, iss = established(config=TcpConfig(time_wait=10.0))
    conn.close()
    net.run(seconds=0.1)
    [fin] = peer.take()
    assert fin.flags & FIN and fin.seq == iss + 1
    peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 2, ACK | FIN, 65535))
    net.run(seconds=0.1)
    assert conn.state is State.TIME_WAIT
    assert peer.take()[0].ack == 5002
    net.run(seconds=5)
    peer.send(B_IP, TcpSegment(4000, 80, 5002, 0, RST, 0))     # RFC 1337: TIME_WAIT is not assassinated
    net.run(seconds=0.1)
    assert conn.state is State.TIME_WAIT and b.counters["tcp.time_wait.rst_ignored"] == 1
    peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 2, ACK | FIN, 65535))    # our ACK was lost
    net.run(seconds=0.1)
    [again] = peer.take()
    assert again.flags == ACK and again.ack == 5002
    net.run(seconds=9)             # the timer restarted with the FIN
    assert conn.state is State.TIME_WAIT
    net.run(seconds=2)
    assert b.connections == {} and b.counters["tcp.time_wait.expired"] == 1


def test_new_syn_may_end_time_wait():
    net, b, peer, conn, iss = established()
    conn.close()
    net.run(seconds=0.1)
    peer.send(B_IP, TcpSegment(4000, 80, 5001, iss + 2, ACK | FIN, 65535))
    net.run(seconds=0.1)
    assert conn.state is State.TIME_WAIT
    peer.take()
    peer.send(B_IP, TcpSegment(4000, 80, 90000, 0, SYN, 65535))
    net.run(seconds=0.1)
    [synack] = peer.take()
    assert synack.flags == SYN | ACK and synack.ack == 90001
    assert b.counters["tcp.time_wait.reopened"] == 1


def test_syn_flood_is_bounded_and_reaped():
    net = Net()
    cfg = TcpConfig(max_half_open=32, max_per_client=1000)   # one address floods: the per-client cap is tested apart
    b = net.layer(B_IP, config=cfg, max_connections=64)
    peer = ScriptedPeer(net, A_IP)
    b.listen(80, lambda c: None)
    rng = random.Random(9)
    for i in range(5000):
        peer.send(B_IP, TcpSegment(1024 + i, 80, rng.getrandbits(32), 0, SYN, 65535, mss=1460))
    net.run(seconds=0.1)
    assert len(b.connections) == 32
    assert b.counters["tcp.syn_cookie.sent"] == 5000 - 32
    replies = peer.take()
    assert all(r.flags == SYN | ACK for r in replies) and len(replies) == 5000
    # a legitimate client behind the flood completes with its cookie
    legit = replies[-1]
    accepted = []
    b.listen(80, accepted.append)
    peer.send(B_IP, TcpSegment(legit.dst_port, 80, legit.ack, seq_add(legit.seq, 1), ACK, 65535, b"hi"))
    net.run(seconds=0.1)
    assert b.counters["tcp.syn_cookie.accepted"] == 1 and len(accepted) == 1
    assert accepted[0].rcv_nxt == seq_add(legit.ack, 2)
    # a forged cookie is refused with RST
    peer.send(B_IP, TcpSegment(3, 80, 1, 12345, ACK, 65535))
    net.run(seconds=0.1)
    assert b.counters["tcp.listen.ack.rst"] == 1
    # the half-open entries give up after their SYN-ACK retries
    net.run(seconds=120)
    assert [c.state for c in b.connections.values()] == [State.ESTABLISHED]
    assert b.counters["tcp.half_open.reaped"] == 32


def test_syn_beyond_max_connections_is_refused():
    net = Net()
    b = net.layer(B_IP, config=TcpConfig(syn_cookies=False, max_half_open=1000), max_connections=10)
    peer = ScriptedPeer(net, A_IP)
    b.listen(80, lambda c: None)
    for i in range(50):
        peer.send(B_IP, TcpSegment(2000 + i, 80, 1000 * i, 0, SYN, 65535))
    net.run(seconds=0.1)
    assert len(b.connections) == 10
    assert b.counters["tcp.syn_refused.drop"] == 40


def test_idle_connections_are_reset():
    net, b, peer, conn, _ = established(config=TcpConfig(idle_timeout=30))
    closed = []
    conn.on_close = closed.append
    net.run(seconds=31)
    assert closed == ["timeout"] and b.connections == {}
    assert peer.take()[-1].flags & RST


def test_connect_to_closed_port_is_refused_and_syn_retries_are_bounded():
    net = Net()
    a = net.layer(A_IP)
    net.layer(B_IP)
    conn = a.connect(B_IP, 9)
    closed = []
    conn.on_close = closed.append
    net.run(seconds=1)
    assert closed == ["refused"] and a.connections == {}
    # nobody there at all: the SYN is retried, then the connect times out
    c2 = a.connect(0xC0000263, 9)
    closed2 = []
    c2.on_close = closed2.append
    net.run(seconds=200)
    syns = [s for s in net.sent_by(A_IP) if s.flags == SYN and s.dst_port == 9]
    assert closed2 == ["timeout"] and len(syns) == 1 + 1 + a.config.max_syn_retries


def test_abort_sends_rst():
    net = Net()
    a, b, server = echo_pair(net)
    conn = a.connect(B_IP, 7)
    net.run(seconds=1)
    conn.abort()
    net.run(seconds=0.1)
    assert server["closed"] == ["reset"] and a.connections == {} and b.connections == {}


def test_garbage_segments_are_counted_not_raised():
    net = Net()
    b = net.layer(B_IP)
    rng = random.Random(4)
    for _ in range(2000):
        b.input(net.clock.t, A_IP, B_IP, rng.randbytes(rng.randrange(0, 60)))
    seg = TcpSegment(4000, 80, 1, 0, SYN, 100).emit(A_IP, B_IP)
    b.input(net.clock.t, A_IP, B_IP, seg[:-1] + bytes([seg[-1] ^ 1]))
    assert b.counters["tcp.rx"] == 0 and b.counters["tcp.exception"] == 0
    assert sum(n for name, n in b.counters.items() if name.endswith(".drop")) == 2001     # each one counted under its reason
    assert b.counters["tcp.bad_checksum.drop"] >= 1


# -- the asyncio adapters and the DNS transport, two layers on a real loop ----------------------


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_streams_carry_a_megabyte_with_a_slow_reader():
    async def main():
        net = LoopNet(drop=0.02)
        server = net.layers[B_IP]
        done = asyncio.get_running_loop().create_future()

        def accept(conn):
            reader, writer = wrap(conn)

            async def echo():
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
                writer.close()
                done.set_result(True)
            asyncio.get_running_loop().create_task(echo())
        server.listen(7, accept)
        reader, writer = await open_connection(net.layers[A_IP], "192.0.2.2", 7, timeout=5)
        assert writer.get_extra_info("peername") == ("192.0.2.2", 7)
        blob = random.Random(3).randbytes(1_000_000)

        async def send():
            for i in range(0, len(blob), 50_000):
                writer.write(blob[i:i + 50_000])
                await writer.drain()
            writer.close()
        sender = asyncio.get_running_loop().create_task(send())
        got = bytearray()
        while len(got) < len(blob):
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += chunk
            await asyncio.sleep(0.001)        # a slow reader: the window must push back
        await sender
        assert bytes(got) == blob
        assert await reader.read() == b""     # the echo server's FIN
        await done
        await writer.wait_closed()
        net.close()
    run(main())


def test_open_connection_errors():
    async def main():
        net = LoopNet()
        with pytest.raises(ConnectionRefusedError):
            await open_connection(net.layers[A_IP], "192.0.2.2", 9, timeout=5)
        with pytest.raises(TimeoutError):
            await open_connection(net.layers[A_IP], "192.0.2.99", 9, timeout=0.3)
        assert net.layers[A_IP].connections == {}   # the timed-out attempt was aborted
        net.close()
    run(main())


def dns_query(ident: int, size: int = 30) -> bytes:
    return ident.to_bytes(2, "big") + bytes(size - 2)


async def dns_server(net: LoopNet, **kw) -> DnsTcpServer:
    async def handle(src, dst, query):
        ident = int.from_bytes(query[:2], "big")
        assert dst[1] == 53 and str(src[0]) == "192.0.2.1"
        await asyncio.sleep(0.001 * (50 - ident % 50))     # later queries finish first
        if ident == 999:
            return None
        if ident == 998:
            raise RuntimeError("handler bug")
        size = 65535 if ident == 1000 else 40
        return query[:2] + bytes([ident % 256]) * (size - 2)
    server = DnsTcpServer(net.layers[B_IP], 53, handle, **kw)
    server.start()
    return server


async def read_answer(reader) -> bytes:
    n = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(n)


def test_dns_transport_pipelines_and_answers_out_of_order():
    async def main():
        net = LoopNet()
        server = await dns_server(net)
        reader, writer = await open_connection(net.layers[A_IP], "192.0.2.2", 53)
        writer.write(b"".join(len(q).to_bytes(2, "big") + q for q in map(dns_query, range(50))))
        await writer.drain()
        answers = [await read_answer(reader) for _ in range(50)]
        ids = [int.from_bytes(a[:2], "big") for a in answers]
        assert sorted(ids) == list(range(50))
        assert ids != list(range(50))            # the slower early queries came later
        # one large answer spanning many segments, then errors that get no answer
        for ident in (999, 998, 1000):
            q = dns_query(ident)
            writer.write(len(q).to_bytes(2, "big") + q)
        big = await read_answer(reader)
        assert len(big) == 65535 and big[:2] == (1000).to_bytes(2, "big")
        writer.close()
        assert await reader.read() == b""         # the server answers our FIN with its own
        c = net.layers[B_IP].counters
        assert c["dns_tcp.query"] == 53 and c["dns_tcp.answer"] == 51
        assert c["dns_tcp.no_answer"] == 1 and c["dns_tcp.handle.exception"] == 1
        await asyncio.sleep(0.1)
        assert server.sessions == {}
        server.close()
        net.close()
    run(main())


def test_dns_transport_closes_on_bad_length_and_idle():
    async def main():
        net = LoopNet()
        await dns_server(net, idle_timeout=0.5)
        reader, writer = await open_connection(net.layers[A_IP], "192.0.2.2", 53)
        q = dns_query(7)
        writer.write(len(q).to_bytes(2, "big") + q + b"\x00\x05hello")   # a query, then garbage
        assert int.from_bytes((await read_answer(reader))[:2], "big") == 7   # answered first
        assert await reader.read() == b""                                   # then FIN
        assert net.layers[B_IP].counters["dns_tcp.bad_length.close"] == 1
        reader2, writer2 = await open_connection(net.layers[A_IP], "192.0.2.2", 53)
        assert await asyncio.wait_for(reader2.read(), 5) == b""              # idle: closed
        assert net.layers[B_IP].counters["dns_tcp.idle.close"] == 1
        net.close()
    run(main())


def test_dns_transport_connection_limit():
    async def main():
        net = LoopNet()
        await dns_server(net, max_connections=2)
        streams = [await open_connection(net.layers[A_IP], "192.0.2.2", 53) for _ in range(3)]
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(streams[2][0].read(), 5)
        assert net.layers[B_IP].counters["dns_tcp.connection_limit.reset"] == 1
        reader, writer = streams[0]
        q = dns_query(3)
        writer.write(len(q).to_bytes(2, "big") + q)
        assert len(await read_answer(reader)) == 40       # the first two still work
        net.close()
    run(main())


def test_client_reset_mid_stream_is_survived():
    async def main():
        net = LoopNet()
        server = await dns_server(net)
        reader, writer = await open_connection(net.layers[A_IP], "192.0.2.2", 53)
        q = dns_query(1000)                      # a large answer the client will not wait for
        writer.write(len(q).to_bytes(2, "big") + q + b"\x00")
        await asyncio.sleep(0.01)
        writer.abort()
        await asyncio.sleep(0.3)
        assert server.sessions == {} and net.layers[B_IP].connections == {}
        reader, writer = await open_connection(net.layers[A_IP], "192.0.2.2", 53)
        q = dns_query(4)
        writer.write(len(q).to_bytes(2, "big") + q)
        assert len(await read_answer(reader)) == 40
        net.close()
    run(main())


# -- whole stacks over the memory link's fault injector ---------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_two_stacks_over_a_faulty_memory_wire(seed):
    from tests.stackutil import stack_pair

    wire, clock, a, b = stack_pair(seed=seed, drop=0.05, duplicate=0.05, reorder=0.1, corrupt=0.02)
    got = bytearray()
    closed = []

    def accept(conn):
        conn.on_data = got.extend
        conn.on_close = lambda reason: (closed.append(reason), conn.close())
    b.tcp.listen(7, accept)
    conn = a.tcp.connect(b.address, 7)
    blob = random.Random(seed).randbytes(100_000)
    conn.on_established = lambda: conn.send(blob)
    conn.on_send_space = lambda: conn.state is State.ESTABLISHED and len(got) == len(blob) and conn.close()
    for _ in range(4000):           # 200 virtual seconds at most
        wire.flush_held()
        wire.pump()
        clock.advance(0.05)
        a.tick(clock())
        b.tick(clock())
        if closed and not b.tcp.connections:
            break
    assert bytes(got) == blob
    assert closed == [None] and b.tcp.connections == {}
    assert wire.faults["corrupted"] > 0 and b.counters["tcp.bad_checksum.drop"] + b.counters[
        "ipv4.bad_checksum.drop"] + a.counters["tcp.bad_checksum.drop"] + a.counters["ipv4.bad_checksum.drop"] > 0


# -- regression: Karn's rule for a SYN-ACK resent for the peer's retransmitted SYN --------------


def test_synack_resent_for_a_retransmitted_syn_gives_no_rtt_sample():
    """Our first SYN-ACK is lost; the peer (like Linux, 1 s later) sends its SYN
    again, we answer with a second SYN-ACK and the peer ACKs that one at once.
    The ACK must not be timed from the first, lost SYN-ACK: that sample
    (~0.8 s on a 10 ms path) once made the RTO about 3 s, and on the lossy
    kernel test a few backed-off retransmissions then outlasted the client's
    20 s socket timeout."""
    net = Net()
    b = net.layer(B_IP)
    peer = ScriptedPeer(net, A_IP)
    accepted = []
    b.listen(80, accepted.append)
    syn = TcpSegment(4000, 80, 5000, 0, SYN, 65535, mss=1460)
    peer.send(B_IP, syn)
    net.run(seconds=0.1)
    [lost] = peer.take()                  # the peer never sees this one
    net.run(seconds=0.7)                  # short of our own SYN-ACK timeout (1 s)
    assert peer.take() == []
    peer.send(B_IP, syn)                  # the peer's retransmitted SYN
    net.run(seconds=0.1)
    [synack] = peer.take()
    assert synack.flags == SYN | ACK and synack.seq == lost.seq
    assert b.counters["tcp.dup_syn.synack"] == 1
    peer.send(B_IP, TcpSegment(4000, 80, 5001, synack.seq + 1, ACK, 65535))
    net.run(seconds=0.1)
    [conn] = accepted
    assert conn.state is State.ESTABLISHED
    assert conn.srtt is None              # Karn: an ambiguous ACK gives no sample
    # one clean exchange gives the first real sample (about 20 ms)
    conn.send(b"a" * 100)
    net.run(seconds=0.05)
    [data] = peer.take()
    peer.send(B_IP, TcpSegment(4000, 80, 5001, seq_add(data.seq, 100), ACK, 65535))
    net.run(seconds=0.05)
    assert conn.srtt is not None and conn.srtt < 0.1
    # a lost segment is now retransmitted after about min_rto, not after seconds
    conn.send(b"b" * 100)
    net.run(seconds=5)                    # the peer never acknowledges
    times = [t for t, src, seg in net.log if src == B_IP and seg.payload == b"b" * 100]
    assert len(times) >= 2
    assert times[1] - times[0] < b.config.initial_rto
    assert b.counters["tcp.retransmit.timeout"] >= 1


# -- regression: ACKs sent while retransmitting are numbered snd_max, not snd_nxt ---------------


def test_ack_sent_while_retransmitting_is_numbered_past_all_data_sent():
    """After a timeout snd_nxt goes back to snd_una. An ACK numbered there is
    behind what the peer already holds, outside its window: the peer (Linux
    as much as ours) drops it, ACK field and all."""
    net, b, peer, conn, iss = established()
    conn.send(b"x" * 1460 * 3)
    net.run(seconds=0.05)
    assert len(peer.take()) == 3          # the peer holds them all; its ACK is lost
    net.run(seconds=0.4)                  # our RTO (0.3 s here): back to the first byte
    [resent] = peer.take()
    assert resent.seq == seq_add(iss, 1) and b.counters["tcp.retransmit.timeout"] == 1
    peer.send(B_IP, TcpSegment(4000, 80, 5001, seq_add(iss, 1), ACK | PSH, 65535, b"hello"))
    net.run(seconds=0.05)
    [ack] = peer.take()
    assert ack.payload == b"" and ack.ack == 5006
    assert ack.seq == seq_add(iss, 1 + 1460 * 3)   # not iss + 1 + 1460


def test_two_stacks_retransmitting_at_once_still_hear_each_others_acks():
    """Both sides send a burst at once; every ACK and every retransmission is
    lost for a while, so both time out and go back to snd_una although the
    other side holds all their data. Numbered snd_nxt, each side's ACKs were
    then outside the other's window, and each side's resent data was old to
    the other: the two ACKed each other without progress until both gave up."""
    net = Net()
    a = net.layer(A_IP, seed=11)
    b = net.layer(B_IP, seed=12)
    blob_a, blob_b = random.Random(9).randbytes(8000), random.Random(10).randbytes(8000)
    got_a, got_b = bytearray(), bytearray()

    def accept(conn):
        conn.on_data = got_b.extend
        conn.send(blob_b)
    b.listen(7, accept)
    conn = a.connect(B_IP, 7)
    conn.on_data = got_a.extend
    conn.on_established = lambda: conn.send(blob_a)
    lossy, seen = True, set()

    def deliver(src, seg):
        if not lossy or seg.flags & SYN:
            return True
        if not seg.payload or (src, seg.seq) in seen:
            return False        # every ACK lost, every retransmission too
        seen.add((src, seg.seq))
        return True
    net.filter = deliver
    net.run(seconds=1.0)
    assert bytes(got_a) == blob_b and bytes(got_b) == blob_a     # all data arrived once
    assert a.counters["tcp.retransmit.timeout"] > 0 and b.counters["tcp.retransmit.timeout"] > 0
    assert conn.snd_una == conn.iss + 1                           # but no ACK did
    lossy = False
    net.run(seconds=200, stop=lambda: conn.snd_una == seq_add(conn.iss, 1 + len(blob_a))
            and all(c.snd_una == seq_add(c.iss, 1 + len(blob_b)) for c in b.connections.values()))
    assert conn.state is State.ESTABLISHED and conn.snd_una == seq_add(conn.iss, 1 + len(blob_a))
    [server] = b.connections.values()
    assert server.snd_una == seq_add(server.iss, 1 + len(blob_b))
    assert a.counters["tcp.retransmit.gave_up"] == 0 and b.counters["tcp.retransmit.gave_up"] == 0


def test_ack_that_waited_on_a_partial_ack_resend_gives_no_rtt_sample():
    """NewReno: new data sent during recovery is timed; a partial ACK then
    resends an older hole, and the ACK that finally covers the timed data
    waited on that resend (Karn: no sample from it)."""
    net, b, peer, conn, iss = established()
    mss = conn.snd_mss
    conn.send(b"x" * mss * 12)              # the initial window goes out, the rest waits
    net.run(seconds=0.02)
    burst_end = conn.snd_max
    assert len(peer.take()) >= 10 and conn.snd_max != seq_add(iss, 1 + 12 * mss)
    first = seq_add(iss, 1)
    dup = TcpSegment(4000, 80, 5001, first, ACK, 65535)
    for _ in range(6):                       # three start recovery, three inflate the window
        peer.send(B_IP, dup)
    net.run(seconds=0.02)
    sent = peer.take()
    assert sent[0].seq == first and b.counters["tcp.retransmit.fast"] == 1
    assert any(seg.seq == burst_end for seg in sent)                  # new data, timed
    srtt = conn.srtt
    net.run(seconds=0.15)                    # the peer is slow to report the next hole
    peer.send(B_IP, TcpSegment(4000, 80, 5001, seq_add(first, 3 * mss), ACK, 65535))   # partial ACK
    net.run(seconds=0.02)
    assert [seg.seq for seg in peer.take()][:1] == [seq_add(first, 3 * mss)]
    assert b.counters["tcp.retransmit.partial_ack"] == 1
    peer.send(B_IP, TcpSegment(4000, 80, 5001, conn.snd_max, ACK, 65535))             # all of it
    net.run(seconds=0.02)
    assert conn.snd_una == conn.snd_max and not conn.in_recovery
    # only data sent after the resend was timed (a true 20 ms): the 0.19 s
    # wait for the timed segment's ACK was not taken as a round trip
    assert conn.srtt <= srtt
