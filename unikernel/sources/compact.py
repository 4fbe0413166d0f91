"""Zone data kept as bytes: owner names and RDATA in wire form.

A dnspython node costs about a kilobyte of objects (the Name and its label
tuple, the Node, an Rdataset and an Rdata object a record); a million-name
zone held that way needs gigabytes. Here a zone's names are a dict from the
owner's wire form, lowercased, to one bytes string holding all its RRsets
(each: type, covered type, TTL, count, then each RDATA's length and bytes,
in canonical form as RFC 4034 §6.2 spells it). A node becomes dnspython
objects again only when a question reaches it (:class:`CompactNodes` is a
``Mapping[dns.name.Name, dns.node.Node]``), so the answer logic is dnspython's
and NSD's alike, and the fast path (the server's kept answers) never sees it.

:func:`read_master_file` feeds dnspython's master-file reader a transaction
of its own that turns each owner's records into that form as soon as the
reader moves on to the next owner, so the dnspython objects of one node at
a time are alive while a file is read.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import dns.name
import dns.node
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tokenizer
import dns.transaction
import dns.zone
import dns.zonefile

IN = dns.rdataclass.IN
_RRSET_HEADER = struct.Struct("!HHIH")     # type, covered type, TTL, number of RDATAs
_RDATA_LENGTH = struct.Struct("!H")


def name_key(name: dns.name.Name) -> bytes:
    """The key of an absolute name: its wire form, ASCII letters lowercased
    (a label's length byte is at most 63, below every letter, so lowering
    the whole string is DNS's case-insensitive comparison)."""
    return cast(bytes, name.to_wire()).lower()


def parent_key(key: bytes) -> bytes:
    """The key of a name's parent (the root's is the root's)."""
    return key[key[0] + 1:] if key[0] else key


def key_name(key: bytes) -> dns.name.Name:
    return dns.name.from_wire(key, 0)[0]


def encode_rrsets(rrsets: Iterable[tuple[int, int, int, list[bytes]]]) -> bytes:
    """(type, covered type, TTL, RDATAs in canonical form) of each RRset, in
    order, as one node's bytes."""
    parts = []
    for rdtype, covers, ttl, rdatas in rrsets:
        parts.append(_RRSET_HEADER.pack(rdtype, covers, ttl, len(rdatas)))
        for rdata in rdatas:
            parts.append(_RDATA_LENGTH.pack(len(rdata)))
            parts.append(rdata)
    return b"".join(parts)


def decode_rrsets(blob: bytes) -> Iterator[tuple[Any, Any, int, list[bytes]]]:
    """What :func:`encode_rrsets` was given, from its bytes (the types as
    plain ints, which dnspython takes where it asks for an RdataType)."""
    offset = 0
    while offset < len(blob):
        rdtype, covers, ttl, count = _RRSET_HEADER.unpack_from(blob, offset)
        offset += _RRSET_HEADER.size
        rdatas = []
        for _ in range(count):
            (length,) = _RDATA_LENGTH.unpack_from(blob, offset)
            offset += _RDATA_LENGTH.size
            rdatas.append(blob[offset:offset + length])
            offset += length
        yield rdtype, covers, ttl, rdatas


def encode_node(node: dns.node.Node) -> bytes:
    """A node's RRsets in canonical wire form (names inside RDATA lowercased,
    as NSD stores and answers them), in the node's order."""
    # dnspython's RRsets are sets by canonical form already: no two digests are equal
    return encode_rrsets((rdataset.rdtype, rdataset.covers, rdataset.ttl,
                          [rdata.to_digestable() for rdata in rdataset]) for rdataset in node.rdatasets)


def decode_node(blob: bytes) -> dns.node.Node:
    node = dns.node.Node()
    for rdtype, covers, ttl, rdatas in decode_rrsets(blob):
        rdataset = dns.rdataset.Rdataset(IN, rdtype, covers, ttl)
        for rdata in rdatas:
            rdataset.add(dns.rdata.from_wire(IN, rdtype, rdata, 0, len(rdata)))
        node.rdatasets.append(rdataset)
    return node


def node_types(blob: bytes) -> list[tuple[int, int]]:
    """(type, covered type) of each RRset in an encoded node, without decoding it."""
    types = []
    offset = 0
    while offset < len(blob):
        rdtype, covers, _, count = _RRSET_HEADER.unpack_from(blob, offset)
        types.append((rdtype, covers))
        offset += _RRSET_HEADER.size
        for _ in range(count):
            offset += _RDATA_LENGTH.size + _RDATA_LENGTH.unpack_from(blob, offset)[0]
    return types


class CompactNodes(Mapping[dns.name.Name, dns.node.Node]):
    """A zone's nodes by owner, stored encoded; each read decodes a fresh
    node (a caller may keep or change it: the store is not touched)."""

    __slots__ = ("blobs",)

    def __init__(self, blobs: dict[bytes, bytes] | None = None) -> None:
        self.blobs: dict[bytes, bytes] = {} if blobs is None else blobs

    @classmethod
    def of_zone(cls, zone: dns.zone.Zone) -> CompactNodes:
        return cls({name_key(name): encode_node(node) for name, node in zone.nodes.items()})

    def __getitem__(self, name: dns.name.Name) -> dns.node.Node:
        return decode_node(self.blobs[name_key(name)])

    def get(self, name: dns.name.Name, default=None):
        blob = self.blobs.get(name_key(name))
        return default if blob is None else decode_node(blob)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, dns.name.Name) and name_key(name) in self.blobs

    def __iter__(self) -> Iterator[dns.name.Name]:
        return (key_name(key) for key in self.blobs)

    def __len__(self) -> int:
        return len(self.blobs)


class _CompactWriter(dns.transaction.TransactionManager):
    """The transaction manager dnspython's zone file reader writes into."""

    def __init__(self, origin: dns.name.Name | None) -> None:
        self.origin = origin
        self.nodes = CompactNodes()

    def reader(self) -> dns.transaction.Transaction:
        raise NotImplementedError("a compact zone is read through CompactNodes")

    def writer(self, replacement: bool = False) -> dns.transaction.Transaction:
        return _CompactTransaction(self)

    def get_class(self) -> dns.rdataclass.RdataClass:
        return IN

    def origin_information(self):
        return self.origin, False, self.origin


class _CompactTransaction(dns.transaction.Transaction):
    """Keeps the node being written as dnspython objects (so that merging
    RRsets, TTLs and the CNAME-and-other-data check are dnspython's own) and
    encodes it when the reader turns to another owner. An owner that comes
    back later is decoded again and keeps its place."""

    def __init__(self, manager: _CompactWriter) -> None:
        super().__init__(manager, replacement=True, read_only=False)
        self.store = manager.nodes.blobs
        self.current_key: bytes | None = None
        self.current = dns.node.Node()

    def _node_of(self, name: dns.name.Name) -> dns.node.Node | None:
        key = name_key(name)
        if key == self.current_key:
            return self.current
        blob = self.store.get(key)
        return None if blob is None else decode_node(blob)

    def _switch_to(self, name: dns.name.Name) -> None:
        key = name_key(name)
        if key != self.current_key:
            self._flush()
            blob = self.store.get(key)
            self.current_key, self.current = key, dns.node.Node() if blob is None else decode_node(blob)

    def _flush(self) -> None:
        if self.current_key is not None:
            self.store[self.current_key] = encode_node(self.current)

    def _get_rdataset(self, name, rdtype, covers):
        node = self._node_of(name)
        return None if node is None else node.get_rdataset(IN, rdtype, covers)

    def _get_node(self, name):
        return self._node_of(name)

    def _put_rdataset(self, name, rdataset):
        self._switch_to(name)
        self.current.replace_rdataset(rdataset)

    def _changed(self):
        return True

    def _end_transaction(self, commit):
        if commit:
            self._flush()

    def _set_origin(self, origin):
        manager = self.manager
        assert isinstance(manager, _CompactWriter)
        if manager.origin is None:
            manager.origin = origin


def read_master_file(tokenizer: dns.tokenizer.Tokenizer, origin: dns.name.Name | None) -> CompactZone:
    """Reads a master file (no ``$INCLUDE``) with dnspython's reader into a
    compact zone; ``origin`` None takes it from ``$ORIGIN``. dnspython's
    errors propagate."""
    writer = _CompactWriter(origin)
    with writer.writer(True) as txn:
        dns.zonefile.Reader(tokenizer, IN, txn, allow_include=False).read()
    if writer.origin is None:
        raise dns.zonefile.UnknownOrigin
    return CompactZone(writer.origin, writer.nodes)


class CompactZone:
    """A zone as read: its origin and its nodes (taken over by whoever indexes it)."""

    __slots__ = ("origin", "nodes")

    def __init__(self, origin: dns.name.Name, nodes: CompactNodes) -> None:
        self.origin = origin
        self.nodes = nodes

    @classmethod
    def of_zone(cls, zone: dns.zone.Zone) -> CompactZone:
        assert zone.origin is not None
        return cls(zone.origin, CompactNodes.of_zone(zone))

    def check_origin(self) -> None:
        """dnspython's rule for a zone: an SOA and an NS RRset at the apex."""
        apex = self.nodes.get(self.origin)
        if apex is None or apex.get_rdataset(IN, dns.rdatatype.SOA) is None:
            raise dns.zone.NoSOA
        if apex.get_rdataset(IN, dns.rdatatype.NS) is None:
            raise dns.zone.NoNS
