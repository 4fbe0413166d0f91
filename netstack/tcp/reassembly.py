"""Receive reassembly: segments that arrived ahead of ``rcv_nxt``, kept until
the gap before them fills. Bounded in count and in bytes; what does not fit
is dropped (the peer sends it again) and counted."""
from __future__ import annotations

from ..counters import Counters
from .sequence import seq_diff


class Reassembly:
    __slots__ = ("counters", "max_segments", "max_bytes", "segments", "bytes")

    def __init__(self, counters: Counters, *, max_segments: int, max_bytes: int) -> None:
        self.counters = counters
        self.max_segments = max_segments
        self.max_bytes = max_bytes
        self.segments: dict[int, tuple[bytes, bool]] = {}   # seq -> (payload, FIN)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.segments)

    def keep(self, seq: int, payload: bytes, fin: bool) -> None:
        """Holds a segment that starts beyond rcv_nxt (already trimmed to the window)."""
        counters = self.counters
        if not payload and not fin:
            return
        old = self.segments.get(seq)
        if old is not None and len(old[0]) >= len(payload):
            counters["tcp.ooo.duplicate"] += 1
            return
        old_len = len(old[0]) if old is not None else 0
        if (old is None and len(self.segments) >= self.max_segments) or \
                self.bytes - old_len + len(payload) > self.max_bytes:
            counters["tcp.ooo.full.drop"] += 1
            return
        self.segments[seq] = (payload, fin)
        self.bytes += len(payload) - old_len
        counters["tcp.ooo.kept"] += 1

    def take_next(self, rcv_nxt: int) -> tuple[bytes, bool] | None:
        """The kept bytes (and FIN) that continue the stream at rcv_nxt, trimmed
        of what was already received; segments wholly behind rcv_nxt go away."""
        for seq in [s for s in self.segments if seq_diff(s, rcv_nxt) <= 0]:
            data, fin = self.segments.pop(seq)
            self.bytes -= len(data)
            cut = seq_diff(rcv_nxt, seq)
            if cut <= len(data) and (cut < len(data) or fin):
                self.counters["tcp.ooo.reassembled"] += 1
                return data[cut:], fin
        return None

    def clear(self) -> None:
        self.segments.clear()
        self.bytes = 0
