"""DNS over TLS to one upstream (RFC 7858), on our own TCP and netstack.tls.

``tls://ADDR[:PORT]#NAME`` names it: the port defaults to 853, and NAME is
what the upstream's certificate must carry. The profile is RFC 8310's strict
one: the certificate chain and the name are verified, TLS 1.2 or later, and a
failure is an error for the forwarder (that upstream fails, its queries go to
the next one or get SERVFAIL), never a retry in plain text.

How the connections are used (RFC 7766, RFC 7858 3.4):

- a small pool (``max_connections``) of connections is kept open and reused;
  queries are pipelined, each with an ID unique on its connection, and the
  replies, which may come in any order, are matched by ID and question;
- at most ``max_inflight`` queries wait on a connection; a query beyond
  every connection's bound waits for a slot within its own timeout;
- a connection with nothing in flight for ``idle_timeout`` seconds is closed;
- a connection that dies with queries outstanding: each is sent once more,
  on a new connection; a second loss is an error;
- a failed connect or handshake holds off the next one: ``backoff_initial``
  seconds, doubling up to ``backoff_max``, reset by a handshake that works;
  queries meanwhile fail at once (the forwarder asks another upstream);
- the TLS session of the last handshake is offered on the next one, so a
  reconnect is a resumption (counted when the upstream accepts it);
- queries carry EDNS(0) padding (RFC 7830) to a multiple of 128 bytes
  (RFC 8467's block length for queries).

Counters: ``dot.ADDR#PORT.handshake``, ``.resumed``, ``.reuse``, ``.failure``
(connect, handshake or connection loss), ``.verify_error``, ``.resent``;
``dot.reply.*.drop`` for replies that match nothing.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import ssl
import struct
from dataclasses import dataclass, field
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass

from netstack import tls
from netstack.tcp.stream import open_connection
from unikernel.resolver.stub import DEFAULT_PAYLOAD, Reply, StubError, StubTimeout, build_query

log = logging.getLogger("unikernel.resolver.tls_upstream")

QUERY_PAD_BLOCK = 128          # RFC 8467 4.1: queries padded to a multiple of 128 bytes
_EDNS_DO = 0x8000
_PADDING_OPTION = 12
_FLAG_RD = 0x0100
_FLAG_CD = 0x0010
_FLAG_QR = 0x8000


class TlsVerifyError(StubError):
    """The upstream's certificate or name did not verify."""


class _ConnectionLost(StubError):
    """The connection a query waited on died before its reply."""


def padded_query(qid: int, question: bytes, *, rd: bool = True, payload: int = DEFAULT_PAYLOAD,
                 do: bool = False, cd: bool = False, block: int = QUERY_PAD_BLOCK) -> bytes:
    """A query of bytes whose OPT record carries a Padding option that makes
    the whole message a multiple of ``block`` bytes."""
    header = struct.pack("!HHHHHH", qid, (_FLAG_RD if rd else 0) | (_FLAG_CD if cd else 0), 1, 0, 0, 1)
    unpadded = len(header) + len(question) + 11 + 4          # OPT's fixed part, the option's header
    pad = -unpadded % block
    opt = b"\x00" + struct.pack("!HHIH", 41, payload, _EDNS_DO if do else 0, 4 + pad)
    return header + question + opt + struct.pack("!HH", _PADDING_OPTION, pad) + bytes(pad)


@dataclass(eq=False)
class _Waiting:
    question: bytes
    future: asyncio.Future


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: tls.TlsStreamWriter
    pending: dict[int, _Waiting] = field(default_factory=dict)
    used: int = 0                        # queries sent on it so far
    alive: bool = True
    session_taken: bool = False          # its TLS session kept for the next handshake
    task: asyncio.Task | None = None     # its reader


class TlsUpstream:
    """``await upstream.query(qname, rdtype, timeout=...)`` -> stub.Reply
    (transport "tls"); raises StubTimeout, TlsVerifyError or StubError."""

    def __init__(self, tcp, ip: int, port: int, name: str, context: ssl.SSLContext, *, counters,
                 rng: random.Random | None = None, max_connections: int = 2, max_inflight: int = 32,
                 idle_timeout: float = 30.0, connect_timeout: float = 10.0, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0) -> None:
        self.tcp = tcp
        self.ip, self.port, self.name = ip, port, name
        self.context = context
        self.counters = counters
        self.rng = rng or random.SystemRandom()
        self.max_connections = max_connections
        self.max_inflight = max_inflight
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connections: list[_Connection] = []
        self.session: ssl.SSLSession | None = None
        self.backoff = 0.0               # the wait after the next failure; 0: none failed
        self.retry_at = 0.0              # no connect before this (loop time)
        self._slots: asyncio.Semaphore | None = None
        self._connecting: asyncio.Future | None = None
        self.prefix = f"dot.{ipaddress.IPv4Address(ip)}#{port}"

    @property
    def endpoint(self) -> tuple[int, int]:
        return self.ip, self.port

    # -- queries -------------------------------------------------------------
    async def query(self, qname: dns.name.Name, rdtype: int, rdclass: int = dns.rdataclass.IN, *,
                    timeout: float = 2.0, rd: bool = True, payload: int | None = DEFAULT_PAYLOAD,
                    do: bool = False, cd: bool = False) -> Reply:
        """One exchange over TLS; ``cd``: checking disabled (the validator
        asks so, to see what a validating upstream would have rejected)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        question = cast(bytes, qname.to_wire()) + struct.pack("!HH", rdtype, rdclass)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections * self.max_inflight)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            self.counters["dot.inflight_full.timeout"] += 1
            raise StubTimeout(f"{self.prefix}: no query slot in {timeout:g} s") from None
        try:
            for attempt in range(2):          # a lost connection: sent once more, on a new one
                try:
                    wire, message = await self._exchange(question, deadline, rd=rd, do=do, cd=cd,
                                                         payload=payload)
                except _ConnectionLost:
                    if attempt:
                        raise
                    self.counters[f"{self.prefix}.resent"] += 1
                    continue
                return Reply(wire, message, self.endpoint, "tls", bool(message.flags & dns.flags.TC),
                             loop.time() - started)
            raise StubError("not reached")
        finally:
            self._slots.release()

    async def _exchange(self, question: bytes, deadline: float, *, rd: bool, do: bool, cd: bool,
                        payload: int | None) -> tuple[bytes, dns.message.Message]:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(question, loop.create_future())
        conn: _Connection | None = None
        qid = 0
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._connection()
                # no await between choosing the connection and taking a place on it,
                # so concurrent queries see each other's load
                qid = self.rng.getrandbits(16)
                while qid in conn.pending:
                    qid = self.rng.getrandbits(16)
                conn.pending[qid] = waiting
                if conn.used:
                    self.counters[f"{self.prefix}.reuse"] += 1
                conn.used += 1
                self.counters["dot.query"] += 1
                # without EDNS (an upstream that rejects it) there is no OPT to pad in
                wire = (padded_query(qid, question, rd=rd, payload=payload, do=do, cd=cd) if payload
                        else build_query(qid, question, rd=rd, payload=None, cd=cd))
                conn.writer.write(struct.pack("!H", len(wire)) + wire)
                return await asyncio.shield(waiting.future)
        except ConnectionError as e:
            if conn is not None:
                self._lost(conn, e)
            raise _ConnectionLost(f"{self.prefix}: connection lost") from None
        except TimeoutError:
            self.counters["dot.timeout"] += 1
            raise StubTimeout(f"{self.prefix}: no reply in time") from None
        finally:
            if conn is not None and conn.pending.get(qid) is waiting:
                del conn.pending[qid]

    # -- connections -----------------------------------------------------------
    async def _connection(self) -> _Connection:
        """An open connection with room for one more query; opens one when
        every open one is full (the semaphore guarantees the pool has room)."""
        while True:
            open_ = [c for c in self.connections if c.alive and len(c.pending) < self.max_inflight]
            if open_:
                return min(open_, key=lambda c: len(c.pending))
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
                self._connecting.add_done_callback(lambda _f: setattr(self, "_connecting", None))
            await asyncio.shield(self._connecting)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self.retry_at:
            self.counters[f"{self.prefix}.backoff.fail"] += 1
            raise StubError(f"{self.prefix}: reconnect held off after a failure")
        writer = None
        try:
            # one budget for TCP's and TLS's handshakes: on a lossy link each lost
            # segment costs a retransmission timeout, and a connection that comes up
            # late still serves every query after the one that waited for it
            started = loop.time()
            reader, writer = await open_connection(self.tcp, self.ip, self.port, timeout=self.connect_timeout)
            plain_reader, plain_writer = await tls.client(
                reader, writer, self.context, self.name, session=self.session,
                timeout=max(self.connect_timeout - (loop.time() - started), 0.1))
        except ssl.SSLCertVerificationError as e:
            self._connect_failed(writer, "verify_error")
            log.warning("upstream %s: certificate does not verify for %s: %s", self.prefix[4:], self.name,
                        e.verify_message)
            raise TlsVerifyError(f"{self.prefix}: certificate does not verify: {e.verify_message}") from None
        except (ssl.SSLError, OSError, TimeoutError, EOFError) as e:
            self._connect_failed(writer, "failure")
            raise StubError(f"{self.prefix}: TLS connection failed: {type(e).__name__} {e}") from None
        except asyncio.CancelledError:
            if writer is not None:
                writer.abort()
            raise
        self.backoff = 0.0
        self.counters[f"{self.prefix}.handshake"] += 1
        if plain_writer.get_extra_info("session_reused"):
            self.counters[f"{self.prefix}.resumed"] += 1
        conn = _Connection(plain_reader, plain_writer)
        conn.task = loop.create_task(self._read_replies(conn))
        self.connections.append(conn)

    def _connect_failed(self, writer, what: str) -> None:
        if writer is not None:
            writer.abort()
        self.counters[f"{self.prefix}.{what}"] += 1
        if what != "verify_error":
            self.counters[f"{self.prefix}.handshake_failed"] += 1
        self.backoff = min(self.backoff * 2, self.backoff_max) if self.backoff else self.backoff_initial
        self.retry_at = asyncio.get_running_loop().time() + self.backoff
        self.session = None            # a session is not offered to a server that failed us

    async def _read_replies(self, conn: _Connection) -> None:
        """The connection's reader: matches each reply to its query; closes the
        connection after ``idle_timeout`` with nothing in flight."""
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        error: Exception = ConnectionResetError("closed by the upstream")
        try:
            while True:
                wait = self.idle_timeout if conn.pending else self.idle_timeout - (loop.time() - idle_since)
                try:
                    head = await asyncio.wait_for(conn.reader.readexactly(2), max(wait, 0.01))
                except TimeoutError:
                    if conn.pending:
                        continue
                    if loop.time() - idle_since >= self.idle_timeout:
                        self.counters["dot.idle.close"] += 1
                        error = ConnectionResetError("closed when idle")
                        return
                    continue
                length = struct.unpack("!H", head)[0]
                wire = await asyncio.wait_for(conn.reader.readexactly(length), self.idle_timeout)
                self._match(conn, wire)
                if not conn.session_taken:      # after a reply: TLS 1.3 tickets come after the handshake
                    self.session = cast("ssl.SSLSession | None", conn.writer.get_extra_info("session"))
                    conn.session_taken = True
                if not conn.pending:
                    idle_since = loop.time()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as e:
            error = e if isinstance(e, ConnectionError) else ConnectionResetError(str(e) or "connection lost")
            if conn.pending:
                self.counters[f"{self.prefix}.failure"] += 1
        finally:
            self._lost(conn, error)
            conn.writer.close()

    def _match(self, conn: _Connection, wire: bytes) -> None:
        c = self.counters
        if len(wire) < 12:
            c["dot.reply.short.drop"] += 1
            return
        qid, flags = struct.unpack_from("!HH", wire)
        waiting = conn.pending.get(qid)
        if waiting is None:
            c["dot.reply.unknown_id.drop"] += 1
            return
        if not flags & _FLAG_QR or wire[12:12 + len(waiting.question)].lower() != waiting.question.lower():
            c["dot.reply.bad_question.drop"] += 1
            return
        try:
            message = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
            c["dot.reply.malformed.drop"] += 1
            return
        del conn.pending[qid]
        c["dot.reply.ok"] += 1
        if not waiting.future.done():
            waiting.future.set_result((wire, message))

    def _lost(self, conn: _Connection, error: Exception) -> None:
        if not conn.alive:
            return
        conn.alive = False
        if conn in self.connections:
            self.connections.remove(conn)
        for waiting in conn.pending.values():
            if not waiting.future.done():
                waiting.future.set_exception(_ConnectionLost(str(error)))
                waiting.future.exception()       # retrieved here: the waiter may have timed out
        conn.pending.clear()

    async def close(self) -> None:
        """Ends every connection (each reader's ``finally`` says close_notify and FIN)."""
        tasks = [c.task for c in self.connections if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
