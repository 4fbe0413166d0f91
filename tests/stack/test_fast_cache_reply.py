"""A cache hit leaves through the stack's responder path as a kept answer
does: the cache's variant (a wire.KeptAnswer whose TTLs count down) patched
by the server, its UDP checksum patched from the sum the cache moves with the
TTLs. The frame must be the one the slow path sends for the same query from
the same entry (the forwarder's answer, cache.response, rendered), byte for
byte, with checksums scapy agrees with, as the seconds pass. Each RRset
holds one record: dnspython shuffles the records of an RRset every time it
renders one (Rdataset.to_wire's want_shuffle), so the slow path's order of
two is not fixed."""
from __future__ import annotations

import asyncio
import random

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.stack.test_fast_reply import GATEWAY_MAC, random_case
from tests.stackutil import GATEWAY, OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, make_stack, prime_arp
from unikernel.process import Answer, processor_of_process
from unikernel.resolver.cache import SECURITY_SECURE, Cache
from unikernel.serve.server import DnsServer

SOA = ("example.com.", 3600, "IN", "SOA", "ns.example.com. host.example.com. 1 7200 900 1209600 300")
# (name, type, rcode, answer, authority, additional, validated)
REPLIES = [
    ("www.example.com.", "A", dns.rcode.NOERROR,
     [("www.example.com.", 300, "IN", "A", "192.0.2.7")],
     [("example.com.", 3600, "IN", "NS", "ns1.example.com.")], [("ns1.example.com.", 121, "IN", "A", "192.0.2.53")],
     False),
    ("mail.example.com.", "MX", dns.rcode.NOERROR,
     [("mail.example.com.", 177, "IN", "MX", "10 mx1.example.com.")], [],
     [("mx1.example.com.", 145, "IN", "A", "192.0.2.25")], True),
    ("alias.example.com.", "A", dns.rcode.NOERROR,
     [("alias.example.com.", 500, "IN", "CNAME", "www.example.com."), ("www.example.com.", 299, "IN", "A", "192.0.2.7")],
     [], [], True),
    ("nope.example.com.", "A", dns.rcode.NXDOMAIN, [], [SOA], [], False),
    ("www.example.com.", "TXT", dns.rcode.NOERROR, [], [SOA], [], False),          # NODATA
]


def upstream_reply(name, rdtype, rcode, answer, authority, additional):
    reply = dns.message.make_response(dns.message.make_query(name, rdtype))
    reply.set_rcode(rcode)
    reply.answer = [dns.rrset.from_text(*r) for r in answer]
    reply.authority = [dns.rrset.from_text(*r) for r in authority]
    reply.additional = [dns.rrset.from_text(*r) for r in additional]
    return reply


def fill(cache: Cache, now: float) -> None:
    for name, rdtype, rcode, answer, authority, additional, validated in REPLIES:
        qname = dns.name.from_text(name)
        qtype = dns.rdatatype.from_text(rdtype)
        for do in (False, True):
            entry = cache.entry_from_reply(qname, qtype, 1, do, upstream_reply(name, rdtype, rcode, answer, authority,
                                                                             additional), now)
            assert entry is not None
            if validated:
                entry.security = SECURITY_SECURE
            assert cache.store(entry)


def cached_process(cache: Cache, clock):
    """What the forwarder does with a cache hit on its slow path."""
    async def process(*, src, dst, query):
        question = query.question[0]
        do = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        entry = cache.get(question.name, question.rdtype, question.rdclass, do, clock())
        assert entry is not None, "the test asks only what is cached"
        return Answer(cache.response(query, entry, clock()), source="cache")
    return process


def query_frame(name: str, rdtype: str, rng: random.Random, client: str, mac: bytes, *, edns: int, do: bool) -> bytes:
    query = dns.message.make_query(random_case(name, rng), rdtype, use_edns=edns, payload=1232, want_dnssec=do,
                                   id=rng.randrange(65536))
    if rng.random() < 0.5:
        query.flags &= ~dns.flags.RD
    for bit in (dns.flags.AD, dns.flags.CD):
        if rng.random() < 0.3:
            query.flags |= bit
    return bytes(Ether(dst=OUR_MAC, src=mac) / IP(src=client, dst=OUR_IP, id=rng.randrange(65536))
                 / UDP(sport=rng.randrange(1024, 65536), dport=53) / query.to_wire())


def test_a_cache_hit_frame_is_the_slow_paths_frame_as_ttls_count_down():
    rng = random.Random(14)

    async def check():
        stack, link, clock = make_stack()
        prime_arp(stack)
        prime_arp(stack, GATEWAY, GATEWAY_MAC)
        cache = Cache(counters=stack.counters)
        stored = clock.now
        fill(cache, stored)
        fast_lookups = (cache.fast_lookup(lambda ip: True),)
        server = DnsServer(stack, 53, processor_of_process(cached_process(cache, clock)), fast_lookups=fast_lookups,
                           recursion_for=lambda ip: True, clock=clock)
        server.start()
        compared = 0
        for elapsed in (0, 0.5, 1, 7.25, 44, 99, 120.9):     # every entry lives 121 s at least
            clock.now = stored + elapsed
            prime_arp(stack)                                   # ARP's entries age with the same clock
            prime_arp(stack, GATEWAY, GATEWAY_MAC)
            for name, rdtype, *_ in REPLIES:
                for edns, do in ((-1, False), (0, False), (0, True)):
                    for client, mac in ((PEER_IP, PEER_MAC), ("198.51.100.7", GATEWAY_MAC)):
                        frame = query_frame(name, rdtype, rng, client, mac, edns=edns, do=do)
                        hits, ident = stack.counters["dns.fast.lookup_hit"], stack._ident
                        stack.receive(frame)
                        assert stack.counters["dns.fast.lookup_hit"] == hits + 1, (name, rdtype, edns, do)
                        [memoised] = link.take()
                        server.fast_lookups = ()               # the same query, through the slow path
                        stack._ident = ident
                        stack.receive(frame)
                        while server.pending:
                            await asyncio.gather(*server.pending)
                        server.fast_lookups = fast_lookups
                        [slow] = link.take()
                        assert memoised == slow, (name, rdtype, edns, do, elapsed)
                        out = Ether(memoised)
                        again = out.copy()
                        del again[IP].chksum, again[UDP].chksum
                        again = Ether(bytes(again))            # scapy sums both
                        assert (again[IP].chksum, again[UDP].chksum) == (out[IP].chksum, out[UDP].chksum)
                        answer = dns.message.from_wire(bytes(out[UDP].payload))
                        for rrset in answer.answer:
                            assert rrset.ttl <= 500 - int(elapsed)      # counted down, as the slow path's
                        compared += 1
        assert server.kept_answers == {}                      # every hit was the cache's
        return compared

    assert asyncio.run(check()) == 7 * len(REPLIES) * 3 * 2
