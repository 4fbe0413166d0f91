"""DNS over TCP end to end: the appliance (unikernel.main.serve, whose TCP
side is unikernel.serve.tcp on netstack.tcp) on a tap in a namespace, and the
Linux kernel's TCP as the client: dig +tcp, 50 pipelined queries on one
connection, a large answer over many segments (truncated over UDP, whole over
TCP), clients that close early or reset, and 15% loss both ways."""
from __future__ import annotations

import asyncio
import sys
import textwrap

from tests.netns import Namespace, exec_in, needs_root
from tests.stackutil import serving, tap_link
from unikernel.config import Appliance

pytestmark = [needs_root]

HOST, APPLIANCE = "192.0.2.1", "192.0.2.2"
BIG_RECORDS = 300   # TXT strings of 180 bytes: an answer of about 57 KB

ZONE = textwrap.dedent("""
    $ORIGIN tcp.test.
    $TTL 300
    @       IN SOA  ns1 hostmaster 1 7200 900 1209600 300
            IN NS   ns1
    ns1     IN A    192.0.2.53
    www     IN A    192.0.2.80
""") + "".join(f'big     IN TXT  "{i:04d}{"x" * 176}"\n' for i in range(BIG_RECORDS)) \
    + "".join(f"host{i} IN A 198.51.100.{i}\n" for i in range(50))


def with_appliance(tmp_path, body, *, lossy: int = 0):
    """Runs ``await body(ns)`` while the appliance serves tcp.test on tap0."""
    zone = tmp_path / "tcp.test.zone"
    zone.write_text(ZONE)
    appliance = Appliance(tap="tap0", ipv4=f"{APPLIANCE}/24", ipv4_gateway=HOST, zones=[str(zone)])
    with Namespace() as ns:
        link = tap_link(ns, lossy)

        return asyncio.run(serving(appliance, link, lambda: body(ns)))


def test_dig_tcp(tmp_path):
    async def body(ns):
        return await exec_in(ns, "dig", "+tcp", "+time=5", "+tries=1", f"@{APPLIANCE}", "www.tcp.test", "A")
    rc, out = with_appliance(tmp_path, body)
    assert rc == 0, out
    assert "status: NOERROR" in out and "192.0.2.80" in out, out
    assert "(TCP)" in out, out


def test_large_answer_truncated_over_udp_and_whole_over_tcp(tmp_path):
    async def body(ns):
        udp = await exec_in(ns, "dig", "+notcp", "+ignore", "+bufsize=1232", "+time=5", "+tries=1",
                            f"@{APPLIANCE}", "big.tcp.test", "TXT")
        tcp = await exec_in(ns, "dig", "+tcp", "+time=10", "+tries=1", f"@{APPLIANCE}", "big.tcp.test", "TXT")
        return udp, tcp
    (urc, uout), (trc, tout) = with_appliance(tmp_path, body)
    assert urc == 0 and " tc" in uout.split("flags:")[1].split(";")[0], uout
    assert trc == 0, tout
    assert f"ANSWER: {BIG_RECORDS}," in tout, tout[:2000]
    assert "MSG SIZE  rcvd: " in tout
    size = int(tout.split("MSG SIZE  rcvd: ")[1].split()[0])
    assert size > 50_000      # dozens of segments


PIPELINE = textwrap.dedent("""
    import socket, struct, sys
    import dns.message, dns.rrset
    server, count = sys.argv[1], int(sys.argv[2])
    s = socket.create_connection((server, 53), timeout=20)
    queries = {}
    for i in range(count):
        q = dns.message.make_query(f"host{i}.tcp.test", "A")
        q.id = 1000 + i
        queries[q.id] = f"198.51.100.{i}"
    out = b""
    for q_id in queries:
        q = dns.message.make_query(f"host{q_id - 1000}.tcp.test", "A")
        q.id = q_id
        w = q.to_wire()
        out += struct.pack("!H", len(w)) + w
    s.sendall(out)          # all of them at once: one connection, pipelined
    buf = b""
    answered = 0
    def take(n):
        global buf
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"EOF after {answered} answers")
            buf += chunk
        part, buf = buf[:n], buf[n:]
        return part
    order = []
    for _ in range(count):
        (n,) = struct.unpack("!H", take(2))
        r = dns.message.from_wire(take(n))
        want = queries.pop(r.id)
        got = [rr.address for rrset in r.answer for rr in rrset]
        assert got == [want], (r.id, got, want)
        order.append(r.id)
        answered += 1
    print("answered", answered, "left", len(queries))
""")


def test_fifty_pipelined_queries_on_one_connection(tmp_path):
    async def body(ns):
        return await exec_in(ns, sys.executable, "-c", PIPELINE, APPLIANCE, "50")
    rc, out = with_appliance(tmp_path, body)
    assert rc == 0, out
    assert out.strip() == "answered 50 left 0", out


EARLY = textwrap.dedent("""
    import socket, struct, sys, time
    import dns.message
    server, how = sys.argv[1], sys.argv[2]
    w = dns.message.make_query("big.tcp.test", "TXT").to_wire()
    for _ in range(5):
        s = socket.create_connection((server, 53), timeout=10)
        s.sendall(struct.pack("!H", len(w)) + w + struct.pack("!H", len(w)) + w[:5])
        if how == "reset":
            time.sleep(0.05)       # the answer is on its way
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    print("done")
""")


def test_clients_closing_early_or_resetting_do_not_hurt_the_server(tmp_path):
    async def body(ns):
        early = await exec_in(ns, sys.executable, "-c", EARLY, APPLIANCE, "close")
        reset = await exec_in(ns, sys.executable, "-c", EARLY, APPLIANCE, "reset")
        after = await exec_in(ns, "dig", "+tcp", "+time=5", "+tries=1", f"@{APPLIANCE}", "www.tcp.test", "A")
        return early, reset, after
    early, reset, (rc, out) = with_appliance(tmp_path, body)
    assert early == (0, "done\n") and reset == (0, "done\n"), (early, reset)
    assert rc == 0 and "192.0.2.80" in out, out


def test_tcp_queries_survive_fifteen_percent_loss_both_ways(tmp_path):
    async def body(ns):
        digs = [exec_in(ns, "dig", "+tcp", "+time=8", "+tries=1", f"@{APPLIANCE}", f"host{i}.tcp.test", "A",
                        timeout=60) for i in range(10)]
        big = exec_in(ns, "dig", "+tcp", "+time=20", "+tries=1", f"@{APPLIANCE}", "big.tcp.test", "TXT",
                      timeout=60)
        return await asyncio.gather(*digs, big)
    *results, (brc, bout) = with_appliance(tmp_path, body, lossy=15)
    answered = sum(1 for i, (rc, out) in enumerate(results) if rc == 0 and f"198.51.100.{i}" in out)
    assert answered >= 9, [out[-300:] for _, out in results]
    assert brc == 0 and f"ANSWER: {BIG_RECORDS}," in bout, bout[-500:]
