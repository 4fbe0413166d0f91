"""The fast path's byte-level helpers: read a query's header and question, and
patch a kept answer for it, without dnspython.

The fast-path key
-----------------
An answer that depends only on the question is kept as wire bytes under::

    key = qname_wire.lower() + qtype_qclass_wire + bytes([edns_flags])

* ``qname_wire``: the question's name exactly as on the wire (length-prefixed
  labels, terminated by the root label, never compressed in a fast-path
  query), with ASCII letters lowercased (``bytes.lower``). Only the name is
  folded: qtype and qclass are 4 bytes copied as they are.
* ``edns_flags``: 0 when the query has no OPT record, 1 with an OPT record,
  3 with an OPT record whose DO bit is set.

Whoever produces entries (the server's static answers, the cache) stores a
complete response for a query with that key; its question section must be
the query's question at offset 12 (as every renderer writes it), with every
other copy of the query name compressed against it. Serving it is then
:func:`patch_kept` of it, kept as a :class:`KeptAnswer`: the query's ID,
the RD bit from the query, and the query's own letter case copied over the
question, so the answer's compressed names echo the question as asked.

Only plain queries take the fast path: QR clear, opcode QUERY, exactly one
question and nothing else but an optional OPT (EDNS version 0, no extended
rcode), and no trailing bytes. The OPT's options are not part of the key, so
they must be ones the slow path would accept too: each within the OPT's data,
and of a kind whose content cannot be wrong (NSID, keepalive, padding, an
unknown code) or is checked here (COOKIE); any other (ECS...) goes to the slow
path. Anything else returns ``None`` from :func:`parse_query` and goes to the
slow path.
"""
from __future__ import annotations

import struct
from typing import Final

from unikernel.native import mypyc_attr

# Final, here and below: compiled, a literal is inlined where it is read and
# any other value is a C global, where a plain module name is a dict lookup
HEADER_SIZE: Final = 12
NO_EDNS, EDNS, EDNS_DO = 0, 1, 3
# counts: QDCOUNT=1, ANCOUNT=0, NSCOUNT=0, then ARCOUNT 0 or 1
_COUNTS_PLAIN: Final = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_COUNTS_OPT: Final = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_OPT_HEAD: Final = b"\x00\x00\x29"            # root owner, type OPT (41)
MAX_NAME_WIRE: Final = 255
CLASSIC_UDP_SIZE: Final = 512
OPTION_COOKIE: Final = 10
# EDNS option codes whose content the slow path's parser (dnspython) checks
# and that are not checked here: a query carrying one is not a plain query.
_OPTIONS_FOR_THE_SLOW_PATH: Final = frozenset({8, 15, 18, 22, 23, 24, 25})


def parse_query(payload: bytes) -> tuple[bytes, int, int] | None:
    """``(key, question_name_end, client_udp_size)`` for a plain query, else
    ``None``. ``question_name_end`` is the offset just past the question's
    name; ``client_udp_size`` is the OPT's payload size (at least 512), or 512
    without EDNS."""
    size = len(payload)
    if size < 17 or payload[2] & 0xF8:          # too short, or QR set, or opcode != QUERY
        return None
    counts = payload[4:12]
    if counts == _COUNTS_PLAIN:
        with_opt = False
    elif counts == _COUNTS_OPT:
        with_opt = True
    else:
        return None
    end = HEADER_SIZE
    limit = min(size, HEADER_SIZE + MAX_NAME_WIRE)
    length = payload[end]
    while length:
        if length > 63:                          # a compression pointer or a reserved label type
            return None
        end += length + 1
        if end >= limit:
            return None
        length = payload[end]
    end += 1                                     # past the root label
    tail = end + 4
    if not with_opt:
        if tail != size:
            return None
        return payload[12:end].lower() + payload[end:tail] + b"\x00", end, CLASSIC_UDP_SIZE
    # OPT: owner(1) type(2) class=udp size(2) ext-rcode(1) version(1) flags(2) rdlen(2)
    if size < tail + 11 or payload[tail:tail + 3] != _OPT_HEAD or payload[tail + 5] or payload[tail + 6]:
        return None
    if tail + 11 + ((payload[tail + 9] << 8) | payload[tail + 10]) != size:
        return None
    if tail + 11 != size and not _options_well_formed(payload, tail + 11):
        return None
    udp_size = (payload[tail + 3] << 8) | payload[tail + 4]
    flag = b"\x03" if payload[tail + 7] & 0x80 else b"\x01"
    return (payload[12:end].lower() + payload[end:tail] + flag, end,
            udp_size if udp_size > CLASSIC_UDP_SIZE else CLASSIC_UDP_SIZE)


def _options_well_formed(payload: bytes, offset: int) -> bool:
    """Whether the OPT options from ``offset`` to the end are ones the slow
    path would accept (see the module's docstring)."""
    size = len(payload)
    while offset < size:
        if offset + 4 > size:
            return False
        code = (payload[offset] << 8) | payload[offset + 1]
        length = (payload[offset + 2] << 8) | payload[offset + 3]
        offset += 4 + length
        if offset > size or code in _OPTIONS_FOR_THE_SLOW_PATH:
            return False
        # a client cookie of 8 bytes, then none or 8 to 32 of the server's
        if code == OPTION_COOKIE and length != 8 and not 16 <= length <= 40:
            return False
    return True


def fast_key(payload: bytes) -> tuple[bytes, int, int] | None:
    """:func:`parse_query` for the hot path: the same result, but without
    walking the labels when the question is the whole message (no OPT) or is
    followed only by an option-less OPT, as most queries are.

    Skipping the walk is safe because a key only serves a hit when it equals
    one stored for a query that :func:`parse_query` validated, and this key
    spans every byte after the header except the OPT's size and flags, which
    are checked here: equal keys mean an equally well-formed query."""
    size = len(payload)
    if size < 17 or payload[2] & 0xF8:
        return None
    counts = payload[4:12]
    if counts == _COUNTS_PLAIN:
        end = size - 4
        return payload[12:end].lower() + payload[end:] + b"\x00", end, CLASSIC_UDP_SIZE
    if counts == _COUNTS_OPT and size >= 28:
        opt = size - 11
        if (payload[opt:opt + 3] == _OPT_HEAD and payload[size - 2:] == b"\x00\x00"
                and not payload[opt + 5] and not payload[opt + 6]):
            end = opt - 4
            udp_size = (payload[opt + 3] << 8) | payload[opt + 4]
            return (payload[12:end].lower() + payload[end:opt] + (b"\x03" if payload[opt + 7] & 0x80 else b"\x01"),
                    end, udp_size if udp_size > CLASSIC_UDP_SIZE else CLASSIC_UDP_SIZE)
    return parse_query(payload)


# The header bits a reply echoes from its query: RD (byte 2) and CD (byte 3);
# RA (byte 3), which the server may set per client, and AD (byte 3), which a
# reply keeps only for a query that set AD or DO.
_RD: Final = 0x01
_CD: Final = 0x10
_AD: Final = 0x20
_RA: Final = 0x80
_KEEP_AD: Final = ~_CD & 0xFF
_DROP_AD: Final = ~(_CD | _AD) & 0xFF


def payload_sum(payload: bytes) -> int:
    """The ones'-complement sum of ``payload``'s 16-bit words, up to a
    multiple of 0xFFFF (the form netstack.udp.Responder hands the stack): the
    payload read as one integer, padded to an even length."""
    body = int.from_bytes(payload, "big")
    return body << 8 if len(payload) & 1 else body


_ID_FLAGS: Final = struct.Struct("!HH")


# the cache's CachedAnswer, interpreted, inherits from it (unikernel.native)
@mypyc_attr(allow_interpreted_subclasses=True)
class KeptAnswer:
    """An answer kept for the fast path, cut where :func:`patch_kept`
    rewrites it (no copy of it is kept whole), with what every patch's
    :func:`payload_sum` shares: ``tail_sum``, the answer's sum with ID and
    flags zeroed (mod 0xFFFF), and ``name_weight``, what the question's name,
    read as one integer, is multiplied by where it sits (256 when an odd
    number of bytes follows it in the padded answer, 1 otherwise: 0x10000 is
    1 mod 0xFFFF). ``with_do``: kept for queries with DO (the key's EDNS
    byte), so its AD stays for every one of them."""

    __slots__ = ("size", "rd_cleared", "flags_ad", "flags_no_ad", "tail", "name", "tail_sum", "name_weight")

    def __init__(self, answer: bytes, name_end: int, with_do: bool = False) -> None:
        self.size = size = len(answer)
        self.rd_cleared = answer[2] & ~_RD & 0xFF
        # the low flag byte for a query with AD and for one without, CD
        # cleared (the query's is copied in)
        self.flags_ad = answer[3] & _KEEP_AD
        self.flags_no_ad = self.flags_ad if with_do else answer[3] & _DROP_AD
        self.tail = answer[4:]
        self.name = answer[HEADER_SIZE:name_end]
        self.tail_sum = payload_sum(self.tail) % 0xFFFF      # 4 bytes fewer before it: the same weights
        self.name_weight = 256 if (size + (size & 1) - name_end) & 1 else 1


def patch_kept(kept: KeptAnswer, query: bytes, name_end: int, ra: bool | None = None) -> tuple[bytes, int]:
    """The kept answer (kept for the same key) made the reply to ``query``,
    and the reply's :func:`payload_sum`: the query's ID, RD and CD copied
    from the query, the question's letter case as asked; RA set or cleared
    when ``ra`` says (whether this client may recurse), else as kept; the
    answer's AD only if the query set AD or the answer was kept ``with_do``,
    as RFC 6840 5.7 asks. The sum is RFC 1624's update, only the rewritten
    bytes summed; none but the ID and flags when the query spells the name
    as the answer does (most do)."""
    low = (kept.flags_ad if query[3] & _AD else kept.flags_no_ad) | (query[3] & _CD)
    if ra is not None:
        low = low | _RA if ra else low & ~_RA & 0xFF
    ident = query[0] << 8 | query[1]
    flags = (kept.rd_cleared | (query[2] & _RD)) << 8 | low
    head = _ID_FLAGS.pack(ident, flags)
    name = query[HEADER_SIZE:name_end]
    if name == kept.name:
        return head + kept.tail, kept.tail_sum + ident + flags
    tail = kept.tail
    # the name's bytes change, so does their share of the sum (a negative
    # sum is as good as any congruent one)
    return (head + tail[:8] + name + tail[name_end - 4:],
            kept.tail_sum + ident + flags
            + (int.from_bytes(name, "big") - int.from_bytes(kept.name, "big")) * kept.name_weight)


def error_reply(query: bytes, rcode: int) -> bytes | None:
    """A header-only reply (FORMERR for a message dnspython cannot read):
    the query's ID, opcode and RD, QR set, no sections. None when not even
    the header is there, or the message is itself a response."""
    if len(query) < HEADER_SIZE or query[2] & 0x80:
        return None
    return (query[:2] + bytes((0x80 | (query[2] & 0x79), rcode & 0x0F)) + b"\x00" * 8)
