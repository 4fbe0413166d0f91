"""AF_PACKET on a NIC: raw frames inside the VM, where the kernel's own IP
stack is left unconfigured and the appliance owns the wire."""
from __future__ import annotations

import asyncio
import socket
import sys

from .. import checksum as cksum
from . import Receive
from .tap import READ_BATCH, _bring_up

ETH_P_ALL = 0x0003
# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 8
AUXDATA_SIZE = 20          # struct tpacket_auxdata
_CHECKSUM_FIELD = {17: 6, 6: 16}    # UDP, TCP: where the checksum sits in the header


def complete_checksum(frame: bytes) -> bytes:
    """Fills in the UDP or TCP checksum of an IPv4 frame that its sender left
    to "hardware" (CHECKSUM_PARTIAL).

    With virtio-net on a tap, the host kernel skips the checksums of what it
    sends to the guest (which negotiated VIRTIO_NET_F_GUEST_CSUM), and
    AF_PACKET hands such frames over flagged TP_STATUS_CSUMNOTREADY, with only
    the pseudo-header sum in the field. They come from the host, not from a
    wire, so the right checksum is the one over the bytes received. Anything
    that is not a whole, unfragmented IPv4 UDP/TCP packet is returned as it is
    (the stack then counts and drops it if it is bad)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        return frame
    header_len = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    protocol = frame[23]
    fragmented = int.from_bytes(frame[20:22], "big") & 0x3FFF     # MF or an offset
    start, end = 14 + header_len, 14 + total
    field_at = _CHECKSUM_FIELD.get(protocol)
    if field_at is None or fragmented or header_len < 20 or end > len(frame) or end - start < field_at + 2:
        return frame
    segment = bytearray(frame[start:end])
    segment[field_at:field_at + 2] = b"\0\0"
    src = int.from_bytes(frame[26:30], "big")
    dst = int.from_bytes(frame[30:34], "big")
    value = cksum.checksum(bytes(segment), cksum.pseudo_header_sum(src, dst, protocol, len(segment)))
    segment[field_at:field_at + 2] = value.to_bytes(2, "big")
    return frame[:start] + bytes(segment) + frame[end:]


class PacketLink:
    def __init__(self, name: str = "eth0", mtu: int = 1500) -> None:
        self.name, self.mtu = name, mtu
        self.checksums_completed = 0
        _bring_up(name)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # tell us which frames still lack their checksum (see complete_checksum)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.bind((name, 0))
        self.sock.setblocking(False)
        self.mac: bytes | None = self.sock.getsockname()[4][:6] or None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, receive: Receive) -> None:
        self._loop = loop
        recvmsg = self.sock.recvmsg
        control = socket.CMSG_SPACE(AUXDATA_SIZE)

        def readable() -> None:
            for _ in range(READ_BATCH):
                try:
                    frame, ancillary, _flags, address = recvmsg(65536, control)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                if address[2] == PACKET_OUTGOING:   # our own frames echo back on ETH_P_ALL
                    continue
                for level, kind, data in ancillary:
                    if (level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 4
                            and int.from_bytes(data[:4], sys.byteorder) & TP_STATUS_CSUMNOTREADY):
                        frame = complete_checksum(frame)
                        self.checksums_completed += 1
                receive(frame)

        loop.add_reader(self.sock.fileno(), readable)

    def send(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame)
        except OSError:   # the socket's queue is full: drop, as a NIC would
            return False
        return True

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
