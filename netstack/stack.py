"""The stack: link -> Ethernet -> ARP / IPv4 -> ICMP / IGMP / UDP / TCP, on one
asyncio loop. This is the only module that knows every layer; the layers
themselves do no I/O and are handed the time.

Nothing a frame does raises out of `receive`: every malformed or unwanted
frame ends in a counter (`stack.counters`) whose name says why it was dropped.

Multicast: `join_group` makes the stack accept a group's frames and
datagrams (and report it with IGMP); UDP datagrams to a joined group go to
the bound port like unicast ones, but a closed port never gets an ICMP
error back; other multicast is counted and dropped.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Final

from . import arp as arp_mod
from . import ethernet, icmp, igmp, udp
from . import ipv4 as ip4
from .counters import Counters, DropError
from .link import Link
from .tcp.config import TcpConfig
from .tcp.layer import TcpLayer

log = logging.getLogger("netstack")

TICK_INTERVAL = 0.05
# Final, as the struct formats below: compiled, C globals, not dict lookups
_TYPE_IPV4: Final = ethernet.TYPE_IPV4.to_bytes(2, "big")
_TYPE_ARP: Final = ethernet.TYPE_ARP.to_bytes(2, "big")
# Own-subnet sources behind the gateway's MAC whose datagrams wait while ARP
# says who holds the address, and datagrams held for each.
UNVERIFIED_SOURCES = 16
UNVERIFIED_QUEUE = 4
# Ethernet destination and source, then the IPv4 and UDP fields the hot path reads.
_PLAIN_UDP: Final = struct.Struct("!6s6s4xHxxHBxxxII4H")
# A whole UDP frame's headers, packed at once: Ethernet destination, source
# and type; IPv4 without options (total length, ident, TTL, checksum,
# addresses); UDP (ports, length, checksum).
_UDP_FRAME_HEAD: Final = struct.Struct("!6s6sHBBHHHBBHIIHHHH")


def _before_start() -> float:
    return 0.0


def _loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The loop's time as a callable: ``time.monotonic`` itself when the
    loop's ``time`` is asyncio's own (which returns just that), so a read is
    one C call rather than a method lookup and a Python frame (now() runs
    twice an answer: the ARP lookup, the statistics' arrival)."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


class Stack:
    def __init__(self, link: Link, ipv4: ipaddress.IPv4Interface | str,
                 gateway: ipaddress.IPv4Address | str | None = None, *, mtu: int = 1500,
                 mac: bytes | None = None, clock: Callable[[], float] | None = None,
                 rng: random.Random | None = None) -> None:
        self.link = link
        self.interface = ipaddress.IPv4Interface(ipv4)
        self.address = int(self.interface.ip)
        self.netmask = int(self.interface.netmask)
        self.network = self.address & self.netmask
        self.subnet_broadcast = int(self.interface.network.broadcast_address)
        self.gateway = int(ipaddress.IPv4Address(gateway)) if gateway else None
        if self.gateway is not None and self.gateway & self.netmask != self.network:
            raise ValueError(f"gateway {gateway} is not on {self.interface.network}")
        self.mtu = min(mtu, getattr(link, "mtu", mtu) or mtu)
        self.mac = mac or getattr(link, "mac", None) or ethernet.stable_mac(self.address)
        self.rng = rng or random.SystemRandom()
        self.counters = Counters()
        # counted on every datagram delivered: a plain integer (Counters.tally)
        self._delivered = self.counters.tally("udp.delivered")
        # what now() reads: the clock given, else the loop's once started (0.0 before)
        self._clock: Callable[[], float] = clock or _before_start
        self.arp = arp_mod.Arp(self.mac, self.address, self.counters, gateway=self.gateway)
        self.reassembler = ip4.Reassembler(self.counters)
        # own-subnet source -> datagrams from the gateway's MAC held until ARP
        # says who holds it; a key only while ARP's (bounded) resolution lasts
        self._unverified: dict[int, list[bytes]] = {}
        self.icmp_errors = icmp.RateLimiter(rate=10, burst=10)
        self.udp = udp.UdpLayer(self.address, self._transmit_udp, self.counters, self.rng)
        self.tcp = self._make_tcp()
        self.igmp = igmp.Memberships(self.counters, self.rng)
        self._multicast_macs = {ethernet.multicast_mac(igmp.ALL_HOSTS)}
        self._ident = self.rng.randrange(65536)
        self._src_mac_type = self.mac + _TYPE_IPV4
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _make_tcp(self) -> TcpLayer:
        # Our segments go out with DF set, so the MSS we offer and use follows our MTU.
        return TcpLayer(local_ip=self.address, transmit=self._transmit_tcp,
                        counters=self.counters, clock=self.now,
                        rng=self.rng, config=TcpConfig(mss=self.mtu - 40))

    # -- life cycle ---------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    async def start(self) -> None:
        """Attaches the link to the running loop, announces our address and
        starts the timer tick."""
        self._loop = asyncio.get_running_loop()
        if self._clock is _before_start:
            self._clock = _loop_clock(self._loop)
        self.link.attach(self._loop, self.receive)
        self._send_arp(ethernet.BROADCAST, self.arp.announcement())
        self._timer = self._loop.call_later(TICK_INTERVAL, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None:
            self._send_igmp(self.igmp.leave_all(self.now()))
        self.link.close()

    def join_group(self, group: ipaddress.IPv4Address | int) -> None:
        """Accepts the group's frames and datagrams from now on, and says so
        with IGMP. Raises ValueError (not a group) or OSError (too many)."""
        address = int(group)
        self._send_igmp(self.igmp.join(self.now(), address))
        self._multicast_macs.add(ethernet.multicast_mac(address))

    def leave_group(self, group: ipaddress.IPv4Address | int) -> None:
        """Says goodbye to the group (IGMP leave) and stops accepting its frames."""
        address = int(group)
        self._send_igmp(self.igmp.leave(self.now(), address))
        # groups can share a MAC (only 23 bits are mapped): keep those still joined
        self._multicast_macs = {ethernet.multicast_mac(g) for g in (igmp.ALL_HOSTS, *self.igmp.groups)}

    def log_counters(self) -> None:
        """Writes every counter to the log (the appliance does it on SIGUSR1).
        Asked for explicitly, so it is logged at a level that always shows."""
        log.warning("counters:\n%s", self.counters.dump())

    def _tick(self) -> None:
        self.tick(self.now())
        if self._loop is not None:
            self._timer = self._loop.call_later(TICK_INTERVAL, self._tick)

    def tick(self, now: float) -> None:
        """Runs every layer's timers (tests call it with a virtual clock)."""
        for dst_mac, request in self.arp.tick(now):
            self._send_arp(dst_mac, request)
        for src in [ip for ip in self._unverified if ip not in self.arp.pending]:
            # nobody answered for it: the datagrams were forged off-link
            self.counters["ipv4.spoofed_via_gateway.drop"] += len(self._unverified.pop(src))
        self.reassembler.tick(now)
        self.tcp.tick(now)
        self._send_igmp(self.igmp.tick(now))

    # -- receive path ---------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        try:
            if not self._input_plain_udp(frame):
                self._input_frame(frame)
        except DropError as e:
            self.counters[e.reason] += 1
        except Exception:  # a bug, not an input: count it, log it, keep serving
            self.counters["stack.exception.drop"] += 1
            log.exception("frame handling failed")

    def _input_plain_udp(self, frame: bytes) -> bool:
        """The hot path: a unicast, unfragmented, option-less UDP datagram for
        a bound port, checked and delivered with one unpack. Returns False for
        anything else (or anything wrong), which the general path then handles
        and counts; so this path never decides a drop."""
        if len(frame) < 42 or frame[12:14] != _TYPE_IPV4 or frame[14] != 0x45 or frame[23] != 17:
            return False
        # declared, since unpack_from's fields are Any: compiled, the arithmetic
        # below is then on native integers, not the generic number protocol
        dst_mac: bytes
        src_mac: bytes
        total_len: int
        flags_offset: int
        ttl: int
        src: int
        dst: int
        src_port: int
        dst_port: int
        length: int
        checksum: int
        (dst_mac, src_mac, total_len, flags_offset, ttl, src, dst, src_port, dst_port, length,
         checksum) = _PLAIN_UDP.unpack_from(frame)
        if (dst_mac != self.mac or dst != self.address or flags_offset & 0xBFFF or not ttl
                or self._impossible_source(src)
                or (src_mac == self.arp.gateway_mac and self._spoofed_via_gateway(src_mac, src))
                or length < udp.HEADER_LEN or total_len != length + 20 or total_len + 14 > len(frame)
                or int.from_bytes(frame[14:34], "big") % 0xFFFF):
            return False
        responder = self.udp.responders.get(dst_port)
        handler = self.udp.bindings.get(dst_port) if responder is None else None
        if responder is None and handler is None:
            return False
        end = 14 + total_len
        if checksum:
            body = int.from_bytes(frame[34:end], "big")
            if length & 1:
                body <<= 8
            # the header's share summed first, in small integers, then one add to the payload's
            if (body + ((src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 17 + length)) % 0xFFFF:
                return False
        self._delivered.count += 1
        if handler is not None:
            handler(frame[42:end], src, src_port, dst, dst_port)
            return True
        assert responder is not None
        reply = responder(frame[42:end], src, src_port, dst, dst_port)
        if reply is not None:
            self.udp.sent.count += 1            # what udp.sendto counts, for the same datagram
            self._transmit_udp(dst_port, src, src_port, reply[0], None, reply[1])
        return True

    # Keep the receive path flat: it runs once per frame.
    def _input_frame(self, frame: bytes) -> None:
        counters = self.counters
        if len(frame) < ethernet.HEADER_LEN:
            counters["ethernet.truncated.drop"] += 1
            return
        dst = frame[:6]
        if dst != self.mac and dst != ethernet.BROADCAST and dst not in self._multicast_macs:
            counters["ethernet.not_ours.drop"] += 1
            return
        ethertype = frame[12:14]
        if ethertype == _TYPE_IPV4:
            self._input_ipv4(frame[14:], frame[6:12])
        elif ethertype == _TYPE_ARP:
            self._input_arp(frame[14:])
        else:
            counters["ethernet.unknown_type.drop"] += 1

    def _impossible_source(self, src: int) -> bool:
        """A source no host can have (RFC 1122 3.2.1.3): this network (0/8),
        loopback, multicast or reserved, a broadcast, or our own address. A
        reply to one would go to everyone, or nowhere, or to ourselves. The
        one rule for both receive paths: the hot path asks it too."""
        top = src >> 24
        return (top == 0 or top == 127 or top >= 224 or src == self.subnet_broadcast
                or src == self.address)

    def _spoofed_via_gateway(self, src_mac: bytes, src: int) -> bool:
        """A source on our own subnet, other than the gateway, arriving from the
        gateway's MAC: a host on the subnet would have sent it from its own, so
        it was forged off-link (the check Linux's rp_filter makes by route).
        Without it, `--allow`'s own-subnet default could be borrowed from
        outside. One exception: an address ARP maps to the gateway's MAC, as the
        router may hold several on the LAN and has said so on the link, where
        an off-link sender cannot speak (the general path asks ARP about an
        address it does not know yet). Both receive paths ask it; the MAC is
        compared first, as most datagrams are settled by that alone (the hot
        path compares it before the call)."""
        if src_mac != self.arp.gateway_mac or src & self.netmask != self.network or src == self.gateway:
            return False
        entry = self.arp.cache.get(src)
        return entry is None or entry[0] != src_mac

    def _input_arp(self, packet: bytes) -> None:
        outcome = self.arp.input(self.now(), packet)
        if outcome.reply is not None:
            self._send_arp(outcome.reply[18:24], outcome.reply)   # target hardware address
        if outcome.resolved_mac is not None:
            prefix = outcome.resolved_mac + self._src_mac_type
            for ip_packet in outcome.released:
                self._send_frame(prefix + ip_packet)
            held = self._unverified.pop(outcome.resolved_ip or 0, None)
            if held is not None:
                # the gateway's MAC answered: the router's own address, so its
                # datagrams are judged again (and pass); any other MAC: forged
                for ip_packet in held:
                    try:
                        self._input_ipv4(ip_packet, self.arp.gateway_mac or b"")
                    except DropError as e:
                        self.counters[e.reason] += 1

    def _input_ipv4(self, packet: bytes, src_mac: bytes) -> None:
        hdr = ip4.parse(packet)
        if hdr.dst != self.address:
            if self.igmp.listening(hdr.dst):
                self._input_multicast(hdr, packet)
            else:
                self.counters["ipv4.not_ours.drop"] += 1
            return
        if self._impossible_source(hdr.src):
            self.counters["ipv4.bad_source.drop"] += 1
            return
        if self._spoofed_via_gateway(src_mac, hdr.src):
            self._verify_source(hdr.src, packet)
            return
        payload = packet[hdr.header_len:hdr.total_len]
        if hdr.is_fragment:
            whole = self.reassembler.input(self.now(), hdr, payload)
            if whole is None:
                return
            payload = whole
        protocol = hdr.protocol
        if protocol == ip4.PROTO_UDP:
            self._input_udp(hdr, payload)
        elif protocol == ip4.PROTO_TCP:
            self.tcp.input(self.now(), hdr.src, hdr.dst, payload)
        elif protocol == ip4.PROTO_ICMP:
            self._input_icmp(hdr, payload)
        else:
            self.counters["ipv4.unknown_protocol.drop"] += 1

    def _input_multicast(self, hdr: ip4.Ipv4Header, packet: bytes) -> None:
        """A datagram to a group we are in. IGMP queries may come from 0.0.0.0
        (snooping switches ask so): nothing is ever sent back to the source of
        one, reports go to groups. Anything else from an impossible source is dropped."""
        protocol = hdr.protocol
        if self._impossible_source(hdr.src) and not (protocol == ip4.PROTO_IGMP and hdr.src == 0):
            self.counters["ipv4.bad_source.drop"] += 1
            return
        data = packet[hdr.header_len:hdr.total_len]
        payload = self.reassembler.input(self.now(), hdr, data) if hdr.is_fragment else data
        if payload is None:
            return
        if protocol == ip4.PROTO_UDP:
            self.counters["ipv4.multicast.received"] += 1
            self._input_udp(hdr, payload)
        elif protocol == ip4.PROTO_IGMP:
            self.igmp.input(self.now(), payload)
        else:
            self.counters["ipv4.multicast.unknown_protocol.drop"] += 1

    def _verify_source(self, src: int, packet: bytes) -> None:
        """An own-subnet source behind the gateway's MAC that ARP does not map
        there. Known at another MAC, it is forged: dropped. Unknown, ARP asks
        who holds it and the datagram waits (a few per source, only while that
        resolution lasts): the router answers for an address of its own, a host
        with its own MAC, and for a forgery nobody answers."""
        entry = self.arp.cache.get(src)
        held = self._unverified.get(src)
        if entry is not None or (held is not None and len(held) >= UNVERIFIED_QUEUE):
            self.counters["ipv4.spoofed_via_gateway.drop"] += 1
            return
        if held is None:
            if len(self._unverified) >= UNVERIFIED_SOURCES:
                self.counters["ipv4.spoofed_via_gateway.drop"] += 1
                return
            request = self.arp.probe(self.now(), src)
            if request is None and src not in self.arp.pending:
                self.counters["ipv4.spoofed_via_gateway.drop"] += 1   # ARP's pending table is full
                return
            if request is not None:
                self._send_arp(ethernet.BROADCAST, request)
            held = self._unverified[src] = []
        held.append(packet)
        self.counters["ipv4.source_check.held"] += 1

    def _input_udp(self, hdr: ip4.Ipv4Header, segment: bytes) -> None:
        src_port, dst_port, data = udp.parse(segment, hdr.src, hdr.dst)
        responder = self.udp.responders.get(dst_port)
        if responder is not None:
            self._delivered.count += 1
            reply = responder(data, hdr.src, src_port, hdr.dst, dst_port)
            if reply is not None:
                self.udp.sendto(reply[0], dst_port, hdr.src, src_port)
            return
        handler = self.udp.bindings.get(dst_port)
        if handler is not None:
            self._delivered.count += 1
            handler(data, hdr.src, src_port, hdr.dst, dst_port)
            return
        handler_with_ttl = self.udp.bindings_with_ttl.get(dst_port)
        if handler_with_ttl is not None:
            self._delivered.count += 1
            handler_with_ttl(data, hdr.src, src_port, hdr.dst, dst_port, hdr.ttl)
            return
        if hdr.dst != self.address:     # RFC 1122 3.2.2: no ICMP error about a multicast datagram
            self.counters["udp.multicast.closed_port.drop"] += 1
            return
        self.counters["udp.closed_port.drop"] += 1
        if self.icmp_errors.allow(self.now()):
            quoted = ip4.header(hdr.src, hdr.dst, hdr.protocol, len(segment), hdr.ident,
                                 0, hdr.ttl) + segment
            self.counters["icmp.port_unreachable.sent"] += 1
            self.send_ip(hdr.src, ip4.PROTO_ICMP, icmp.port_unreachable(quoted))
        else:
            self.counters["icmp.port_unreachable.rate_limited"] += 1

    def _input_icmp(self, hdr: ip4.Ipv4Header, message: bytes) -> None:
        icmp_type, code = icmp.parse(message)
        if icmp_type == icmp.TYPE_ECHO_REQUEST:
            self.counters["icmp.echo.replied"] += 1
            self.send_ip(hdr.src, ip4.PROTO_ICMP, icmp.echo_reply(message))
        elif icmp_type == icmp.TYPE_DEST_UNREACHABLE and code == icmp.CODE_FRAGMENTATION_NEEDED:
            mtu, quoted = icmp.fragmentation_needed(message)
            if quoted.src != self.address or quoted.protocol != ip4.PROTO_TCP:
                self.counters["icmp.frag_needed.not_ours.drop"] += 1   # only TCP sends with DF
                return
            self.tcp.path_mtu(self.now(), quoted.dst, quoted.payload, mtu)
        else:
            self.counters[f"icmp.type{icmp_type}.ignored"] += 1

    # -- send path ---------------------------------------------------------------------
    def _transmit_udp(self, src_port: int, dst_ip: int, dst_port: int, payload: bytes,
                      ttl: int | None = None, payload_sum: int | None = None) -> None:
        """Every reply passes here. A unicast datagram that fits the MTU, to a
        next hop whose MAC is known, leaves as one frame whose three headers
        are packed at once, both checksums summed from the field values (the
        same bytes as udp.build, ip4.header and send_ip's prefix; a test holds
        them equal), the payload's share from ``payload_sum`` when a responder
        kept it (udp.Responder), else summed here. Anything else takes send_ip
        (routes, fragments, ARP)."""
        address = self.address
        length = udp.HEADER_LEN + len(payload)
        total = length + ip4.MIN_HEADER_LEN
        if total <= self.mtu and dst_ip >> 28 != 0xE:
            hop = dst_ip if dst_ip & self.netmask == self.network else self.gateway
            if hop is not None and hop != self.subnet_broadcast:
                mac = self.arp.lookup(hop, self.now())
                if mac is not None:
                    ttl = ttl or ip4.DEFAULT_TTL
                    ident = self._ident = (self._ident + 1) & 0xFFFF
                    addresses = (address >> 16) + (address & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF)
                    ip_sum = 0x4500 + total + ident + (ttl << 8 | ip4.PROTO_UDP) + addresses
                    if payload_sum is None:
                        # the payload read as one integer is congruent to its words' sum (checksum.py)
                        body = int.from_bytes(payload, "big")
                        payload_sum = body << 8 if length & 1 else body
                    udp_sum = addresses + ip4.PROTO_UDP + length + src_port + dst_port + length + payload_sum
                    # _send_frame, inlined: every reply passes here
                    if not self.link.send(_UDP_FRAME_HEAD.pack(
                            mac, self.mac, ethernet.TYPE_IPV4, 0x45, 0, total, ident, 0, ttl, ip4.PROTO_UDP,
                            0xFFFF - ip_sum % 0xFFFF, address, dst_ip, src_port, dst_port, length,
                            0xFFFF - udp_sum % 0xFFFF) + payload):
                        self.counters["link.tx.drop"] += 1
                    return
        self.send_ip(dst_ip, ip4.PROTO_UDP, udp.build(address, src_port, dst_ip, dst_port, payload),
                     ttl=ttl or ip4.DEFAULT_TTL)

    def _transmit_tcp(self, dst_ip: int, segment: bytes) -> None:
        self.send_ip(dst_ip, ip4.PROTO_TCP, segment, dont_fragment=True)

    def send_ip(self, dst_ip: int, protocol: int, payload: bytes, *, dont_fragment: bool = False,
                ttl: int = ip4.DEFAULT_TTL) -> None:
        """Routes, fragments and sends one datagram; never raises. A multicast
        destination goes to its group's MAC on our link, never to a router."""
        multicast = dst_ip >> 28 == 0xE          # igmp.is_multicast, inlined: every reply passes here
        hop = dst_ip if multicast or dst_ip & self.netmask == self.network else self.gateway
        if hop is None:
            self.counters["ipv4.no_route.drop"] += 1
            return
        ident = self._ident = (self._ident + 1) & 0xFFFF
        if len(payload) + 20 <= self.mtu:
            packets = [ip4.header(self.address, dst_ip, protocol, len(payload), ident,
                                  ip4.FLAG_DF if dont_fragment else 0, ttl) + payload]
        else:
            try:
                packets = ip4.fragment(self.address, dst_ip, protocol, payload, ident, self.mtu,
                                       dont_fragment, ttl)
            except ip4.Ipv4Error as e:
                self.counters[e.reason] += 1
                return
            self.counters["ipv4.fragmented"] += 1
        mac: bytes | None
        if multicast:
            mac = ethernet.multicast_mac(dst_ip)
        elif hop == self.subnet_broadcast:
            mac = ethernet.BROADCAST
        else:
            mac = self.arp.lookup(hop, self.now())
        if mac is not None:
            prefix = mac + self._src_mac_type
            for packet in packets:
                self._send_frame(prefix + packet)
            return
        now = self.now()
        for packet in packets:
            request = self.arp.resolve(now, hop, packet)
            if request is not None:
                self._send_arp(ethernet.BROADCAST, request)

    def _send_igmp(self, messages: list[igmp.Message]) -> None:
        """IGMP goes out with TTL 1 and Router Alert (RFC 2236 2, RFC 3376 4)."""
        for dst, message in messages:
            self._ident = (self._ident + 1) & 0xFFFF
            header = ip4.header_with_options(self.address, dst, ip4.PROTO_IGMP, len(message), self._ident,
                                             igmp.ROUTER_ALERT, igmp.TTL)
            self.link.send(ethernet.header(ethernet.multicast_mac(dst), self.mac, ethernet.TYPE_IPV4)
                           + header + message)

    def _send_arp(self, dst_mac: bytes, packet: bytes) -> None:
        self._send_frame(ethernet.header(dst_mac, self.mac, ethernet.TYPE_ARP) + packet)

    def _send_frame(self, frame: bytes) -> None:
        if not self.link.send(frame):
            self.counters["link.tx.drop"] += 1
