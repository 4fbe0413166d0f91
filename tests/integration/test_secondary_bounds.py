"""The secondary's bounds on a transfer in, against a hostile primary: the
Linux kernel's TCP on the far side of the tap, serving an AXFR that never
ends (records without the closing SOA), that is too big, or that stalls.
Each transfer is cut at its bound and counted; nothing of it is kept (the
zone stays unserved: SERVFAIL, never half a zone); the connection is
closed; the next try is scheduled, not at once."""
from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from tests.netns import needs_root
from tests.stackutil import KERNEL_SIDE, with_stack
from unikernel.transfer.secondary import FIRST_RETRY, SecondaryService, SecondaryZones

pytestmark = [needs_root]

PORT = 5300
ORIGIN = dns.name.from_text("t.example.")
SOA = dns.rrset.from_text(ORIGIN, 3600, "IN", "SOA", "ns.t.example. hm.t.example. 7 3600 600 86400 300")


def records(start: int, count: int) -> dns.rrset.RRset:
    """`count` A records at distinct names (each a record the bound counts)."""
    rrset = dns.rrset.RRset(dns.name.from_text("many.t.example."), dns.rdataclass.IN, dns.rdatatype.A)
    rrset.update_ttl(300)
    for i in range(start, start + count):
        rrset.add(dns.rdata.from_text("IN", "A", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))
    return rrset


class HostilePrimary:
    """Answers one AXFR as `how` says: "endless" (messages of 500 records,
    never the closing SOA), "stall" (the first message, then nothing)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.sent = 0
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = int.from_bytes(await reader.readexactly(2), "big")
        query = dns.message.from_wire(await reader.readexactly(length))
        assert query.question[0].rdtype == dns.rdatatype.AXFR
        try:
            first = True
            while True:
                message = dns.message.make_response(query)
                if not first:
                    message.question = []
                message.answer = ([SOA] if first else []) + [records(self.sent * 500, 500)]
                data = message.to_wire(max_size=65535)
                writer.write(len(data).to_bytes(2, "big") + data)
                await writer.drain()
                self.sent += 1
                first = False
                if self.how == "stall":
                    await reader.read()          # until the secondary gives up and closes
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            writer.close()


def transfer_against(how: str, **bounds):
    """Runs one refresh of t.example against a HostilePrimary; returns the
    zone's state, the counters and the primary."""
    async def body(ns, stack):
        primary = HostilePrimary(how)
        with ns.entered():
            listener = socket.create_server((KERNEL_SIDE, PORT))
        server = await asyncio.start_server(primary.handle, sock=listener)
        zones = SecondaryZones([f"t.example@{KERNEL_SIDE}:{PORT}"], key=None, counters=stack.counters,
                               clock=stack.now)
        service = SecondaryService(stack, zones, **bounds)
        [zone] = zones.zones.values()
        await service.refresh(zone)
        retry_in = zone.next_at - stack.now()
        await asyncio.wait_for(primary.closed.wait(), 10)     # the secondary closed its end
        server.close()
        return zone, dict(stack.counters.items()), primary, retry_in

    return with_stack(body)


@pytest.mark.parametrize("bound,counter", [({"max_records": 5_000}, "secondary.transfer.too_many_records"),
                                           ({"max_bytes": 40_000}, "secondary.transfer.too_big")])
def test_an_endless_transfer_is_cut_at_its_bound(bound, counter):
    zone, counters, primary, retry_in = transfer_against("endless", **bound)
    assert counters.get(counter) == 1 and counters.get("secondary.transfer.failed") == 1
    # reset, so the primary stopped (without the reset it writes on into a
    # zero window, and the wait for its end above times out); what it sent
    # ahead is what its socket buffers and our window held (~8 KB a message)
    assert primary.sent < 100
    assert zone.served is None and len(zone.data.nodes) == 0     # nothing of it kept
    assert zone.expired(0.0)                         # answered SERVFAIL until a whole transfer comes
    assert FIRST_RETRY - 1 < retry_in <= FIRST_RETRY


def test_a_stalled_transfer_is_cut_at_its_deadline():
    # the deadline covers the connect too, whose first SYN a fresh tap may
    # lose (the next goes 1 s later)
    zone, counters, primary, retry_in = transfer_against("stall", timeout=3.0)
    assert primary.sent == 1
    assert counters.get("secondary.transfer.failed") == 1
    assert zone.served is None and len(zone.data.nodes) == 0
    assert FIRST_RETRY - 1 < retry_in <= FIRST_RETRY
