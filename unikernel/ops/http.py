"""HTTP/1.1 on the stack's own TCP, parsed by h11 (sans-I/O): the operator's port.

``HttpServer(stack.tcp, 9153, routes, allowed=...)`` answers ``GET`` and
``HEAD`` for the paths in ``routes``; each route is a callable giving
``(content type, body)`` at the time of the request. Keep-alive works as h11
allows it. What the server bounds:

* who: a client ``allowed`` refuses is reset at once (``http.not_allowed.reset``);
* connections: at most ``max_connections``; one more is reset;
* a request head larger than ``max_request_bytes`` gets 431 and the close;
  a request with a body is answered and then closed (the body is not read);
* time: a request head must be whole within ``idle_timeout`` seconds of
  its first byte (or of the previous answer), however slowly it trickles in;
  otherwise the connection is closed. An answer the client does not read
  within the same time resets it.

Malformed requests get h11's status (400 most often) and the close. Other
methods get 405, other paths 404. Counters: ``http.*`` in ``counters``.

h11 is imported by the code that serves a connection, not with this module:
the port listens before the appliance says it is ready, and h11's import is
~3 % of all the imports the VM's first answer waits for under TCG, which a
first scrape pays once instead.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING

from netstack.tcp.stream import TcpStreamWriter, wrap

if TYPE_CHECKING:
    import h11

log = logging.getLogger(__name__)

Route = Callable[[], tuple[str, bytes]]
READ_CHUNK = 4096


class HttpServer:
    def __init__(self, tcp_layer, port: int, routes: Mapping[str, Route], *, allowed: Callable[[int], bool],
                 counters, max_connections: int = 16, max_request_bytes: int = 8192,
                 idle_timeout: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        self.tcp = tcp_layer
        self.port = port
        self.routes = dict(routes)
        self.allowed = allowed
        self.counters = counters
        self.max_connections = max_connections
        self.max_request_bytes = max_request_bytes
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.sessions: dict[object, asyncio.Task] = {}
        self._listening = False

    def now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    def start(self) -> None:
        self.tcp.listen(self.port, self._accept)
        self._listening = True

    def close(self) -> None:
        if self._listening:
            self.tcp.unlisten(self.port)
            self._listening = False
        for task in list(self.sessions.values()):
            task.cancel()

    def _accept(self, conn) -> None:
        if not self.allowed(conn.remote[0]):
            self.counters["http.not_allowed.reset"] += 1
            conn.abort()
            return
        if len(self.sessions) >= self.max_connections:
            self.counters["http.connection_limit.reset"] += 1
            conn.abort()
            return
        self.counters["http.accepted"] += 1
        reader, writer = wrap(conn)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.sessions[conn] = task
        task.add_done_callback(lambda _task: self.sessions.pop(conn, None))

    async def _serve(self, reader: asyncio.StreamReader, writer: TcpStreamWriter) -> None:
        import h11
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_request_bytes)
        try:
            while True:
                try:
                    request = await self._next_request(http, reader)
                except h11.RemoteProtocolError as e:
                    self.counters[f"http.bad_request.{e.error_status_hint}"] += 1
                    await self._refuse(http, e.error_status_hint, writer)
                    break
                if request is None:
                    break
                # a request without a body is whole once its head is read;
                # one with a body is answered, then the connection closed
                whole = _no_body(request) and isinstance(http.next_event(), h11.EndOfMessage)
                await self._respond(http, request, writer, keep=whole)
                if not whole or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    break
                http.start_next_cycle()
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), self.idle_timeout)
        except TimeoutError:
            self.counters["http.write.timeout.reset"] += 1
            writer.abort()
        except ConnectionError:
            self.counters["http.connection_error"] += 1
        except asyncio.CancelledError:
            writer.abort()
            raise

    async def _refuse(self, http: h11.Connection, status: int, writer: TcpStreamWriter) -> None:
        import h11
        try:
            out = http.send(h11.Response(status_code=status, reason=HTTPStatus(status).phrase,
                                         headers=[("Content-Length", "0"), ("Connection", "close")]))
            out += http.send(h11.EndOfMessage())
        except h11.LocalProtocolError:      # too late in the exchange for a response
            return
        writer.write(out)
        await asyncio.wait_for(writer.drain(), self.idle_timeout)

    async def _next_request(self, http: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        """The next request's head, or None when the connection should end (the
        client closed or went idle); raises h11.RemoteProtocolError for what
        h11 refuses."""
        import h11
        received = 0
        deadline = self.now() + self.idle_timeout
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), max(deadline - self.now(), 0.0))
                except TimeoutError:
                    self.counters["http.idle.close" if not received else "http.slow_request.close"] += 1
                    return None
                received += len(data)
                if received > self.max_request_bytes:
                    # h11's own bound only holds a head that arrives in one piece
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                http.receive_data(data)        # b"" is the client's EOF
                continue
            if isinstance(event, h11.Request):
                return event
            return None                        # ConnectionClosed, or PAUSED after an unread body

    async def _respond(self, http: h11.Connection, request: h11.Request, writer: TcpStreamWriter, *,
                       keep: bool) -> None:
        import h11
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        headers: list[tuple[str, str]] = []
        if method not in ("GET", "HEAD"):
            self.counters["http.method_not_allowed"] += 1
            status, content_type, body = 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
            headers.append(("Allow", "GET, HEAD"))
        elif target not in self.routes:
            self.counters["http.not_found"] += 1
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            try:
                content_type, body = self.routes[target]()
                status = 200
                self.counters["http.ok"] += 1
            except Exception:            # a bug in a page must not take the port down
                self.counters["http.exception"] += 1
                log.exception("page %s failed", target)
                status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        headers += [("Content-Type", content_type), ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store")]
        if not keep:
            headers.append(("Connection", "close"))
        out = http.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase))
        if method != "HEAD":
            out += http.send(h11.Data(data=body))
        out += http.send(h11.EndOfMessage())
        writer.write(out)
        await asyncio.wait_for(writer.drain(), self.idle_timeout)


def _no_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"content-length" and value.strip() not in (b"0",):
            return False
        if name == b"transfer-encoding":
            return False
    return True
