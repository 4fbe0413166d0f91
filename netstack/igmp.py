"""IGMP, the host side (RFC 1112 v1, RFC 2236 v2, RFC 3376 v3): the groups we
belong to, and the reports that tell routers and snooping switches so (a
switch that snoops IGMP forwards a group's frames only to ports that reported it).

No I/O: ``join``, ``leave``, ``input`` and ``tick`` take the time, and the
messages to send come back as ``(destination, IGMP message)`` pairs; the stack
wraps them in IPv4 with TTL 1 and the Router Alert option (RFC 2236 2, RFC 3376 4).

- ``join``: an unsolicited report at once, repeated ROBUSTNESS - 1 times at a
  random moment within the unsolicited report interval (lost reports happen);
- a general query schedules the answer at a random moment within the query's
  maximum response time: in v3 one report of every group, in v1/v2 one per
  group; a group-specific query schedules only that group's; a timer that
  is already due sooner is kept (RFC 3376 5.2), so a flood of queries
  cannot make us send more than one report per group and tick;
- a v1 or v2 query puts us in that version's compatibility mode for
  OLDER_QUERIER_TIMEOUT (RFC 3376 7.2.1); in v1/v2 another host's report for
  a group cancels our pending one (report suppression, RFC 2236 3);
- ``leave``: v3 a change to INCLUDE {} to 224.0.0.22, v2 a leave to
  224.0.0.2, v1 nothing (v1 has no leave);
- 224.0.0.1 (all hosts) is always listened to and never reported;
- at most ``max_groups`` groups.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from . import checksum as cksum
from .counters import Counters, DropError

ALL_HOSTS = 0xE0000001          # 224.0.0.1
ALL_ROUTERS = 0xE0000002        # 224.0.0.2, where v2 leaves go
V3_ROUTERS = 0xE0000016         # 224.0.0.22, where v3 reports go
ROUTER_ALERT = b"\x94\x04\x00\x00"   # RFC 2113
TTL = 1

TYPE_QUERY = 0x11
TYPE_V1_REPORT = 0x12
TYPE_V2_REPORT = 0x16
TYPE_V2_LEAVE = 0x17
TYPE_V3_REPORT = 0x22
MODE_IS_EXCLUDE = 2             # v3 group record types (RFC 3376 4.2.12)
CHANGE_TO_INCLUDE = 3
CHANGE_TO_EXCLUDE = 4

ROBUSTNESS = 2
UNSOLICITED_INTERVAL = {1: 10.0, 2: 10.0, 3: 1.0}
OLDER_QUERIER_TIMEOUT = ROBUSTNESS * 125.0 + 10.0   # robustness x query interval + response interval
V1_MAX_RESPONSE = 10.0          # v1 queries carry no maximum response time
MAX_GROUPS = 32

Message = tuple[int, bytes]     # (IPv4 destination, IGMP message)

_HEADER = struct.Struct("!BBHI")


class IgmpError(DropError):
    """An IGMP message we must drop."""


@dataclass(frozen=True, slots=True)
class Igmp:
    type: int
    group: int
    max_response: float         # seconds; queries only
    version: int                # of a query: 1, 2 or 3


def is_multicast(address: int) -> bool:
    return address >> 28 == 0xE


def _v3_max_response(code: int) -> float:
    """RFC 3376 4.1.1: below 128 the code is tenths of a second; above, a
    small float (3-bit exponent, 4-bit mantissa)."""
    if code < 128:
        return code / 10
    return (((code & 0x0F) | 0x10) << (((code >> 4) & 0x07) + 3)) / 10


def parse(message: bytes) -> Igmp:
    if len(message) < 8:
        raise IgmpError("igmp.truncated.drop")
    if not cksum.verify(message):
        raise IgmpError("igmp.bad_checksum.drop")
    igmp_type, code, _sum, group = _HEADER.unpack_from(message)
    if group and not is_multicast(group):
        raise IgmpError("igmp.bad_group.drop")
    if igmp_type != TYPE_QUERY:
        return Igmp(igmp_type, group, 0.0, 0)
    if len(message) == 8:
        if code == 0:
            return Igmp(igmp_type, group, V1_MAX_RESPONSE, 1)
        return Igmp(igmp_type, group, code / 10, 2)
    if len(message) < 12:
        raise IgmpError("igmp.bad_length.drop")    # RFC 3376 7.1: neither v2 (8) nor v3 (>= 12)
    return Igmp(igmp_type, group, _v3_max_response(code), 3)


def _with_checksum(body: bytes) -> bytes:
    return body[:2] + cksum.checksum(body).to_bytes(2, "big") + body[4:]


def reports(version: int, groups: list[int], record_type: int = MODE_IS_EXCLUDE) -> list[Message]:
    """What says "we are in these groups" (or, with CHANGE_TO_INCLUDE, "no
    longer") in the given version: v3 one report for them all, v1/v2 one each."""
    if not groups:
        return []
    if version == 3:
        records = b"".join(struct.pack("!BBHI", record_type, 0, 0, g) for g in sorted(groups))
        body = struct.pack("!BBHHH", TYPE_V3_REPORT, 0, 0, 0, len(groups)) + records
        return [(V3_ROUTERS, _with_checksum(body))]
    igmp_type = TYPE_V2_REPORT if version == 2 else TYPE_V1_REPORT
    return [(g, _with_checksum(_HEADER.pack(igmp_type, 0, 0, g))) for g in sorted(groups)]


class Memberships:
    """The groups we are in, and when each report is due (timers are data)."""

    def __init__(self, counters: Counters, rng: random.Random, *, max_groups: int = MAX_GROUPS) -> None:
        self.counters = counters
        self.rng = rng
        self.max_groups = max_groups
        self.groups: set[int] = set()
        self._report_at: dict[int, float] = {}            # per-group answers to queries
        self._general_at: float | None = None             # v3: one report of every group
        self._repeats: dict[int, tuple[float, int]] = {}  # unsolicited reports left: (due, count)
        self._v1_until = self._v2_until = float("-inf")

    def version(self, now: float) -> int:
        if now < self._v1_until:
            return 1
        return 2 if now < self._v2_until else 3

    def listening(self, group: int) -> bool:
        return group == ALL_HOSTS or group in self.groups

    def join(self, now: float, group: int) -> list[Message]:
        if not is_multicast(group) or group == ALL_HOSTS:
            raise ValueError(f"{group:#x} is not a group that can be joined")
        if group in self.groups:
            return []
        if len(self.groups) >= self.max_groups:
            self.counters["igmp.groups_full.drop"] += 1
            raise OSError(f"already in {self.max_groups} multicast groups")
        self.groups.add(group)
        self.counters["igmp.joined"] += 1
        version = self.version(now)
        self._repeats[group] = (now + self.rng.uniform(0, UNSOLICITED_INTERVAL[version]), ROBUSTNESS - 1)
        return self._count(reports(version, [group], CHANGE_TO_EXCLUDE))

    def leave(self, now: float, group: int) -> list[Message]:
        if group not in self.groups:
            return []
        self.groups.discard(group)
        self._report_at.pop(group, None)
        self._repeats.pop(group, None)
        self.counters["igmp.left"] += 1
        version = self.version(now)
        if version == 1:
            return []
        if version == 2:
            message = _with_checksum(_HEADER.pack(TYPE_V2_LEAVE, 0, 0, group))
            self.counters["igmp.leave.sent"] += 1
            return [(ALL_ROUTERS, message)]
        return self._count(reports(3, [group], CHANGE_TO_INCLUDE))

    def leave_all(self, now: float) -> list[Message]:
        return [m for group in sorted(self.groups) for m in self.leave(now, group)]

    def input(self, now: float, message: bytes) -> None:
        """Takes a received IGMP message; raises IgmpError for a malformed one."""
        igmp = parse(message)
        if igmp.type == TYPE_QUERY:
            self._query(now, igmp)
        elif igmp.type in (TYPE_V1_REPORT, TYPE_V2_REPORT):
            # RFC 2236 3: someone else said it for the group; routers need it once
            if self.version(now) < 3 and self._report_at.pop(igmp.group, None) is not None:
                self.counters["igmp.report.suppressed"] += 1
            else:
                self.counters["igmp.report.others"] += 1
        elif igmp.type in (TYPE_V2_LEAVE, TYPE_V3_REPORT):
            self.counters["igmp.report.others"] += 1
        else:
            self.counters["igmp.unknown_type.drop"] += 1

    def _query(self, now: float, query: Igmp) -> None:
        if query.version == 1:
            self._v1_until = now + OLDER_QUERIER_TIMEOUT
        elif query.version == 2:
            self._v2_until = now + OLDER_QUERIER_TIMEOUT
        due = now + self.rng.uniform(0, query.max_response)
        if query.group == 0:
            self.counters["igmp.query.general"] += 1
            if self.version(now) == 3:
                if self._general_at is None or due < self._general_at:
                    self._general_at = due
            else:
                for group in self.groups:
                    self._schedule(group, now + self.rng.uniform(0, query.max_response))
        elif query.group in self.groups:
            self.counters["igmp.query.group"] += 1
            self._schedule(query.group, due)
        else:
            self.counters["igmp.query.not_member"] += 1

    def _schedule(self, group: int, due: float) -> None:
        current = self._report_at.get(group)
        if current is None or due < current:
            self._report_at[group] = due

    def tick(self, now: float) -> list[Message]:
        """The reports whose time has come."""
        version = self.version(now)
        due: set[int] = set()
        if self._general_at is not None and self._general_at <= now:
            self._general_at = None
            due |= self.groups
        for group, at in list(self._report_at.items()):
            if at <= now:
                del self._report_at[group]
                due.add(group)
        out = self._count(reports(version, sorted(due & self.groups)))
        for group, (at, left) in list(self._repeats.items()):
            if at <= now:
                out += self._count(reports(version, [group], CHANGE_TO_EXCLUDE if version == 3 else MODE_IS_EXCLUDE))
                if left > 1:
                    self._repeats[group] = (now + self.rng.uniform(0, UNSOLICITED_INTERVAL[version]), left - 1)
                else:
                    del self._repeats[group]
        return out

    def _count(self, messages: list[Message]) -> list[Message]:
        if messages:     # not on every tick: a zero counter would still show in the dump
            self.counters["igmp.report.sent"] += len(messages)
        return messages
