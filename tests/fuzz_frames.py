"""The frame fuzzer: Ethernet frames into a fresh stack per example, made to
reach the state machines, with invariants checked after every frame.

    python -m tests.fuzz frames 1000000 [--seed N]
    python -m tests.fuzz_frames --seed N --example I     # replay one example

Random bytes mostly stop at the Ethernet or checksum check, so most examples
are built to get past them: frames mutated and then re-checksummed; fragment
sequences (reordered, duplicated, overlapping, holed, floods of tiny pieces);
TCP peers that complete handshakes (theirs or ours, simultaneous opens
included) and then send segments with mutated sequence and acknowledgement
numbers, windows, flags and options, while the application sends, pauses,
closes and aborts; SYN floods on small tables;
"fragmentation needed" quoting our own segments; spoofed sources.

Invariants, beyond "no exception":

* every frame leaves a counter;
* every table within its bound, in entries and in bytes (ARP cache, pending
  resolutions and their queues, refreshes, datagrams held for a source
  check, reassembly buffers and their
  pieces, TCP connections in total, per client and half-open, each
  connection's out-of-order store and send buffer);
* nothing we send goes to an impossible address (RFC 1122), or to an
  own-subnet address only ever seen behind the gateway's MAC and never
  claimed in ARP (a spoof); every
  IPv4 header and TCP segment we send has a valid checksum and fits the MTU;
* TCP (our listener's connections and our own connect()s): a segment
  outside the receive window (RFC 9293's acceptability test, computed here)
  never moves rcv_nxt, and none moves it past the window we advertised; every byte the application receives is the byte the peer sent
  at that sequence number, in order; snd_una never passes snd_max;
* reassembly: what the UDP port receives from fragments is exactly what a
  model reassembler (the policy written plainly, below) gives;
* every table drains once time runs on: no connection, buffer or pending
  resolution lives forever.

The frames are made with small builders here (a million frames through scapy
would take hours); tests/stack/test_fuzz_frames.py checks those builders
against scapy.
"""
from __future__ import annotations

import argparse
import random
import resource
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable

from netstack.stack import UNVERIFIED_QUEUE, UNVERIFIED_SOURCES, Stack
from netstack.tcp.config import TcpConfig
from netstack.tcp.connection import Connection
from netstack.tcp.layer import TcpLayer
from netstack.tcp.sequence import seq_add, seq_diff
from netstack.tcp.state import State

OUR_IP = 0xC0000202          # 192.0.2.2/24
NETMASK = 0xFFFFFF00
NETWORK = 0xC0000200
BROADCAST_IP = 0xC00002FF
GATEWAY_IP = 0xC00002FE      # 192.0.2.254
OUR_MAC = bytes.fromhex("020000c00002")
GATEWAY_MAC = bytes.fromhex("02ee00000001")
BROADCAST_MAC = b"\xff" * 6
MTU = 1500
ON_LINK_PEERS = [0xC0000201, 0xC0000203, 0xC0000264]              # .1 .3 .100, each with its own MAC
OFF_LINK_PEERS = [0xC6336407, 0xCB007101, 0x08080808]             # behind the gateway
SPOOFED = [0xC0000242, 0xC0000243]                                 # own subnet, but from the gateway's MAC
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# what a peer sends at each sequence number: any byte delivered is checked against it
PATTERN = random.Random(20261202).randbytes(1 << 16) * 2


def mac_of(ip: int) -> bytes:
    if ip & NETMASK == NETWORK and ip not in SPOOFED and ip != GATEWAY_IP:
        return b"\x02\xaa" + ip.to_bytes(4, "big")
    return GATEWAY_MAC


def pattern(seq: int, n: int) -> bytes:
    start = seq & 0xFFFF
    return PATTERN[start:start + n]


# -- builders (checked against scapy by the tests) ------------------------------------------


def checksum(data: bytes, start: int = 0) -> int:
    """RFC 1071, written out here, not taken from the stack under test."""
    if len(data) & 1:
        data += b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: int, dst: int, proto: int, length: int) -> int:
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length


def ether(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def ipv4(src: int, dst: int, proto: int, payload: bytes, *, ident: int = 0, flags_offset: int = 0,
         ttl: int = 64, options: bytes = b"") -> bytes:
    header_len = 20 + len(options)
    head = struct.pack("!BBHHHBBHII", 0x40 | header_len // 4, 0, header_len + len(payload), ident,
                       flags_offset, ttl, proto, 0, src, dst) + options
    return head[:10] + checksum(head).to_bytes(2, "big") + head[12:] + payload


def udp(src: int, dst: int, sport: int, dport: int, payload: bytes, *, with_checksum: bool = True) -> bytes:
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    if not with_checksum:
        return seg
    value = checksum(seg, _pseudo(src, dst, PROTO_UDP, length)) or 0xFFFF
    return seg[:6] + value.to_bytes(2, "big") + seg[8:]


def tcp(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
        payload: bytes = b"", options: bytes = b"") -> bytes:
    options += b"\0" * (-len(options) % 4)
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      (20 + len(options)) // 4 << 4, flags, window, 0, 0) + options + payload
    value = checksum(seg, _pseudo(src, dst, PROTO_TCP, len(seg)))
    return seg[:16] + value.to_bytes(2, "big") + seg[18:]


def icmp(icmp_type: int, code: int, rest: bytes, payload: bytes) -> bytes:
    body = bytes([icmp_type, code, 0, 0]) + rest + payload
    return body[:2] + checksum(body).to_bytes(2, "big") + body[4:]


def arp(op: int, sender_mac: bytes, sender_ip: int, target_mac: bytes, target_ip: int) -> bytes:
    return struct.pack("!HHBBH6sI6sI", 1, 0x0800, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)


def frame_from(src_ip: int, packet: bytes, *, src_mac: bytes | None = None, dst_mac: bytes = OUR_MAC) -> bytes:
    return ether(dst_mac, src_mac or mac_of(src_ip), 0x0800, packet)


def fix_checksums(frame: bytearray) -> bytes:
    """Makes the IPv4 header checksum right again after a mutation, and the
    UDP, TCP or ICMP one of an unfragmented datagram whose lengths can be read."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return bytes(frame)
    ihl = (frame[14] & 0x0F) * 4
    if ihl < 20 or 14 + ihl > len(frame):
        return bytes(frame)
    frame[24:26] = b"\0\0"
    frame[24:26] = checksum(bytes(frame[14:14 + ihl])).to_bytes(2, "big")
    total = int.from_bytes(frame[16:18], "big")
    start, end = 14 + ihl, min(14 + total, len(frame))
    if int.from_bytes(frame[20:22], "big") & 0x3FFF or end <= start:
        return bytes(frame)
    proto = frame[23]
    src, dst = int.from_bytes(frame[26:30], "big"), int.from_bytes(frame[30:34], "big")
    at = {PROTO_UDP: 6, PROTO_TCP: 16, PROTO_ICMP: 2}.get(proto)
    if at is None or end - start < at + 2:
        return bytes(frame)
    if proto == PROTO_UDP:
        if frame[start + 6:start + 8] == b"\0\0":
            return bytes(frame)        # "no checksum" stays so
        length = int.from_bytes(frame[start + 4:start + 6], "big")
        if not 8 <= length <= end - start:
            return bytes(frame)
        end = start + length
    frame[start + at:start + at + 2] = b"\0\0"
    seg = bytes(frame[start:end])
    value = checksum(seg) if proto == PROTO_ICMP else checksum(seg, _pseudo(src, dst, proto, len(seg)))
    if proto == PROTO_UDP and value == 0:
        value = 0xFFFF
    frame[start + at:start + at + 2] = value.to_bytes(2, "big")
    return bytes(frame)


# -- the model reassembler: the policy of netstack.ipv4.Reassembler written plainly -------------


class ModelReassembler:
    """Whole datagrams dropped on any overlap or inconsistency; a datagram is
    complete when its pieces, none past the end, add up to the total; at most
    16 pieces; 30 s to complete. No bisection, no cleverness."""

    def __init__(self) -> None:
        self.held: dict[tuple, dict] = {}

    def input(self, now: float, key: tuple, offset: int, data: bytes, more: bool) -> bytes | None:
        end = offset + len(data)
        if (more and len(data) % 8) or end + 20 > 65535 or (more and not data):
            self.held.pop(key, None)
            return None
        d = self.held.setdefault(key, {"pieces": [], "total": None, "born": now})
        if (offset, data) in d["pieces"]:
            return None
        if not more:
            if (d["total"] is not None and d["total"] != end) or any(o + len(p) > end for o, p in d["pieces"]):
                del self.held[key]
                return None
            d["total"] = end
        elif d["total"] is not None and end > d["total"]:
            del self.held[key]
            return None
        if any(o < end and offset < o + len(p) for o, p in d["pieces"]) or len(d["pieces"]) >= 16:
            del self.held[key]
            return None
        d["pieces"].append((offset, data))
        if d["total"] is None or sum(len(p) for _, p in d["pieces"]) != d["total"]:
            return None
        del self.held[key]
        return b"".join(p for _, p in sorted(d["pieces"]))

    def tick(self, now: float) -> None:
        for key in [k for k, d in self.held.items() if d["born"] + 30.0 <= now]:
            del self.held[key]


def udp_delivery(src: int, datagram: bytes) -> bytes | None:
    """What port 53 is handed for a reassembled UDP datagram, by RFC 768."""
    if len(datagram) < 8:
        return None
    _sport, dport, length, value = struct.unpack_from("!HHHH", datagram)
    if length < 8 or length > len(datagram) or dport != 53:
        return None
    if value and checksum(datagram[:length], _pseudo(src, OUR_IP, PROTO_UDP, length)):
        return None
    return datagram[8:length]


# -- one example: a fresh stack and the checks ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CaptureLink:
    mtu = MTU
    mac = OUR_MAC

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def attach(self, loop: object, receive: object) -> None:
        pass

    def send(self, frame: bytes) -> bool:
        self.sent.append(frame)
        return True

    def close(self) -> None:
        pass


class Violation(Exception):
    pass


def impossible(ip: int) -> bool:
    top = ip >> 24
    return top == 0 or top == 127 or top >= 224 or ip == BROADCAST_IP or ip == OUR_IP


class Example:
    def __init__(self, rng: random.Random, *, small_tables: bool = False) -> None:
        self.rng = rng
        self.clock = Clock()
        self.link = CaptureLink()
        self.stack = stack = Stack(self.link, "192.0.2.2/24", "192.0.2.254", mac=OUR_MAC, clock=self.clock,
                                   rng=random.Random(rng.getrandbits(32)))
        if small_tables:
            config = TcpConfig(mss=MTU - 40, max_half_open=rng.randint(1, 8), max_per_client=rng.randint(1, 6))
            stack.tcp = TcpLayer(local_ip=OUR_IP, transmit=stack._transmit_tcp, counters=stack.counters,
                                 clock=stack.now, rng=random.Random(rng.getrandbits(32)),
                                 max_connections=rng.randint(4, 24), config=config)
        self.frames = 0
        self.udp_delivered: list[bytes] = []
        stack.udp.bind(53, self._on_udp)
        self.accepted: list[Connection] = []
        self.stream_end: dict[int, int] = {}     # id(conn) -> sequence number the next delivered byte must have
        stack.tcp.listen(53, self._accept)
        self.tcp_out: list[bytes] = []           # IPv4 packets of TCP we sent, for ICMP quotes
        self.last_synack: dict[tuple[int, int], tuple[int, int]] = {}   # (peer ip, port) -> (our seq, ack)
        self.seen_behind_own_mac: set[int] = set()
        self.app_violation: str | None = None   # found inside a callback, raised after the frame

    # -- the application -----------------------------------------------------------------
    def _on_udp(self, payload: bytes, src: int, sport: int, _dst: int, _dport: int) -> None:
        self.udp_delivered.append(payload)
        self.stack.udp.sendto(payload[:64], 53, src, sport)    # an answer: ARP, routing, and the output checks

    def _accept(self, conn: Connection) -> None:
        self.accepted.append(conn)
        self.stream_end[id(conn)] = seq_add(conn.irs, 1)
        conn.on_data = lambda data, c=conn: self._on_data(c, data)

    def connect(self, ip: int, port: int) -> Connection:
        """An active open of ours; its stream is checked from the peer's SYN on."""
        conn = self.stack.tcp.connect(ip, port)

        def established(c: Connection = conn) -> None:
            self.stream_end[id(c)] = seq_add(c.irs, 1)
        conn.on_established = established
        conn.on_data = lambda data, c=conn: self._on_data(c, data)
        self.check_output()
        return conn

    def _on_data(self, conn: Connection, data: bytes) -> None:
        start = seq_diff(conn.rcv_nxt, 0) - len(data)      # rcv_nxt has moved past the bytes already
        start &= 0xFFFFFFFF
        expected_start = self.stream_end[id(conn)]
        if start != expected_start:
            self.app_violation = f"TCP delivered bytes from {start}, the stream was at {expected_start}"
        elif data != pattern(start, len(data)):
            self.app_violation = f"TCP delivered bytes at {start} that the peer never sent there"
        self.stream_end[id(conn)] = seq_add(start, len(data))

    # -- input and the per-frame checks ----------------------------------------------------
    def feed(self, frame: bytes) -> None:
        stack = self.stack
        counters = stack.counters
        # An address counts as a host's on the link once it sends from a MAC other
        # than the gateway's, or before the stack knows the gateway's MAC, or
        # once anyone claims it in ARP (an on-link statement: the gateway may
        # hold several addresses). Only then may we answer it.
        gateway = stack.arp.cache.get(GATEWAY_IP)
        behind_gateway = frame[6:12] == GATEWAY_MAC and gateway is not None and gateway[0] == GATEWAY_MAC
        if len(frame) >= 34 and frame[12:14] == b"\x08\x00" and not behind_gateway:
            self.seen_behind_own_mac.add(int.from_bytes(frame[26:30], "big"))
        elif len(frame) >= 42 and frame[12:14] == b"\x08\x06":
            self.seen_behind_own_mac.add(int.from_bytes(frame[28:32], "big"))
        before = sum(counters.values())
        stack.receive(frame)
        self.frames += 1
        if sum(counters.values()) == before:
            raise Violation("a frame left no counter")
        if self.app_violation:
            raise Violation(self.app_violation)
        if counters["stack.exception.drop"] or counters["tcp.exception"]:
            raise Violation("an exception reached the receive path")
        self.check_output()
        self.check_bounds()

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.stack.tick(self.clock.now)
        if self.stack.counters["tcp.exception"]:
            raise Violation("an exception in the timers")
        self.check_output()
        self.check_bounds()

    def check_output(self) -> None:
        sent, self.link.sent = self.link.sent, []
        for out in sent:
            if len(out) < 14 or out[6:12] != OUR_MAC:
                raise Violation("a frame we sent has no Ethernet header of ours")
            ethertype = out[12:14]
            if ethertype == b"\x08\x06":
                if len(out) < 42 or int.from_bytes(out[28:32], "big") != OUR_IP or out[22:28] != OUR_MAC:
                    raise Violation("an ARP packet we sent does not speak for us")
                continue
            if ethertype != b"\x08\x00":
                raise Violation(f"we sent EtherType {ethertype.hex()}")
            packet = out[14:]
            ihl = (packet[0] & 0x0F) * 4
            total = int.from_bytes(packet[2:4], "big")
            src, dst = int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
            if checksum(packet[:ihl]) or total != len(packet) or total > MTU or src != OUR_IP:
                raise Violation("an IPv4 header we sent is wrong")
            if impossible(dst) or out[0] & 1:
                raise Violation(f"we sent to an impossible address {dst:#x}")
            if dst & NETMASK == NETWORK and dst != GATEWAY_IP and dst not in self.seen_behind_own_mac:
                raise Violation(f"we answered {dst:#x}, seen only behind the gateway's MAC")
            if packet[9] == PROTO_TCP:
                seg = packet[ihl:]
                if checksum(seg, _pseudo(src, dst, PROTO_TCP, len(seg))):
                    raise Violation("a TCP segment we sent has a bad checksum")
                self.tcp_out.append(packet)
                del self.tcp_out[:-8]
                if seg[13] & (SYN | ACK) == SYN | ACK:
                    our_seq, their_ack = struct.unpack_from("!II", seg, 4)
                    self.last_synack[(dst, int.from_bytes(seg[2:4], "big"))] = (our_seq, their_ack)

    def check_bounds(self) -> None:
        stack = self.stack
        a, r, t = stack.arp, stack.reassembler, stack.tcp
        if len(a.cache) > a.cache_size or len(a.pending) > a.max_pending or len(a.refreshing) > a.cache_size:
            raise Violation("an ARP table is past its bound")
        if len(r.buffers) > r.max_datagrams or not 0 <= r.held_bytes <= r.max_bytes:
            raise Violation("reassembly is past its bound")
        if len(t.connections) > t.max_connections:
            raise Violation("the TCP table is past its bound")
        if len(stack._unverified) > UNVERIFIED_SOURCES or \
                any(len(q) > UNVERIFIED_QUEUE or ip not in a.pending for ip, q in stack._unverified.items()):
            raise Violation("datagrams held for a source check past their bound, or with no ARP question open")

    def check_all_bounds(self) -> None:
        """The thorough version, per example and after every TCP segment."""
        self.check_bounds()
        stack = self.stack
        a, r, t = stack.arp, stack.reassembler, stack.tcp
        if any(len(p.packets) > a.queue_limit for p in a.pending.values()):
            raise Violation("an ARP queue is past its bound")
        if any(len(d.starts) > r.max_fragments for d in r.buffers.values()) or \
                r.held_bytes != sum(d.received for d in r.buffers.values()):
            raise Violation("a reassembly buffer is past its bound or its bytes are miscounted")
        per_client = Counter(key[0] for key in t.connections)
        if per_client != Counter(t._per_client) or any(n > t.config.max_per_client for n in per_client.values()):
            raise Violation(f"per-client counts wrong or past the bound: {per_client} {t._per_client}")
        if sum(1 for c in t.connections.values() if c.state is State.SYN_RECEIVED) > t.config.max_half_open:
            raise Violation("more half-open connections than the bound")
        for key, conn in t.connections.items():
            if conn.state is State.CLOSED or (conn.remote[0], conn.remote[1], conn.local[1]) != key:
                raise Violation(f"a dead or misfiled connection in the table: {conn!r}")
            if len(conn.ooo) > t.config.max_ooo_segments or conn.ooo.bytes > conn.ooo.max_bytes \
                    or len(conn.send_buf) > t.config.send_buffer:
                raise Violation(f"a connection's buffers are past their bounds: {conn!r}")
            if seq_diff(conn.snd_una, conn.snd_max) > 0:
                raise Violation(f"snd_una passed snd_max: {conn!r}")

    def drain(self) -> None:
        """Time runs on: every table must empty by itself."""
        for _ in range(30):
            self.tick(100.0)
        stack = self.stack
        if stack.tcp.connections or stack.tcp._per_client:
            raise Violation(f"TCP connections that never end: {list(stack.tcp.connections.values())}")
        if stack.reassembler.buffers or stack.reassembler.held_bytes:
            raise Violation("reassembly buffers that never end")
        if stack.arp.pending or stack.arp.refreshing or stack._unverified:
            raise Violation("ARP resolutions, or datagrams waiting on them, that never end")

    # -- TCP with its oracle --------------------------------------------------------------
    def tcp_segment(self, src: int, sport: int, seq: int, ack: int, flags: int, window: int,
                    payload: bytes = b"", options: bytes = b"", *, mutate: bool = False, dport: int = 53) -> None:
        key = (src, sport, dport)
        conn = self.stack.tcp.connections.get(key)
        before = (conn.rcv_nxt, conn.rcv_adv, conn.state) if conn is not None else None
        frame = frame_from(src, ipv4(src, OUR_IP, PROTO_TCP, tcp(src, OUR_IP, sport, dport, seq, ack, flags, window,
                                                                  payload, options), ident=self.rng.getrandbits(16)))
        if mutate:
            frame = mutate_tcp_header(self.rng, frame)
        self.feed(frame)
        if conn is None or before is None or before[2] in (State.SYN_SENT, State.CLOSED):
            return
        rcv_nxt, rcv_adv, _state = before
        moved = seq_diff(conn.rcv_nxt, rcv_nxt)
        window_then = max(0, seq_diff(rcv_adv, rcv_nxt))
        if mutate:     # the segment may have changed on the way: only the window bound holds
            acceptable = True
        else:
            acceptable = rfc_acceptable(seq, len(payload) + bool(flags & SYN) + bool(flags & FIN), rcv_nxt, window_then)
        if moved and not acceptable:
            raise Violation(f"a segment outside the window moved rcv_nxt by {moved}: seq={seq} rcv_nxt={rcv_nxt}")
        if moved > window_then + 1 or moved < 0:
            raise Violation(f"rcv_nxt moved by {moved}, the window was {window_then}")
        self.check_all_bounds()


def rfc_acceptable(seq: int, length: int, rcv_nxt: int, window: int) -> bool:
    """RFC 9293 3.10.7.4's table, as the RFC writes it."""
    start = seq_diff(seq, rcv_nxt)
    if length == 0:
        return start == 0 if window == 0 else 0 <= start < window
    if window == 0:
        return False
    return 0 <= start < window or 0 <= start + length - 1 < window


# -- mutations ---------------------------------------------------------------------------------

# header fields worth setting to edge values: (offset in the frame, size)
_FIELDS = [(14, 1), (16, 2), (18, 2), (20, 2), (22, 1), (23, 1), (26, 4), (30, 4),   # IPv4
           (34, 2), (36, 2), (38, 2), (40, 2),                                        # UDP / TCP ports...
           (38, 4), (42, 4), (46, 1), (47, 1), (48, 2), (52, 2), (54, 4)]             # TCP seq/ack/off/flags/win
_EDGES = [0, 1, 7, 8, 19, 20, 0x45, 0x4F, 0x7F, 0x80, 0xFF, 0x3FFF, 0x1FFF, 0x2000, 0x4000, 0xFFFF,
          0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def mutate_frame(rng: random.Random, frame: bytes) -> bytes:
    buf = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.45:
            offset, size = rng.choice(_FIELDS)
            if offset + size <= len(buf):
                value = rng.choice(_EDGES) if rng.random() < 0.6 else rng.getrandbits(8 * size)
                buf[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "big")
        elif choice < 0.85 and buf:
            i = rng.randrange(len(buf))
            buf[i] = rng.getrandbits(8)
        elif choice < 0.92:
            del buf[rng.randrange(len(buf) + 1):]
        else:
            buf += rng.randbytes(rng.randint(1, 64))
    return fix_checksums(buf) if rng.random() < 0.85 else bytes(buf)


# TCP fields a mutation may change on a live connection's segment without
# changing which byte sits at which sequence number (seq, data offset and
# payload stay), so the delivered-bytes oracle still holds: IPv4 TOS, total
# length (a shorter payload is a prefix), id, flags/offset, TTL; TCP ports,
# ACK, flags, window, checksum, urgent pointer
_TCP_SAFE_FIELDS = [(15, 1), (16, 2), (18, 2), (20, 2), (22, 1), (34, 2), (36, 2), (42, 4), (47, 1),
                    (48, 2), (50, 2), (52, 2)]


def mutate_tcp_header(rng: random.Random, frame: bytes) -> bytes:
    buf = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        offset, size = rng.choice(_TCP_SAFE_FIELDS)
        value = rng.choice(_EDGES) if rng.random() < 0.5 else rng.getrandbits(8 * size)
        buf[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "big")
    if rng.random() < 0.1:
        del buf[rng.randrange(34, len(buf) + 1):]
    return fix_checksums(buf) if rng.random() < 0.9 else bytes(buf)


def tcp_options(rng: random.Random) -> bytes:
    options = b""
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.3:
            options += struct.pack("!BBH", 2, 4, rng.choice([0, 1, 64, 536, 1460, 9000, 0xFFFF]))
        elif kind < 0.55:
            options += bytes([1, 3, 3, rng.choice([0, 1, 7, 14, 15, 255])])
        elif kind < 0.7:
            options += bytes([4, 2])                                 # SACK permitted
        elif kind < 0.85:
            options += bytes([8, 10]) + rng.randbytes(8)             # timestamps
        else:
            options += rng.randbytes(rng.randint(1, 8))              # whatever
    return options[:40]


# -- the scenarios ---------------------------------------------------------------------------


def _prime_arp(ex: Example, ips: list[int]) -> None:
    for ip in ips:
        ex.feed(ether(BROADCAST_MAC, mac_of(ip), 0x0806, arp(1, mac_of(ip), ip, b"\0" * 6, OUR_IP)))


def scenario_random_bytes(ex: Example) -> None:
    rng = ex.rng
    for _ in range(rng.randint(1, 3)):
        body = rng.randbytes(rng.randint(0, 200))
        choice = rng.random()
        if choice < 0.3:
            ex.feed(rng.randbytes(rng.randint(0, 80)))
        elif choice < 0.6:
            ex.feed(ether(rng.choice([OUR_MAC, BROADCAST_MAC]), mac_of(ON_LINK_PEERS[0]),
                          rng.choice([0x0800, 0x0806, 0x86DD]), body))
        else:
            src = rng.choice(ON_LINK_PEERS + OFF_LINK_PEERS)
            ex.feed(frame_from(src, ipv4(src, OUR_IP, rng.choice([1, 6, 17, 2, 50]), body)))


def _template(ex: Example) -> bytes:
    rng = ex.rng
    src = rng.choice(ON_LINK_PEERS + OFF_LINK_PEERS + SPOOFED)
    kind = rng.randrange(9)
    port = rng.randint(1, 65535)
    if kind == 0:
        return frame_from(src, ipv4(src, OUR_IP, PROTO_UDP, udp(src, OUR_IP, port, 53, rng.randbytes(30))))
    if kind == 1:
        return frame_from(src, ipv4(src, OUR_IP, PROTO_UDP, udp(src, OUR_IP, port, rng.randint(1, 65535), b"x")))
    if kind == 2:
        return frame_from(src, ipv4(src, OUR_IP, PROTO_ICMP, icmp(8, 0, rng.randbytes(4), rng.randbytes(40))))
    if kind == 3:
        op = rng.choice([1, 2])
        return ether(rng.choice([OUR_MAC, BROADCAST_MAC]), mac_of(src), 0x0806,
                     arp(op, mac_of(src), src, rng.choice([b"\0" * 6, OUR_MAC]), rng.choice([OUR_IP, GATEWAY_IP])))
    if kind == 4:
        return frame_from(src, ipv4(src, OUR_IP, PROTO_TCP, tcp(src, OUR_IP, port, rng.choice([53, 80]),
                                                                 rng.getrandbits(32), 0, SYN, 65535,
                                                                 options=tcp_options(rng))))
    if kind == 5:
        return frame_from(src, ipv4(src, OUR_IP, PROTO_TCP, tcp(src, OUR_IP, port, 53, rng.getrandbits(32),
                                                                 rng.getrandbits(32), ACK | PSH, 65535, b"data")))
    if kind == 6:
        quoted = ipv4(OUR_IP, src, PROTO_TCP, tcp(OUR_IP, src, 53, port, rng.getrandbits(32), 0, ACK, 0))[:28]
        return frame_from(src, ipv4(src, OUR_IP, PROTO_ICMP, icmp(3, 4, struct.pack("!HH", 0, 576), quoted)))
    if kind == 7:
        return frame_from(src, ipv4(src, OUR_IP, PROTO_UDP, udp(src, OUR_IP, port, 53, b"opts"),
                                    options=rng.choice([b"\x01\x01\x01\x00", b"\x07\x07\x04" + bytes(5), b"\x44"])))
    return frame_from(src, ipv4(src, OUR_IP, PROTO_UDP, rng.randbytes(rng.choice([8, 16, 64])),
                                ident=rng.getrandbits(16), flags_offset=rng.choice([0x2000, 0x2001, 1, 0x1FFF])))


def scenario_mutated(ex: Example) -> None:
    rng = ex.rng
    if rng.random() < 0.7:
        _prime_arp(ex, [GATEWAY_IP] + ON_LINK_PEERS)
    for _ in range(rng.randint(1, 6)):
        ex.feed(mutate_frame(rng, _template(ex)))
        if rng.random() < 0.3:
            ex.tick(rng.choice([0.05, 1.0, 31.0, 117.0, 130.0]))


def scenario_fragments(ex: Example) -> None:
    rng = ex.rng
    model = ModelReassembler()
    expected: list[bytes] = []
    fragments: list[tuple[int, int, int, bytes, int]] = []   # (src, ident, flags_offset, data, proto)
    idents = [rng.getrandbits(16) for _ in range(rng.randint(1, 3))]
    for ident in idents:
        src = rng.choice(ON_LINK_PEERS + OFF_LINK_PEERS)
        if rng.random() < 0.8:
            datagram = udp(src, OUR_IP, rng.randint(1024, 65535), 53, rng.randbytes(rng.randint(0, 3000)),
                           with_checksum=rng.random() < 0.3)
        else:
            datagram = rng.randbytes(rng.randint(8, 600))
        step = 8 * rng.choice([1, 1, 2, 5, 20, 60, 100, 185])
        pieces = [(o, datagram[o:o + step], o + step < len(datagram)) for o in range(0, len(datagram), step)]
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            i = rng.randrange(len(pieces))
            offset, data, more = pieces[i]
            trick = rng.randrange(6)
            if trick == 0:
                pieces.append(pieces[i])                                      # duplicate
            elif trick == 1:
                del pieces[i]                                                 # hole
                if not pieces:
                    pieces.append((offset, data, more))
            elif trick == 2:
                pieces.append((max(0, offset - 8 * rng.randint(1, 4)), data, more))   # overlap
            elif trick == 3:
                pieces.append((offset, data[:8], False))                      # a short last fragment
            elif trick == 4:
                pieces.append((offset + len(datagram) + 8, data, more))       # past the end
            else:
                pieces.append((8 * rng.randint(0, 8191), data[:8 * rng.randint(0, 3)], True))   # far or empty
        if rng.random() < 0.6:
            rng.shuffle(pieces)
        for offset, data, more in pieces:
            fragments.append((src, ident, (0x2000 if more else 0) | (offset // 8 & 0x1FFF), data, PROTO_UDP))
    if rng.random() < 0.5:
        rng.shuffle(fragments)
    jump_at = rng.randrange(len(fragments) + 1) if rng.random() < 0.2 else -1
    for n, (src, ident, flags_offset, data, proto) in enumerate(fragments):
        if n == jump_at:
            ex.tick(31.0)
            model.tick(ex.clock.now)
        ex.feed(frame_from(src, ipv4(src, OUR_IP, proto, data, ident=ident, flags_offset=flags_offset)))
        if ex.stack.counters["ipv4.frag.table_full.drop"] or ex.stack.counters["ipv4.frag.memory_full.drop"]:
            raise Violation("a fragment example outgrew the tables (the model has none)")
        if flags_offset & 0x3FFF:
            whole = model.input(ex.clock.now, (src, ident), (flags_offset & 0x1FFF) * 8, data,
                                bool(flags_offset & 0x2000))
        else:
            whole = data         # offset 0 without MF is no fragment: a datagram of its own
        if whole is not None:
            delivery = udp_delivery(src, whole)
            if delivery is not None:
                expected.append(delivery)
    if ex.udp_delivered != expected:
        raise Violation(f"reassembly delivered {len(ex.udp_delivered)} datagrams, the model {len(expected)}")
    ex.check_all_bounds()


class Peer:
    """A TCP peer that completed a handshake with us (`port` is its own, `our_port` ours)."""

    def __init__(self, ip: int, port: int, conn: Connection, our_port: int = 53) -> None:
        self.ip, self.port, self.conn, self.our_port = ip, port, conn, our_port


def _handshake(ex: Example, ip: int, port: int, *, options: bytes | None = None) -> Peer | None:
    rng = ex.rng
    isn = rng.getrandbits(32)
    if options is None:
        options = struct.pack("!BBH", 2, 4, 1460) + (bytes([1, 3, 3, rng.randint(0, 14)]) if rng.random() < 0.5
                                                     else b"")
    ex.tcp_segment(ip, port, isn, 0, SYN, rng.choice([65535, 65535, 1024, 0]), options=options)
    reply = ex.last_synack.pop((ip, port), None)
    if reply is None:
        return None
    our_seq, _ = reply
    ex.tcp_segment(ip, port, seq_add(isn, 1), seq_add(our_seq, 1), ACK, 65535)
    conn = ex.stack.tcp.connections.get((ip, port, 53))
    if conn is None or conn.state is not State.ESTABLISHED:
        return None
    return Peer(ip, port, conn)


def _segment_for(ex: Example, peer: Peer) -> None:
    """One segment from the peer, near or far from what the connection expects."""
    rng, conn = ex.rng, peer.conn
    rcv_nxt, wnd = conn.rcv_nxt, max(0, seq_diff(conn.rcv_adv, conn.rcv_nxt))
    r = rng.random()
    if r < 0.08 and wnd > 200:
        # the second half first (kept out of order), then the first half (fills the gap)
        first = rng.randint(1, min(1460, wnd // 2))
        ex.tcp_segment(peer.ip, peer.port, seq_add(rcv_nxt, first), conn.snd_una, ACK | PSH, 65535,
                       pattern(seq_add(rcv_nxt, first), rng.randint(1, 1460)), dport=peer.our_port)
        if conn.state in (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2):
            ex.tcp_segment(peer.ip, peer.port, rcv_nxt, conn.snd_una, ACK, 65535, pattern(rcv_nxt, first),
                           dport=peer.our_port)
        return
    if r < 0.5:
        seq = rcv_nxt
    elif r < 0.65:
        seq = seq_add(rcv_nxt, rng.randint(1, 3000))
    elif r < 0.75:
        seq = seq_add(rcv_nxt, -rng.randint(1, 3000))
    elif r < 0.87:
        seq = seq_add(rcv_nxt, wnd + rng.choice([-1, 0, 1]))
    elif r < 0.95:
        seq = rng.getrandbits(32)
    else:
        seq = seq_add(rcv_nxt, -1)
    size = rng.choice([0, 0, 0, rng.randint(1, 100), rng.randint(100, 1460), rng.randint(1460, 3000)])
    flags = rng.choice([ACK, ACK, ACK | PSH, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN, SYN | ACK, 0, FIN, URG | ACK])
    in_flight = seq_diff(conn.snd_max, conn.snd_una)
    a = rng.random()
    if a < 0.7:
        ack = seq_add(conn.snd_una, rng.randint(0, max(0, in_flight)))
    elif a < 0.8:
        ack = seq_add(conn.snd_max, rng.randint(1, 1000))
    elif a < 0.9:
        ack = seq_add(conn.snd_una, -rng.randint(1, 70000))
    else:
        ack = rng.getrandbits(32)
    window = rng.choice([65535, 65535, 0, rng.getrandbits(16)])
    options = tcp_options(rng) if rng.random() < 0.15 else b""
    ex.tcp_segment(peer.ip, peer.port, seq, ack, flags, window, pattern(seq, size), options,
                   mutate=rng.random() < 0.1, dport=peer.our_port)


def _application_acts(ex: Example, peer: Peer) -> None:
    rng, conn = ex.rng, peer.conn
    r = rng.random()
    try:
        if r < 0.08:
            conn.send(rng.randbytes(rng.randint(1, 8000)))
        elif r < 0.1:
            conn.close()
        elif r < 0.11:
            conn.abort()
        elif r < 0.16:
            conn.set_receive_paused(not conn.receive_paused)
    except (BufferError, ConnectionError):
        pass
    ex.check_output()


def _frag_needed(ex: Example) -> None:
    """ICMP "fragmentation needed" quoting one of our recent segments, or a changed copy."""
    rng = ex.rng
    if not ex.tcp_out:
        return
    quoted = bytearray(rng.choice(ex.tcp_out)[:28])
    if rng.random() < 0.3:
        quoted[24:28] = rng.randbytes(4)              # a sequence number not in flight
    router = rng.choice([GATEWAY_IP, ON_LINK_PEERS[0], OFF_LINK_PEERS[0]])
    mtu = rng.choice([0, 68, 500, 552, 576, 1000, 1280, 1400, 1500, 9000])
    ex.feed(frame_from(router, ipv4(router, OUR_IP, PROTO_ICMP, icmp(3, 4, struct.pack("!HH", 0, mtu),
                                                                      bytes(quoted)))))


def scenario_tcp(ex: Example) -> None:
    rng = ex.rng
    _prime_arp(ex, [GATEWAY_IP] + ON_LINK_PEERS)
    peers = []
    for _ in range(rng.randint(1, 3)):
        ip = rng.choice(ON_LINK_PEERS + OFF_LINK_PEERS + SPOOFED)
        options = tcp_options(rng) if rng.random() < 0.3 else None
        peer = _handshake(ex, ip, rng.randint(1024, 65535), options=options)
        if peer is not None:
            peers.append(peer)
    for _ in range(rng.randint(5, 40)):
        if not peers:
            break
        peer = rng.choice(peers)
        r = rng.random()
        if r < 0.7:
            _segment_for(ex, peer)
        elif r < 0.85:
            _application_acts(ex, peer)
        elif r < 0.9:
            _frag_needed(ex)
        elif r < 0.97:
            ex.tick(rng.choice([0.05, 0.2, 1.0, 3.0]))
        else:
            ex.tick(rng.choice([11.0, 61.0, 117.0, 130.0]))
    ex.check_all_bounds()


def scenario_active_open(ex: Example) -> None:
    """Our connect() against a peer that answers rightly, wrongly, with a
    reset, or with a crossing SYN (simultaneous open); then segments as in
    scenario_tcp."""
    rng = ex.rng
    _prime_arp(ex, [GATEWAY_IP] + ON_LINK_PEERS)
    ip = rng.choice(ON_LINK_PEERS + OFF_LINK_PEERS)
    conn = ex.connect(ip, 53)
    our_port, iss = conn.local[1], conn.iss
    isn = rng.getrandbits(32)
    answer = rng.random()
    options = tcp_options(rng) if rng.random() < 0.3 else struct.pack("!BBH", 2, 4, 1460)
    if answer < 0.5:
        ex.tcp_segment(ip, 53, isn, seq_add(iss, 1), SYN | ACK, 65535, options=options, dport=our_port)
    elif answer < 0.65:      # a crossing SYN, then the ACK of our SYN
        ex.tcp_segment(ip, 53, isn, 0, SYN, 65535, options=options, dport=our_port)
        ex.tcp_segment(ip, 53, seq_add(isn, 1), seq_add(iss, 1), ACK, 65535, dport=our_port)
    elif answer < 0.75:
        ex.tcp_segment(ip, 53, isn, seq_add(iss, rng.choice([0, 2, 1 << 31])), SYN | ACK, 65535, dport=our_port)
    elif answer < 0.85:
        ex.tcp_segment(ip, 53, 0, seq_add(iss, rng.choice([1, 0])), RST | ACK, 0, dport=our_port)
    else:
        ex.tcp_segment(ip, 53, isn, rng.getrandbits(32), rng.choice([ACK, SYN | ACK | PSH, RST, FIN | ACK]),
                       rng.getrandbits(16), pattern(isn, rng.randint(0, 50)), options, mutate=True, dport=our_port)
    if conn.state is not State.ESTABLISHED:
        ex.tick(rng.choice([0.05, 1.5, 40.0]))
        return
    peer = Peer(ip, 53, conn, our_port)
    for _ in range(rng.randint(3, 25)):
        r = rng.random()
        if r < 0.7:
            _segment_for(ex, peer)
        elif r < 0.85:
            _application_acts(ex, peer)
        elif r < 0.9:
            _frag_needed(ex)
        else:
            ex.tick(rng.choice([0.05, 1.0, 3.0, 61.0]))
    ex.check_all_bounds()


def scenario_table_flood(ex: Example) -> None:
    """Many SYNs and handshakes from a few addresses on small tables: caps,
    cookies, eviction, recycling."""
    rng = ex.rng
    _prime_arp(ex, [GATEWAY_IP] + ON_LINK_PEERS)
    sources = rng.sample(ON_LINK_PEERS + OFF_LINK_PEERS, rng.randint(1, 5))
    for _ in range(rng.randint(10, 60)):
        ip, port = rng.choice(sources), rng.randint(1024, 1100)
        r = rng.random()
        if r < 0.5:
            peer = _handshake(ex, ip, port)
            if peer is not None and rng.random() < 0.3:
                _segment_for(ex, peer)
        elif r < 0.8:
            ex.tcp_segment(ip, port, rng.getrandbits(32), 0, SYN, 65535)
        elif r < 0.9:
            ex.tcp_segment(ip, port, rng.getrandbits(32), rng.getrandbits(32), ACK, 65535)   # a guessed cookie
        else:
            ex.tick(rng.choice([0.5, 3.0, 11.0, 65.0]))
        ex.check_all_bounds()


SCENARIOS: list[tuple[str, Callable[[Example], None], float, bool]] = [
    ("random_bytes", scenario_random_bytes, 0.10, False),
    ("mutated", scenario_mutated, 0.30, False),
    ("fragments", scenario_fragments, 0.20, False),
    ("tcp", scenario_tcp, 0.22, False),
    ("active_open", scenario_active_open, 0.08, False),
    ("table_flood", scenario_table_flood, 0.10, True),
]


def run_example(seed: int, index: int) -> tuple[str, Example]:
    rng = random.Random(seed * 1_000_003 + index)
    pick = rng.random()
    name, scenario, _weight, small = SCENARIOS[-1]
    for entry in SCENARIOS:
        if pick < entry[2]:
            name, scenario, _weight, small = entry
            break
        pick -= entry[2]
    ex = Example(rng, small_tables=small)
    scenario(ex)
    ex.drain()
    return name, ex


def run(count: int, seed: int = 1, report: Callable[[str], None] = print, max_violations: int = 10) -> int:
    """Runs examples until `count` frames went in; returns the number of violations."""
    started = time.monotonic()
    frames = examples = 0
    by_scenario: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    violations: list[str] = []
    rss_early = 0
    while frames < count:
        try:
            name, ex = run_example(seed, examples)
            frames += ex.frames
            by_scenario[name] += 1
            counters.update(ex.stack.counters)
        except Violation as e:
            violations.append(f"{e} (replay: python -m tests.fuzz_frames --seed {seed} --example {examples})")
            frames += 1
            if len(violations) >= max_violations:
                break
        examples += 1
        if not rss_early and frames >= count // 10:
            rss_early = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed = time.monotonic() - started
    if rss_early and rss - rss_early > 64 * 1024:      # kB: fresh stacks, so memory must stay flat
        violations.append(f"peak memory grew by {(rss - rss_early) // 1024} MB over the run")
    report(f"frames: {frames} in {examples} examples, {elapsed:.0f} s ({frames / max(elapsed, 1e-9):.0f}/s), "
           f"seed {seed}, peak RSS {rss // 1024} MB")
    report("examples: " + ", ".join(f"{name} {n}" for name, n in sorted(by_scenario.items())))
    reached = [k for k in ("tcp.accept", "tcp.connect.established", "tcp.connect.refused", "tcp.rx_bytes", "tcp.ooo.reassembled", "tcp.challenge_ack",
                           "tcp.syn_cookie.accepted", "tcp.evicted.idle", "tcp.per_client_limit.drop",
                           "tcp.fin_wait_2.timeout", "tcp.time_wait.expired", "tcp.pmtu.lowered",
                           "tcp.retransmit.timeout", "tcp.window_probe", "ipv4.frag.reassembled",
                           "ipv4.frag.overlap.drop", "ipv4.frag.too_many.drop", "ipv4.frag.inconsistent.drop",
                           "ipv4.spoofed_via_gateway.drop", "udp.delivered", "arp.refresh.sent")]
    report("reached: " + ", ".join(f"{k} {counters[k]}" for k in reached))
    report(f"distinct counters: {len(counters)}; drops: "
           f"{sum(n for k, n in counters.items() if k.endswith('.drop'))}")
    report(f"violations: {len(violations)}")
    for v in violations:
        report("  " + v)
    return len(violations)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_frames")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--example", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        name, ex = run_example(args.seed, args.example)
    except Violation as e:
        print(f"violation: {e}")
        return 1
    print(f"{name}: {ex.frames} frames, clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
