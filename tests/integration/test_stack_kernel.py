"""The Linux kernel as the peer: ping, UDP echo and port unreachable through a
tap inside a network namespace that the test makes and removes."""
import sys
import textwrap

from tests.netns import exec_in, needs_root
from tests.stackutil import with_stack

pytestmark = [needs_root]

HOST, APPLIANCE = "192.0.2.1", "192.0.2.2"


def test_kernel_pings_us_five_of_five():
    async def body(ns, stack):
        return await exec_in(ns, "ping", "-c", "5", "-i", "0.2", "-W", "2", APPLIANCE), stack.counters
    (rc, out), counters = with_stack(body)
    assert rc == 0, out
    assert " 5 received" in out, out
    assert counters["icmp.echo.replied"] == 5


def test_large_pings_fragment_both_ways():
    async def body(ns, stack):
        return await exec_in(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", "3000", APPLIANCE), stack.counters
    (rc, out), counters = with_stack(body)
    assert rc == 0, out
    assert " 3 received" in out and "3008 bytes from" in out, out
    assert counters["ipv4.frag.reassembled"] == 3     # their requests came in pieces
    assert counters["ipv4.fragmented"] == 3            # our replies went out in pieces


UDP_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(sys.argv[3].encode())
    try:
        print("reply:", s.recv(65535).decode())
    except ConnectionRefusedError:
        print("refused")
    except socket.timeout:
        print("timeout")
""")


def test_udp_echo_and_port_unreachable():
    async def body(ns, stack):
        def echo(payload, src_ip, src_port, dst_ip, dst_port):
            stack.udp.sendto(payload.upper(), dst_port, src_ip, src_port)
        stack.udp.bind(7, echo)
        big = "x" * 4000     # fragmented both ways
        results = [await exec_in(ns, sys.executable, "-c", UDP_CLIENT, APPLIANCE, "7", "hello"),
                   await exec_in(ns, sys.executable, "-c", UDP_CLIENT, APPLIANCE, "7", big),
                   await exec_in(ns, sys.executable, "-c", UDP_CLIENT, APPLIANCE, "9999", "anyone?")]
        return results, stack.counters
    results, counters = with_stack(body)
    assert results[0][1].strip() == "reply: HELLO"
    assert results[1][1].strip() == "reply: " + "X" * 4000
    assert results[2][1].strip() == "refused"
    assert counters["icmp.port_unreachable.sent"] == 1
    assert counters["udp.closed_port.drop"] == 1
