"""The stub resolver: one question to one server, through our own stack.

Both the forwarder and the dig-like client send their queries here. Each query
is a small exchange over the stack's UDP:

- a fresh random ID and a fresh random source port (``bind_ephemeral``) for
  every query (RFC 5452 section 9.2), from a CSPRNG;
- optional 0x20 letter-case randomisation of the query name, so a forger must
  also guess the case pattern;
- strict matching of the reply: it must come from the server's address and
  port, carry our ID, have QR set, and echo the question byte for byte (the
  case pattern included). Anything else is dropped and counted, and we keep
  waiting for the real reply until the timeout;
- a reply whose question matches except for letter case is either a forgery
  or a server that does not preserve case: it is never used, and the wait for
  a matching reply goes on until the timeout (a forger who guessed the ID
  must not end the query); ``on_case_mismatch`` is told at once, so the
  caller can ask again without 0x20 meanwhile, and a query that saw only such
  replies ends with :class:`CaseMismatch`;
- a truncated reply is asked again over TCP when the stack has TCP
  (``netstack.tcp.stream``); without it the truncated reply is returned as is.

Counters (``stub.`` prefix) name the path each reply took, e.g.
``stub.reply.bad_id.drop``.
"""
from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype

from netstack.tcp import stream as tcp_stream
from unikernel.resolver.reply import read as read_reply

DEFAULT_PAYLOAD = 1232          # RFC 9715 / DNS flag day 2020: no fragmentation
_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_FLAG_CD = 0x0010
_EDNS_DO = 0x8000



class StubError(Exception):
    """The query got no usable reply."""


class StubTimeout(StubError, TimeoutError):
    """No matching reply within the timeout."""


class CaseMismatch(StubError):
    """The server echoed our question with different letter case: it does not
    preserve case, so 0x20 cannot be used with it."""


@dataclass(slots=True)
class Reply:
    wire: bytes
    message: dns.message.Message
    server: tuple[int, int]
    transport: str              # "udp" or "tcp"
    truncated: bool             # TC set and not (or not successfully) retried over TCP
    elapsed: float              # seconds from sending to the matching reply


def randomize_case(wire_name: bytes, rng: random.Random) -> bytes:
    """0x20: flip the case of each ASCII letter in a wire-format name at random.
    Length octets are left alone (they are never letters: labels are < 64)."""
    out = bytearray(wire_name)
    bits = rng.getrandbits(len(out) or 1)
    for i, c in enumerate(out):
        if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
            out[i] = (c | 0x20) if (bits >> i) & 1 else (c & ~0x20)
    return bytes(out)


def build_query(qid: int, question: bytes, *, rd: bool = True, payload: int | None = DEFAULT_PAYLOAD,
                do: bool = False, cd: bool = False) -> bytes:
    """A query made of bytes: header, the question (name wire + type + class),
    and an OPT record when ``payload`` is given. ``cd``: checking disabled,
    so a validating server hands over what it would reject (RFC 4035 3.2.2)."""
    flags = (_FLAG_RD if rd else 0) | (_FLAG_CD if cd else 0)
    header = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if payload else 0)
    if not payload:
        return header + question
    opt = b"\x00" + struct.pack("!HHIH", 41, payload, _EDNS_DO if do else 0, 0)
    return header + question + opt


class BufferedSystemRandom(random.SystemRandom):
    """The operating system's CSPRNG, read 4 KiB at a time: IDs and 0x20
    case patterns are a few bytes a query, and SystemRandom's getrandbits
    reads them with a system call each."""

    _CHUNK = 4096

    def __init__(self) -> None:
        super().__init__()
        self._pool = b""
        self._at = 0

    def getrandbits(self, k: int) -> int:
        if k <= 0:
            return super().getrandbits(k)        # its errors and its 0
        size = (k + 7) // 8
        if self._at + size > len(self._pool):
            self._pool, self._at = os.urandom(max(self._CHUNK, size)), 0
        chunk = self._pool[self._at:self._at + size]
        self._at += size
        return int.from_bytes(chunk, "big") >> (size * 8 - k)


class StubResolver:
    """Sends single queries through ``stack.udp`` (and ``stack.tcp`` for
    truncated replies).

    stack: anything with ``udp.bind_ephemeral/unbind/sendto`` (and optionally
    ``tcp``) and ``counters``. rng: a ``random.Random``; the default is the
    operating system's CSPRNG (BufferedSystemRandom), which IDs and case
    patterns need.
    """

    def __init__(self, stack, *, counters=None, rng: random.Random | None = None,
                 tcp_timeout: float = 3.0) -> None:
        self.stack = stack
        self.counters = counters if counters is not None else stack.counters
        self.rng = rng or BufferedSystemRandom()
        self.tcp_timeout = tcp_timeout

    async def query(self, server: tuple[int, int], qname: dns.name.Name, rdtype: int,
                    rdclass: int = dns.rdataclass.IN, *, timeout: float = 2.0, rd: bool = True,
                    payload: int | None = DEFAULT_PAYLOAD, do: bool = False, cd: bool = False,
                    use_0x20: bool = False, use_tcp: bool = True, tcp_only: bool = False,
                    on_case_mismatch: Callable[[], None] | None = None) -> Reply:
        """One exchange with ``server`` (ip as int, port). Raises StubTimeout,
        CaseMismatch, StubError; never returns a reply that failed the matching
        rules. ``use_tcp``: ask again over TCP when the UDP reply is truncated;
        ``tcp_only``: ask over TCP only (dig's +tcp)."""
        name_wire = cast(bytes, qname.to_wire())     # uncompressed, in the case given
        if use_0x20:
            name_wire = randomize_case(name_wire, self.rng)
        question = name_wire + struct.pack("!HH", rdtype, rdclass)
        qid = self.rng.getrandbits(16)
        wire = build_query(qid, question, rd=rd, payload=payload, do=do, cd=cd)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if tcp_only:
            reply = await self._query_tcp(server, qid, question, wire, started, timeout=timeout)
            if reply is None:
                raise StubError(f"no reply over TCP from {_ip_text(server[0])}#{server[1]}")
            return reply
        result: asyncio.Future = loop.create_future()
        server_ip, server_port = server
        mismatched = False

        def on_datagram(payload_: bytes, src_ip: int, src_port: int, dst_ip: int, dst_port: int) -> None:
            # Runs in the stack's receive path: must never raise.
            if result.done():
                self.counters["stub.reply.late.drop"] += 1
                return
            try:
                verdict = self._match(payload_, src_ip, src_port, server_ip, server_port, qid, question)
            except Exception:  # noqa: BLE001 - a parser bug must not reach the stack's loop
                self.counters["stub.reply.error.drop"] += 1
                return
            if isinstance(verdict, dns.message.Message):
                result.set_result((payload_, verdict))
            elif verdict == "case":
                nonlocal mismatched
                if not mismatched and on_case_mismatch is not None:
                    try:
                        on_case_mismatch()
                    except Exception:  # noqa: BLE001 - the caller's bug must not reach the stack's loop
                        self.counters["stub.case_callback.error"] += 1
                mismatched = True

        port = self.stack.udp.bind_ephemeral(on_datagram)
        # the timeout is a timer that fails the reply's future (what
        # asyncio.wait_for does, without its second future and callbacks)
        timer = loop.call_later(timeout, _time_out, result)
        try:
            self.counters["stub.query.udp"] += 1
            self.stack.udp.sendto(wire, port, server_ip, server_port)
            try:
                reply_wire, message = await result
            except TimeoutError:
                if mismatched:
                    raise CaseMismatch(f"{_ip_text(server_ip)}#{server_port} changed the case of {qname}") from None
                self.counters["stub.timeout"] += 1
                raise StubTimeout(f"no reply from {_ip_text(server_ip)}#{server_port} in {timeout:g} s") from None
        finally:
            timer.cancel()
            self.stack.udp.unbind(port)
        truncated = bool(message.flags & dns.flags.TC)
        if truncated and use_tcp:
            if getattr(self.stack, "tcp", None) is None:
                self.counters["stub.truncated.relayed"] += 1
            else:
                remaining = timeout - (loop.time() - started)
                tcp_reply = await self._query_tcp(server, qid, question, wire, started,
                                                  timeout=max(remaining, 0.5))
                if tcp_reply is not None:
                    return tcp_reply
                self.counters["stub.truncated.relayed"] += 1
        return Reply(reply_wire, message, server, "udp", truncated, loop.time() - started)

    # -- matching ---------------------------------------------------------
    def _match(self, wire: bytes, src_ip: int, src_port: int, server_ip: int, server_port: int,
               qid: int, question: bytes) -> dns.message.Message | str:
        """The parsed reply when it passes every rule; else "case" (our
        question echoed in other letter case) or "drop" (counted)."""
        c = self.counters
        if src_ip != server_ip:
            c["stub.reply.bad_address.drop"] += 1
            return "drop"
        if src_port != server_port:
            c["stub.reply.bad_port.drop"] += 1
            return "drop"
        if len(wire) < 12:
            c["stub.reply.short.drop"] += 1
            return "drop"
        rid, flags, qdcount = struct.unpack_from("!HHH", wire)
        if rid != qid:
            c["stub.reply.bad_id.drop"] += 1
            return "drop"
        if not flags & _FLAG_QR:
            c["stub.reply.not_response.drop"] += 1
            return "drop"
        if qdcount != 1:
            c["stub.reply.bad_question.drop"] += 1
            return "drop"
        echoed = wire[12:12 + len(question)]
        if echoed == question:
            message = _parsed(wire)
            if message is None:
                c["stub.reply.malformed.drop"] += 1
                return "drop"
            c["stub.reply.ok"] += 1
            return message
        if echoed.lower() == question.lower():
            c["stub.reply.case_mismatch.drop"] += 1
            return "case"
        c["stub.reply.bad_question.drop"] += 1
        return "drop"

    # -- TCP retry of a truncated reply ------------------------------------
    async def _query_tcp(self, server, qid: int, question: bytes, wire: bytes, started: float, *,
                         timeout: float | None = None) -> Reply | None:
        """The same query over TCP (RFC 7766 framing); None when TCP is
        missing or the exchange fails."""
        tcp = getattr(self.stack, "tcp", None)
        if tcp is None:
            self.counters["stub.tcp.unavailable"] += 1
            return None
        self.counters["stub.query.tcp"] += 1
        timeout = timeout or self.tcp_timeout
        loop = asyncio.get_running_loop()
        streams: list = []

        async def exchange() -> bytes:
            reader, writer = await tcp_stream.open_connection(tcp, server[0], server[1], timeout=timeout)
            streams.append(writer)
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            length = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(length)

        try:
            reply = await asyncio.wait_for(exchange(), timeout)     # one bound for the whole exchange
        except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError, BufferError):
            self.counters["stub.tcp.failed"] += 1
            return None
        finally:
            for writer in streams:
                try:
                    writer.close()
                except Exception:  # closing a broken connection must not mask the answer
                    pass
        # TCP cannot be blind-spoofed like UDP, so the case of the echoed
        # question is not held against the server here.
        if (len(reply) < 12 or struct.unpack_from("!H", reply)[0] != qid
                or reply[12:12 + len(question)].lower() != question.lower()):
            self.counters["stub.tcp.mismatch.drop"] += 1
            return None
        message = _parsed(reply)
        if message is None:
            self.counters["stub.tcp.malformed.drop"] += 1
            return None
        self.counters["stub.reply.tcp_ok"] += 1
        return Reply(reply, message, server, "tcp", bool(message.flags & dns.flags.TC), loop.time() - started)


def _time_out(result: asyncio.Future) -> None:
    if not result.done():
        result.set_exception(TimeoutError())


def _parsed(wire: bytes) -> dns.message.Message | None:
    """The reply read (unikernel.resolver.reply for what it reads, dnspython
    for the rest), or None when it is malformed by dnspython's rules."""
    message = read_reply(wire)
    if message is not None:
        return message
    try:
        return dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        return None


def _ip_text(ip: int) -> str:
    return ".".join(str((ip >> s) & 0xFF) for s in (24, 16, 8, 0))

