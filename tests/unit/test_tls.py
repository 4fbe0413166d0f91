"""netstack.tls's handshake on hostile input: arbitrary bytes, and real
ClientHellos (made by OpenSSL through Python's ssl) with bytes changed, end
in ssl.SSLError, ConnectionError or TimeoutError, never anything else, and
the session never reaches the plain-text side."""
from __future__ import annotations

import asyncio
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack import tls
from tests.tlscerts import make_pki, needs_openssl

pytestmark = [needs_openssl]
EXPECTED = (ssl.SSLError, ConnectionError, TimeoutError)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


class SinkWriter:
    """The TCP writer's methods, keeping what is written."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.aborted = self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    async def wait_closed(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default


def client_hello(pki) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = tls.client_context(str(pki.ca)).wrap_bio(incoming, outgoing, server_hostname=pki.name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def handshake_outcome(context: ssl.SSLContext, data: bytes) -> str:
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        try:
            await tls.server(reader, SinkWriter(), context, timeout=2)
        except EXPECTED as e:
            return type(e).__name__
        return "established"
    return asyncio.run(main())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_fail_the_handshake_cleanly(pki, data):
    context = tls.server_context(str(pki.cert), str(pki.key))
    assert handshake_outcome(context, data) != "established"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                        min_size=1, max_size=8),
       cut=st.integers(min_value=0, max_value=100))
def test_mutated_client_hellos_fail_the_handshake_cleanly(pki, changes, cut):
    hello = bytearray(client_hello(pki))
    for where, value in changes:
        hello[where % len(hello)] = value
    context = tls.server_context(str(pki.cert), str(pki.key))
    # no client answers the server's flight, so even an intact hello cannot finish
    assert handshake_outcome(context, bytes(hello[:len(hello) - cut])) != "established"


def test_an_intact_hello_then_eof_is_a_reset(pki):
    context = tls.server_context(str(pki.cert), str(pki.key))
    assert handshake_outcome(context, client_hello(pki)) == "ConnectionResetError"
