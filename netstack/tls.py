"""TLS over a TCP stream: ``ssl.SSLObject`` on two ``ssl.MemoryBIO``s.

As CPython's ``asyncio/sslproto.py`` does for transports that are not
sockets: ciphertext read from the TCP stream is written into the incoming
BIO, ``do_handshake``/``read`` run until ``SSLWantReadError``, and whatever
OpenSSL left in the outgoing BIO is written to the TCP stream. Nothing here
knows DNS, nor how the stream is made: ``client`` and ``server`` take any
(reader, writer) pair of the stack's stream adapter (an ``asyncio.StreamReader``
and a writer with ``write``/``drain``/``close``/``abort``/``wait_closed``) and
give the same pair back, in plain text.

What can go wrong, and what the caller sees:

* the handshake fails (garbage, a certificate that does not verify, no
  common version): ``ssl.SSLError`` (``ssl.SSLCertVerificationError`` for a
  certificate) from ``client``/``server``; the TCP connection is left to the
  caller, which aborts it;
* the handshake stalls: ``TimeoutError`` after ``timeout`` seconds;
* the peer closes during the handshake: ``ConnectionResetError``;
* a TLS error after the handshake: the reader raises ``ConnectionResetError``
  and the writer refuses further writes;
* the peer closes (with or without close_notify): the reader sees EOF.
  Without close_notify a message could be cut short, so the layer above must
  frame its messages (DNS over TLS does: two length bytes).

The plain-text reader pushes back as the TCP adapter does: when it holds
more than twice ``READ_LIMIT`` unread, ciphertext is no longer read from TCP,
so TCP's window closes on the peer.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Protocol

READ_LIMIT = 64 * 1024      # the plain-text reader pauses the pump beyond twice this
READ_CHUNK = 16 * 1024      # one TLS record at most


class ByteStreamWriter(Protocol):
    """What TLS needs of the TCP stream's writer (netstack.tcp.stream's has it)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def get_extra_info(self, name: str, default: object = None) -> object: ...


def client_context(cafile: str | None = None, *, cadata: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the peer's certificate and name
    (RFC 8310's strict profile): TLS 1.2 or later, no renegotiation. With no
    ``cafile``/``cadata``, the system's trust store."""
    context = ssl.create_default_context(cafile=cafile, cadata=cadata)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server context with one certificate chain; raises OSError or
    ssl.SSLError when the files cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(certfile, keyfile)
    return context


async def client(reader: asyncio.StreamReader, writer: ByteStreamWriter, context: ssl.SSLContext,
                 server_hostname: str, *, session: ssl.SSLSession | None = None, timeout: float = 10.0
                 ) -> tuple[asyncio.StreamReader, TlsStreamWriter]:
    """The client side over an open TCP stream; ``session`` resumes an earlier one."""
    tls = _Tls(reader, writer, context, server_side=False, server_hostname=server_hostname, session=session)
    await asyncio.wait_for(tls.handshake(), timeout)
    return tls.plain, tls.writer


async def server(reader: asyncio.StreamReader, writer: ByteStreamWriter, context: ssl.SSLContext, *,
                 timeout: float = 10.0) -> tuple[asyncio.StreamReader, TlsStreamWriter]:
    """The server side over an accepted TCP stream."""
    tls = _Tls(reader, writer, context, server_side=True)
    await asyncio.wait_for(tls.handshake(), timeout)
    return tls.plain, tls.writer


class _PumpTransport(asyncio.ReadTransport):
    """What StreamReader calls for flow control, mapped onto the pump."""

    def __init__(self, tls: _Tls) -> None:
        super().__init__()
        self.tls = tls

    def pause_reading(self) -> None:
        self.tls.may_read.clear()

    def resume_reading(self) -> None:
        self.tls.may_read.set()


class _Tls:
    def __init__(self, reader: asyncio.StreamReader, writer: ByteStreamWriter, context: ssl.SSLContext, *,
                 server_side: bool, server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None) -> None:
        self.tcp_reader = reader
        self.tcp_writer = writer
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                       server_hostname=server_hostname, session=session)
        self.plain = asyncio.StreamReader(limit=READ_LIMIT)
        self.plain.set_transport(_PumpTransport(self))
        self.may_read = asyncio.Event()
        self.may_read.set()
        self.error: Exception | None = None
        self.pump: asyncio.Task | None = None
        self.writer = TlsStreamWriter(self)

    async def handshake(self) -> None:
        try:
            while True:
                try:
                    self.sslobj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                self.flush()
                data = await self.tcp_reader.read(READ_CHUNK)
                if not data:
                    raise ConnectionResetError("the peer closed the connection during the TLS handshake")
                self.incoming.write(data)
        except ssl.SSLError:
            self.flush()           # our alert, so the peer learns why
            raise
        self.flush()               # the last flight (a client's Finished)
        self.pump = asyncio.get_running_loop().create_task(self.run_pump())

    def flush(self) -> None:
        """Ciphertext OpenSSL produced, to TCP."""
        if self.outgoing.pending:
            self.tcp_writer.write(self.outgoing.read())

    async def run_pump(self) -> None:
        """Ciphertext from TCP into the incoming BIO, plain text out to the reader."""
        try:
            if self.read_plain():    # what came with the handshake's last flight
                self.plain.feed_eof()
                return
            while True:
                await self.may_read.wait()
                data = await self.tcp_reader.read(READ_CHUNK)
                if not data:
                    reset = self.tcp_reader.exception()
                    if reset is not None:      # the adapter feeds EOF before it tells of a reset
                        self.fail(reset)
                        return
                    self.incoming.write_eof()
                    self.read_plain()
                    self.plain.feed_eof()
                    return
                self.incoming.write(data)
                if self.read_plain():
                    self.plain.feed_eof()
                    return
        except ssl.SSLEOFError:
            self.plain.feed_eof()        # closed without close_notify: framing above tells a cut message
        except ssl.SSLError as e:
            self.fail(ConnectionResetError(f"TLS error: {e.reason or e}"))
        except (ConnectionError, TimeoutError) as e:
            self.fail(e)

    def read_plain(self) -> bool:
        """Decrypts what is buffered; True once the peer's close_notify came."""
        closed = False
        while True:
            try:
                chunk = self.sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            self.plain.feed_data(chunk)
        self.flush()                 # TLS 1.3 may answer post-handshake messages (key updates)
        return closed

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.plain.exception() is None and not self.plain.at_eof():
            self.plain.set_exception(exc)


class TlsStreamWriter:
    """The plain-text writer: asyncio.StreamWriter's methods over the TLS session."""

    def __init__(self, tls: _Tls) -> None:
        self._tls = tls
        self._closing = False

    def write(self, data: bytes) -> None:
        if self._tls.error is not None:
            raise self._tls.error
        if self._closing:
            raise ConnectionError("writer is closed")
        try:
            self._tls.sslobj.write(data)
        except ssl.SSLError as e:
            exc = ConnectionResetError(f"TLS error: {e.reason or e}")
            self._tls.fail(exc)
            raise exc from None
        self._tls.flush()

    async def drain(self) -> None:
        if self._tls.error is not None:
            raise self._tls.error
        await self._tls.tcp_writer.drain()

    def close(self) -> None:
        """close_notify, then FIN after everything written."""
        if self._closing:
            return
        self._closing = True
        try:
            self._tls.sslobj.unwrap()
        except ssl.SSLError:       # SSLWantReadError: the peer's close_notify is not awaited
            pass
        try:
            self._tls.flush()
        except ConnectionError:    # the connection is gone already: nothing to say goodbye on
            return
        self._tls.tcp_writer.close()

    async def wait_closed(self) -> None:
        await self._tls.tcp_writer.wait_closed()

    def abort(self) -> None:
        self._closing = True
        self._tls.tcp_writer.abort()
        if self._tls.pump is not None:
            self._tls.pump.cancel()

    def get_extra_info(self, name: str, default: object = None) -> object:
        sslobj = self._tls.sslobj
        if name == "ssl_object":
            return sslobj
        if name == "peercert":
            return sslobj.getpeercert()
        if name == "cipher":
            return sslobj.cipher()
        if name == "version":
            return sslobj.version()
        if name == "session":
            return sslobj.session
        if name == "session_reused":
            return sslobj.session_reused
        return self._tls.tcp_writer.get_extra_info(name, default)
