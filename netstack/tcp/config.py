"""The TCP layer's tuning: sizes, timers and bounds, one frozen value per layer."""
from __future__ import annotations

from dataclasses import dataclass

from .segment import MAX_WSCALE


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
    fin_wait_2_timeout: float = 60.0  # Linux's tcp_fin_timeout: our FIN was ACKed, the peer's never came
    idle_timeout: float = 300.0     # a connection with no acceptable segment for this long is reset
    # RFC 7766 6.2.3: with the table at busy_fraction of its bound, idle connections
    # get busy_idle_timeout instead; when it is full, one idle for evictable_idle or
    # more makes room for a client that completed a handshake
    busy_fraction: float = 0.75
    busy_idle_timeout: float = 10.0
    evictable_idle: float = 2.0
    max_per_client: int = 16        # connections from one address (Unbound's tcp-connection-limit)
    max_half_open: int = 64         # SYN_RECEIVED entries; beyond, SYN cookies (or refusal)
    syn_cookies: bool = True
    challenge_acks_per_second: int = 100  # RFC 5961 section 7

    @property
    def rcv_window_shift(self) -> int:
        """The window scale we offer: the smallest shift that fits rcv_window in 16 bits."""
        shift = 0
        while (self.rcv_window >> shift) > 0xFFFF and shift < MAX_WSCALE:
            shift += 1
        return shift
