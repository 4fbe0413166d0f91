"""The floor: a bare responder on a tap, the least Python a reply can cost.

``python -m bench.bare [--tap] TAP`` reads frames from the tap (blocking reads, no
event loop; ``python -m bench.bare --packet IFNAME``: from an AF_PACKET
socket on the interface, recv and send, a system call a frame, as the
appliance's link does without its rings) and writes each UDP query to port 53 back at once as its own
reply: MACs, addresses and ports swapped, QR set, UDP checksum 0 (none, as
IPv4 allows), the IP header's checksum unchanged (swapping the addresses
keeps the sum). No parsing, no checks, no ARP: the benchmark gives the
kernel a static neighbour entry. What it reaches is what the tap's read and
write let a Python process reach here; the appliance's gap to it is our
per-packet Python. Not a server: a measuring stick for bench/auth.py.
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

from netstack.link.packet import ETH_P_ALL, PACKET_OUTGOING
from netstack.link.tap import TapLink

_UDP_TO_53 = b"\x08\x00"


def serve(tap: str) -> None:
    link = TapLink(tap)
    fd = link.fd
    os.set_blocking(fd, True)
    read, write = os.read, os.write
    answer(lambda: read(fd, 2048), lambda frame: write(fd, frame))


def serve_packet(ifname: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    recvfrom = sock.recvfrom

    def read() -> bytes:
        frame, address = recvfrom(2048)
        return b"" if address[2] == PACKET_OUTGOING else frame
    answer(read, sock.send)


def answer(read: Callable[[], bytes], write: Callable[[bytes], object]) -> None:
    print("ready", flush=True)
    while True:
        f = read()
        if len(f) < 54 or f[12:14] != _UDP_TO_53 or f[23] != 17 or f[36:38] != b"\x00\x35":
            continue
        write(f[6:12] + f[0:6] + f[12:26] + f[30:34] + f[26:30] + f[36:38] + f[34:36] + f[38:40]
              + b"\x00\x00" + f[42:44] + bytes((f[44] | 0x80,)) + f[45:])


if __name__ == "__main__":
    # bench.common.server_link's flags: --tap TAP or --packet IFNAME (a bare TAP too)
    if sys.argv[1] == "--packet":
        serve_packet(sys.argv[2])
    else:
        serve(sys.argv[2] if sys.argv[1] == "--tap" else sys.argv[1])
