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


# -- the table, filled from one host ------------------------------------------------------------


def _handshake_from(net: Net, peer: ScriptedPeer, dst: int, port: int, src_port: int, isn: int = 5000):
    """A passive open from `peer` to dst:port (a listener must be there);
    returns our SYN-ACK (None when the SYN got no answer)."""
    peer.send(dst, TcpSegment(src_port, port, isn, 0, SYN, 65535, mss=1460))
    net.run(seconds=0.05)
    synacks = [s for s in peer.take() if s.flags == SYN | ACK and s.dst_port == src_port]
    if not synacks:
        return None
    peer.send(dst, TcpSegment(src_port, port, isn + 1, seq_add(synacks[0].seq, 1), ACK, 65535))
    net.run(seconds=0.05)
    return synacks[0]


def test_fin_wait_2_times_out_after_60_seconds():
    """The server closed and the client ACKed our FIN but never sends its own:
    Linux's tcp_fin_timeout (60 s) ends FIN_WAIT_2 with a RST, long before the
    300 s idle reaper would."""
    net = Net()
    b = net.layer(B_IP)
    peer = ScriptedPeer(net, A_IP)
    accepted = []
    b.listen(53, accepted.append)
    synack = _handshake_from(net, peer, B_IP, 53, 4000)
    [conn] = accepted
    conn.close()
    net.run(seconds=0.05)
    [fin] = peer.take()
    peer.send(B_IP, TcpSegment(4000, 53, 5001, seq_add(synack.seq, 2), ACK, 65535))
    net.run(seconds=1)
    assert conn.state.value == "FIN_WAIT_2"
    net.run(seconds=58)
    assert b.connections
    net.run(seconds=2)
    assert b.connections == {} and b.counters["tcp.fin_wait_2.timeout"] == 1
    assert any(s.flags & 0x04 for s in peer.take())     # RST, as Linux's tcp_send_active_reset


def test_unacceptable_segments_do_not_restart_the_idle_timer():
    net = Net()
    b = net.layer(B_IP, config=TcpConfig(idle_timeout=30))
    peer = ScriptedPeer(net, A_IP)
    b.listen(53, lambda c: None)
    synack = _handshake_from(net, peer, B_IP, 53, 4000)
    for _ in range(4):              # far outside the window: only a duplicate ACK in answer
        net.run(seconds=9)
        peer.send(B_IP, TcpSegment(4000, 53, 5001 + 10_000_000, seq_add(synack.seq, 1), ACK, 65535, b"x"))
    net.run(seconds=0.1)
    assert b.connections == {} and b.counters["tcp.idle.reset"] == 1


def test_acceptable_segments_do_restart_the_idle_timer():
    net = Net()
    b = net.layer(B_IP, config=TcpConfig(idle_timeout=30))
    peer = ScriptedPeer(net, A_IP)
    b.listen(53, lambda c: None)
    synack = _handshake_from(net, peer, B_IP, 53, 4000)
    for _ in range(4):
        net.run(seconds=9)
        peer.send(B_IP, TcpSegment(4000, 53, 5001, seq_add(synack.seq, 1), ACK, 65535))
    net.run(seconds=0.1)
    assert len(b.connections) == 1 and b.counters["tcp.idle.reset"] == 0


def test_one_client_may_hold_only_so_many_connections():
    """Unbound's tcp-connection-limit, per address: one host cannot take the
    whole table, so others still reach DNS over TCP."""
    net = Net()
    b = net.layer(B_IP, config=TcpConfig(max_per_client=4))
    attacker, other = ScriptedPeer(net, A_IP), ScriptedPeer(net, 0xC0000203)
    b.listen(53, lambda c: None)
    answered = [_handshake_from(net, attacker, B_IP, 53, 4000 + i) is not None for i in range(6)]
    assert answered == [True] * 4 + [False] * 2
    assert b.counters["tcp.per_client_limit.drop"] == 2
    assert _handshake_from(net, other, B_IP, 53, 4000) is not None
    assert len(b.connections) == 5


def test_a_full_table_evicts_its_oldest_idle_connection_for_a_proven_client():
    """RFC 7766 6.2.3: near the limit, idle connections go first. A SYN that
    finds the table full gets a cookie (no state kept); when its ACK proves
    the client real, the connection idle longest makes room."""
    net = Net()
    b = net.layer(B_IP, max_connections=8, config=TcpConfig(max_per_client=4))
    b.listen(53, lambda c: None)
    holders = [ScriptedPeer(net, 0xC0000210 + i) for i in range(2)]
    for peer in holders:
        for i in range(4):
            _handshake_from(net, peer, B_IP, 53, 4000 + i)
            net.run(seconds=1)
    assert len(b.connections) == 8
    newcomer = ScriptedPeer(net, 0xC0000220)
    assert _handshake_from(net, newcomer, B_IP, 53, 5555) is not None
    assert b.counters["tcp.syn_cookie.sent"] == 1 and b.counters["tcp.syn_cookie.accepted"] == 1
    assert b.counters["tcp.evicted.idle"] == 1 and len(b.connections) == 8
    assert (0xC0000210, 4000, 53) not in b.connections     # the oldest
    assert (0xC0000220, 5555, 53) in b.connections


def test_a_nearly_full_table_shortens_the_idle_timeout():
    net = Net()
    b = net.layer(B_IP, max_connections=8, config=TcpConfig(max_per_client=8, busy_idle_timeout=10))
    peer = ScriptedPeer(net, A_IP)
    b.listen(53, lambda c: None)
    for i in range(5):                  # under three quarters: the usual 300 s
        _handshake_from(net, peer, B_IP, 53, 4000 + i)
    net.run(seconds=11)
    assert len(b.connections) == 5
    _handshake_from(net, peer, B_IP, 53, 4010)    # six of eight: busy
    net.run(seconds=1)
    assert len(b.connections) == 1 and b.counters["tcp.idle.reset"] == 5


# -- path MTU discovery (RFC 1191), the quoted segment checked (RFC 5927) --------------------------


def _stack_connection(payload_size: int = 3000):
    """A stack whose listener on 53 accepted one connection from the peer and
    wrote `payload_size` bytes to it; returns (stack, link, conn, our frames)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from tests.stackutil import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack, prime_arp
    stack, link, _clock = make_stack()
    prime_arp(stack)
    accepted = []
    stack.tcp.listen(53, accepted.append)
    base = Ether(dst=OUR_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP)
    stack.receive(bytes(base / TCP(sport=4000, dport=53, flags="S", seq=100, options=[("MSS", 1460)])))
    [synack] = [Ether(f) for f in link.take()]
    stack.receive(bytes(base / TCP(sport=4000, dport=53, flags="A", seq=101, ack=synack[TCP].seq + 1, window=65535)))
    [conn] = accepted
    conn.send(bytes(payload_size))
    return stack, link, conn, [Ether(f) for f in link.take()]


def _frag_needed(quoted_ip, mtu: int, source: str = "192.0.2.254") -> bytes:
    """ICMP 3/4 from a router, quoting the IPv4 header and the first 8 bytes of ours."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    from tests.stackutil import OUR_IP, OUR_MAC
    quote = bytes(quoted_ip)[:quoted_ip.ihl * 4 + 8]
    return bytes(Ether(dst=OUR_MAC, src="02:ee:00:00:00:01") / IP(src=source, dst=OUR_IP)
                 / ICMP(type=3, code=4, nexthopmtu=mtu) / quote)


def test_fragmentation_needed_lowers_the_segment_size_and_resends():
    from scapy.layers.inet import IP, TCP
    stack, link, conn, sent = _stack_connection()
    assert len(sent[0][IP]) == 1500 and all(f[IP].flags == "DF" for f in sent)
    stack.receive(_frag_needed(sent[0][IP], 1000))
    resent = [f for f in (type(sent[0])(x) for x in link.take()) if TCP in f]
    assert resent and all(len(f[IP]) <= 1000 and f[IP].flags == "DF" for f in resent)
    assert resent[0][TCP].seq == sent[0][TCP].seq            # from the first unacknowledged byte
    assert conn.snd_mss == 960 and stack.counters["tcp.pmtu.lowered"] == 1


def test_fragmentation_needed_for_no_live_segment_is_ignored():
    """RFC 5927 5.1: the quoted sequence number must be in flight, and the
    connection must exist; otherwise anyone could shrink our segments."""
    from scapy.layers.inet import IP, TCP
    stack, link, conn, sent = _stack_connection()
    old = sent[0][IP].copy()
    old[TCP].seq = (old[TCP].seq + 100_000) & 0xFFFFFFFF     # not a byte in flight
    stack.receive(_frag_needed(old, 600))
    stranger = sent[0][IP].copy()
    stranger[TCP].dport = 4001                               # no such connection
    stack.receive(_frag_needed(stranger, 600))
    assert link.take() == [] and conn.snd_mss == 1460
    assert stack.counters["tcp.pmtu.not_in_flight.drop"] == 1 and stack.counters["tcp.pmtu.no_connection.drop"] == 1


def test_an_evicted_connection_ends_its_dns_session_at_once():
    """An eviction under a live DNS session: the session sees the stream end
    (EOF, as the connection leaves the table before its reason is given) and
    goes, instead of waiting out its own idle timer."""
    import asyncio

    from netstack.tcp.stream import open_connection
    from tests.stack.test_tcp_memory import LoopNet, dns_query, dns_server, read_answer, run

    async def main():
        net = LoopNet(config=TcpConfig(evictable_idle=0.0))
        server = await dns_server(net)
        reader, writer = await open_connection(net.layers[A_IP], "192.0.2.2", 53)
        q = dns_query(3)
        writer.write(len(q).to_bytes(2, "big") + q)
        assert len(await read_answer(reader)) == 40
        layer = net.layers[B_IP]
        assert len(server.sessions) == 1 and layer._evict_idle(layer.now())
        await asyncio.sleep(0.2)
        assert server.sessions == {} and layer.counters["dns_tcp.eof"] == 1
        assert layer.counters["tcp.evicted.idle"] == 1 and layer.connections == {}
        net.close()
    run(main())
