"""UpstreamTransports routes each upstream to its transport, and a TLS
upstream's failure is never retried through the plain-text stub."""
from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import pytest

from unikernel.resolver.stub import StubError
from unikernel.resolver.tls_upstream import QUERY_PAD_BLOCK, padded_query
from unikernel.resolver.transports import UpstreamTransports

PLAIN, TLS = (0xC0000201, 53), (0xC0000202, 853)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail = fail
        self.counters: dict = {}
        self.closed = False

    async def query(self, *args, **kwargs):
        self.calls.append({"args": args, **kwargs})
        if self.fail:
            raise StubError("handshake failed")
        return "reply"

    async def close(self) -> None:
        self.closed = True


def test_routing_and_no_plain_text_fallback():
    async def main():
        stub, tls = Recorder(), Recorder(fail=True)
        transports = UpstreamTransports(stub, {TLS: tls})
        name = dns.name.from_text("www.example.")
        assert await transports.query(PLAIN, name, dns.rdatatype.A, use_0x20=True, timeout=1) == "reply"
        with pytest.raises(StubError):
            await transports.query(TLS, name, dns.rdatatype.A, use_0x20=True, timeout=1)
        assert [c["args"][0] for c in stub.calls] == [PLAIN]          # the TLS query never reached the stub
        assert stub.calls[0]["use_0x20"] is True
        assert tls.calls[0]["args"] == (name, dns.rdatatype.A, 1) and "use_0x20" not in tls.calls[0]
        await transports.close()
        assert tls.closed
    asyncio.run(main())


def test_the_forwarders_options_reach_each_transport():
    """The forwarder asks with a case-mismatch callback (UDP's 0x20) and, when
    validating, with CD: the first made every plain query raise TypeError, the
    second never reached a TLS upstream, so a validating DoT upstream would
    have withheld what the validator must see."""
    async def main():
        stub, tls = Recorder(), Recorder()
        transports = UpstreamTransports(stub, {TLS: tls})
        name = dns.name.from_text("www.example.")
        callback = lambda: None  # noqa: E731
        await transports.query(PLAIN, name, dns.rdatatype.A, cd=True, on_case_mismatch=callback, timeout=1)
        await transports.query(TLS, name, dns.rdatatype.A, cd=True, on_case_mismatch=callback, timeout=1)
        assert stub.calls[0]["cd"] is True and stub.calls[0]["on_case_mismatch"] is callback
        assert tls.calls[0]["cd"] is True and "on_case_mismatch" not in tls.calls[0]
    asyncio.run(main())


def test_a_padded_tls_query_carries_cd():
    wire = padded_query(0x1234, dns.name.from_text("www.example.").to_wire() + b"\x00\x01\x00\x01", cd=True)
    message = dns.message.from_wire(wire)
    assert message.flags & dns.flags.CD and message.flags & dns.flags.RD
    assert len(wire) % QUERY_PAD_BLOCK == 0
