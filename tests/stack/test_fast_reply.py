"""The memoised reply frame: a kept answer leaves through the stack's
responder path (udp.bind_responder), its UDP checksum patched from the sums
kept with the answer. It must be the general path's frame, byte for byte,
with checksums scapy agrees with, and leave the same counters behind."""
from __future__ import annotations

import asyncio
import random
from pathlib import Path

import dns.flags
import dns.message
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.stackutil import GATEWAY, OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack, prime_arp
from unikernel.process import processor_of_process
from unikernel.serve.rrl import ResponseRateLimiter
from unikernel.serve.server import DnsServer
from unikernel.sources.zone import zone_process

ZONES = Path(__file__).resolve().parent.parent / "integration" / "zones"
GATEWAY_MAC = bytes.fromhex("02aabbccdd01")
FAR_CLIENT = "198.51.100.7"        # behind the gateway
NAMES = ["www.hard.example.", "hard.example.", "nope.hard.example.", "big.hard.example.", "a.b.ent.hard.example.",
         "foo.wild.hard.example.", "_sip._udp.hard.example.", "alias1.hard.example."]
TYPES = ["A", "MX", "TXT", "NS", "SOA", "SRV", "AAAA"]


def random_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def query_frame(name: str, rdtype: str, rng: random.Random, client: str, mac: bytes, *, edns: int, payload: int,
                do: bool) -> bytes:
    query = dns.message.make_query(random_case(name, rng), rdtype, use_edns=edns, payload=payload, want_dnssec=do,
                                   id=rng.randrange(65536))
    if rng.random() < 0.5:
        query.flags &= ~dns.flags.RD
    return bytes(Ether(dst=OUR_MAC, src=mac) / IP(src=client, dst=OUR_IP, id=rng.randrange(65536))
                 / UDP(sport=rng.randrange(1024, 65536), dport=53) / query.to_wire())


async def serve(**options):
    stack, link, clock = make_stack()
    prime_arp(stack)
    prime_arp(stack, GATEWAY, GATEWAY_MAC)
    server = DnsServer(stack, 53, processor_of_process(zone_process([ZONES / "hard.example.zone"])), **options)
    server.start()
    return stack, link, server


async def settle(server: DnsServer) -> None:
    while server.pending:
        await asyncio.gather(*server.pending)


@pytest.mark.parametrize("client, mac", [(PEER_IP, PEER_MAC), (FAR_CLIENT, GATEWAY_MAC)])
def test_the_memoised_reply_frame_is_the_general_paths_frame(client, mac):
    rng = random.Random(14)

    async def check():
        stack, link, server = await serve()
        fast = 0
        for name in NAMES:
            for rdtype in TYPES:
                for edns, payload, do in ((-1, 0, False), (0, 1232, False), (0, 4096, True)):
                    stack.receive(query_frame(name, rdtype, rng, client, mac, edns=edns, payload=payload, do=do))
                    await settle(server)             # the slow path answers and keeps it
                    link.take()
                    frame = query_frame(name, rdtype, rng, client, mac, edns=edns, payload=payload, do=do)
                    hits, ident = stack.counters["dns.fast.hit"], stack._ident
                    stack.receive(frame)
                    sent = link.take()
                    if stack.counters["dns.fast.hit"] == hits:
                        continue                     # not kept (truncated for this client): slow path, no frame yet
                    fast += 1
                    [memoised] = sent
                    reply = bytes(Ether(memoised)[UDP].payload)
                    stack._ident = ident
                    query = Ether(frame)
                    stack.udp.sendto(reply, 53, stack.address - 1 if client == PEER_IP else
                                     int.from_bytes(bytes(map(int, client.split("."))), "big"), query[UDP].sport)
                    [general] = link.take()
                    assert memoised == general, (name, rdtype, edns)
                    out = Ether(memoised)
                    assert out.dst == ":".join(f"{b:02x}" for b in mac) and out[IP].dst == client
                    assert out[UDP].dport == query[UDP].sport and out[UDP].sport == 53
                    again = out.copy()
                    del again[IP].chksum, again[UDP].chksum
                    again = Ether(bytes(again))                 # scapy sums both
                    assert (again[IP].chksum, again[UDP].chksum) == (out[IP].chksum, out[UDP].chksum)
                    answer = dns.message.from_wire(reply)
                    assert answer.id == dns.message.from_wire(bytes(query[UDP].payload)).id
        return fast

    assert asyncio.run(check()) > 100


def test_a_memoised_reply_counts_what_the_general_path_counts():
    rng = random.Random(3)

    async def check():
        stack, link, server = await serve()
        first = query_frame("www.hard.example.", "A", rng, PEER_IP, PEER_MAC, edns=-1, payload=0, do=False)
        stack.receive(first)
        await settle(server)
        link.take()
        before = dict(stack.counters)
        stack.receive(query_frame("www.hard.example.", "A", rng, PEER_IP, PEER_MAC, edns=-1, payload=0, do=False))
        assert len(link.take()) == 1
        return {k: v - before.get(k, 0) for k, v in stack.counters.items() if v != before.get(k, 0)}

    assert asyncio.run(check()) == {"udp.delivered": 1, "dns.fast.hit": 1, "udp.sent": 1}


@pytest.mark.parametrize("slip", [0, 1])
def test_rrl_still_limits_memoised_replies(slip):
    """Over the rate, a kept answer is dropped (slip 0) or slipped: its
    truncated empty form, whose checksum the stack sums itself."""
    rng = random.Random(5)

    async def check():
        stack, link, server = await serve()
        server.rrl = ResponseRateLimiter(1, slip, counters=stack.counters)
        for _ in range(8):
            stack.receive(query_frame("www.hard.example.", "A", rng, PEER_IP, PEER_MAC, edns=-1, payload=0, do=False))
            await settle(server)
        return [Ether(f) for f in link.take()], stack.counters

    sent, counters = asyncio.run(check())
    assert counters["dns.fast.hit"] == 7
    limited = counters["dns.rrl.dropped"] + counters["dns.rrl.slipped"]
    assert limited >= 4 and counters["dns.rrl.dropped" if slip else "dns.rrl.slipped"] == 0
    assert len(sent) == 8 - counters["dns.rrl.dropped"]
    truncated = [f for f in sent if dns.message.from_wire(bytes(f[UDP].payload)).flags & dns.flags.TC]
    assert len(truncated) == counters["dns.rrl.slipped"]
    for out in sent:
        again = out.copy()
        del again[UDP].chksum
        assert Ether(bytes(again))[UDP].chksum == out[UDP].chksum


def test_a_memoised_reply_to_a_next_hop_arp_forgot_waits_for_arp():
    """The reply's next hop is looked up as for any datagram: an entry that
    expired sends an ARP request and holds the reply until it is answered."""
    rng = random.Random(9)

    async def check():
        stack, link, server = await serve()
        stack.receive(query_frame("www.hard.example.", "A", rng, PEER_IP, PEER_MAC, edns=-1, payload=0, do=False))
        await settle(server)
        link.take()
        stack.arp.cache.clear()
        stack.receive(query_frame("www.hard.example.", "A", rng, PEER_IP, PEER_MAC, edns=-1, payload=0, do=False))
        return [Ether(f) for f in link.take()], stack.counters

    sent, counters = asyncio.run(check())
    assert counters["dns.fast.hit"] == 1
    assert [f.type for f in sent] == [0x0806] and sent[0].dst == "ff:ff:ff:ff:ff:ff"
