"""netstack.tls between two of our stacks over a memory wire on a real loop:
OpenSSL (through Python's ssl) does the TLS on both ends, our TCP carries it.
Certificates come from openssl at test time. The same module against the
openssl command line and the kernel's TCP is tests/integration/test_tls_kernel.py."""
from __future__ import annotations

import asyncio
import random
import ssl

import pytest

from netstack import tls
from netstack.link.memory import MemoryWire
from netstack.stack import Stack
from netstack.tcp.stream import open_connection, wrap
from tests.tlscerts import make_pki, needs_openssl

pytestmark = [needs_openssl]
A, B = "10.9.0.1", "10.9.0.2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def run(body, *, timeout: float = 60, **faults):
    async def main():
        wire = MemoryWire(seed=7, **faults)
        a_end, b_end = wire.ends()
        a, b = Stack(a_end, f"{A}/24"), Stack(b_end, f"{B}/24")
        await a.start()
        await b.start()
        try:
            return await asyncio.wait_for(body(a, b), timeout)
        finally:
            a.close()
            b.close()
    return asyncio.run(main())


def echo_server(stack: Stack, context: ssl.SSLContext, port: int = 853, outcomes: list | None = None,
                handshake_timeout: float = 2) -> None:
    """Our TLS server on `port` echoing what it reads; handshake outcomes go to `outcomes`."""
    async def session(reader, writer):
        try:
            plain_reader, plain_writer = await tls.server(reader, writer, context, timeout=handshake_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError) as e:
            if outcomes is not None:
                outcomes.append(type(e).__name__)
            writer.abort()
            return
        if outcomes is not None:
            outcomes.append("ok")
        while data := await plain_reader.read(65536):
            if data == b"reset\n":
                plain_writer.abort()
                return
            plain_writer.write(data)
            await plain_writer.drain()
        plain_writer.close()

    stack.tcp.listen(port, lambda conn: asyncio.get_running_loop().create_task(session(*wrap(conn))))


async def connect(stack: Stack, context: ssl.SSLContext, name: str, *, port: int = 853, session=None,
                  timeout: float = 5):
    reader, writer = await open_connection(stack.tcp, B, port, timeout=timeout)
    try:
        return await tls.client(reader, writer, context, name, session=session, timeout=2 * timeout)
    except BaseException:
        writer.abort()
        raise


def test_echo_of_a_blob_and_small_messages(pki):
    async def body(a, b):
        echo_server(b, tls.server_context(str(pki.cert), str(pki.key)))
        reader, writer = await connect(a, tls.client_context(str(pki.ca)), pki.name)
        assert writer.get_extra_info("version") in ("TLSv1.2", "TLSv1.3")
        assert writer.get_extra_info("peername") == (B, 853)
        for i in range(20):                      # several messages on one connection
            writer.write(b"message %d\n" % i)
            await writer.drain()
            assert await reader.readline() == b"message %d\n" % i
        blob = random.Random(3).randbytes(300_000)
        writer.write(blob)
        await writer.drain()
        assert await reader.readexactly(len(blob)) == blob
        writer.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""     # the server's close_notify and FIN
    run(body)


def test_lossy_wire_still_carries_the_session(pki):
    async def body(a, b):
        # with 15 % of frames lost, a SYN or a handshake flight can take
        # several RTOs (1 s, doubling): timeouts for that, not for a quiet wire
        echo_server(b, tls.server_context(str(pki.cert), str(pki.key)), handshake_timeout=30)
        reader, writer = await connect(a, tls.client_context(str(pki.ca)), pki.name, timeout=30)
        blob = random.Random(4).randbytes(60_000)
        writer.write(blob)
        await writer.drain()
        assert await reader.readexactly(len(blob)) == blob
        writer.close()
    run(body, timeout=120, drop=0.15, reorder=0.05, duplicate=0.05)


@pytest.mark.parametrize("wrong", ["name", "ca"])
def test_a_certificate_that_does_not_verify_fails_the_handshake(pki, wrong):
    async def body(a, b):
        outcomes: list = []
        echo_server(b, tls.server_context(str(pki.cert), str(pki.key)), outcomes=outcomes)
        ca = pki.other_ca if wrong == "ca" else pki.ca
        name = "other.test" if wrong == "name" else pki.name
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(a, tls.client_context(str(ca)), name)
        await asyncio.sleep(0.2)
        assert outcomes == ["SSLError"]     # the server saw our alert
    run(body)


def test_garbage_instead_of_a_handshake_and_a_stalled_one(pki):
    async def body(a, b):
        outcomes: list = []
        echo_server(b, tls.server_context(str(pki.cert), str(pki.key)), outcomes=outcomes)
        reader, writer = await open_connection(a.tcp, B, 853, timeout=5)
        writer.write(b"GET / HTTP/1.0\r\n\r\n" + bytes(200))
        await writer.drain()
        try:                                     # an alert, then the server's reset
            await asyncio.wait_for(reader.read(), 5)
        except ConnectionError:
            pass
        _stalled = await open_connection(a.tcp, B, 853, timeout=5)    # says nothing at all
        await asyncio.sleep(3)
        assert sorted(outcomes) == ["SSLError", "TimeoutError"]
    run(body)


def test_session_resumption(pki):
    async def body(a, b):
        echo_server(b, tls.server_context(str(pki.cert), str(pki.key)))
        context = tls.client_context(str(pki.ca))
        reader, writer = await connect(a, context, pki.name)
        writer.write(b"x\n")
        await writer.drain()
        await reader.readline()                  # TLS 1.3 tickets arrive after the handshake
        session = writer.get_extra_info("session")
        assert writer.get_extra_info("session_reused") is False
        writer.close()
        reader2, writer2 = await connect(a, context, pki.name, session=session)
        assert writer2.get_extra_info("session_reused") is True
        writer2.write(b"y\n")
        await writer2.drain()
        assert await reader2.readline() == b"y\n"
        writer2.close()
    run(body)


def test_a_reset_under_the_session_reaches_reader_and_writer(pki):
    async def body(a, b):
        echo_server(b, tls.server_context(str(pki.cert), str(pki.key)))
        reader, writer = await connect(a, tls.client_context(str(pki.ca)), pki.name)
        writer.write(b"reset\n")                 # the server answers with a TCP reset
        await writer.drain()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(reader.read(10), 5)
        with pytest.raises(ConnectionError):
            writer.write(b"late")
    run(body)
