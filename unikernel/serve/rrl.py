"""Response rate limiting for UDP, as NSD (rrl.c) and BIND do it, so that the
appliance cannot be used to amplify a flood toward a forged source: a
1,232-byte answer to a 40-byte query is about 30 times the traffic.

One bucket per client /24, in a fixed table (no allocation per packet). Each
bucket counts the responses of the current second and keeps NSD's smoothed
rate, ``rate = rate / 2 + count`` at each new second (halved again for every
second that passed without responses), which is about twice the responses
per second; a response is limited when ``count + rate / 2`` reaches twice
``rate_limit``. A bucket that another /24 hashes to is taken over (NSD does
the same; ``dns.rrl.bucket_reset``), so the table's size is its bound.

Of the limited responses, every ``slip``-th goes out truncated and empty
(header and question, TC set: a real client asks again over TCP, which
cannot be forged) and the others are dropped; ``slip`` 0 drops them all, 1
truncates them all. ``exempt`` clients (main hands in the access list when
``rrl_exempt_allowed`` is set) are never limited.

Time is the injected clock's reading; whole seconds are what counts.
Counters: ``dns.rrl.limited``, ``dns.rrl.slipped``, ``dns.rrl.dropped``,
``dns.rrl.bucket_reset``.
"""
from __future__ import annotations

import random
from collections.abc import Callable

SEND, SLIP, DROP = 0, 1, 2
BUCKETS = 65536          # a power of two; NSD's rrl-size is 1,000,000, BIND's max-table-size 20,000
_GOLDEN = 0x9E3779B1     # Knuth's multiplicative hash
_UNUSED = -1


class ResponseRateLimiter:
    def __init__(self, rate_limit: int, slip: int = 2, *, counters, buckets: int = BUCKETS,
                 exempt: Callable[[int], bool] | None = None, salt: int | None = None) -> None:
        if rate_limit < 1:
            raise ValueError("a rate limit of at least 1 response a second (0 means no limiter)")
        if slip < 0:
            raise ValueError("rrl slip must be 0 or more")
        if buckets < 1 or buckets & (buckets - 1):
            raise ValueError("the number of RRL buckets must be a power of two")
        self.rate_limit = rate_limit
        self.slip = slip
        self.counters = counters
        self.exempt = exempt
        self._mask = buckets - 1
        # the salt keeps a flood from aiming its /24s at one victim's bucket
        self._salt = random.SystemRandom().getrandbits(24) if salt is None else salt
        # four flat lists, one slot a bucket (allocated once; ints are shared)
        self._owner = [_UNUSED] * buckets          # the /24 (address >> 8) using the bucket
        self._second = [0] * buckets
        self._count = [0] * buckets
        self._rate = [0] * buckets
        self._threshold = 2 * rate_limit           # NSD's rate is about twice the responses a second
        self._limited = 0

    def verdict(self, src_ip: int, now: float) -> int:
        """SEND, SLIP (send the truncated empty reply instead) or DROP for a
        response to ``src_ip`` at ``now``."""
        if self.exempt is not None and self.exempt(src_ip):
            return SEND
        prefix = src_ip >> 8
        slot = (((prefix ^ self._salt) * _GOLDEN) >> 8) & self._mask
        second = int(now)
        if self._owner[slot] == prefix and self._second[slot] == second:
            # the common case, kept short: this /24 again within the second
            count = self._count[slot] = self._count[slot] + 1
            rate = self._rate[slot]
        elif self._owner[slot] != prefix:
            if self._owner[slot] != _UNUSED:
                self.counters["dns.rrl.bucket_reset"] += 1
            self._owner[slot] = prefix
            self._second[slot] = second
            self._count[slot] = 1
            self._rate[slot] = 0
            return SEND
        else:
            elapsed = second - self._second[slot]
            rate = self._rate[slot]
            if elapsed == 1:
                rate = rate // 2 + self._count[slot]
            elif 1 < elapsed <= 16:
                # the seconds between had no responses: halved for each
                rate = (rate >> elapsed) + (self._count[slot] >> (elapsed - 1))
            else:                     # long ago, or a clock that went back
                rate = 0
            self._rate[slot] = rate
            self._second[slot] = second
            count = self._count[slot] = 1
        if count + rate // 2 < self._threshold and rate < self._threshold:
            return SEND
        self.counters["dns.rrl.limited"] += 1
        self._limited += 1
        if self.slip and self._limited % self.slip == 0:
            self.counters["dns.rrl.slipped"] += 1
            return SLIP
        self.counters["dns.rrl.dropped"] += 1
        return DROP


def truncated_empty(reply: bytes) -> bytes | None:
    """``reply`` cut to its header and question, TC set, AA and the rcode
    cleared, every section empty (NSD's slip). None when its question cannot
    be read."""
    if len(reply) < 12:
        return None
    header = reply[:2] + bytes(((reply[2] & 0xF9) | 0x02, reply[3] & 0xF0))
    qdcount = (reply[4] << 8) | reply[5]
    if qdcount == 0:
        return header + b"\x00" * 8
    if qdcount != 1:
        return None
    offset = 12
    while offset < len(reply) and reply[offset]:
        if reply[offset] > 63:        # a question at offset 12 is never compressed
            return None
        offset += 1 + reply[offset]
    end = offset + 5                  # the root label, type and class
    if end > len(reply):
        return None
    return header + b"\x00\x01\x00\x00\x00\x00\x00\x00" + reply[12:end]
