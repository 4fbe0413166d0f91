"""Our TCP against the Linux kernel's, through a tap in a network namespace:
the kernel as client of our listener, as server for our connect, a refused
port, a bulk transfer both ways, and a client that resets mid-stream."""
from __future__ import annotations

import asyncio
import hashlib
import random
import sys
import textwrap

from netstack.stack import Stack
from netstack.tcp.stream import open_connection, wrap
from tests.netns import exec_in, needs_root
from tests.stackutil import with_stack

pytestmark = [needs_root]

HOST, APPLIANCE = "192.0.2.1", "192.0.2.2"


KERNEL_CLIENT = textwrap.dedent("""
    import hashlib, socket, sys, threading
    size = int(sys.argv[3])
    data = bytes((i * 7 + 3) % 251 for i in range(size))
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
    got = bytearray()
    def read():      # reading while sending: an echo with bounded buffers needs both
        while chunk := s.recv(65536):
            got.extend(chunk)
    reader = threading.Thread(target=read)
    reader.start()
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reader.join()
    print("sent", hashlib.sha256(data).hexdigest())
    print("got", hashlib.sha256(got).hexdigest(), len(got))
""")


def echo_server(stack: Stack, port: int) -> dict:
    state = {"bytes": 0, "closed": 0}

    def accept(conn):
        reader, writer = wrap(conn)

        async def echo():
            try:
                while data := await reader.read(65536):
                    state["bytes"] += len(data)
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                state["errors"] = state.get("errors", 0) + 1
                return
            writer.close()
            state["closed"] += 1
        asyncio.get_running_loop().create_task(echo())
    stack.tcp.listen(port, accept)
    return state


def test_kernel_client_echo_half_a_megabyte():
    async def body(ns, stack):
        state = echo_server(stack, 7)
        rc, out = await exec_in(ns, sys.executable, "-c", KERNEL_CLIENT, APPLIANCE, "7", "500000")
        await asyncio.sleep(0.2)
        return rc, out, state, stack.counters
    rc, out, state, counters = with_stack(body)
    assert rc == 0, out
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["got"] == lines["sent"] + " 500000", out
    assert state == {"bytes": 500000, "closed": 1}
    assert counters["tcp.accept"] == 1 and counters["tcp.exception"] == 0


KERNEL_SERVER = textwrap.dedent("""
    import hashlib, socket, sys
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((sys.argv[1], int(sys.argv[2])))
    ls.listen(1)
    print("listening", flush=True)
    c, _ = ls.accept()
    c.settimeout(20)
    got = bytearray()
    while chunk := c.recv(65536):
        got += chunk
    c.sendall(hashlib.sha256(got).hexdigest().encode() + b" " + str(len(got)).encode())
    c.close()
""")


def test_we_connect_to_the_kernel_and_close_first():
    blob = random.Random(1).randbytes(300_000)

    async def body(ns, stack):
        server = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns.name, sys.executable, "-c", KERNEL_SERVER, HOST, "9000",
            stdout=asyncio.subprocess.PIPE)
        assert (await asyncio.wait_for(server.stdout.readline(), 10)).strip() == b"listening"
        reader, writer = await open_connection(stack.tcp, HOST, 9000, timeout=10)
        writer.write(blob)
        await writer.drain()
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 30)
        await asyncio.wait_for(writer.wait_closed(), 10)
        await server.wait()
        conns = list(stack.tcp.connections.values())
        return reply, [c.state.value for c in conns]
    reply, states = with_stack(body)
    assert reply == f"{hashlib.sha256(blob).hexdigest()} {len(blob)}".encode()
    assert states in (["TIME_WAIT"], [])     # the kernel closed after us: its FIN got our ACK


def test_kernel_is_refused_on_a_closed_port():
    probe = textwrap.dedent("""
        import socket, sys
        try:
            socket.create_connection((sys.argv[1], 4444), timeout=5)
            print("connected")
        except ConnectionRefusedError:
            print("refused")
    """)

    async def body(ns, stack):
        return await exec_in(ns, sys.executable, "-c", probe, APPLIANCE), stack.counters
    (rc, out), counters = with_stack(body)
    assert out.strip() == "refused"
    assert counters["tcp.no_listener.rst"] == 1


def test_our_connect_to_a_closed_kernel_port_is_refused():
    async def body(ns, stack):
        try:
            await open_connection(stack.tcp, HOST, 4444, timeout=5)
        except ConnectionRefusedError:
            return "refused"
        return "connected"
    assert with_stack(body) == "refused"


RESETTING_CLIENT = textwrap.dedent("""
    import socket, struct, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"x" * 100000)
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()          # unread data and linger 0: the kernel sends RST
    print("reset")
""")


def test_kernel_resets_mid_stream():
    async def body(ns, stack):
        state = echo_server(stack, 7)
        rc, out = await exec_in(ns, sys.executable, "-c", RESETTING_CLIENT, APPLIANCE, "7")
        for _ in range(40):
            if not stack.tcp.connections:
                break
            await asyncio.sleep(0.05)
        return out, state, stack.counters, dict(stack.tcp.connections)
    out, state, counters, conns = with_stack(body)
    assert out.strip() == "reset"
    assert conns == {}                       # the reset connection is gone
    assert counters["tcp.reset"] == 1 and counters["tcp.exception"] == 0
    assert state["bytes"] > 0


def test_bulk_echo_survives_loss_both_ways():
    async def body(ns, stack):
        echo_server(stack, 7)
        rc, out = await exec_in(ns, sys.executable, "-c", KERNEL_CLIENT, APPLIANCE, "7", "100000", timeout=120)
        return rc, out, stack.counters
    rc, out, counters = with_stack(body, lossy=10)
    assert rc == 0, out
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["got"] == lines["sent"] + " 100000", out
    assert counters["tcp.retransmit.timeout"] + counters["tcp.retransmit.fast"] > 0
