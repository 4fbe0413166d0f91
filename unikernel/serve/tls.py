"""DNS over TLS for the appliance's clients (RFC 7858), on port 853.

The same framing, handler and bounds as DNS over TCP (``DnsTcpServer``:
connections, pending queries per connection, answer memory, idle and stalled
message timeouts, whose ``dns_tcp.*`` counters it shares), with a TLS
handshake in front:

* at most ``max_handshakes`` handshakes run at once; one more makes room by
  resetting the oldest unfinished one (``dns_tls.handshake_limit.evicted``),
  so clients that open connections and never finish them cannot keep a real
  client, whose handshake takes milliseconds, from getting through;
* a handshake that does not finish within ``handshake_timeout`` is reset
  (``dns_tls.handshake.timeout``); garbage instead of a ClientHello fails it
  at once (``dns_tls.handshake.failed``);
* a connection counts against ``max_connections`` from the moment TCP accepts it:
  handshaking or not;
* answers to queries that carried EDNS are padded to a multiple of 468 bytes
  (RFC 8467 4.1's block length for responses), so their sizes say little.

``handle(src, dst, query_wire)`` is the one the TCP server is given: access
rules are the processor's, the same on every transport.
"""
from __future__ import annotations

import asyncio
import functools
import ssl

import dns.edns
import dns.exception
import dns.message

from netstack import tls
from netstack.tcp.connection import Connection
from netstack.tcp.layer import TcpLayer
from netstack.tcp.stream import wrap
from unikernel.serve.tcp import MAX_MESSAGE, DnsTcpServer, Handle

ANSWER_PAD_BLOCK = 468


def padded_answer(answer: bytes, block: int = ANSWER_PAD_BLOCK) -> bytes:
    """``answer`` with an EDNS Padding option to a multiple of ``block`` bytes
    when it carries an OPT record (the query had EDNS); unchanged otherwise,
    or when padding would not fit in a DNS message."""
    try:
        message = dns.message.from_wire(answer)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        return answer
    if message.edns < 0:
        return answer
    options = [o for o in message.options if o.otype != dns.edns.OptionType.PADDING]
    message.use_edns(message.edns, message.ednsflags, message.payload, options=options, pad=block)
    try:
        padded = message.to_wire(max_size=MAX_MESSAGE)
    except dns.exception.TooBig:
        return answer
    return padded


class DnsTlsServer(DnsTcpServer):
    """``DnsTlsServer(stack.tcp, 853, handle, context).start()`` ... ``close()``."""

    def __init__(self, tcp_layer: TcpLayer, port: int, handle: Handle, context: ssl.SSLContext, *,
                 max_handshakes: int = 16, handshake_timeout: float = 5.0, **limits) -> None:
        super().__init__(tcp_layer, port, self._padded, **limits)
        self.inner = handle
        self.context = context
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self.handshaking: dict[Connection, None] = {}     # in the order they came: the oldest first

    async def _padded(self, src, dst, query: bytes) -> bytes | list[bytes] | None:
        answer = await self.inner(src, dst, query)
        if isinstance(answer, list):            # a zone transfer's messages (XoT): each padded
            return [padded_answer(message) for message in answer]
        return padded_answer(answer) if answer is not None else None

    def _accept(self, conn: Connection) -> None:
        if len(self.sessions) >= self.max_connections:
            self.counters["dns_tls.connection_limit.reset"] += 1
            conn.abort()
            return
        if len(self.handshaking) >= self.max_handshakes:
            oldest = next(iter(self.handshaking))
            self.counters["dns_tls.handshake_limit.evicted"] += 1
            self.handshaking.pop(oldest)
            self.sessions[oldest].cancel()
        self.counters["dns_tls.accepted"] += 1
        reader, writer = wrap(conn)
        self.handshaking[conn] = None
        task = asyncio.get_running_loop().create_task(self._handshake_then_serve(conn, reader, writer))
        self.sessions[conn] = task
        task.add_done_callback(functools.partial(self._session_ended, conn))

    async def _handshake_then_serve(self, conn: Connection, reader, writer) -> None:
        try:
            plain_reader, plain_writer = await tls.server(reader, writer, self.context,
                                                          timeout=self.handshake_timeout)
        except TimeoutError:
            self.counters["dns_tls.handshake.timeout"] += 1
            writer.abort()
            return
        except (ssl.SSLError, ConnectionError) as e:
            self.counters["dns_tls.handshake.failed"] += 1
            self.counters[f"dns_tls.handshake.failed.{_reason(e)}"] += 1
            writer.abort()
            return
        except asyncio.CancelledError:
            writer.abort()
            raise
        finally:
            self.handshaking.pop(conn, None)
        self.counters["dns_tls.handshake.done"] += 1
        if plain_writer.get_extra_info("session_reused"):
            self.counters["dns_tls.handshake.resumed"] += 1
        await self._serve(conn, plain_reader, plain_writer)


def _reason(error: Exception) -> str:
    """A short, bounded counter suffix for why a handshake failed."""
    if isinstance(error, ssl.SSLError):
        reason = (getattr(error, "reason", None) or "ssl").lower()
        return "".join(ch if ch.isalnum() else "_" for ch in reason)[:40]
    return "connection"
