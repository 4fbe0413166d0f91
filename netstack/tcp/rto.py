"""The retransmission timeout (RFC 6298): the estimate and its backoff.

The connection owns one ``RtoEstimator``; it feeds it round-trip samples
(never from an ACK that could answer a retransmission: Karn), doubles it on
each timeout and, on a new ACK, lets the backed-off value give way to the
estimate again. The formula lives in ``_from_estimate`` only.
"""
from __future__ import annotations

from .config import TcpConfig


class RtoEstimator:
    __slots__ = ("config", "srtt", "rttvar", "rto")

    def __init__(self, config: TcpConfig) -> None:
        self.config = config
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = config.initial_rto     # RFC 6298 2.1, until the first sample

    def sample(self, rtt: float) -> None:
        """RFC 6298 2.2 and 2.3: one round-trip measurement."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = self._from_estimate(self.srtt)

    def back_off(self) -> None:
        """RFC 6298 5.5: the timer expired, so the next wait is twice as long."""
        self.rto = min(self.rto * 2, self.config.max_rto)

    def end_backoff(self) -> None:
        """RFC 6298 5.7: new data was acknowledged, so a backed-off RTO gives way
        to the estimate again (none before the first sample: the RTO stays)."""
        if self.srtt is not None:
            self.rto = self._from_estimate(self.srtt)

    def _from_estimate(self, srtt: float) -> float:
        cfg = self.config
        return min(max(srtt + max(cfg.clock_granularity, 4 * self.rttvar), cfg.min_rto), cfg.max_rto)
