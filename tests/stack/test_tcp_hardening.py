"""TCP against an attacker on the link: SYN cookies only while in use,
FIN_WAIT_2 and idle timers that unacceptable segments cannot restart, the
table's per-client cap and eviction, simultaneous open, path MTU."""
from __future__ import annotations

from netstack.tcp.config import TcpConfig
from netstack.tcp.segment import ACK, SYN, TcpSegment
from netstack.tcp.sequence import seq_add
from tests.stack.test_tcp_memory import A_IP, B_IP, Net, ScriptedPeer


def _valid_cookie_ack(layer, src_port: int, isn: int, now: float) -> TcpSegment:
    """The ACK that a guess of the cookie would be, made with the layer's own
    secret: what an attacker reaches by trying the 24-bit hash space."""
    slot = int(now // 64) & 0x1F
    cookie = (slot << 27) | (3 << 24) | (layer._cookie_hash(A_IP, src_port, 80, isn, slot) & 0xFFFFFF)
    return TcpSegment(src_port, 80, seq_add(isn, 1), seq_add(cookie, 1), ACK, 65535)


def test_a_cookie_is_refused_when_no_cookies_were_issued():
    """Linux's tcp_synq_no_recent_overflow: an ACK is read as a cookie only
    while cookies are in use; otherwise a guessed cookie would open a
    connection with no SYN at all."""
    net = Net()
    b = net.layer(B_IP)
    peer = ScriptedPeer(net, A_IP)
    b.listen(80, lambda c: None)
    peer.send(B_IP, _valid_cookie_ack(b, 4000, 777, net.clock.t))
    net.run(seconds=0.1)
    assert b.connections == {} and b.counters["tcp.syn_cookie.accepted"] == 0
    assert b.counters["tcp.listen.ack.rst"] == 1


def test_cookies_are_accepted_only_within_their_validity_after_the_last_one_sent():
    net = Net()
    b = net.layer(B_IP, config=TcpConfig(max_half_open=1))
    peer = ScriptedPeer(net, A_IP)
    b.listen(80, lambda c: None)
    for port in (1000, 1001):      # the second SYN overflows: a cookie
        peer.send(B_IP, TcpSegment(port, 80, 5, 0, SYN, 65535))
    net.run(seconds=0.1)
    assert b.counters["tcp.syn_cookie.sent"] == 1
    net.run(seconds=100)
    peer.send(B_IP, _valid_cookie_ack(b, 2000, 9, net.clock.t))
    net.run(seconds=0.1)
    assert b.counters["tcp.syn_cookie.accepted"] == 1
    net.run(seconds=100)           # no cookie sent for 200 s
    peer.send(B_IP, _valid_cookie_ack(b, 2001, 9, net.clock.t))
    net.run(seconds=0.1)
    assert b.counters["tcp.syn_cookie.accepted"] == 1 and b.counters["tcp.listen.ack.rst"] == 1


def test_simultaneous_open_reports_the_connection_established_to_its_opener():
    """RFC 9293 3.5 figure 7: SYN crosses SYN, each side answers SYN-ACK, and
    the ACK of our SYN makes the connection ESTABLISHED for the side that
    called connect(), which must hear of it (on_established) like any opener."""
    net = Net()
    a = net.layer(A_IP)
    peer = ScriptedPeer(net, B_IP)
    conn = a.connect(B_IP, 80)
    events = []
    conn.on_established = lambda: events.append("established")
    net.run(seconds=0.02)
    [syn] = peer.take()
    peer.send(A_IP, TcpSegment(80, syn.src_port, 9000, 0, SYN, 65535, mss=1460))   # crossing SYN
    net.run(seconds=0.1)
    [synack] = peer.take()
    assert synack.flags == SYN | ACK and synack.seq == syn.seq and synack.ack == 9001
    peer.send(A_IP, TcpSegment(80, syn.src_port, 9001, seq_add(syn.seq, 1), ACK, 65535))
    net.run(seconds=0.1)
    assert conn.state.value == "ESTABLISHED" and events == ["established"]
    assert a.counters["tcp.connect.established"] == 1 and a.counters["tcp.accept"] == 0
