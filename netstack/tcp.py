"""TCP (RFC 9293): connections, the state machine, windows, retransmission.

The layer does no I/O and reads no clock on the input path: the stack hands it
segments with ``input(now, ...)`` and runs its timers with ``tick(now)``;
segments leave through the ``transmit(dst_ip, segment_bytes)`` callback. Tests
drive two layers, or one layer and a scripted peer, with a virtual clock.

What is here, and where it comes from:

* the state machine is the table ``TRANSITIONS`` over (state, event); the
  input path decides which event a segment is and the table says where it
  leads, so no state has a hand-copied handler of its own;
* MSS and window scale options (RFC 7323) on SYNs;
* sliding windows both ways; our receive window closes while the application
  pauses reading (flow control for ``tcp_stream``);
* retransmission timeout per RFC 6298 (SRTT/RTTVAR, Karn, exponential
  backoff), slow start and congestion avoidance, fast retransmit on the third
  duplicate ACK with NewReno-style recovery (RFC 5681/6582), zero-window probes;
* out-of-order segments kept, bounded in count and bytes, and reassembled;
* FIN, RST, TIME_WAIT (which a fresh SYN may end early, as RFC 6191 allows);
* RFC 5961: an in-window RST or any SYN on a synchronized connection only
  earns a (rate-limited) challenge ACK; ACKs for data never sent are refused;
* bounds: ``max_connections`` in total (SYNs beyond it are dropped, a
  TIME_WAIT entry is recycled first), half-open connections bounded, SYN
  cookies once that bound is reached, SYN-ACK retries limited, idle
  connections reaped, send buffer bounded (``BufferError``).

Every outcome increments a counter in ``counters`` (``tcp.bad_checksum.drop``,
``tcp.no_listener.rst``, ``tcp.syn_refused.drop``, ...).
"""
from __future__ import annotations

import enum
import hashlib
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .tcp_wire import ACK, FIN, PSH, RST, SYN, TcpError, TcpSegment  # noqa: F401  (TcpError re-exported)

log = logging.getLogger(__name__)

MASK = 0xFFFFFFFF
HALF = 0x80000000


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number (RFC 1982 style)."""
    return ((a - b + HALF) & MASK) - HALF


def seq_add(a: int, n: int) -> int:
    return (a + n) & MASK


# -- the state machine ----------------------------------------------------------------


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"


class Event(enum.Enum):
    OPEN_ACTIVE = "open"          # the application calls connect()
    RECV_SYN = "syn"              # a SYN without ACK
    RECV_SYN_ACK = "syn_ack"      # the answer to our SYN
    RECV_ACK_OF_SYN = "ack_syn"   # the ACK that completes a passive open
    CLOSE = "close"               # the application calls close()
    RECV_FIN = "fin"
    RECV_ACK_OF_FIN = "ack_fin"
    TIMEOUT = "timeout"           # TIME_WAIT over, retries exhausted, or idle
    RESET = "reset"               # an acceptable RST arrived, or we aborted


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.CLOSED, E.OPEN_ACTIVE): S.SYN_SENT,
    (S.LISTEN, E.RECV_SYN): S.SYN_RECEIVED,
    (S.SYN_SENT, E.RECV_SYN_ACK): S.ESTABLISHED,
    (S.SYN_SENT, E.RECV_SYN): S.SYN_RECEIVED,          # simultaneous open
    (S.SYN_SENT, E.CLOSE): S.CLOSED,
    (S.SYN_RECEIVED, E.RECV_ACK_OF_SYN): S.ESTABLISHED,
    (S.SYN_RECEIVED, E.CLOSE): S.FIN_WAIT_1,
    (S.SYN_RECEIVED, E.RECV_FIN): S.CLOSE_WAIT,
    (S.ESTABLISHED, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.RECV_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, E.RECV_ACK_OF_FIN): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.RECV_FIN): S.CLOSING,
    (S.FIN_WAIT_2, E.RECV_FIN): S.TIME_WAIT,
    (S.CLOSE_WAIT, E.CLOSE): S.LAST_ACK,
    (S.CLOSING, E.RECV_ACK_OF_FIN): S.TIME_WAIT,
    (S.LAST_ACK, E.RECV_ACK_OF_FIN): S.CLOSED,
    (S.TIME_WAIT, E.TIMEOUT): S.CLOSED,
}
# Any state may be reset or time out into CLOSED.
for _state in State:
    TRANSITIONS.setdefault((_state, E.RESET), S.CLOSED)
    TRANSITIONS.setdefault((_state, E.TIMEOUT), S.CLOSED)
del _state

SYNCHRONIZED = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING,
                          S.LAST_ACK, S.TIME_WAIT})
RECEIVES_DATA = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
SENDS_DATA = frozenset({S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK})
ACCEPTS_SEND = frozenset({S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT})


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class TcpConfig:
    mss: int = 1460                 # what we accept per segment (MTU 1500 - 40)
    rcv_window: int = 65535         # bytes we offer; above 65535 a window scale is used
    send_buffer: int = 256 * 1024   # unacknowledged + unsent bytes per connection
    max_ooo_segments: int = 64      # out-of-order segments kept per connection
    initial_rto: float = 1.0        # RFC 6298 2.1
    min_rto: float = 0.2            # RFC 6298 allows below 1 s; Linux uses 200 ms
    max_rto: float = 60.0
    clock_granularity: float = 0.05  # the stack's tick
    max_retries: int = 8            # data/FIN retransmissions before giving up
    max_syn_retries: int = 5        # active open
    max_synack_retries: int = 4     # passive open: half-open connections are reaped after these
    initial_cwnd_segments: int = 10  # RFC 6928
    time_wait: float = 60.0         # 2 MSL
    idle_timeout: float = 300.0     # a connection silent for this long is reset
    max_half_open: int = 64         # SYN_RECEIVED entries; beyond, SYN cookies (or refusal)
    syn_cookies: bool = True
    challenge_acks_per_second: int = 100  # RFC 5961 section 7


def _window_shift(window: int) -> int:
    shift = 0
    while (window >> shift) > 0xFFFF and shift < 14:
        shift += 1
    return shift


# -- connections ------------------------------------------------------------------------


class Connection:
    """One TCP connection. The application sets the callbacks; everything else
    is driven by the layer.

    on_established(): an active open completed.
    on_data(bytes): in-order bytes from the peer.
    on_close(reason): None once, when the peer has finished sending (its FIN);
        a reason ("reset", "refused", "timeout") once if the connection fails.
    on_send_space(): acknowledged data freed room in the send buffer.
    on_finished(): the connection left the layer's table (any way at all).
    on_state(state): after every transition of the state machine.
    """

    def __init__(self, layer: TcpLayer, local_port: int, remote_ip: int, remote_port: int,
                 iss: int, state: State) -> None:
        cfg = layer.config
        self.layer = layer
        self.local = (layer.local_ip, local_port)
        self.remote = (remote_ip, remote_port)
        self.state = state
        self.on_established: Callable[[], None] | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.on_close: Callable[[str | None], None] | None = None
        self.on_send_space: Callable[[], None] | None = None
        self.on_finished: Callable[[], None] | None = None
        self.on_state: Callable[[State], None] | None = None
        self._on_accept: Callable[[Connection], None] | None = None
        self._ws_agreed = False     # both SYNs carried a window scale option
        self._cookie = False        # opened from a SYN cookie: no options were remembered
        self.peer_finished = False
        self.error: str | None = None
        # send side
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss          # highest sequence sent (snd_nxt goes back on timeout)
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.snd_wscale = 0         # shift for windows the peer advertises
        self.snd_mss = 536          # RFC 9293 default until the peer's MSS option says more
        self.send_buf = bytearray()
        self.buf_seq = seq_add(iss, 1)  # sequence number of send_buf[0]
        self.fin_queued = False
        # receive side
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0         # shift for windows we advertise
        self.rcv_adv = 0            # right edge of the window we last advertised
        self.receive_paused = False
        self.ooo: dict[int, tuple[bytes, bool]] = {}
        self.ooo_bytes = 0
        self.ack_needed = False
        # congestion control and timing
        self.cwnd = 0
        self.ssthresh = 0xFFFFFFFF
        self.dup_acks = 0
        self.in_recovery = False
        self.recover = iss
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = cfg.initial_rto
        self.rtt_seq: int | None = None   # timing: the segment ending here was sent at rtt_sent
        self.rtt_sent = 0.0
        # Karn (RFC 6298 3): once our SYN or SYN-ACK has gone out twice, the ACK
        # that answers it may answer either copy, so the handshake gives no sample
        self.syn_resent = False
        self.retries = 0
        # timers, as data: each is an absolute time or None
        self.rto_at: float | None = None
        self.time_wait_at: float | None = None
        self.last_activity = 0.0

    def __repr__(self) -> str:
        return (f"<Connection {self.local[1]}<->{self.remote[1]} {self.state.value} "
                f"una={self.snd_una} nxt={self.snd_nxt} rcv={self.rcv_nxt}>")

    # -- the application's side -----------------------------------------------------
    @property
    def send_space(self) -> int:
        return max(0, self.layer.config.send_buffer - len(self.send_buf))

    @property
    def closed(self) -> bool:
        return self.state is S.CLOSED

    def send(self, data: bytes) -> None:
        """Queues data; raises BufferError past the send buffer's bound and
        ConnectionError once the connection can no longer send."""
        if self.state not in ACCEPTS_SEND or self.fin_queued:
            raise ConnectionError(f"cannot send in {self.state.value}")
        if len(self.send_buf) + len(data) > self.layer.config.send_buffer:
            raise BufferError("TCP send buffer full")
        if not data:
            return
        self.send_buf += data
        now = self.layer.now()
        self.last_activity = now
        self._output(now)

    def close(self) -> None:
        """FIN once everything queued has been sent."""
        if self.state is S.SYN_SENT:
            self._finish(E.CLOSE, None)
            return
        if (self.state, E.CLOSE) not in TRANSITIONS:
            return  # already closing or closed
        self.fin_queued = True
        self._apply(E.CLOSE)
        self._output(self.layer.now())

    def abort(self) -> None:
        """RST now, drop everything."""
        if self.state is S.CLOSED:
            return
        if self.state in SYNCHRONIZED or self.state is S.SYN_RECEIVED:
            self._send(self.snd_max, RST | ACK)
            self.layer.counters["tcp.abort.rst"] += 1
        self._finish(E.RESET, None)

    def set_receive_paused(self, paused: bool) -> None:
        """While paused, the window we advertise is not reopened, so the peer
        stops once the bytes it may already send have arrived."""
        if self.receive_paused == paused:
            return
        self.receive_paused = paused
        if not paused and self.state in RECEIVES_DATA:
            self.ack_needed = True   # a window update
            self._output(self.layer.now())

    # -- state -----------------------------------------------------------------------
    def _apply(self, event: Event) -> None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            self.layer.counters["tcp.unexpected_event"] += 1
            log.debug("%r: no transition for %s", self, event)
            return
        self.state = new
        if self.on_state is not None:
            self.on_state(new)
        if new is S.TIME_WAIT:
            self.rto_at = None
            self.time_wait_at = self.layer.now_hint + self.layer.config.time_wait
        elif new is S.CLOSED:
            self.layer._remove(self)

    def _finish(self, event: Event, reason: str | None) -> None:
        """Into CLOSED by `event`; tell the application about a failure."""
        if self.state is S.CLOSED:
            return
        was_passive_half_open = self._on_accept is not None
        self._apply(event)
        if self.state is not S.CLOSED:  # the table must always allow this
            self.state = S.CLOSED
            self.layer._remove(self)
        self.rto_at = self.time_wait_at = None
        if reason is not None and not was_passive_half_open and self.error is None:
            self.error = reason
            if self.on_close is not None:
                self.on_close(reason)

    # -- windows -----------------------------------------------------------------------
    def _rcv_window(self) -> int:
        """Bytes we may receive beyond rcv_nxt, never shrinking the advertised edge."""
        edge = seq_diff(self.rcv_adv, self.rcv_nxt)
        if self.receive_paused:
            return max(0, edge)
        return max(edge, self.layer.config.rcv_window)

    def _window_field(self) -> int:
        avail = self._rcv_window()
        field = min(avail >> self.rcv_wscale, 0xFFFF)
        edge = seq_add(self.rcv_nxt, field << self.rcv_wscale)
        if seq_diff(edge, self.rcv_adv) > 0:
            self.rcv_adv = edge
        return field

    # -- output --------------------------------------------------------------------------
    def _send(self, seq: int, flags: int, payload: bytes = b"",
              mss: int | None = None, wscale: int | None = None) -> None:
        """One segment. Callers number a segment without data, SYN or FIN (an
        ACK, a RST) snd_max, never snd_nxt (as BSD does): after a timeout
        snd_nxt goes back to snd_una, and a peer that already holds those bytes
        finds an ACK numbered there outside its window and drops it, ACK field
        and all. Two of our stacks retransmitting at once then each dropped
        the other's ACKs until both gave up."""
        window = self._window_field() if not flags & SYN else min(self.layer.config.rcv_window, 0xFFFF)
        ack = self.rcv_nxt if flags & ACK else 0
        seg = TcpSegment(self.local[1], self.remote[1], seq, ack, flags, window,
                         payload, mss, wscale)
        self.layer._transmit(self.remote[0], seg)
        if flags & ACK:
            self.ack_needed = False

    def _send_syn(self) -> None:
        cfg = self.layer.config
        offer_ws = self.state is S.SYN_SENT or self._ws_agreed
        flags = SYN | (ACK if self.state is S.SYN_RECEIVED else 0)
        self._send(self.iss, flags, mss=cfg.mss, wscale=self.rcv_wscale if offer_ws else None)


    @property
    def fin_seq(self) -> int:
        return seq_add(self.buf_seq, len(self.send_buf))

    def _emit_from(self, seq: int, limit: int) -> int:
        """Sends up to `limit` bytes of the send buffer from `seq`, with FIN if
        that reaches the end of a closed stream. Returns the sequence space used."""
        offset = seq_diff(seq, self.buf_seq)
        data = bytes(self.send_buf[offset:offset + limit]) if limit > 0 else b""
        fin = self.fin_queued and offset + len(data) == len(self.send_buf)
        if not data and not fin:
            return 0
        flags = ACK | (PSH if data else 0) | (FIN if fin else 0)
        self._send(seq, flags, data)
        return len(data) + (1 if fin else 0)

    def _output(self, now: float) -> None:
        """Sends what the windows allow, or at least the ACK that is owed."""
        if self.state in (S.SYN_SENT, S.SYN_RECEIVED):
            if self.snd_nxt == self.iss:
                self._send_syn()
                self.snd_nxt = seq_add(self.iss, 1)
                self.snd_max = self.snd_nxt
                if self.rto_at is None:
                    self.rto_at = now + self.rto
                if self.rtt_seq is None and not self.syn_resent:
                    self.rtt_seq, self.rtt_sent = self.snd_nxt, now
            return
        sent = False
        if self.state in SENDS_DATA:
            while True:
                in_flight = seq_diff(self.snd_nxt, self.snd_una)
                offset = seq_diff(self.snd_nxt, self.buf_seq)
                remaining = len(self.send_buf) - offset
                if remaining > 0:
                    room = min(self.snd_wnd, self.cwnd) - in_flight
                    if room <= 0:
                        break
                    used = self._emit_from(self.snd_nxt, min(self.snd_mss, remaining, room))
                elif remaining == 0 and self.fin_queued:
                    used = self._emit_from(self.snd_nxt, 0)
                else:
                    break
                if used == 0:
                    break
                new_data = seq_diff(seq_add(self.snd_nxt, used), self.snd_max) > 0
                self.snd_nxt = seq_add(self.snd_nxt, used)
                if new_data:
                    if self.rtt_seq is None:
                        self.rtt_seq, self.rtt_sent = self.snd_nxt, now
                    self.snd_max = self.snd_nxt
                sent = True
                if self.rto_at is None:
                    self.rto_at = now + self.rto
            # the window is shut and nothing is in flight: the timer doubles as the persist timer
            if self.rto_at is None and self._unsent() > 0:
                self.rto_at = now + self.rto
        if self.ack_needed and not sent and self.state is not S.CLOSED:
            self._send(self.snd_max, ACK)

    def _resend_syn(self) -> None:
        """The next _output sends our SYN (or SYN-ACK) again; from now on the
        handshake is not timed. Without this, a SYN-ACK resent for the peer's
        retransmitted SYN (about 1 s later on Linux) was timed from the first,
        lost copy: a 1 s sample on a sub-millisecond path, an RTO of about 3 s,
        and under loss a few backed-off retransmissions then stalled the
        connection for tens of seconds."""
        self.rtt_seq = None
        self.syn_resent = True
        self.snd_nxt = self.iss

    def _unsent(self) -> int:
        return len(self.send_buf) - seq_diff(self.snd_nxt, self.buf_seq) + (
            1 if self.fin_queued and seq_diff(self.snd_nxt, self.fin_seq) <= 0 else 0)

    # -- timers ----------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        cfg = self.layer.config
        if self.time_wait_at is not None and now >= self.time_wait_at:
            self.layer.counters["tcp.time_wait.expired"] += 1
            self._finish(E.TIMEOUT, None)
            return
        if self.rto_at is not None and now >= self.rto_at:
            self._on_rto(now)
            return
        if self.state in SYNCHRONIZED and self.state is not S.TIME_WAIT \
                and now - self.last_activity > cfg.idle_timeout:
            self.layer.counters["tcp.idle.reset"] += 1
            self._send(self.snd_max, RST | ACK)
            self._finish(E.TIMEOUT, "timeout")

    def _on_rto(self, now: float) -> None:
        cfg = self.layer.config
        counters = self.layer.counters
        self.retries += 1
        if self.state in (S.SYN_SENT, S.SYN_RECEIVED):
            limit = cfg.max_syn_retries if self.state is S.SYN_SENT else cfg.max_synack_retries
            if self.retries > limit:
                counters["tcp.half_open.reaped" if self.state is S.SYN_RECEIVED else "tcp.connect.timeout"] += 1
                self._finish(E.TIMEOUT, "timeout")
                return
            counters["tcp.retransmit.syn"] += 1
            self.rto = min(self.rto * 2, cfg.max_rto)
            self._resend_syn()
            self.rto_at = None
            self._output(now)
            return
        if self.retries > cfg.max_retries:
            counters["tcp.retransmit.gave_up"] += 1
            self._send(self.snd_max, RST | ACK)
            self._finish(E.TIMEOUT, "timeout")
            return
        self.rto = min(self.rto * 2, cfg.max_rto)
        self.rtt_seq = None
        in_flight = seq_diff(self.snd_max, self.snd_una)
        if self.snd_wnd == 0 and self.state in SENDS_DATA and (in_flight > 0 or self._unsent() > 0):
            # the peer's window is shut: probe it with one byte (the same byte each time)
            counters["tcp.window_probe"] += 1
            end = seq_add(self.snd_una, self._emit_from(self.snd_una, 1))
            if seq_diff(end, self.snd_nxt) > 0:
                self.snd_nxt = end
            if seq_diff(end, self.snd_max) > 0:
                self.snd_max = end
            self.rto_at = now + self.rto
            return
        if in_flight == 0:
            self.rto_at = None
            return
        counters["tcp.retransmit.timeout"] += 1
        self.ssthresh = max(in_flight // 2, 2 * self.snd_mss)
        self.cwnd = self.snd_mss
        self.dup_acks = 0
        self.in_recovery = False
        self.snd_nxt = self.snd_una  # go back and resend from the first unacknowledged byte
        self.rto_at = None
        self._output(now)
        if self.rto_at is None:
            self.rto_at = now + self.rto

    def _rtt_sample(self, rtt: float) -> None:
        cfg = self.layer.config
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(max(self.srtt + max(cfg.clock_granularity, 4 * self.rttvar), cfg.min_rto), cfg.max_rto)

    # -- input -------------------------------------------------------------------------------
    def _negotiate(self, seg: TcpSegment) -> None:
        cfg = self.layer.config
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        # the window in our SYN is never scaled (RFC 7323 2.2)
        self.rcv_adv = seq_add(self.rcv_nxt, min(cfg.rcv_window, 0xFFFF))
        self.snd_mss = max(64, min(seg.mss if seg.mss is not None else 536, cfg.mss))
        if seg.wscale is not None and not self._cookie:
            self._ws_agreed = True
            self.snd_wscale = seg.wscale
            self.rcv_wscale = _window_shift(cfg.rcv_window)
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.cwnd = cfg.initial_cwnd_segments * self.snd_mss

    def _input(self, now: float, seg: TcpSegment) -> None:
        self.last_activity = now
        if self.state is S.SYN_SENT:
            self._input_syn_sent(now, seg)
        else:
            self._input_synchronized(now, seg)
        if self.state is not S.CLOSED:
            self._output(now)

    def _input_syn_sent(self, now: float, seg: TcpSegment) -> None:
        counters = self.layer.counters
        if seg.flags & ACK and not (seq_diff(seg.ack, self.iss) > 0 and seq_diff(seg.ack, self.snd_nxt) <= 0):
            if not seg.flags & RST:
                self.layer._send_rst_for(self.remote[0], seg)
            counters["tcp.syn_sent.bad_ack"] += 1
            return
        if seg.flags & RST:
            if seg.flags & ACK:
                counters["tcp.connect.refused"] += 1
                self._finish(E.RESET, "refused")
            return
        if not seg.flags & SYN:
            counters["tcp.syn_sent.no_syn.drop"] += 1
            return
        self._negotiate(seg)
        if seg.flags & ACK:
            self.snd_una = seg.ack
            self._take_rtt(now, seg.ack)
            self.retries = 0
            self.rto_at = None
            self._update_window(seg, unscaled=True, force=True)
            self._apply(E.RECV_SYN_ACK)
            self.ack_needed = True
            counters["tcp.connect.established"] += 1
            if self.on_established is not None:
                self.on_established()
        else:
            self._apply(E.RECV_SYN)      # simultaneous open: answer with SYN-ACK
            self.snd_wnd = self.max_snd_wnd = seg.window
            self._resend_syn()           # our SYN's sequence number goes out again
            self.rto_at = None

    def _acceptable(self, seg: TcpSegment) -> bool:
        """RFC 9293 3.10.7.4's four cases: does the segment overlap our window?"""
        wnd = max(0, seq_diff(self.rcv_adv, self.rcv_nxt))
        start = seq_diff(seg.seq, self.rcv_nxt)
        length = seg.seq_len
        if length == 0:
            return start == 0 if wnd == 0 else 0 <= start < wnd
        if wnd == 0:
            return False
        end = start + length - 1
        return 0 <= start < wnd or 0 <= end < wnd

    def _challenge_ack(self, reason: str) -> None:
        counters = self.layer.counters
        counters[reason] += 1
        if self.layer._challenge_allowed():
            counters["tcp.challenge_ack"] += 1
            self._send(self.snd_max, ACK)
        else:
            counters["tcp.challenge_ack.limited"] += 1

    def _input_synchronized(self, now: float, seg: TcpSegment) -> None:
        counters = self.layer.counters
        flags = seg.flags
        # a duplicate of the SYN that opened a half-open connection: our SYN-ACK was lost
        if self.state is S.SYN_RECEIVED and flags & SYN and not flags & ACK and seg.seq == self.irs:
            counters["tcp.dup_syn.synack"] += 1
            self._resend_syn()
            return
        if not self._acceptable(seg):
            if not flags & RST:
                counters["tcp.out_of_window.ack"] += 1
                if self.state is S.TIME_WAIT and flags & FIN:
                    self.time_wait_at = now + self.layer.config.time_wait
                self.ack_needed = True
            else:
                counters["tcp.out_of_window_rst.drop"] += 1
            return
        if flags & RST:
            if self.state is S.TIME_WAIT:
                counters["tcp.time_wait.rst_ignored"] += 1   # RFC 1337: no TIME_WAIT assassination
            elif seg.seq == self.rcv_nxt:
                counters["tcp.reset"] += 1
                self._finish(E.RESET, "reset")
            else:
                self._challenge_ack("tcp.rst_in_window.challenge")
            return
        if flags & SYN:
            self._challenge_ack("tcp.syn_in_window.challenge")
            return
        if not flags & ACK:
            counters["tcp.no_ack.drop"] += 1
            return
        if self.state is S.SYN_RECEIVED:
            if not (seq_diff(seg.ack, self.snd_una) > 0 and seq_diff(seg.ack, self.snd_nxt) <= 0):
                counters["tcp.syn_received.bad_ack.rst"] += 1
                self.layer._send_rst_for(self.remote[0], seg)
                return
            self._update_window(seg, unscaled=False, force=True)
            self._apply(E.RECV_ACK_OF_SYN)
            self._established_passive()
            if self.state is S.CLOSED:
                return
        if not self._process_ack(now, seg):
            return
        if self.state is S.CLOSED:
            return
        if seg.payload or flags & FIN:
            self._process_data(now, seg)

    def _established_passive(self) -> None:
        on_accept, self._on_accept = self._on_accept, None
        self.layer.counters["tcp.accept"] += 1
        if on_accept is not None:
            on_accept(self)

    def _take_rtt(self, now: float, ack: int) -> None:
        if self.rtt_seq is not None and seq_diff(ack, self.rtt_seq) >= 0:
            self._rtt_sample(now - self.rtt_sent)
            self.rtt_seq = None

    def _update_window(self, seg: TcpSegment, *, unscaled: bool, force: bool = False) -> None:
        if force or seq_diff(self.snd_wl1, seg.seq) < 0 or (
                self.snd_wl1 == seg.seq and seq_diff(self.snd_wl2, seg.ack) <= 0):
            self.snd_wnd = seg.window if unscaled else seg.window << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack

    def _process_ack(self, now: float, seg: TcpSegment) -> bool:
        """RFC 9293 3.10.7.4 fifth step with RFC 5961 5.2; False drops the segment."""
        counters = self.layer.counters
        ack = seg.ack
        if seq_diff(ack, self.snd_max) > 0:
            self._challenge_ack("tcp.ack_unsent.challenge")
            return False
        if seq_diff(ack, seq_add(self.snd_una, -max(self.max_snd_wnd, 1))) < 0:
            self._challenge_ack("tcp.ack_too_old.challenge")
            return False
        advanced = seq_diff(ack, self.snd_una)
        old_window = self.snd_wnd
        if advanced > 0:
            self._on_new_ack(now, ack, advanced)
        elif advanced == 0 and not seg.payload and not seg.flags & (SYN | FIN) \
                and seq_diff(self.snd_max, self.snd_una) > 0 and (seg.window << self.snd_wscale) == old_window:
            self._on_dup_ack(now)
        self._update_window(seg, unscaled=False)
        if self.fin_queued and seq_diff(ack, self.fin_seq) > 0 and self.state in (
                S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
            self._apply(E.RECV_ACK_OF_FIN)
            if self.state is S.CLOSED:
                counters["tcp.closed"] += 1
        return True

    def _on_new_ack(self, now: float, ack: int, advanced: int) -> None:
        mss = self.snd_mss
        self.snd_una = ack
        if seq_diff(self.snd_nxt, ack) < 0:
            self.snd_nxt = ack
        freed = min(max(0, seq_diff(ack, self.buf_seq)), len(self.send_buf))
        if freed:
            del self.send_buf[:freed]
            self.buf_seq = seq_add(self.buf_seq, freed)
        self._take_rtt(now, ack)
        self.retries = 0
        if self.srtt is not None:
            self._rtt_sample_backoff_reset()
        self.rto_at = None if seq_diff(self.snd_max, ack) <= 0 else now + self.rto
        if self.in_recovery:
            if seq_diff(ack, self.recover) >= 0:
                self.in_recovery = False
                self.cwnd = self.ssthresh
            else:
                # NewReno partial ACK: the next hole is lost too; resend it at once
                self.layer.counters["tcp.retransmit.partial_ack"] += 1
                self._emit_from(self.snd_una, self.snd_mss)
                self.rtt_seq = None   # Karn: the ACK for timed data may now wait on this resend
                self.cwnd = max(self.cwnd - advanced + mss, mss)
        elif self.cwnd < self.ssthresh:
            self.cwnd += min(advanced, mss)
        else:
            self.cwnd += max(1, mss * mss // self.cwnd)
        self.dup_acks = 0
        if freed and self.on_send_space is not None:
            self.on_send_space()

    def _rtt_sample_backoff_reset(self) -> None:
        """After a new ACK, RFC 6298 5.7's backed-off RTO gives way to the estimate again."""
        cfg = self.layer.config
        self.rto = min(max(self.srtt + max(cfg.clock_granularity, 4 * self.rttvar), cfg.min_rto), cfg.max_rto)

    def _on_dup_ack(self, now: float) -> None:
        self.dup_acks += 1
        self.layer.counters["tcp.dup_ack"] += 1
        if self.dup_acks == 3 and not self.in_recovery:
            in_flight = seq_diff(self.snd_max, self.snd_una)
            self.ssthresh = max(in_flight // 2, 2 * self.snd_mss)
            self.layer.counters["tcp.retransmit.fast"] += 1
            self._emit_from(self.snd_una, self.snd_mss)
            self.rtt_seq = None
            self.cwnd = self.ssthresh + 3 * self.snd_mss
            self.in_recovery = True
            self.recover = self.snd_max
            self.rto_at = now + self.rto
        elif self.dup_acks > 3 and self.in_recovery:
            self.cwnd += self.snd_mss   # every dup ACK is a segment that left the network

    def _process_data(self, now: float, seg: TcpSegment) -> None:
        counters = self.layer.counters
        self.ack_needed = True
        if self.state not in RECEIVES_DATA:
            if seg.payload:
                counters["tcp.data_after_fin.drop"] += 1
            return
        payload, fin = seg.payload, bool(seg.flags & FIN)
        seq = seg.seq
        skip = seq_diff(self.rcv_nxt, seq)
        if skip > 0:               # starts before rcv_nxt: keep only the new part
            payload = payload[skip:]
            seq = self.rcv_nxt
        room = seq_diff(self.rcv_adv, seq)
        if len(payload) > room:    # runs past the window's right edge
            payload = payload[:max(0, room)]
            fin = False
            counters["tcp.beyond_window.trim"] += 1
        if seq != self.rcv_nxt:
            self._keep_out_of_order(seq, payload, fin)
            return
        self._deliver(payload, fin)
        while self.ooo and self.state in RECEIVES_DATA:
            ready = [s for s in self.ooo if seq_diff(s, self.rcv_nxt) <= 0]
            if not ready:
                break
            for s in ready:
                data, ofin = self.ooo.pop(s)
                self.ooo_bytes -= len(data)
                cut = seq_diff(self.rcv_nxt, s)
                if cut <= len(data) and (cut < len(data) or ofin):
                    counters["tcp.ooo.reassembled"] += 1
                    self._deliver(data[cut:], ofin)
                    break

    def _keep_out_of_order(self, seq: int, payload: bytes, fin: bool) -> None:
        counters = self.layer.counters
        cfg = self.layer.config
        if not payload and not fin:
            return
        old = self.ooo.get(seq)
        if old is not None and len(old[0]) >= len(payload):
            counters["tcp.ooo.duplicate"] += 1
            return
        old_len = len(old[0]) if old is not None else 0
        if (old is None and len(self.ooo) >= cfg.max_ooo_segments) or \
                self.ooo_bytes - old_len + len(payload) > max(cfg.rcv_window, cfg.mss):
            counters["tcp.ooo.full.drop"] += 1
            return
        self.ooo[seq] = (payload, fin)
        self.ooo_bytes += len(payload) - old_len
        counters["tcp.ooo.kept"] += 1

    def _deliver(self, payload: bytes, fin: bool) -> None:
        if payload:
            self.rcv_nxt = seq_add(self.rcv_nxt, len(payload))
            self.layer.counters["tcp.rx_bytes"] += len(payload)
            if self.on_data is not None:
                self.on_data(payload)
        if fin and self.state in RECEIVES_DATA:
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            self.ooo.clear()
            self.ooo_bytes = 0
            self._apply(E.RECV_FIN)
            self.peer_finished = True
            if self.on_close is not None:
                self.on_close(None)


# -- the layer --------------------------------------------------------------------------


class TcpLayer:
    """Every connection of one IPv4 address, and its listeners."""

    def __init__(self, local_ip: int, transmit: Callable[[int, bytes], None], counters, clock,
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
        self.listeners: dict[int, Callable[[Connection], None]] = {}
        self.now_hint = 0.0  # the time of the input or tick being handled
        self._cookie_secret = self.rng.getrandbits(128).to_bytes(16, "big")
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
        conn.rcv_wscale = _window_shift(self.config.rcv_window)
        conn.last_activity = now
        self.connections[(dst_ip, dst_port, local_port)] = conn
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
        for conn in list(self.connections.values()):
            try:
                conn._tick(now)
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
            if not flags & SYN and self.config.syn_cookies \
                    and self._from_cookie(now, src_ip, seg, on_accept):
                return
            self.counters["tcp.listen.ack.rst"] += 1
            self._send_rst_for(src_ip, seg)
            return
        if not flags & SYN:
            self.counters["tcp.listen.no_syn.drop"] += 1
            return
        if len(self.connections) >= self.max_connections and not self._recycle_time_wait():
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
        self.connections[(src_ip, seg.src_port, seg.dst_port)] = conn
        self.counters["tcp.syn.accepted"] += 1
        conn._output(now)

    # -- SYN cookies: a SYN answered without keeping any state --------------------------
    _COOKIE_MSS = (536, 1220, 1440, 1460)

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
        reply = TcpSegment(seg.dst_port, seg.src_port, cookie, seq_add(seg.seq, 1), SYN | ACK,
                           min(self.config.rcv_window, 0xFFFF), mss=self._COOKIE_MSS[index])
        self._transmit(src_ip, reply)

    def _from_cookie(self, now: float, src_ip: int, seg: TcpSegment,
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
        if len(self.connections) >= self.max_connections and not self._recycle_time_wait():
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
        self.connections[(src_ip, seg.src_port, seg.dst_port)] = conn
        conn._on_accept = on_accept
        conn._established_passive()
        if conn.state is not S.CLOSED:
            conn._input(now, seg)   # the ACK may carry data already
        return True

    # -- helpers ------------------------------------------------------------------------
    def _recycle_time_wait(self) -> bool:
        """Frees one table entry by ending the TIME_WAIT that would end first."""
        waiting = [c for c in self.connections.values() if c.state is S.TIME_WAIT]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.time_wait_at or 0.0)
        self.counters["tcp.time_wait.recycled"] += 1
        victim._finish(E.TIMEOUT, None)
        return True

    def _challenge_allowed(self) -> bool:
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

    def _remove(self, conn: Connection) -> None:
        key = (conn.remote[0], conn.remote[1], conn.local[1])
        if self.connections.get(key) is conn:
            del self.connections[key]
            if conn.on_finished is not None:
                conn.on_finished()
