"""The mDNS querier on our own stack, on a tap in a namespace, against real
responders on the tap's host side: avahi-daemon and python-zeroconf. tcpdump
records what we send; scapy forges what an off-link attacker would."""
from __future__ import annotations

import asyncio
import ipaddress
import socket

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.sendrecv import sendp
from scapy.utils import rdpcap

from netstack.stack import Stack
from tests.mdns_peers import needs_avahi, start_avahi, start_zeroconf
from tests.netns import Namespace, needs_root, read_until
from tests.stackutil import KERNEL_SIDE, STACK_SIDE, tap_link
from unikernel.sources.mdns import MdnsQuerier

pytestmark = [pytest.mark.root, needs_root]

CLIENT = (ipaddress.IPv4Address("192.0.2.1"), 40000)
SERVER = (ipaddress.IPv4Address(STACK_SIDE), 53)
HOSTS = {"printer.local": "192.0.2.20", "nas.local": "192.0.2.30"}


def with_querier(body, *, responder, capture=None):
    """Our stack and querier on tap0 in a fresh namespace, a responder
    started by `responder(ns)` once the tap is open, then ``await body(ns, stack, querier)``."""
    with Namespace() as ns:
        link = tap_link(ns)
        ns.ip("route", "add", "224.0.0.0/4", "dev", "tap0")     # where the host side's multicast goes
        dump = None
        if capture is not None:
            dump = ns.popen("tcpdump", "-U", "-n", "-i", "tap0", "-w", str(capture), "igmp or udp port 5353")
            read_until(dump, "listening on", 10)
        responder(ns)

        async def main():
            stack = Stack(link, ipaddress.IPv4Interface(f"{STACK_SIDE}/24"), ipaddress.IPv4Address(KERNEL_SIDE))
            await stack.start()
            querier = MdnsQuerier(stack.udp, interface=stack.interface, allowed=lambda ip: True,
                                  join=stack.join_group, leave=stack.leave_group, counters=stack.counters,
                                  clock=stack.now)
            querier.start()
            try:
                return await body(ns, stack, querier)
            finally:
                querier.close()
                stack.close()

        try:
            return asyncio.run(main())
        finally:
            if dump is not None:
                dump.terminate()
                dump.wait(5)


async def ask(querier, name, rdtype="A"):
    answer = await querier.process(src=CLIENT, dst=SERVER, query=dns.message.make_query(name, rdtype))
    return answer.message if answer is not None else None


def addresses(message):
    return sorted(r.address for rrset in message.answer for r in rrset if rrset.rdtype == dns.rdatatype.A)


@needs_avahi
def test_avahi_names_addresses_reverse_and_services(tmp_path):
    capture = tmp_path / "tap0.pcap"

    def responder(ns):
        start_avahi(ns, interface="tap0", hosts=HOSTS, services=[("Printer Web", "_http._tcp", 631, "printer.local")])

    async def body(ns, stack, querier):
        loop = asyncio.get_running_loop()
        started = loop.time()
        printer = await ask(querier, "printer.local")
        took = loop.time() - started
        nas = await ask(querier, "NAS.local")
        reverse = await ask(querier, "30.2.0.192.in-addr.arpa", "PTR")
        browse = await ask(querier, "_http._tcp.local", "PTR")
        started = loop.time()
        nobody = await ask(querier, "nobody-has-this.local")
        nobody_took = loop.time() - started
        return printer, took, nas, reverse, browse, nobody, nobody_took, dict(stack.counters)

    printer, took, nas, reverse, browse, nobody, nobody_took, counters = with_querier(
        body, responder=responder, capture=capture)
    assert addresses(printer) == ["192.0.2.20"] and took < 0.9
    assert all(rrset.ttl <= 10 for rrset in printer.answer)
    assert addresses(nas) == ["192.0.2.30"]
    assert [r.target.to_text() for r in reverse.answer[0]] == ["nas.local."]
    assert [r.target.to_text() for r in browse.answer[0]] == ["Printer\\032Web._http._tcp.local."]
    srv = [rrset for rrset in browse.additional if rrset.rdtype == dns.rdatatype.SRV]
    assert srv and srv[0][0].port == 631 and srv[0][0].target.to_text() == "printer.local."
    assert nobody.rcode() == dns.rcode.NXDOMAIN and nobody_took < 2.0
    assert counters["mdns.reply.unicast"] >= 3 and counters.get("mdns.reply.ttl.drop", 0) == 0   # avahi: unicast at TTL 255

    # what went on the wire, read by scapy from tcpdump's capture
    frames = rdpcap(str(capture))
    ours = [f for f in frames if f.haslayer(IP) and f[IP].src == STACK_SIDE]
    reports = [f for f in ours if f[IP].proto == 2]
    assert reports and reports[0][IP].dst == "224.0.0.22" and reports[0][IP].ttl == 1
    assert reports[0][Ether].dst == "01:00:5e:00:00:16"
    queries = [f for f in ours if f.haslayer(UDP) and f[UDP].dport == 5353]
    assert len(queries) == 5
    for q in queries:
        assert q[IP].dst == "224.0.0.251" and q[IP].ttl == 255 and q[Ether].dst == "01:00:5e:00:00:fb"
        assert q[UDP].sport != 5353                        # one-shot: answers come back by unicast
    asked = [dns.message.from_wire(bytes(q[UDP].payload)).question[0].name.to_text() for q in queries]
    assert asked == ["printer.local.", "nas.local.", "30.2.0.192.in-addr.arpa.", "_http._tcp.local.",
                     "nobody-has-this.local."]


def test_zeroconf_names_and_services():
    services = [("Printer Web", "_http._tcp", 80, "printer.local", "192.0.2.20"),
                ("NAS Web", "_http._tcp", 8080, "nas.local", "192.0.2.30")]

    def responder(ns):
        start_zeroconf(ns, address=KERNEL_SIDE, services=services)

    async def body(ns, stack, querier):
        printer = await ask(querier, "printer.local")
        nas = await ask(querier, "nas.local")
        browse = await ask(querier, "_http._tcp.local", "PTR")
        return printer, nas, browse, dict(stack.counters)

    printer, nas, browse, counters = with_querier(body, responder=responder)
    assert addresses(printer) == ["192.0.2.20"]
    assert addresses(nas) == ["192.0.2.30"]
    assert sorted(r.target.to_text() for r in browse.answer[0]) == ["NAS\\032Web._http._tcp.local.",
                                                                   "Printer\\032Web._http._tcp.local."]
    # zeroconf's unicast replies leave with its socket's default TTL (64): taken,
    # as they match our port, ID and question, and counted
    assert counters["mdns.reply.unicast.ttl_below_255"] >= 1 and counters["mdns.reply.unicast"] >= 1


def test_spoofed_off_link_responses_are_ignored():
    def responder(ns):
        pass

    async def body(ns, stack, querier):
        task = asyncio.ensure_future(ask(querier, "victim.local"))
        await asyncio.sleep(0.05)
        [lookup] = querier._in_flight.values()
        forged = dns.message.make_response(dns.message.make_query("victim.local", "A"))
        forged.id = lookup.ident
        forged.answer.append(dns.rrset.from_text("victim.local.", 120, "IN", "A", "6.6.6.6"))
        wire = forged.to_wire()
        frames = [
            Ether(dst=stack.mac) / IP(src="198.51.100.7", dst=STACK_SIDE, ttl=255) / UDP(sport=5353, dport=querier.port) / wire,
            Ether(dst="01:00:5e:00:00:fb") / IP(src="192.0.2.77", dst="224.0.0.251", ttl=60) / UDP(sport=5353, dport=5353) / wire,
            Ether(dst="01:00:5e:00:00:fb") / IP(src="198.51.100.7", dst="224.0.0.251", ttl=255) / UDP(sport=5353, dport=5353) / wire,
        ]

        def send():
            with ns.entered():
                sendp([f.__class__(bytes(f)) for f in frames], iface="tap0", verbose=False)
        await asyncio.to_thread(send)
        message = await task
        return message, dict(stack.counters)

    message, counters = with_querier(body, responder=responder)
    assert message.rcode() == dns.rcode.NXDOMAIN and message.answer == []
    assert counters["mdns.reply.off_link.drop"] == 2 and counters["mdns.reply.ttl.drop"] == 1


@needs_avahi
def test_a_flood_of_junk_forged_and_huge_responses_changes_no_answer():
    from scapy.layers.inet import fragment

    def responder(ns):
        start_avahi(ns, interface="tap0", hosts=HOSTS)

    async def body(ns, stack, querier):
        # built before the questions are asked (scapy is slow, and the loop would wait)
        forged = dns.message.make_response(dns.message.make_query("printer.local", "A"))
        forged.answer.append(dns.rrset.from_text("printer.local.", 120, "IN", "A", "6.6.6.6"))
        forged.answer.append(dns.rrset.from_text("bank.example.", 120, "IN", "A", "6.6.6.6"))
        wire = forged.to_wire()
        group = Ether(dst="01:00:5e:00:00:fb") / IP(src="192.0.2.77", dst="224.0.0.251", ttl=255) / UDP(sport=5353, dport=5353)
        frames = [bytes(f) for f in fragment(group / (wire + b"\0" * 12000), fragsize=1400)]   # past 9000 bytes
        frames += [bytes(group / (bytes([n % 256]) * (n % 40))) for n in range(300)]          # junk
        spoof = bytes(Ether(dst=stack.mac) / IP(src="198.51.100.7", dst=STACK_SIDE, ttl=255)
                      / UDP(sport=5353, dport=querier.port, chksum=0) / wire)              # off-link

        nobody = asyncio.ensure_future(ask(querier, "nobody.local"))    # open for a second
        task = asyncio.ensure_future(ask(querier, "printer.local"))
        await asyncio.sleep(0)
        lookup = querier._in_flight[(dns.name.from_text("printer.local."), dns.rdatatype.A)]
        forged_id = spoof[:42] + lookup.ident.to_bytes(2, "big") + spoof[44:]       # with the right ID
        frames += [forged_id] * 300

        def send():
            # raw bytes on a packet socket, not scapy's sendp: on a loaded machine
            # sendp's per-frame work outlasts the questions this junk must meet
            with ns.entered(), socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
                raw.bind(("tap0", 0))
                for f in frames:
                    raw.send(f)
        await asyncio.to_thread(send)
        printer = await task
        bank = await ask(querier, "bank.example")
        return printer, await nobody, bank, dict(stack.counters)

    printer, nobody, bank, counters = with_querier(body, responder=responder)
    assert addresses(printer) == ["192.0.2.20"]          # avahi's, not the forger's
    assert nobody.rcode() == dns.rcode.NXDOMAIN and nobody.answer == []
    assert bank is None                                  # not ours to answer, and nothing kept for it
    assert counters["mdns.reply.off_link.drop"] >= 1
    assert counters["mdns.reply.malformed.drop"] >= 1    # the huge one and the junk, while a question was open
    assert counters.get("stack.exception.drop", 0) == 0
