"""AF_PACKET on a NIC: raw frames inside the VM, where the kernel's own IP
stack is left unconfigured and the appliance owns the wire."""
from __future__ import annotations

import asyncio
import logging
import mmap
import socket
import struct
import sys

from .. import checksum as cksum
from . import Receive
from .tap import READ_BATCH, _bring_up

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_COPY_THRESH = 7
PACKET_AUXDATA = 8
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_OUTGOING = 4
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0        # RX: the slot is the kernel's; TX: free
TP_STATUS_USER = 1          # RX: a frame for us
TP_STATUS_COPY = 2          # RX: too long for its slot, whole in the socket's queue
TP_STATUS_CSUMNOTREADY = 8
TP_STATUS_SEND_REQUEST = 1  # TX: ours, for the kernel to send
AUXDATA_SIZE = 20          # struct tpacket_auxdata
_CONTROL = socket.CMSG_SPACE(AUXDATA_SIZE)    # room for the auxdata, asked of every recvmsg
# struct tpacket2_hdr (32 bytes): tp_status, tp_len, tp_snaplen (u32), tp_mac, tp_net (u16), ...
_HDR = struct.Struct("=IIIHH")
_LEN = struct.Struct("=I")          # one of its u32 fields: tp_status, tp_len
# where a TX frame's bytes begin in its slot: TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)
TX_DATA = 32
# the struct sockaddr_ll that follows the header in an RX slot: its sll_pkttype
RX_PKTTYPE = 32 + 10
# The rings: 2 KiB slots hold a 1500-byte MTU's frame beside the header (the
# kernel puts the frame at tp_mac, 66-80 bytes in); a page a block, two slots
# a block, so the kernel never needs more than one contiguous page (a small
# VM's memory fragments). 512 RX slots absorb a burst as the 4 MiB socket
# buffer did (a full ring drops, counted by the kernel's tp_drops), 256 TX
# slots more than one readable batch sends; 1.5 MiB in all, held for as long
# as the link lives.
SLOT = 2048
BLOCK = 4096
RX_SLOTS = 512
TX_SLOTS = 256
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
    """AF_PACKET on interface `name`. With ``rings`` (the default) frames
    come and go through PACKET_MMAP rings shared with the kernel (TPACKET_V2):
    under load a readable wakeup takes every frame waiting without a system
    call each, and the replies of a batch leave with one ``send`` at its end.
    A kernel that refuses the rings gets the socket's own calls, recvmsg and
    send, a frame each, as it does with ``rings=False``."""

    def __init__(self, name: str = "eth0", mtu: int = 1500, rings: bool = True) -> None:
        self.name, self.mtu = name, mtu
        self.checksums_completed = 0
        self.frames_too_long = 0        # frames over a slot (read whole from the socket's queue, or lost)
        self.flush_failures = 0         # sends of the TX ring the kernel refused (its frames are lost)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        _bring_up(name, via=self.sock)      # the kernel may have no IPv4 at all (the appliance's has none)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # tell us which frames still lack their checksum (see complete_checksum)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.ring: mmap.mmap | None = None
        if rings:
            try:
                self.ring = _map_rings(self.sock)
            except OSError as e:
                log.warning("%s: no PACKET_MMAP rings (%s): a system call a frame instead", name, e)
        self.sock.bind((name, 0))
        self.sock.setblocking(False)
        self.mac: bytes | None = self.sock.getsockname()[4][:6] or None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx = 0                    # the next RX slot the kernel fills
        self._tx = 0                    # the next TX slot we fill
        self._unsent = 0                # TX slots filled since the last flush
        self._batching = False          # inside a readable batch: the flush waits for its end

    def attach(self, loop: asyncio.AbstractEventLoop, receive: Receive) -> None:
        self._loop = loop
        self._receive = receive
        loop.add_reader(self.sock.fileno(), self._read_ring if self.ring is not None else self._read_socket)

    def _read_socket(self) -> None:
        for _ in range(READ_BATCH):
            if not self._take_queued():
                return

    def _take_queued(self) -> bool:
        """One frame from the socket's queue into the stack; False when there is none."""
        try:
            frame, ancillary, _flags, address = self.sock.recvmsg(65536, _CONTROL)
        except OSError:                     # EAGAIN (nothing left) or the device went away
            return False
        if address[2] == PACKET_OUTGOING:   # our own frames echo back on ETH_P_ALL
            return True
        for level, kind, data in ancillary:
            if (level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 4
                    and int.from_bytes(data[:4], sys.byteorder) & TP_STATUS_CSUMNOTREADY):
                frame = complete_checksum(frame)
                self.checksums_completed += 1
        self._receive(frame)
        return True

    def _read_ring(self) -> None:
        ring = self.ring
        assert ring is not None
        receive = self._receive
        unpack = _HDR.unpack_from
        self._batching = True
        try:
            for _ in range(READ_BATCH):
                at = self._rx * SLOT
                status, length, snapped, mac, _net = unpack(ring, at)
                if not status & TP_STATUS_USER:
                    break
                if status & TP_STATUS_COPY:
                    # too long for a slot: the kernel queued it whole as well
                    ring[at:at + 4] = b"\0\0\0\0"
                    self._rx = (self._rx + 1) % RX_SLOTS
                    self.frames_too_long += 1
                    self._take_queued()
                    continue
                outgoing = ring[at + RX_PKTTYPE] == PACKET_OUTGOING     # ETH_P_ALL sees those: not copied
                frame = b"" if outgoing else ring[at + mac:at + mac + snapped]
                ring[at:at + 4] = b"\0\0\0\0"           # the slot back to the kernel, the frame copied out
                self._rx = (self._rx + 1) % RX_SLOTS
                if outgoing:
                    continue
                if snapped != length:       # cut short (the socket's queue was full for the copy)
                    self.frames_too_long += 1
                    continue
                if status & TP_STATUS_CSUMNOTREADY:
                    frame = complete_checksum(frame)
                    self.checksums_completed += 1
                receive(frame)
        finally:
            self._batching = False
            if self._unsent:
                self._flush()

    def send(self, frame: bytes) -> bool:
        ring = self.ring
        if ring is None:
            try:
                self.sock.send(frame)
            except OSError:   # the socket's queue is full: drop, as a NIC would
                return False
            return True
        size = len(frame)
        at = (RX_SLOTS + self._tx) * SLOT
        if size > SLOT - TX_DATA or _LEN.unpack_from(ring, at)[0] != TP_STATUS_KERNEL:
            return False      # too long for a slot, or the ring is full: dropped, as a NIC would
        ring[at + TX_DATA:at + TX_DATA + size] = frame
        _LEN.pack_into(ring, at + 4, size)
        _LEN.pack_into(ring, at, TP_STATUS_SEND_REQUEST)   # last: the kernel may take it from here
        self._tx = (self._tx + 1) % TX_SLOTS
        self._unsent += 1
        if not self._batching:
            self._flush()
        return True

    def _flush(self) -> None:
        """Hands the TX ring's filled slots to the kernel: one system call for
        all of them. It does not wait for the wire (the socket is non-blocking)."""
        self._unsent = 0
        try:
            self.sock.send(b"")
        except OSError:
            self.flush_failures += 1

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.ring is not None:
            self.ring.close()
            self.ring = None


def _map_rings(sock: socket.socket) -> mmap.mmap:
    """Sets up the socket's RX and TX rings and maps them: RX first, then TX,
    in one mapping, as the kernel lays them out."""
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)       # these three before the rings (EBUSY after)
    # a frame the device refuses is dropped and its slot freed, not left to stop the ring
    sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
    # a frame over its slot is queued whole too (TP_STATUS_COPY), not cut short
    sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
    for option, slots in ((PACKET_RX_RING, RX_SLOTS), (PACKET_TX_RING, TX_SLOTS)):
        # struct tpacket_req: block size, blocks, frame size, frames
        sock.setsockopt(SOL_PACKET, option, struct.pack("=IIII", BLOCK, slots * SLOT // BLOCK, SLOT, slots))
    return mmap.mmap(sock.fileno(), (RX_SLOTS + TX_SLOTS) * SLOT, mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE)
