"""Which transport carries a query to which upstream.

The forwarder asks every upstream through one ``query(server, qname, rdtype,
...)``, the stub resolver's. ``UpstreamTransports`` offers the same call and
routes it: an upstream declared ``tls://`` is asked over DNS over TLS (its
``TlsUpstream``), any other through the stub resolver (UDP, TCP when
truncated). A TLS upstream never falls back to the stub: its failure is the
forwarder's to handle (the next upstream, or SERVFAIL), so a query meant for
TLS never leaves in plain text. 0x20 and the TCP retry are for UDP; TLS needs
neither and ignores them.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dns.rdataclass

from unikernel.resolver.stub import DEFAULT_PAYLOAD, Reply, StubResolver

if TYPE_CHECKING:
    # only an appliance with tls:// upstreams makes one (unikernel.main), and
    # its module imports ssl, which the others need not load
    from unikernel.resolver.tls_upstream import TlsUpstream


class UpstreamTransports:
    def __init__(self, stub: StubResolver, tls: Mapping[tuple[int, int], TlsUpstream]) -> None:
        self.stub = stub
        self.tls = dict(tls)
        self.counters = stub.counters

    async def query(self, server: tuple[int, int], qname, rdtype: int, rdclass: int = dns.rdataclass.IN, *,
                    timeout: float = 2.0, rd: bool = True, payload: int | None = DEFAULT_PAYLOAD,
                    do: bool = False, cd: bool = False, **udp_options: Any) -> Reply:
        """The stub resolver's call. Options only UDP has (0x20 and its
        case-mismatch callback, the TCP retry) go to the stub and nowhere
        else, so a new one needs no change here."""
        upstream = self.tls.get(server)
        if upstream is None:
            return await self.stub.query(server, qname, rdtype, rdclass, timeout=timeout, rd=rd, payload=payload,
                                         do=do, cd=cd, **udp_options)
        return await upstream.query(qname, rdtype, rdclass, timeout=timeout, rd=rd, payload=payload, do=do, cd=cd)

    async def close(self) -> None:
        """Closes the TLS connections (main's lifecycle calls it on stop)."""
        await asyncio.gather(*(upstream.close() for upstream in self.tls.values()))
