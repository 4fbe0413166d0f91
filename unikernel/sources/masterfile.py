"""A quick reader for the master files most zones are: one record a line.

dnspython's reader (:func:`unikernel.sources.compact.read_master_file`)
costs about 130 µs a record: its tokenizer, an Rdata object a record, the
transaction machinery. Most zone files are plain lines (an owner, a TTL,
IN, a type, RDATA made of names, numbers, addresses and quoted strings)
that need none of that. :func:`read_plain` reads those lines itself,
straight into the compact form, and RDATA of the common types (A, AAAA,
NS, CNAME, PTR, DNAME, MX, TXT) without dnspython; the other types' RDATA
still goes through ``dns.rdata.from_text``, one record at a time.

It gives up, returning None, at the first thing it does not read exactly as
dnspython's reader does: parentheses, escapes, a quote beside a comment,
non-ASCII text, a directive other than ``$ORIGIN`` and ``$TTL``, a class
other than IN, an owner outside the zone, CNAME beside other data (where
dnspython keeps the last one added), any RDATA dnspython would refuse. The
caller then reads the file with dnspython's reader, which gives the
answer, or the error with its line. So what a file loads into is
dnspython's either way, byte for byte (tests/unit/test_masterfile.py holds
the two readers equal on every zone the tests serve and on generated lines).

The rules it keeps are dnspython's (2.9's ``dns.zonefile.Reader`` in its
defaults, RFC 2308 TTLs): a record without a TTL takes ``$TTL``, else the
last TTL stated, else the SOA's minimum once the SOA is read; records of
one RRset merge with the lowest TTL and without duplicates (by canonical
form), where a singleton type (SOA, CNAME, DNAME, NSEC) keeps the last
record; an owner's RRsets keep the order of the last record added to each.
"""
from __future__ import annotations

from collections.abc import Iterable

import dns.exception
import dns.ipv4
import dns.ipv6
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.ttl

from unikernel.sources.compact import CompactNodes, CompactZone, decode_rrsets, encode_rrsets, name_key

IN = dns.rdataclass.IN
A, AAAA, NS, CNAME, PTR, DNAME, MX, TXT, SOA, RRSIG = (
    dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.NS, dns.rdatatype.CNAME, dns.rdatatype.PTR,
    dns.rdatatype.DNAME, dns.rdatatype.MX, dns.rdatatype.TXT, dns.rdatatype.SOA, dns.rdatatype.RRSIG)
NAME_TYPES = frozenset({NS, CNAME, PTR, DNAME})
SINGLETONS = frozenset(t for t in dns.rdatatype.RdataType if dns.rdatatype.is_singleton(t))
# dnspython's node kinds (dns.node.NodeKind): CNAME beside "regular" data is
# resolved by the order records come in; those files are left to dnspython.
NEUTRAL_TYPES = frozenset({dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.KEY})
# Characters whose reading is dnspython's tokenizer's: escapes, carriage returns.
AWKWARD = frozenset("\\\r")
OTHER_CLASSES = frozenset(c.name for c in dns.rdataclass.RdataClass) - {"IN"}
MAX_TTL = dns.ttl.MAX_TTL


class _Unread(Exception):
    """Something this reader leaves to dnspython's."""


def read_plain(lines: Iterable[str], origin: dns.name.Name | None) -> CompactZone | None:
    """The zone in `lines` (a master file, no ``$INCLUDE``; ``origin`` None
    takes it from the first ``$ORIGIN``), or None where dnspython's reader
    must read it."""
    try:
        return _PlainReader(origin).read(lines)
    except _Unread:
        return None
    except (dns.exception.DNSException, ValueError, TypeError, IndexError, UnicodeError):
        # whatever dnspython refuses in a record is for its own reader to
        # report, with the line
        return None


class _PlainReader:
    def __init__(self, origin: dns.name.Name | None) -> None:
        self.zone_origin: dns.name.Name | None = None
        self.zone_key: bytes | None = None
        self.origin: dns.name.Name | None = None        # as spelt: RDATA's relative names take its case
        self.origin_key = b""
        self.origin_inside = False
        if origin is not None:
            self._set_origin(origin)
        self.last_owner: bytes | None = None
        self.last_ttl: int | None = None
        self.default_ttl: int | None = None
        self.default_ttl_from_soa = False
        self.blobs: dict[bytes, bytes] = {}
        # The owner being read: its RRsets as {(type, covered): [TTL, {RDATA: None}]}
        self.current_key: bytes | None = None
        self.current: dict[tuple[int, int], list] = {}
        self.types: dict[str, dns.rdatatype.RdataType] = {}

    # -- names ---------------------------------------------------------------
    def _set_origin(self, origin: dns.name.Name) -> None:
        self.origin = origin
        self.origin_key = name_key(origin)
        if self.zone_key is None:
            self.zone_origin, self.zone_key = origin, self.origin_key
        self.origin_inside = self._inside(self.origin_key)

    def _inside(self, key: bytes) -> bool:
        """Whether `key` is the zone's origin or below it (label by label)."""
        zone = self.zone_key
        assert zone is not None
        end = len(key) - len(zone)
        at = 0
        while at < end:
            at += key[at] + 1
        return at == end and key.endswith(zone)

    def _key(self, token: str) -> bytes:
        """The wire form, lowercased, of a name as a master file spells it."""
        if token == "@":
            if self.origin is None:
                raise _Unread
            return self.origin_key
        if token.endswith("."):
            if token == ".":
                return b"\x00"
            labels, tail = token[:-1].split("."), b"\x00"
        else:
            if self.origin is None:
                raise _Unread
            labels, tail = token.split("."), self.origin_key
        wire = bytearray()
        for label in labels:
            if not 0 < len(label) < 64 or label == "@" or '"' in label:
                raise _Unread
            wire.append(len(label))
            wire += label.encode("ascii")
        wire += tail
        if len(wire) > 255:
            raise _Unread
        return bytes(wire).lower()

    def _owner(self, token: str) -> bytes:
        key = self._key(token)
        relative = not token.endswith(".")
        if not (relative and self.origin_inside) and not self._inside(key):
            raise _Unread            # dnspython skips records outside the zone; leave that to it
        return key

    # -- the file --------------------------------------------------------------
    def read(self, lines: Iterable[str]) -> CompactZone:
        held: list[str] = []          # the lines of a record in parentheses, so far
        depth = 0
        for line in lines:
            if not line.isascii():
                raise _Unread
            text = _uncommented(line)
            if not AWKWARD.isdisjoint(text):
                raise _Unread
            opened = text.count("(")
            closed = text.count(")")
            if held or opened or closed:
                # RFC 1035 §5.1: parentheses continue a record over lines;
                # dnspython's tokenizer reads them as spaces that make the
                # line ends spaces too, and refuses them nested, unopened or
                # unclosed (and inside quotes they are text)
                if '"' in text or opened > 1 or closed > 1 or (closed and depth + opened - closed < 0) \
                        or (not depth and closed and text.index(")") < text.find("(")) or depth + opened > 1:
                    raise _Unread
                depth += opened - closed
                held.append(text.replace("(", " ").replace(")", " "))
                if depth:
                    continue
                text = " ".join(held)
                held = []
            tokens = text.split()
            if not tokens:
                continue
            if tokens[0][0] == "$" and not text[0].isspace():
                self._directive(tokens)
            else:
                self._record(text, tokens, '"' in text)
        if held:
            raise _Unread
        self._flush()
        if self.zone_origin is None:
            raise _Unread
        return CompactZone(self.zone_origin, CompactNodes(self.blobs))

    def _directive(self, tokens: list[str]) -> None:
        word = tokens[0].upper()
        if len(tokens) != 2:
            raise _Unread
        if word == "$TTL":
            self.default_ttl = dns.ttl.from_text(tokens[1])
            self.default_ttl_from_soa = False
        elif word == "$ORIGIN":
            # relative to the origin before it (RFC 1035 §5.1)
            origin = dns.name.from_text(tokens[1], self.origin)
            if not origin.is_absolute():
                raise _Unread
            self._set_origin(origin)
        else:
            raise _Unread

    def _ttl(self, token: str) -> int | None:
        if token.isdigit():
            ttl = int(token)
            if ttl > MAX_TTL:
                raise _Unread
            return ttl
        if token[0].isdigit():
            try:
                return dns.ttl.from_text(token)          # BIND's units: 1h30m
            except dns.ttl.BadTTL:
                return None
        return None

    def _implicit_ttl(self) -> int | None:
        if self.last_ttl is not None and (self.default_ttl is None or self.default_ttl_from_soa):
            return self.last_ttl
        return self.default_ttl

    def _type(self, token: str) -> dns.rdatatype.RdataType:
        rdtype = self.types.get(token)
        if rdtype is None:
            try:
                rdtype = self.types[token] = dns.rdatatype.from_text(token)
            except dns.exception.DNSException:
                raise _Unread from None
        return rdtype

    def _record(self, text: str, tokens: list[str], quoted: bool) -> None:
        at = 0
        if text[0].isspace():
            if self.last_owner is None:
                raise _Unread
            owner = self.last_owner
        else:
            owner = self.last_owner = self._owner(tokens[0])
            at = 1
        if len(tokens) < at + 2:
            raise _Unread
        # [TTL] [IN] [TTL] type, in dnspython's order of trying them
        ttl = self._ttl(tokens[at])
        if ttl is not None:
            self.last_ttl = ttl
            at += 1
        word = tokens[at].upper()
        if word == "IN":
            at += 1
        elif word in OTHER_CLASSES or word.startswith("CLASS"):
            raise _Unread
        if ttl is None:
            ttl = self._ttl(tokens[at])
            if ttl is not None:
                self.last_ttl = ttl
                at += 1
            else:
                ttl = self._implicit_ttl()
        if at >= len(tokens):
            raise _Unread
        rdtype = self._type(tokens[at])
        rest = tokens[at + 1:]
        if any('"' in token for token in tokens[:at + 1]):
            raise _Unread
        covers = 0
        if rdtype == A and len(rest) == 1:
            rdata = dns.ipv4.inet_aton(rest[0])
        elif rdtype == AAAA and len(rest) == 1:
            rdata = dns.ipv6.inet_aton(rest[0])
        elif rdtype in NAME_TYPES and len(rest) == 1:
            rdata = self._key(rest[0])
        elif rdtype == MX and len(rest) == 2 and rest[0].isdigit() and int(rest[0]) < 65536:
            rdata = int(rest[0]).to_bytes(2, "big") + self._key(rest[1])
        elif rdtype == TXT and rest:
            rdata = _txt(text.split(None, at + 1)[at + 1] if quoted else " ".join(rest))
        else:
            if not rest:
                raise _Unread
            assert self.origin is not None
            parsed = dns.rdata.from_text(IN, rdtype, text.split(None, at + 1)[at + 1] if quoted else " ".join(rest),
                                         self.origin, False)
            rdata = parsed.to_digestable()
            covers = parsed.covers()
            if rdtype == SOA and owner != self.zone_key:
                raise _Unread            # dnspython's transaction refuses an SOA below the apex
            if rdtype == SOA and self.default_ttl is None:
                # dnspython's pre-RFC 2308 rule: no $TTL before the SOA makes
                # its minimum the default
                self.default_ttl = parsed.minimum      # type: ignore[attr-defined]
                self.default_ttl_from_soa = True
                if ttl is None:
                    ttl = self._implicit_ttl()
        if ttl is None:
            raise _Unread
        self._add(owner, rdtype, covers, ttl, rdata)

    # -- the compact store -------------------------------------------------------
    def _add(self, owner: bytes, rdtype: int, covers: int, ttl: int, rdata: bytes) -> None:
        if owner != self.current_key:
            self._flush()
            blob = self.blobs.get(owner)
            self.current_key = owner
            self.current = {} if blob is None else {
                (t, c): [set_ttl, dict.fromkeys(rdatas)] for t, c, set_ttl, rdatas in decode_rrsets(blob)}
        rrset = self.current.pop((rdtype, covers), None)
        if rrset is None:
            rrset = [ttl, {}]
        elif ttl < rrset[0]:
            rrset[0] = ttl
        if rdtype in SINGLETONS:
            rrset[1] = {rdata: None}       # dnspython's Rdataset.add: the last one stays
        else:
            rrset[1][rdata] = None
        # re-added at the end: dnspython's Node.replace_rdataset moves it there
        self.current[(rdtype, covers)] = rrset

    def _flush(self) -> None:
        if self.current_key is None:
            return
        kinds = {_kind(t, c) for t, c in self.current}
        if "cname" in kinds and "regular" in kinds:
            raise _Unread
        self.blobs[self.current_key] = encode_rrsets(
            (t, c, ttl, list(rdatas)) for (t, c), (ttl, rdatas) in self.current.items())


def _uncommented(line: str) -> str:
    """The line less its comment: from the first ``;`` outside quotes."""
    at = 0
    while True:
        semicolon = line.find(";", at)
        if semicolon < 0:
            return line
        quote = line.find('"', at)
        if quote < 0 or semicolon < quote:
            return line[:semicolon]
        close = line.find('"', quote + 1)
        if close < 0:
            raise _Unread
        at = close + 1


def _kind(rdtype: int, covers: int) -> str:
    of = covers if rdtype == RRSIG else rdtype
    return "cname" if of == CNAME else "neutral" if of in NEUTRAL_TYPES else "regular"


def _txt(text: str) -> bytes:
    """TXT RDATA from its text: quoted strings and bare words, each a string."""
    out = bytearray()
    at, end = 0, len(text)
    while at < end:
        if text[at].isspace():
            at += 1
            continue
        if text[at] == '"':
            close = text.find('"', at + 1)
            if close < 0:
                raise _Unread
            string, at = text[at + 1:close], close + 1
            if at < end and not text[at].isspace():
                raise _Unread          # "a"b: the tokenizer's business
        else:
            stop = at
            while stop < end and not text[stop].isspace():
                stop += 1
            string, at = text[at:stop], stop
            if '"' in string:
                raise _Unread
        data = string.encode("ascii")
        if len(data) > 255:
            raise _Unread
        out.append(len(data))
        out += data
    if not out:
        raise _Unread
    return bytes(out)
