"""netstack.tls on our stack against TLS that is not ours, over the Linux
kernel's TCP in a namespace: our client against `openssl s_server`, and
Python's ssl module (a client on a kernel socket) against our server, with
certificates made by openssl at test time; also with 15% loss both ways."""
from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import textwrap

import pytest

from netstack import tls
from netstack.tcp.stream import open_connection, wrap
from tests.netns import exec_in, needs_root, read_until
from tests.stackutil import KERNEL_SIDE, STACK_SIDE, with_stack
from tests.tlscerts import make_pki, needs_openssl

pytestmark = [needs_root, needs_openssl]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), addresses=(KERNEL_SIDE, STACK_SIDE))


@pytest.mark.parametrize("lossy", [0, 15])
def test_our_client_against_openssl_s_server(pki, lossy):
    async def body(ns, stack):
        server = ns.popen("openssl", "s_server", "-accept", f"{KERNEL_SIDE}:4433", "-cert", str(pki.cert),
                          "-key", str(pki.key), "-rev", stdin=subprocess.DEVNULL)
        await asyncio.get_running_loop().run_in_executor(None, read_until, server, "ACCEPT", 20)
        reader, writer = await open_connection(stack.tcp, KERNEL_SIDE, 4433, timeout=10)
        plain_reader, plain_writer = await tls.client(reader, writer, tls.client_context(str(pki.ca)),
                                                      pki.name, timeout=30)
        lines = []
        for word in ("hello", "appliance", "x" * 3000):      # the last one spans segments
            plain_writer.write(word.encode() + b"\n")
            await plain_writer.drain()
            lines.append(await asyncio.wait_for(plain_reader.readline(), 30))
        version = plain_writer.get_extra_info("version")
        plain_writer.close()
        return lines, version

    lines, version = with_stack(body, lossy=lossy)
    assert lines == [b"olleh\n", b"ecnailppa\n", b"x" * 3000 + b"\n"]      # s_server -rev reverses lines
    assert version in ("TLSv1.2", "TLSv1.3")


def test_our_client_refuses_openssl_s_server_with_an_untrusted_certificate(pki):
    async def body(ns, stack):
        server = ns.popen("openssl", "s_server", "-accept", f"{KERNEL_SIDE}:4433", "-cert", str(pki.cert),
                          "-key", str(pki.key), "-rev", stdin=subprocess.DEVNULL)
        await asyncio.get_running_loop().run_in_executor(None, read_until, server, "ACCEPT", 20)
        outcomes = []
        for ca, name in ((pki.other_ca, pki.name), (pki.ca, "wrong.test")):
            reader, writer = await open_connection(stack.tcp, KERNEL_SIDE, 4433, timeout=10)
            try:
                await tls.client(reader, writer, tls.client_context(str(ca)), name, timeout=30)
                outcomes.append("accepted")
            except ssl.SSLCertVerificationError as e:
                outcomes.append(e.verify_message)
            writer.abort()
        return outcomes

    outcomes = with_stack(body)
    assert len(outcomes) == 2 and "accepted" not in outcomes, outcomes
    assert "unable to get local issuer certificate" in outcomes[0]
    assert "Hostname mismatch" in outcomes[1] or "hostname" in outcomes[1].lower(), outcomes


PYTHON_CLIENT = textwrap.dedent("""
    import socket, ssl, sys
    context = ssl.create_default_context(cafile=sys.argv[1])
    with socket.create_connection((sys.argv[2], 853), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=sys.argv[3]) as s:
            print(s.version(), flush=True)
            for i in range(5):
                message = (str(i) * 5000).encode()
                s.sendall(message)
                got = b""
                while len(got) < len(message):
                    got += s.recv(65536)
                print("echo", i, got == message, flush=True)
""")


@pytest.mark.parametrize("lossy", [0, 15])
def test_pythons_ssl_client_against_our_server(pki, lossy):
    async def body(ns, stack):
        context = tls.server_context(str(pki.cert), str(pki.key))

        async def session(reader, writer):
            try:
                plain_reader, plain_writer = await tls.server(reader, writer, context, timeout=30)
            except (ssl.SSLError, ConnectionError, TimeoutError):
                writer.abort()
                return
            while data := await plain_reader.read(65536):
                plain_writer.write(data)
                await plain_writer.drain()
            plain_writer.close()

        stack.tcp.listen(853, lambda conn: asyncio.get_running_loop().create_task(session(*wrap(conn))))
        return await exec_in(ns, sys.executable, "-c", PYTHON_CLIENT, str(pki.ca), STACK_SIDE, pki.name,
                             timeout=120)

    rc, out = with_stack(body, lossy=lossy)
    assert rc == 0, out
    assert out.splitlines()[0] in ("TLSv1.2", "TLSv1.3"), out
    assert [line for line in out.splitlines() if line.startswith("echo")] == [f"echo {i} True" for i in range(5)]
