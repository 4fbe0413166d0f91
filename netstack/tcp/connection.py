"""One TCP connection (RFC 9293): windows, output, input, and its timers.

The connection does no I/O and reads no clock on the input path: its layer
hands it segments and the time, and it sends through the layer. Its timers
are data, each an absolute time or None: ``rto_at`` (retransmission, which
doubles as the persist timer while the peer's window is shut),
``time_wait_at``, ``fin_wait_2_at``, and the idle deadline from
``last_activity`` (the last acceptable segment, or data we queued); the
layer's ``tick(now)`` runs them.

What is here, and where it comes from:

* every transition goes through ``state.TRANSITIONS``;
* MSS and window scale options (RFC 7323) on SYNs;
* sliding windows both ways; our receive window closes while the application
  pauses reading (flow control for ``tcp.stream``);
* retransmission timeout per RFC 6298 (``rto.RtoEstimator``: SRTT/RTTVAR,
  Karn, exponential backoff), slow start and congestion avoidance, fast
  retransmit on the third duplicate ACK with NewReno-style recovery (RFC
  5681/6582), zero-window probes;
* path MTU discovery (RFC 1191): "fragmentation needed" for a segment in
  flight (RFC 5927) lowers the segment size and resends;
* out-of-order segments kept in a bounded ``reassembly.Reassembly``;
* FIN, RST, TIME_WAIT;
* RFC 5961: an in-window RST or any SYN on a synchronized connection only
  earns a (rate-limited) challenge ACK; ACKs for data never sent are refused.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .reassembly import Reassembly
from .rto import RtoEstimator
from .segment import ACK, FIN, PSH, RST, SYN, TcpSegment
from .sequence import seq_add, seq_diff
from .state import ACCEPTS_SEND, RECEIVES_DATA, SENDS_DATA, SYNCHRONIZED, TRANSITIONS, Event, State

if TYPE_CHECKING:
    from .layer import TcpLayer

log = logging.getLogger(__name__)

S, E = State, Event
# Linux's ip_rt_min_pmtu (512 + 20 + 20): a "fragmentation needed" asking for
# less is taken as this much, so a forged one cannot shrink segments to nothing.
MIN_PATH_MTU = 552


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
        self._active_open = state is S.CLOSED   # connect() made it; a listener makes it in LISTEN
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
        self.ooo = Reassembly(layer.counters, max_segments=cfg.max_ooo_segments,
                              max_bytes=max(cfg.rcv_window, cfg.mss))
        self.ack_needed = False
        # congestion control and timing
        self.cwnd = 0
        self.ssthresh = 0xFFFFFFFF
        self.dup_acks = 0
        self.in_recovery = False
        self.recover = iss
        self.rto_estimate = RtoEstimator(cfg)
        self.rtt_seq: int | None = None   # timing: the segment ending here was sent at rtt_sent
        self.rtt_sent = 0.0
        # Karn (RFC 6298 3): once our SYN or SYN-ACK has gone out twice, the ACK
        # that answers it may answer either copy, so the handshake gives no sample
        self.syn_resent = False
        self.retries = 0
        # timers, as data: each is an absolute time or None
        self.rto_at: float | None = None
        self.time_wait_at: float | None = None
        self.fin_wait_2_at: float | None = None
        self.last_activity = 0.0

    def __repr__(self) -> str:
        return (f"<Connection {self.local[1]}<->{self.remote[1]} {self.state.value} "
                f"una={self.snd_una} nxt={self.snd_nxt} rcv={self.rcv_nxt}>")

    @property
    def rto(self) -> float:
        return self.rto_estimate.rto

    @property
    def srtt(self) -> float | None:
        return self.rto_estimate.srtt

    # -- the application's side -----------------------------------------------------
    @property
    def send_space(self) -> int:
        return max(0, self.layer.config.send_buffer - len(self.send_buf))

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
        if new is S.FIN_WAIT_2:
            self.fin_wait_2_at = self.layer.now_hint + self.layer.config.fin_wait_2_timeout
        elif new is S.TIME_WAIT:
            self.rto_at = self.fin_wait_2_at = None
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
        self.rto_at = self.time_wait_at = self.fin_wait_2_at = None
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

    def _schedule_syn_resend(self) -> None:
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
    def _tick(self, now: float, idle_limit: float) -> None:
        if self.time_wait_at is not None and now >= self.time_wait_at:
            self.layer.counters["tcp.time_wait.expired"] += 1
            self._finish(E.TIMEOUT, None)
            return
        if self.fin_wait_2_at is not None and now >= self.fin_wait_2_at:
            # Linux's tcp_fin_timeout: the peer ACKed our FIN and never sent its
            # own; it ends with a RST, as Linux's tcp_send_active_reset
            self.layer.counters["tcp.fin_wait_2.timeout"] += 1
            self._send(self.snd_max, RST | ACK)
            self._finish(E.TIMEOUT, "timeout")
            return
        if self.rto_at is not None and now >= self.rto_at:
            self._on_rto(now)
            return
        if self.state in SYNCHRONIZED and self.state is not S.TIME_WAIT \
                and now - self.last_activity > idle_limit:
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
            self.rto_estimate.back_off()
            self._schedule_syn_resend()
            self.rto_at = None
            self._output(now)
            return
        if self.retries > cfg.max_retries:
            counters["tcp.retransmit.gave_up"] += 1
            self._send(self.snd_max, RST | ACK)
            self._finish(E.TIMEOUT, "timeout")
            return
        self.rto_estimate.back_off()
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

    def _lower_path_mtu(self, now: float, seq: int, mtu: int) -> None:
        """RFC 1191 for TCP: segments shrink to what the path carries, and what
        is in flight goes again at the new size, with no congestion response
        (Linux's tcp_simple_retransmit). RFC 5927 5.1: the quoted sequence
        number must be one in flight, or anyone could shrink our segments."""
        counters = self.layer.counters
        if self.state not in SENDS_DATA or not (
                seq_diff(seq, self.snd_una) >= 0 and seq_diff(seq, self.snd_max) < 0):
            counters["tcp.pmtu.not_in_flight.drop"] += 1
            return
        mss = max(mtu, MIN_PATH_MTU) - 40
        if mss >= self.snd_mss:
            counters["tcp.pmtu.not_lower.drop"] += 1
            return
        counters["tcp.pmtu.lowered"] += 1
        self.snd_mss = mss
        self.rtt_seq = None          # Karn: what is in flight is about to be sent again
        self.snd_nxt = self.snd_una
        self._output(now)

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
            self.rcv_wscale = cfg.rcv_window_shift
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.cwnd = cfg.initial_cwnd_segments * self.snd_mss

    def _input(self, now: float, seg: TcpSegment) -> None:
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
            self.last_activity = now
            self._update_window(seg, unscaled=True, force=True)
            self._apply(E.RECV_SYN_ACK)
            self.ack_needed = True
            self._established_active()
        else:
            self._apply(E.RECV_SYN)      # simultaneous open: answer with SYN-ACK
            self.snd_wnd = self.max_snd_wnd = seg.window
            self._schedule_syn_resend()  # our SYN's sequence number goes out again
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
        if self.layer._take_challenge_token():
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
            self._schedule_syn_resend()
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
            if self._active_open:
                self._established_active()   # a simultaneous open (RFC 9293 3.5) completed
            else:
                self._established_passive()
            if self.state is S.CLOSED:
                return
        if not self._process_ack(now, seg):
            return
        # only a segment that passed every check restarts the idle timer: an
        # unacceptable one (anyone can send those) must not keep a connection alive
        self.last_activity = now
        if self.state is S.CLOSED:
            return
        if seg.payload or flags & FIN:
            self._process_data(now, seg)

    def _established_active(self) -> None:
        self.layer.counters["tcp.connect.established"] += 1
        if self.on_established is not None:
            self.on_established()

    def _established_passive(self) -> None:
        on_accept, self._on_accept = self._on_accept, None
        self.layer.counters["tcp.accept"] += 1
        if on_accept is not None:
            on_accept(self)

    def _take_rtt(self, now: float, ack: int) -> None:
        if self.rtt_seq is not None and seq_diff(ack, self.rtt_seq) >= 0:
            self.rto_estimate.sample(now - self.rtt_sent)
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
        self.rto_estimate.end_backoff()
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
            self.ooo.keep(seq, payload, fin)
            return
        self._deliver(payload, fin)
        while self.state in RECEIVES_DATA and (piece := self.ooo.take_next(self.rcv_nxt)) is not None:
            self._deliver(*piece)

    def _deliver(self, payload: bytes, fin: bool) -> None:
        if payload:
            self.rcv_nxt = seq_add(self.rcv_nxt, len(payload))
            self.layer.counters["tcp.rx_bytes"] += len(payload)
            if self.on_data is not None:
                self.on_data(payload)
        if fin and self.state in RECEIVES_DATA:
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            self.ooo.clear()
            self._apply(E.RECV_FIN)
            if self.on_close is not None:
                self.on_close(None)


