"""DNS over TCP's transport (RFC 7766, RFC 1035 4.2.2), free of DNS semantics.

Each message is preceded by its length in two bytes. A client may pipeline
queries on one connection; every query becomes its own task, and each answer
is written as soon as it is ready, so answers may leave out of order (RFC 7766
6.2.1.1). What the server bounds:

* connections: at most ``max_connections`` at once; one more is reset;
* pending queries per connection: at most ``max_pending``, counted until
  their answer has been handed to TCP; beyond that the server stops reading,
  so TCP's window pushes back on the client. Answers are written one at a
  time, each after the previous one has drained, so a client that does not
  read holds at most one answer in our send queue;
* memory: answers made but not yet taken by TCP hold at most
  ``max_answer_bytes`` over all connections; an answer beyond that is
  dropped and its connection reset (the client may retry), so clients that
  pipeline queries for large answers and never read cannot exhaust memory;
* time: a connection with no pending query and no traffic for
  ``idle_timeout`` seconds is closed (RFC 7766 6.2.3 suggests seconds, not
  minutes); a message that stalls half-way is dropped after the same time;
  an answer that takes longer than ``answer_timeout`` is abandoned;
* garbage: a length below a DNS header (12 bytes) ends the connection
  cleanly: queries already read are answered, then FIN.

``handle(src, dst, query_wire)`` decides the answer: bytes (up to 65535), a
list of such messages written in order (a zone transfer), or None for no
answer. src and dst are ``(IPv4Address, port)``.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from netstack.tcp.connection import Connection
from netstack.tcp.layer import TcpLayer
from netstack.tcp.stream import wrap

if TYPE_CHECKING:
    # a type only: netstack.tls imports ssl, which plain TCP does not need
    from netstack.tls import ByteStreamWriter

log = logging.getLogger(__name__)

Endpoint = tuple[ipaddress.IPv4Address, int]
Handle = Callable[[Endpoint, Endpoint, bytes], Awaitable[bytes | list[bytes] | None]]

DNS_HEADER_LEN = 12
MAX_MESSAGE = 65535
MAX_ANSWER_BYTES = 8 * 1024 * 1024     # answers waiting for their clients, all connections together


class DnsTcpServer:
    """``server = DnsTcpServer(stack.tcp, 53, handle); server.start()`` ... ``server.close()``."""

    def __init__(self, tcp_layer: TcpLayer, port: int, handle: Handle, *, idle_timeout: float = 10.0,
                 max_connections: int = 64, max_pending: int = 32, answer_timeout: float = 15.0,
                 max_answer_bytes: int = MAX_ANSWER_BYTES, clock: Callable[[], float] | None = None) -> None:
        self.tcp = tcp_layer
        self.port = port
        self.handle = handle
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.answer_timeout = answer_timeout
        self.max_answer_bytes = max_answer_bytes
        self.answer_bytes = 0          # answers made and not yet written and drained
        self.clock = clock
        self.counters = tcp_layer.counters
        self.sessions: dict[Connection, asyncio.Task] = {}
        self._started = False

    def now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    def start(self) -> None:
        self.tcp.listen(self.port, self._accept)
        self._started = True

    def close(self) -> None:
        """Stops listening; open connections get their FIN (pending queries are dropped)."""
        if self._started:
            self.tcp.unlisten(self.port)
            self._started = False
        for task in list(self.sessions.values()):
            task.cancel()

    async def wait_closed(self) -> None:
        tasks = list(self.sessions.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- connections -----------------------------------------------------------------------
    def _accept(self, conn: Connection) -> None:
        if len(self.sessions) >= self.max_connections:
            self.counters["dns_tcp.connection_limit.reset"] += 1
            conn.abort()
            return
        self.counters["dns_tcp.accepted"] += 1
        reader, writer = wrap(conn)
        task = asyncio.get_running_loop().create_task(self._serve(conn, reader, writer))
        self.sessions[conn] = task
        task.add_done_callback(functools.partial(self._session_ended, conn))

    def _session_ended(self, conn: Connection, _task: asyncio.Task) -> None:
        self.sessions.pop(conn, None)

    async def _serve(self, conn: Connection, reader: asyncio.StreamReader, writer: ByteStreamWriter) -> None:
        src = (ipaddress.IPv4Address(conn.remote[0]), conn.remote[1])
        dst = (ipaddress.IPv4Address(conn.local[0]), conn.local[1])
        pending: set[asyncio.Task] = set()
        slots = asyncio.Semaphore(self.max_pending)
        writing = asyncio.Lock()   # one answer in the writer's queue at a time
        activity = [self.now()]   # last query read or answer written, shared with the answer tasks
        try:
            while True:
                query = await self._read_query(reader, pending, activity)
                if query is None:
                    break
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(
                    self._answer(src, dst, query, writer, slots, writing, activity))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:   # the client finished sending; answer what it asked, then FIN
                await asyncio.wait(pending, timeout=self.answer_timeout)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), self.idle_timeout)
            except TimeoutError:
                self.counters["dns_tcp.close.timeout"] += 1
                writer.abort()
        except ConnectionError:
            self.counters["dns_tcp.connection_error"] += 1
        except asyncio.CancelledError:
            writer.close()
            raise
        finally:
            for task in pending:
                task.cancel()

    async def _read_query(self, reader: asyncio.StreamReader, pending: set, activity: list) -> bytes | None:
        """The next framed message, or None when the connection should end."""
        while True:
            remaining = self.idle_timeout - (self.now() - activity[0])
            wait = self.idle_timeout if pending else max(remaining, 0.01)
            try:
                head = await asyncio.wait_for(reader.readexactly(2), wait)
                break
            except TimeoutError:
                if pending or self.now() - activity[0] < self.idle_timeout:
                    continue   # answers are still being worked on, or one was just written
                self.counters["dns_tcp.idle.close"] += 1
                return None
            except asyncio.IncompleteReadError as e:
                self.counters["dns_tcp.eof" if not e.partial else "dns_tcp.truncated_length.close"] += 1
                return None
        length = int.from_bytes(head, "big")
        if length < DNS_HEADER_LEN:
            self.counters["dns_tcp.bad_length.close"] += 1
            return None
        try:
            query = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
        except TimeoutError:
            self.counters["dns_tcp.stalled_message.close"] += 1
            return None
        except asyncio.IncompleteReadError:
            self.counters["dns_tcp.truncated_message.close"] += 1
            return None
        activity[0] = self.now()
        self.counters["dns_tcp.query"] += 1
        return query

    async def _answer(self, src: Endpoint, dst: Endpoint, query: bytes, writer: ByteStreamWriter,
                      slots: asyncio.Semaphore, writing: asyncio.Lock, activity: list) -> None:
        # the slot is held until the answer is written: a query whose answer
        # still waits in memory counts against the connection's bound
        try:
            await self._answer_and_write(src, dst, query, writer, writing, activity)
        finally:
            slots.release()

    async def _answer_and_write(self, src: Endpoint, dst: Endpoint, query: bytes, writer: ByteStreamWriter,
                                writing: asyncio.Lock, activity: list) -> None:
        try:
            answer = await asyncio.wait_for(self.handle(src, dst, query), self.answer_timeout)
        except TimeoutError:
            self.counters["dns_tcp.answer.timeout"] += 1
            return
        except Exception:
            self.counters["dns_tcp.handle.exception"] += 1
            log.exception("DNS handler failed for a TCP query from %s", src)
            return
        if answer is None:
            self.counters["dns_tcp.no_answer"] += 1
            return
        messages = answer if isinstance(answer, list) else [answer]
        if any(len(message) > MAX_MESSAGE for message in messages):
            self.counters["dns_tcp.answer_too_big.drop"] += 1
            return
        size = sum(len(message) for message in messages)
        if self.answer_bytes + size > self.max_answer_bytes:
            self.counters["dns_tcp.answer_memory.reset"] += 1
            writer.abort()
            return
        self.answer_bytes += size
        try:
            async with writing:
                for message in messages:
                    writer.write(len(message).to_bytes(2, "big") + message)
                    # a client that stops reading must not hold the answer (and the connection) forever
                    await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except TimeoutError:
            self.counters["dns_tcp.write.timeout.reset"] += 1
            writer.abort()
            return
        except ConnectionError:
            self.counters["dns_tcp.answer.lost"] += 1
            return
        finally:
            self.answer_bytes -= size
        activity[0] = self.now()
        self.counters["dns_tcp.answer"] += 1
