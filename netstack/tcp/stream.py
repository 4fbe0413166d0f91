"""asyncio streams over our TCP: ``open_connection`` and ``wrap``.

The reader is a real ``asyncio.StreamReader`` (``read``, ``readexactly``,
``at_eof``...). It is given a small transport whose ``pause_reading`` /
``resume_reading`` stop and restart the TCP receive window, so a reader that
falls behind makes the peer wait instead of filling memory.

The writer queues what TCP's bounded send buffer cannot take yet; ``drain()``
waits until TCP has taken it all, so a writer that awaits ``drain()`` keeps
at most one write of its own queued. Failures surface as ``ConnectionError``
subclasses (``ConnectionResetError``, ``ConnectionRefusedError``) or
``TimeoutError``, as with asyncio's own streams.
"""
from __future__ import annotations

import asyncio
import ipaddress

from .connection import Connection
from .layer import TcpLayer
from .state import State

READ_LIMIT = 64 * 1024  # the reader pauses the window beyond twice this


def _error_for(reason: str) -> Exception:
    if reason == "refused":
        return ConnectionRefusedError("connection refused")
    if reason == "timeout":
        return TimeoutError("TCP connection timed out")
    return ConnectionResetError(f"connection {reason}")


class _WindowTransport(asyncio.ReadTransport):
    """What StreamReader calls for flow control, mapped onto our receive window."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def pause_reading(self) -> None:
        self.conn.set_receive_paused(True)

    def resume_reading(self) -> None:
        self.conn.set_receive_paused(False)


class TcpStreamWriter:
    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self._loop = loop
        self._queued = bytearray()          # written but not yet taken by TCP
        self._closing = False
        self._error: Exception | None = None
        self._drained: asyncio.Future | None = None
        self._closed: asyncio.Future = loop.create_future()

    # -- what asyncio.StreamWriter offers ----------------------------------------------
    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ConnectionError("writer is closed")
        self._queued += data
        self._flush()

    async def drain(self) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if not self._queued:
                return
            if self._drained is None or self._drained.done():
                self._drained = self._loop.create_future()
            await self._drained

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        """FIN after everything written (asyncio semantics: no waiting here)."""
        if self._closing:
            return
        self._closing = True
        self._flush()

    async def wait_closed(self) -> None:
        """Returns once our FIN is acknowledged or the connection is gone."""
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        self._closing = True
        self.conn.abort()

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peername":
            return str(ipaddress.IPv4Address(self.conn.remote[0])), self.conn.remote[1]
        if name == "sockname":
            return str(ipaddress.IPv4Address(self.conn.local[0])), self.conn.local[1]
        if name == "connection":
            return self.conn
        return default

    # -- driven by the connection --------------------------------------------------------
    def _flush(self) -> None:
        if self._error is not None:
            return
        if self._queued and self.conn.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            n = min(len(self._queued), self.conn.send_space)
            if n:
                self.conn.send(bytes(self._queued[:n]))
                del self._queued[:n]
        if not self._queued:
            self._wake()
            if self._closing and self.conn.state in (State.ESTABLISHED, State.CLOSE_WAIT):
                self.conn.close()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._queued.clear()
        self._wake()
        self._finish()

    def _finish(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def _on_state(self, state: State) -> None:
        if state in (State.ESTABLISHED, State.CLOSE_WAIT):
            self._flush()
        elif state in (State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED):
            self._finish()


def wrap(conn: Connection, loop: asyncio.AbstractEventLoop | None = None
         ) -> tuple[asyncio.StreamReader, TcpStreamWriter]:
    """Streams over a connection (accepted or connecting); takes over its callbacks."""
    loop = loop or asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
    reader.set_transport(_WindowTransport(conn))
    writer = TcpStreamWriter(conn, loop)

    def on_close(reason: str | None) -> None:
        if reason is None:
            reader.feed_eof()
            return
        exc = _error_for(reason)
        reader.set_exception(exc)
        writer._fail(exc)

    def on_finished() -> None:
        if not reader.at_eof() and reader.exception() is None:
            reader.feed_eof()
        if writer._error is None and writer._queued:
            writer._fail(ConnectionResetError("connection closed"))
        writer._finish()

    conn.on_data = reader.feed_data
    conn.on_close = on_close
    conn.on_send_space = writer._flush
    conn.on_state = writer._on_state
    conn.on_finished = on_finished
    return reader, writer


async def open_connection(tcp: TcpLayer, ip: int | str | ipaddress.IPv4Address, port: int, timeout: float = 10.0
                          ) -> tuple[asyncio.StreamReader, TcpStreamWriter]:
    """Active open to ip:port (an int, str or IPv4Address); raises
    ConnectionRefusedError, TimeoutError or ConnectionError."""
    loop = asyncio.get_running_loop()
    conn = tcp.connect(int(ipaddress.IPv4Address(ip)), port)
    reader, writer = wrap(conn, loop)
    established: asyncio.Future = loop.create_future()
    on_close = conn.on_close

    def on_established() -> None:
        if not established.done():
            established.set_result(None)

    def on_close_while_connecting(reason: str | None) -> None:
        if reason is not None and not established.done():
            established.set_exception(_error_for(reason))
        if on_close is not None:   # always: wrap() installed it
            on_close(reason)

    conn.on_established = on_established
    conn.on_close = on_close_while_connecting
    try:
        await asyncio.wait_for(established, timeout)
    except (TimeoutError, asyncio.CancelledError):
        conn.abort()
        raise
    except ConnectionError:
        raise
    finally:
        conn.on_established = None
    conn.on_close = on_close
    if established.done() and established.exception() is None:
        return reader, writer
    raise ConnectionError("connection failed")  # not reached: the future carries the error
