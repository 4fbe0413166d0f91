"""The RTO estimate against RFC 6298's arithmetic, worked by hand."""
import pytest

from netstack.tcp.config import TcpConfig
from netstack.tcp.rto import RtoEstimator


def test_first_and_second_samples_follow_rfc6298_2_2_and_2_3():
    rto = RtoEstimator(TcpConfig())
    assert rto.rto == 1.0 and rto.srtt is None            # 2.1: 1 s before any sample
    rto.sample(0.1)                                        # SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR
    assert (rto.srtt, rto.rttvar, rto.rto) == pytest.approx((0.1, 0.05, 0.3))
    rto.sample(0.2)                                        # RTTVAR = 3/4 0.05 + 1/4 0.1; SRTT = 7/8 0.1 + 1/8 0.2
    assert (rto.srtt, rto.rttvar, rto.rto) == pytest.approx((0.1125, 0.0625, 0.3625))


def test_the_rto_is_clamped_to_min_and_max():
    rto = RtoEstimator(TcpConfig(min_rto=0.2, max_rto=60.0))
    rto.sample(0.001)                                      # 0.001 + max(G = 0.05, 0.002) is below the floor
    assert rto.rto == pytest.approx(0.2)
    for _ in range(12):
        rto.back_off()
    assert rto.rto == 60.0


def test_a_new_ack_ends_the_backoff_only_once_there_is_an_estimate():
    rto = RtoEstimator(TcpConfig())
    rto.back_off()
    rto.end_backoff()
    assert rto.rto == 2.0                                  # no sample yet: nothing to return to
    rto.sample(0.1)
    rto.back_off()
    rto.back_off()
    assert rto.rto == pytest.approx(1.2)
    rto.end_backoff()                                      # 5.7: back to the estimate
    assert rto.rto == pytest.approx(0.3)
