"""unikernel.ops.http on our stack, against curl and the kernel's TCP in a
namespace; what /metrics serves is checked by promtool."""
from __future__ import annotations

import asyncio
import shutil
import sys

import pytest

from tests.netns import exec_in, needs_root
from tests.stackutil import STACK_SIDE, with_stack
from unikernel.ops.http import HttpServer

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (apt install curl)")
PORT = 9153
BASE = f"http://{STACK_SIDE}:{PORT}"
CONNECT = f"import socket; s = socket.create_connection(('{STACK_SIDE}', {PORT}), timeout=10); "
METRICS = """# HELP dnsapp_x_total A test counter.
# TYPE dnsapp_x_total counter
dnsapp_x_total{layer="dns"} 3
"""


def serve_and(body, *, allowed=lambda ip: True, **options):
    async def run(ns, stack):
        routes = {"/metrics": lambda: ("text/plain; version=0.0.4; charset=utf-8", METRICS.encode()),
                  "/boom": lambda: 1 / 0}
        server = HttpServer(stack.tcp, PORT, routes, allowed=allowed, counters=stack.counters, **options)
        server.start()
        try:
            return await body(ns, stack)
        finally:
            server.close()
    return with_stack(run)


async def curl(ns, *args: str) -> tuple[int, str]:
    return await exec_in(ns, "curl", "-sS", "--max-time", "10", *args, timeout=30)


@needs_root
@needs_curl
def test_get_metrics_with_keep_alive_and_promtool():
    async def body(ns, stack):
        status, out = await curl(ns, "-i", f"{BASE}/metrics", f"{BASE}/metrics")
        assert status == 0, out
        assert out.count("HTTP/1.1 200 OK") == 2
        assert "content-type: text/plain; version=0.0.4; charset=utf-8" in out.lower()
        assert stack.counters["http.accepted"] == 1 and stack.counters["http.ok"] == 2   # one connection kept
        if shutil.which("promtool"):
            status, out = await exec_in(ns, "sh", "-c", f"curl -sS {BASE}/metrics | promtool check metrics")
            assert status == 0, out
    serve_and(body)


@needs_root
@needs_curl
def test_errors_have_their_status():
    async def body(ns, stack):
        checks = [(("-o", "/dev/null", "-w", "%{http_code}", f"{BASE}/nothing"), "404"),
                  (("-o", "/dev/null", "-w", "%{http_code}", "-d", "x=1", f"{BASE}/metrics"), "405"),
                  (("-o", "/dev/null", "-w", "%{http_code}", f"{BASE}/boom"), "500"),
                  (("-o", "/dev/null", "-w", "%{http_code}", "-I", f"{BASE}/metrics"), "200")]
        for args, expected in checks:
            status, out = await curl(ns, *args)
            assert (status, out) == (0, expected)
        assert stack.counters["http.not_found"] == 1 and stack.counters["http.method_not_allowed"] == 1
        assert stack.counters["http.exception"] == 1
        # what h11 refuses gets its 400, then the close
        raw = CONNECT + "s.sendall(b'NOT HTTP AT ALL\\r\\n\\r\\n'); print(s.recv(200).decode())"
        status, out = await exec_in(ns, sys.executable, "-c", raw)
        assert status == 0 and out.startswith("HTTP/1.1 400"), out
        assert stack.counters["http.bad_request.400"] == 1
        # a request head beyond the bound
        status, out = await curl(ns, "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Big: " + "a" * 9000,
                                 f"{BASE}/metrics")
        assert out == "431" and stack.counters["http.bad_request.431"] == 1
    serve_and(body)


@needs_root
@needs_curl
def test_clients_outside_the_access_list_are_reset():
    async def body(ns, stack):
        status, out = await curl(ns, f"{BASE}/metrics")
        assert status != 0 and "dnsapp_x_total" not in out
        assert stack.counters["http.not_allowed.reset"] >= 1
        assert stack.counters["http.accepted"] == 0
    serve_and(body, allowed=lambda ip: False)


@needs_root
@needs_curl
def test_idle_connections_are_closed():
    async def body(ns, stack):
        raw = CONNECT + "print(s.recv(10))"
        status, out = await exec_in(ns, sys.executable, "-c", raw)
        assert status == 0 and out.split()[0] == "b''", out          # closed by us, not by the client's timeout
        await asyncio.sleep(0.1)
        assert stack.counters["http.idle.close"] == 1
    serve_and(body, idle_timeout=1.0)


@needs_root
@needs_curl
def test_a_request_head_trickling_in_is_cut_off():
    async def body(ns, stack):
        raw = "\n".join([
            "import socket, time",
            f"s = socket.create_connection(('{STACK_SIDE}', {PORT}), timeout=10)",
            "for b in b'GET /metrics HTTP/1.1\\r\\nX: ' + b'a' * 40:",
            "    try:",
            "        s.sendall(bytes([b]))",
            "    except OSError:",
            "        break",
            "    time.sleep(0.1)",
            "try:",
            "    print('cut', s.recv(10))",
            "except OSError as e:",        # our FIN, then a reset for the bytes sent after it
            "    print('cut', type(e).__name__)"])
        status, out = await exec_in(ns, sys.executable, "-c", raw)
        assert status == 0 and out.startswith("cut"), out
        await asyncio.sleep(0.1)
        assert stack.counters["http.slow_request.close"] == 1 and stack.counters["http.ok"] == 0
    serve_and(body, idle_timeout=2.0)
