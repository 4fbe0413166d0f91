"""The TCP layer: every connection of one IPv4 address, and its listeners.

It parses segments (``segment``), dispatches them to their connection, opens
connections for listeners (answering with SYN cookies once half-open entries
reach their bound), answers strays with RST, and runs every connection's
timers from ``tick(now)``. Segments leave through the ``transmit(dst_ip,
segment_bytes)`` callback. Bounds: ``max_connections`` in total and
``max_per_client`` from one address; half-open connections bounded, SYN-ACK
retries limited, FIN_WAIT_2 limited to 60 s, idle connections reaped (sooner
once the table is busy), send buffer bounded (``BufferError``). A SYN that
finds the table full (a TIME_WAIT entry is recycled first) is answered with a
cookie; once its ACK proves the client real, the connection idle longest
makes room (RFC 7766 6.2.3). A fresh SYN may end TIME_WAIT early (RFC 6191).

Every outcome increments a counter in ``counters`` (``tcp.bad_checksum.drop``,
``tcp.no_listener.rst``, ``tcp.syn_refused.drop``, ...).
"""
from __future__ import annotations

import hashlib
import logging
import random
import struct
from collections.abc import Callable

from ..counters import Counters
from .config import TcpConfig
from .connection import Connection
from .segment import ACK, RST, SYN, TcpError, TcpSegment
from .sequence import seq_add, seq_diff
from .state import Event, State

log = logging.getLogger(__name__)

S, E = State, Event


class TcpLayer:
    """Every connection of one IPv4 address, and its listeners."""

    def __init__(self, local_ip: int, transmit: Callable[[int, bytes], None], counters: Counters,
                 clock: Callable[[], float] | None,
                 *, max_connections: int = 256, rng: random.Random | None = None,
                 config: TcpConfig | None = None) -> None:
        self.local_ip = local_ip
        self.transmit = transmit
        self.counters = counters
        self.clock = clock
        self.max_connections = max_connections
        self.rng = rng or random.SystemRandom()
        self.config = config or TcpConfig()
        self.connections: dict[tuple[int, int, int], Connection] = {}  # (remote ip, remote port, local port)
        self._per_client: dict[int, int] = {}   # remote ip -> its entries in `connections`
        self.listeners: dict[int, Callable[[Connection], None]] = {}
        self.now_hint = 0.0  # the time of the input or tick being handled
        self._cookie_secret = self.rng.getrandbits(128).to_bytes(16, "big")
        self._last_cookie_sent: float | None = None
        self._challenge_window = -1
        self._challenge_count = 0

    def now(self) -> float:
        t = self.clock() if self.clock is not None else self.now_hint
        self.now_hint = t
        return t

    # -- the application's side ----------------------------------------------------
    def listen(self, port: int, on_accept: Callable[[Connection], None]) -> None:
        self.listeners[port] = on_accept

    def unlisten(self, port: int) -> None:
        self.listeners.pop(port, None)

    def connect(self, dst_ip: int, dst_port: int) -> Connection:
        """Active open; the SYN leaves at once. ConnectionError if the table is full."""
        now = self.now()
        if len(self.connections) >= self.max_connections and not self._recycle_time_wait():
            self.counters["tcp.connect.table_full"] += 1
            raise ConnectionError("too many TCP connections")
        local_port = self._free_port(dst_ip, dst_port)
        conn = Connection(self, local_port, dst_ip, dst_port, self.rng.getrandbits(32), S.CLOSED)
        conn.rcv_wscale = self.config.rcv_window_shift
        conn.last_activity = now
        self._add(conn)
        conn._apply(E.OPEN_ACTIVE)
        conn._output(now)
        return conn

    def _free_port(self, dst_ip: int, dst_port: int) -> int:
        for _ in range(64):
            port = self.rng.randrange(49152, 65536)
            if (dst_ip, dst_port, port) not in self.connections and port not in self.listeners:
                return port
        for port in range(1024, 65536):
            if (dst_ip, dst_port, port) not in self.connections and port not in self.listeners:
                return port
        raise ConnectionError("no free local port")

    # -- timers ----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self.now_hint = now
        idle_limit = self._idle_limit()   # decided once a tick, so a busy table sheds all its idlers
        for conn in list(self.connections.values()):
            try:
                conn._tick(now, idle_limit)
            except Exception:  # an application callback failed: count it, keep the layer going
                self.counters["tcp.exception"] += 1
                log.exception("TCP timer handling failed for %r", conn)

    # -- input ---------------------------------------------------------------------------
    def input(self, now: float, src_ip: int, dst_ip: int, segment: bytes) -> None:
        """One segment from IPv4; never raises."""
        self.now_hint = now
        try:
            seg = TcpSegment.parse(src_ip, dst_ip, segment)
        except TcpError as e:
            self.counters[e.reason] += 1
            return
        self.counters["tcp.rx"] += 1
        try:
            self._dispatch(now, src_ip, seg)
        except Exception:
            self.counters["tcp.exception"] += 1
            log.exception("TCP input failed for %r", seg)

    def _dispatch(self, now: float, src_ip: int, seg: TcpSegment) -> None:
        key = (src_ip, seg.src_port, seg.dst_port)
        conn = self.connections.get(key)
        if conn is not None and conn.state is S.TIME_WAIT and seg.flags & SYN and not seg.flags & ACK \
                and seq_diff(seg.seq, conn.rcv_nxt) > 0 and seg.dst_port in self.listeners:
            # RFC 9293 3.10.7.4 / RFC 6191: a new incarnation may end TIME_WAIT early
            self.counters["tcp.time_wait.reopened"] += 1
            conn._finish(E.TIMEOUT, None)
            conn = None
        if conn is not None:
            conn._input(now, seg)
            return
        on_accept = self.listeners.get(seg.dst_port)
        if on_accept is None:
            if not seg.flags & RST:
                self.counters["tcp.no_listener.rst"] += 1
                self._send_rst_for(src_ip, seg)
            else:
                self.counters["tcp.no_listener.drop"] += 1
            return
        self._input_listen(now, src_ip, seg, on_accept)

    def _input_listen(self, now: float, src_ip: int, seg: TcpSegment,
                      on_accept: Callable[[Connection], None]) -> None:
        flags = seg.flags
        if flags & RST:
            self.counters["tcp.listen.rst.drop"] += 1
            return
        if flags & ACK:
            if not flags & SYN and self._cookies_in_use(now) \
                    and self._open_from_cookie(now, src_ip, seg, on_accept):
                return
            self.counters["tcp.listen.ack.rst"] += 1
            self._send_rst_for(src_ip, seg)
            return
        if not flags & SYN:
            self.counters["tcp.listen.no_syn.drop"] += 1
            return
        if self._client_full(src_ip):
            return
        if len(self.connections) >= self.max_connections and not self._recycle_time_wait():
            if self.config.syn_cookies:
                self._send_cookie(now, src_ip, seg)   # room is made once its ACK proves the client real
            else:
                self.counters["tcp.syn_refused.drop"] += 1
            return
        half_open = sum(1 for c in self.connections.values() if c.state is S.SYN_RECEIVED)
        if half_open >= self.config.max_half_open:
            if self.config.syn_cookies:
                self._send_cookie(now, src_ip, seg)
            else:
                self.counters["tcp.syn_refused.drop"] += 1
            return
        conn = Connection(self, seg.dst_port, src_ip, seg.src_port, self.rng.getrandbits(32), S.LISTEN)
        conn._on_accept = on_accept
        conn.last_activity = now
        conn._negotiate(seg)
        conn.snd_wnd = conn.max_snd_wnd = seg.window
        conn.snd_wl1, conn.snd_wl2 = seg.seq, conn.iss
        conn._apply(E.RECV_SYN)
        self._add(conn)
        self.counters["tcp.syn.accepted"] += 1
        conn._output(now)

    def path_mtu(self, now: float, dst_ip: int, quoted: bytes, mtu: int) -> None:
        """An ICMP "fragmentation needed" quoting `quoted` (the start of a
        segment we sent to dst_ip) says the path takes `mtu` bytes (RFC 1191).
        Only a live connection's segment counts (RFC 5927 5.1); never raises."""
        self.now_hint = now
        if len(quoted) < 8:
            self.counters["tcp.pmtu.short_quote.drop"] += 1
            return
        our_port, their_port, seq = struct.unpack_from("!HHI", quoted)
        conn = self.connections.get((dst_ip, their_port, our_port))
        if conn is None:
            self.counters["tcp.pmtu.no_connection.drop"] += 1
            return
        conn._lower_path_mtu(now, seq, mtu)

    # -- SYN cookies: a SYN answered without keeping any state --------------------------
    _COOKIE_MSS = (536, 1220, 1440, 1460)
    # A cookie names its 64 s slot, and the current and previous slots are
    # accepted: a cookie is good for at most 128 s after it was sent.
    _COOKIE_LIFETIME = 128.0

    def _cookies_in_use(self, now: float) -> bool:
        """An ACK is read as a cookie only while cookies were sent recently
        (Linux's tcp_synq_no_recent_overflow); otherwise a guessed cookie
        could open a connection that no SYN ever asked for."""
        return (self.config.syn_cookies and self._last_cookie_sent is not None
                and now - self._last_cookie_sent <= self._COOKIE_LIFETIME)

    def _cookie_hash(self, src_ip: int, seg_src_port: int, dst_port: int, irs: int, slot: int) -> int:
        data = struct.pack("!IHHIII", src_ip, seg_src_port, dst_port, irs, slot, self.local_ip)
        return int.from_bytes(hashlib.blake2b(data, key=self._cookie_secret, digest_size=4).digest(), "big")

    def _send_cookie(self, now: float, src_ip: int, seg: TcpSegment) -> None:
        slot = int(now // 64) & 0x1F
        peer_mss = seg.mss if seg.mss is not None else 536
        index = max(i for i, m in enumerate(self._COOKIE_MSS) if m <= max(536, min(peer_mss, self.config.mss)))
        cookie = (slot << 27) | (index << 24) | (self._cookie_hash(src_ip, seg.src_port, seg.dst_port, seg.seq, slot)
                                                 & 0xFFFFFF)
        self.counters["tcp.syn_cookie.sent"] += 1
        self._last_cookie_sent = now
        reply = TcpSegment(seg.dst_port, seg.src_port, cookie, seq_add(seg.seq, 1), SYN | ACK,
                           min(self.config.rcv_window, 0xFFFF), mss=self._COOKIE_MSS[index])
        self._transmit(src_ip, reply)

    def _open_from_cookie(self, now: float, src_ip: int, seg: TcpSegment,
                     on_accept: Callable[[Connection], None]) -> bool:
        """True when the ACK answers one of our cookies (accepted, or refused for want of room)."""
        cookie = seq_add(seg.ack, -1)
        irs = seq_add(seg.seq, -1)
        slot = cookie >> 27
        current = int(now // 64) & 0x1F
        if slot not in (current, (current - 1) & 0x1F):
            return False
        if self._cookie_hash(src_ip, seg.src_port, seg.dst_port, irs, slot) & 0xFFFFFF != cookie & 0xFFFFFF:
            self.counters["tcp.syn_cookie.bad"] += 1
            return False
        if self._client_full(src_ip):
            return True
        if len(self.connections) >= self.max_connections and not self._recycle_time_wait() \
                and not self._evict_idle(now):
            self.counters["tcp.syn_refused.drop"] += 1
            return True  # a valid cookie but no room: dropped; the peer's retransmission may find some
        self.counters["tcp.syn_cookie.accepted"] += 1
        conn = Connection(self, seg.dst_port, src_ip, seg.src_port, cookie, S.LISTEN)
        conn._cookie = True
        conn.last_activity = now
        conn._negotiate(TcpSegment(seg.src_port, seg.dst_port, irs, 0, SYN, seg.window,
                                   mss=self._COOKIE_MSS[(cookie >> 24) & 0x3]))
        conn.snd_una = conn.snd_nxt = conn.snd_max = seq_add(cookie, 1)
        conn.snd_wnd = conn.max_snd_wnd = seg.window
        conn.snd_wl1, conn.snd_wl2 = seg.seq, seg.ack
        conn._apply(E.RECV_SYN)
        conn._apply(E.RECV_ACK_OF_SYN)
        self._add(conn)
        conn._on_accept = on_accept
        conn._established_passive()
        if conn.state is not S.CLOSED:
            conn._input(now, seg)   # the ACK may carry data already
        return True

    # -- helpers ------------------------------------------------------------------------
    def _recycle_time_wait(self, remote_ip: int | None = None) -> bool:
        """Frees one table entry (of `remote_ip`'s, if given) by ending the
        TIME_WAIT that would end first."""
        waiting = [c for c in self.connections.values() if c.state is S.TIME_WAIT
                   and (remote_ip is None or c.remote[0] == remote_ip)]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.time_wait_at or 0.0)
        self.counters["tcp.time_wait.recycled"] += 1
        victim._finish(E.TIMEOUT, None)
        return True

    def _client_full(self, remote_ip: int) -> bool:
        """True (and counted) when `remote_ip` holds its share of the table and
        none of its entries is a TIME_WAIT that could make way."""
        if self._per_client.get(remote_ip, 0) < self.config.max_per_client or self._recycle_time_wait(remote_ip):
            return False
        self.counters["tcp.per_client_limit.drop"] += 1
        return True

    def _idle_limit(self) -> float:
        """The idle timeout now: shorter once the table is busy (RFC 7766 6.2.3)."""
        cfg = self.config
        if len(self.connections) >= cfg.busy_fraction * self.max_connections:
            return min(cfg.busy_idle_timeout, cfg.idle_timeout)
        return cfg.idle_timeout

    def _evict_idle(self, now: float) -> bool:
        """Frees one table entry by resetting the connection idle longest, if
        one has been idle for evictable_idle (RFC 7766 6.2.3); one that is
        talking is never pushed out."""
        idlest = min((c for c in self.connections.values() if c.state not in (S.TIME_WAIT, S.SYN_SENT)),
                     key=lambda c: c.last_activity, default=None)
        if idlest is None or now - idlest.last_activity < self.config.evictable_idle:
            return False
        self.counters["tcp.evicted.idle"] += 1
        idlest._send(idlest.snd_max, RST | ACK)
        idlest._finish(E.TIMEOUT, "timeout")
        return True

    def _take_challenge_token(self) -> bool:
        """Spends one of this second's challenge ACKs (RFC 5961 7); False once they are gone."""
        second = int(self.now_hint)
        if second != self._challenge_window:
            self._challenge_window, self._challenge_count = second, 0
        self._challenge_count += 1
        return self._challenge_count <= self.config.challenge_acks_per_second

    def _send_rst_for(self, dst_ip: int, seg: TcpSegment) -> None:
        """RFC 9293 3.10.7.1: the reset that answers a segment nobody expects."""
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            reply = TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
        else:
            reply = TcpSegment(seg.dst_port, seg.src_port, 0, seq_add(seg.seq, seg.seq_len), RST | ACK, 0)
        self._transmit(dst_ip, reply)

    def _transmit(self, dst_ip: int, seg: TcpSegment) -> None:
        self.counters["tcp.tx"] += 1
        self.transmit(dst_ip, seg.emit(self.local_ip, dst_ip))

    def _add(self, conn: Connection) -> None:
        remote_ip = conn.remote[0]
        self.connections[(remote_ip, conn.remote[1], conn.local[1])] = conn
        self._per_client[remote_ip] = self._per_client.get(remote_ip, 0) + 1

    def _remove(self, conn: Connection) -> None:
        remote_ip = conn.remote[0]
        key = (remote_ip, conn.remote[1], conn.local[1])
        if self.connections.get(key) is conn:
            del self.connections[key]
            left = self._per_client[remote_ip] - 1
            if left:
                self._per_client[remote_ip] = left
            else:
                del self._per_client[remote_ip]
            if conn.on_finished is not None:
                conn.on_finished()
