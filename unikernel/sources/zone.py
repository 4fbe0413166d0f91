"""Authoritative zones: RFC 1035 master files served the way NSD serves them.

Zone files are parsed by dnspython; this module only decides what an answer
holds (RFC 1034 §4.3.2, RFC 2308), with NSD 4 as the reference for the
choices the RFCs leave open:

* A positive answer is authoritative and carries the zone's apex NS RRset in
  authority (NSD's default, non-minimal responses) and, in additional, the
  in-zone addresses of NS, MX and SRV targets.
* CNAMEs are followed through every zone served here (the authority and
  additional sections then come from the zone where the chain ends); a loop
  stops at the first repeat; a chain leaving what we serve ends with the last
  CNAME and no authority section; one entering delegated space ends with the
  referral.
* Wildcards (``*.x``) answer for names under their closest encloser, with the
  query name as owner; never where the name exists, nor below an existing
  name. An empty non-terminal is NODATA.
* NXDOMAIN and NODATA carry the apex SOA with TTL min(SOA TTL, SOA minimum).
* NS below the apex is a zone cut: a referral without AA, the cut's NS in
  authority and glue in additional (DS at the cut is answered by the parent).
* Signed zones (RFC 4035 3.1, RFC 5155 7.2), for queries with DO only: each
  RRset goes with the RRSIGs that cover it (owner rewritten for wildcard
  expansions), NXDOMAIN, NODATA and wildcard answers carry their NSEC or
  NSEC3 proofs, referrals the DS RRset or the proof that there is none. The
  records and their order are NSD's (query.c, nsec3.c): that order is what
  survives truncation. DNSKEY and DS answers carry no apex NS (NSD's
  ``answer_needs_ns``: they are big enough already). Names holding only
  NSEC3 records are not names of the zone: they are NXDOMAIN, as in NSD.
* ANY answers one RRset (RFC 8482), chosen as NSD chooses it.
* Several zones: the most specific apex wins; as in NSD's single name tree,
  names between a zone's apex and a zone above it are empty non-terminals of
  the zone above. A name under no apex gets no answer (``None``), which the
  server turns into REFUSED.

Answers are ``final`` (the zone is authoritative for the name, NXDOMAIN
included) and ``static`` (they depend only on the question), so the server
keeps their wire form on its fast path.
"""
from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rrset
import dns.tokenizer
import dns.zone

from unikernel.config import ConfigError
from unikernel.process import Answer, Endpoint, Process
from unikernel.sources.compact import (
    CompactNodes,
    CompactZone,
    key_name,
    name_key,
    node_types,
    parent_key,
    read_master_file,
)
from unikernel.sources.masterfile import read_plain

IN = dns.rdataclass.IN
A, AAAA, NS, CNAME, SOA, MX, SRV, DS, PTR, ANY, DNAME = (
    dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.NS, dns.rdatatype.CNAME,
    dns.rdatatype.SOA, dns.rdatatype.MX, dns.rdatatype.SRV, dns.rdatatype.DS,
    dns.rdatatype.PTR, dns.rdatatype.ANY, dns.rdatatype.DNAME)
DNSKEY, RRSIG, NSEC, NSEC3, NSEC3PARAM = (dns.rdatatype.DNSKEY, dns.rdatatype.RRSIG, dns.rdatatype.NSEC,
                                         dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM)
WILDCARD = b"*"
# Answers to these carry no apex NS in authority (NSD: their RRsets are large)
NO_AUTHORITY_NS = frozenset({DNSKEY, DS})

# Loops are stopped at the first repeat; this only bounds the work for a
# pathological zone (NSD follows long chains until the packet is full).
MAX_CNAME_CHAIN = 256
# RFC 8482 ANY: the RRset returned is the first of these present at the name,
# else the last "ordinary" one, else the last DNSSEC one (NSD's order).
ANY_PREFERRED = frozenset({A, AAAA, SOA, MX, PTR})
ANY_LAST_RESORT = frozenset({dns.rdatatype.DNSKEY, dns.rdatatype.RRSIG,
                             dns.rdatatype.NSEC, dns.rdatatype.NSEC3})


# -- loading -----------------------------------------------------------------

def load_zone(path: str | os.PathLike) -> AuthoritativeZone:
    """Reads one master file into compact form and indexes it. The origin
    comes from ``$ORIGIN`` or, failing that, from an absolute owner on the
    first record (the SOA). Any problem raises :class:`ConfigError` naming
    the file, and the line when there is one."""
    path = Path(path)
    # The file is read as a stream, never whole: a str of it handed to the
    # tokenizer becomes a StringIO of 4 bytes a character (340 MB for a
    # million names), more than the zone itself takes once read.
    try:
        with path.open(encoding="utf-8", errors="strict") as lines:
            has_origin, origin = _origin_hints(lines)
        stream = path.open(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{path}: cannot read zone file: {reason}") from None
    if origin is None and not has_origin:
        stream.close()
        raise ConfigError(f"{path}:1: no $ORIGIN and the first record's owner is not an absolute name")
    # Plain lines are read without dnspython's reader (the same result, 20x
    # sooner); anything else, errors included, is read again by it.
    with stream:
        zone = read_plain(stream, origin)
    if zone is None:
        zone = _read_with_dnspython(path, origin)
    try:
        zone.check_origin()
    except dns.exception.DNSException as e:
        raise ConfigError(f"{path}: zone {zone.origin}: {e}") from None
    return AuthoritativeZone(zone)


def _read_with_dnspython(path: Path, origin: dns.name.Name | None) -> CompactZone:
    try:
        stream = path.open(encoding="utf-8", errors="strict")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read zone file: {e.strerror or e}") from None
    tokenizer = _LineTracking(stream, str(path))
    try:
        with stream:
            zone = read_master_file(tokenizer, origin)
    except dns.exception.SyntaxError as e:
        # dnspython says "file:line: what", but its line may be the next one
        # (the tokenizer has read the newline): name the record's own line
        message = str(e)
        prefix = f"{path}:"
        if message.startswith(prefix):
            message = message[len(prefix):].split(":", 1)[-1].strip()
        raise ConfigError(f"{path}:{tokenizer.last_line}: {message}") from None
    except (dns.exception.DNSException, ValueError) as e:
        raise ConfigError(f"{path}:{tokenizer.last_line}: {e}") from None
    return zone


class _LineTracking(dns.tokenizer.Tokenizer):
    """Remembers the line of the last real token: when dnspython rejects a
    record its own position may already be past the end of that line."""

    last_line = 1

    def get(self, want_leading: bool = False, want_comment: bool = False) -> dns.tokenizer.Token:
        replayed = self.ungotten_token is not None
        # the line counter moves when a token's terminating newline is read,
        # so the token's own line is the counter before reading it
        start = self.line_number
        token = super().get(want_leading, want_comment)
        if not replayed and not token.is_eol_or_eof():
            self.last_line = start
        return token


def load_zones(paths: Iterable[str | os.PathLike]) -> list[AuthoritativeZone]:
    zones = [load_zone(p) for p in paths]
    seen: dict[dns.name.Name, int] = {}
    for i, zone in enumerate(zones):
        if zone.origin in seen:
            raise ConfigError(f"zone {zone.origin} is declared twice")
        seen[zone.origin] = i
    return zones


def _origin_hints(lines: Iterable[str]) -> tuple[bool, dns.name.Name | None]:
    """``(True, None)`` when the file has an ``$ORIGIN`` directive, else
    ``(False, the owner of the first record when it is absolute)``."""
    owner: dns.name.Name | None = None
    first_record_seen = False
    for line in lines:
        if line.lstrip().upper().startswith("$ORIGIN"):
            return True, None
        if first_record_seen or not line.strip() or line.lstrip().startswith((";", "$")) or line[0].isspace():
            continue
        first_record_seen = True
        word = line.split()[0]
        if word.endswith(".") and word != "@":
            try:
                owner = dns.name.from_text(word)
            except (dns.exception.DNSException, ValueError):
                owner = None
    return False, owner


# -- answering ---------------------------------------------------------------

@dataclass(slots=True)
class Lookup:
    """What one zone says about a question, before rendering. ``dnssec``:
    the query had DO, so signed zones add their RRSIGs and proofs."""

    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    authoritative: bool = True
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    dnssec: bool = False


class Nsec3Chain:
    """A zone's NSEC3 records, by hash (RFC 5155): the parameters come from
    the apex's NSEC3PARAM (flags 0, SHA-1), as NSD takes them."""

    def __init__(self, origin: dns.name.Name, param, hashed: CompactNodes) -> None:
        self.salt: bytes = param.salt
        self.iterations: int = param.iterations
        self.algorithm: int = param.algorithm
        apex = name_key(origin)
        # the owners, by their first label (the hash), for those right below the apex
        self.names = {key[1:1 + key[0]].decode("ascii").lower(): key_name(key) for key in hashed.blobs
                      if parent_key(key) == apex}
        self.hashes = sorted(self.names)

    def hash(self, name: dns.name.Name) -> str:
        return dns.dnssec.nsec3_hash(name, self.salt, self.iterations, self.algorithm).lower()

    def matching(self, name: dns.name.Name) -> dns.name.Name | None:
        return self.names.get(self.hash(name))

    def covering(self, name: dns.name.Name) -> dns.name.Name:
        """The NSEC3 whose hash is the greatest not above the name's (the
        last one wraps around to cover hashes before the first)."""
        index = bisect.bisect_right(self.hashes, self.hash(name)) - 1
        return self.names[self.hashes[index]]


class AuthoritativeZone:
    """One loaded zone, indexed for lookups: its names, the empty non-terminals
    above them, its zone cuts, and its NSEC or NSEC3 chain when signed.

    The nodes stay in compact form (:mod:`unikernel.sources.compact`): owners
    and RDATA lowercased, as NSD stores and answers them (RFC 4034 §6.2
    canonical form); a node is decoded when a question reaches it. A
    :class:`CompactZone` given is taken over, not copied."""

    def __init__(self, zone: dns.zone.Zone | CompactZone) -> None:
        compact = zone if isinstance(zone, CompactZone) else CompactZone.of_zone(zone)
        self.origin: dns.name.Name = compact.origin.canonicalize()
        blobs = compact.nodes.blobs
        hashed_keys, nsec_keys, dname_keys, cut_keys = [], [], [], []
        origin_key = name_key(self.origin)
        for key, blob in blobs.items():
            types = {rdtype for rdtype, _ in node_types(blob)}
            if NSEC3 in types and types <= {NSEC3, RRSIG}:
                hashed_keys.append(key)     # not a name of the zone: NSEC3 records only
                continue
            if NSEC in types:
                nsec_keys.append(key)
            if DNAME in types:
                dname_keys.append(key)
            if NS in types and key != origin_key:
                cut_keys.append(key)
        self.hashed = CompactNodes({key: blobs.pop(key) for key in hashed_keys})
        self.nodes = CompactNodes(blobs)
        apex = self.nodes[self.origin]
        self.signed = apex.get_rdataset(IN, RRSIG, SOA) is not None
        self.nsec_owners = sorted(key_name(key) for key in nsec_keys)
        params = apex.get_rdataset(IN, NSEC3PARAM)
        usable = [p for p in params or () if p.flags == 0 and p.algorithm == 1]
        self.nsec3 = Nsec3Chain(self.origin, usable[0], self.hashed) if usable and self.hashed else None
        soa = apex.find_rdataset(IN, SOA)        # check_origin: the apex has SOA and NS
        self.apex_ns = dns.rrset.RRset(self.origin, IN, NS)
        self.apex_ns.update(apex.find_rdataset(IN, NS))
        # RFC 2308 §5: the negative TTL is the lesser of the SOA's TTL and MINIMUM
        self.negative_soa = dns.rrset.RRset(self.origin, IN, SOA)
        self.negative_soa.update(soa)
        self.negative_soa.ttl = min(soa.ttl, soa[0].minimum)
        self.soa = _rrset(self.origin, soa)
        self.dnames = frozenset(key_name(key) for key in dname_keys)
        self.cuts = frozenset(key_name(key) for key in cut_keys)
        # every ancestor (down to the apex) of an existing name exists, at
        # least as an empty non-terminal; kept as keys (name_key)
        self.nonterminals: set[bytes] = set()
        for key in blobs:
            while len(key) > len(origin_key):
                key = parent_key(key)
                if key in self.nonterminals:
                    break
                self.nonterminals.add(key)

    def records(self) -> Iterator[tuple[dns.name.Name, dns.rdataset.Rdataset]]:
        """Every RRset of the zone, its NSEC3 chain included (what a transfer carries)."""
        for nodes in (self.nodes, self.hashed):
            for name, node in nodes.items():
                for rdataset in node.rdatasets:
                    yield name, rdataset

    # -- the algorithm of RFC 1034 §4.3.2 -----------------------------------
    def step(self, name: dns.name.Name, qtype: int, result: Lookup, first: bool) -> dns.name.Name | None:
        """Answers ``name`` into ``result``; returns a CNAME's target when the
        chain goes on (the caller finds the zone that holds it), else None."""
        cut, dname = self._above(name, qtype)
        if cut is not None:
            self._referral(cut, result, first)
            return None
        if dname is not None:
            target = self._dname(name, dname, result)
            # the synthesised CNAME is itself the answer to a CNAME question
            return None if qtype == CNAME else target
        node = self.nodes.get(name)
        source = name          # where the records come from: the name, or the wildcard that expands
        if node is None:
            if name_key(name) in self.nonterminals:
                self._nodata(name, qtype, result)
                return None
            encloser = self._closest_encloser(name)
            source = dns.name.Name((WILDCARD,) + encloser.labels)
            node = self.nodes.get(source)
            if node is None:
                self._nxdomain(name, encloser, result)
                return None
            if self._proving(result):
                self._wildcard_proof(name, encloser, result)
        if qtype == ANY:
            self._any(name, node, result)
            return None
        if qtype == RRSIG:
            signatures = [_rrset(name, r) for r in node.rdatasets if r.rdtype == RRSIG]
            if signatures:      # one RRset for each type they cover, as dnspython keeps them
                result.answer += signatures
                self._positive(result, qtype)
                return None
        rdataset = node.get_rdataset(IN, qtype)
        if rdataset is not None:
            result.answer += self._signed(name, node, rdataset, result)
            self._positive(result, qtype)
            return None
        cname = node.get_rdataset(IN, CNAME) if qtype != CNAME else None
        if cname is None:
            self._nodata(source, qtype, result)
            return None
        result.answer += self._signed(name, node, cname, result)
        return cname[0].target

    def lookup(self, qname: dns.name.Name, qtype: int, dnssec: bool = False) -> Lookup:
        """This zone alone (a chain leaving it ends there)."""
        return Zones([self]).lookup(qname, qtype, dnssec) or Lookup()

    def _above(self, name: dns.name.Name, qtype: int) -> tuple[dns.name.Name | None, dns.name.Name | None]:
        """``(cut, None)`` for the highest zone cut at or above ``name`` (DS at
        a cut belongs to the parent side), ``(None, owner)`` for a DNAME at a
        proper ancestor, whichever comes first going down; else ``(None, None)``."""
        if not self.cuts and not self.dnames:
            return None, None
        depth = len(self.origin)
        for labels in range(depth, len(name) + 1):
            candidate = name.split(labels)[1]
            if labels > depth and candidate in self.cuts and not (candidate == name and qtype == DS):
                return candidate, None
            if labels < len(name) and candidate in self.dnames:
                return None, candidate
        return None, None

    def _dname(self, name: dns.name.Name, owner: dns.name.Name, result: Lookup) -> dns.name.Name | None:
        """RFC 6672: the DNAME, and a CNAME synthesised from it for ``name``,
        whose target the caller follows."""
        node = self.nodes[owner]
        dname = node.find_rdataset(IN, DNAME)
        result.answer += self._signed(owner, node, dname, result)
        try:
            target = name.relativize(owner).derelativize(dname[0].target)
        except dns.name.NameTooLong:
            result.rcode = dns.rcode.YXDOMAIN
            return None
        cname = dns.rrset.from_rdata(name, dname.ttl,
                                     dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, target))
        result.answer.append(cname)
        return target

    def _closest_encloser(self, name: dns.name.Name) -> dns.name.Name:
        """The longest existing ancestor of a name that does not exist."""
        origin = name_key(self.origin)
        encloser = parent_key(name_key(name))
        while encloser not in self.nodes.blobs and encloser not in self.nonterminals and encloser != origin:
            encloser = parent_key(encloser)
        return key_name(encloser)

    def _wildcard(self, name: dns.name.Name) -> dns.node.Node | None:
        """The ``*`` node under the closest encloser of a name that does not exist."""
        encloser = self._closest_encloser(name)
        return self.nodes.get(dns.name.Name((WILDCARD,) + encloser.labels))

    def _nxdomain(self, name: dns.name.Name, encloser: dns.name.Name, result: Lookup) -> None:
        """The proofs first (that the name, and the wildcard that could have
        made it, do not exist: RFC 4035 3.1.3.2, RFC 5155 7.2.2), then the SOA."""
        if self._proving(result):
            wildcard = dns.name.Name((WILDCARD,) + encloser.labels)
            if self.nsec3 is not None:
                self._closest_encloser_proof(name, encloser, result)
                self._deny_with(self.nsec3.covering(wildcard), result)
            elif self.nsec_owners:
                self._deny_with(self._nsec_covering(name), result)
                self._deny_with(self._nsec_covering(wildcard), result)
        self._negative(result, dns.rcode.NXDOMAIN)

    def _nodata(self, source: dns.name.Name, qtype: int, result: Lookup) -> None:
        """The SOA and the proof that ``source`` (the name, or the wildcard
        that matched it) has no RRset of the type (RFC 4035 3.1.3.1/3.1.3.4,
        RFC 5155 7.2.3-7.2.5). For an empty non-terminal of an NSEC3 zone NSD
        puts the proof first, which decides what a truncated answer keeps."""
        proof_first = self.nsec3 is not None and source not in self.nodes
        if not proof_first:
            self._negative(result, dns.rcode.NOERROR)
        if self._proving(result):
            self._nodata_proof(source, qtype, result)
        if proof_first:
            self._negative(result, dns.rcode.NOERROR)

    def _nodata_proof(self, source: dns.name.Name, qtype: int, result: Lookup) -> None:
        if self.nsec3 is None:
            if self.nsec_owners:
                self._deny_with(self._nsec_covering(source), result)
        elif qtype == DS and source != self.origin:
            self._ds_proof(source, result)
        elif source.labels[0] == WILDCARD:
            encloser = source.parent()
            self._deny_with(self.nsec3.matching(encloser), result)
            self._deny_with(self.nsec3.matching(source) or self.nsec3.covering(source), result)
        else:
            self._deny_with(self.nsec3.matching(source), result)

    def _wildcard_proof(self, name: dns.name.Name, encloser: dns.name.Name, result: Lookup) -> None:
        """A wildcard expansion proves that the name itself does not exist
        (RFC 4035 3.1.3.3, RFC 5155 7.2.6)."""
        if self.nsec3 is not None:
            self._deny_with(self.nsec3.covering(_next_closer(name, encloser)), result)
        elif self.nsec_owners:
            self._deny_with(self._nsec_covering(name), result)

    def _closest_encloser_proof(self, name: dns.name.Name, encloser: dns.name.Name, result: Lookup) -> None:
        assert self.nsec3 is not None
        self._deny_with(self.nsec3.covering(_next_closer(name, encloser)), result)
        self._deny_with(self.nsec3.matching(encloser), result)

    def _ds_proof(self, name: dns.name.Name, result: Lookup) -> None:
        """No DS at ``name`` with NSEC3 (RFC 5155 7.2.4, 7.2.7): its own NSEC3,
        or else (opt-out) the closest provable encloser's and, at a zone cut,
        those covering the next closer name and the cut (NSD's
        ``nsec3_add_ds_proof``; it has those covers only for cuts)."""
        assert self.nsec3 is not None
        own = self.nsec3.matching(name)
        if own is not None:
            self._deny_with(own, result)
            return
        below, parent = name, name.parent()
        while parent != self.origin and self.nsec3.matching(parent) is None:
            below, parent = parent, parent.parent()
        self._deny_with(self.nsec3.matching(parent), result)
        if name in self.cuts:
            if below != name:
                self._deny_with(self.nsec3.covering(below), result)
            self._deny_with(self.nsec3.covering(name), result)

    def _nsec_covering(self, name: dns.name.Name) -> dns.name.Name:
        """The NSEC at the name, or at the last name before it in canonical order."""
        return self.nsec_owners[bisect.bisect_right(self.nsec_owners, name) - 1]

    def _deny_with(self, owner: dns.name.Name | None, result: Lookup) -> None:
        """Adds the NSEC or NSEC3 RRset at ``owner`` and its RRSIG to the
        authority section, once."""
        if owner is None:
            return
        if self.nsec3 is not None and owner not in self.nodes:
            rdtype, node = NSEC3, self.hashed[owner]
        else:
            rdtype, node = NSEC, self.nodes[owner]
        if any(r.name == owner and r.rdtype == rdtype for r in result.authority):
            return
        rdataset = node.get_rdataset(IN, rdtype)
        if rdataset is not None:
            result.authority += self._signed(owner, node, rdataset, result)

    def _proving(self, result: Lookup) -> bool:
        return result.dnssec and self.signed

    def _signed(self, owner: dns.name.Name, node: dns.node.Node, rdataset: dns.rdataset.Rdataset,
                result: Lookup) -> list[dns.rrset.RRset]:
        """The RRset under ``owner`` and, for DO queries to a signed zone, the
        RRSIGs at ``node`` that cover it, right after it (they are rendered
        together or not at all)."""
        rrsets = [_rrset(owner, rdataset)]
        if self._proving(result) and rdataset.rdtype != RRSIG:
            signatures = node.get_rdataset(IN, RRSIG, rdataset.rdtype)
            if signatures is not None:
                rrsets.append(_rrset(owner, signatures))
        return rrsets

    def _negative(self, result: Lookup, rcode: dns.rcode.Rcode) -> Lookup:
        result.rcode = rcode
        result.authority.append(self.negative_soa)
        if self._proving(result):
            signatures = self.nodes[self.origin].get_rdataset(IN, RRSIG, SOA)
            if signatures is not None:
                rrsig = _rrset(self.origin, signatures)
                rrsig.ttl = self.negative_soa.ttl      # NSD: the SOA's negative TTL
                result.authority.append(rrsig)
        return result

    def _positive(self, result: Lookup, qtype: int) -> None:
        """The apex NS in authority, unless the answer already is that RRset
        or the question is for DNSKEY or DS, then the in-zone addresses of
        every NS/MX/SRV target."""
        if qtype not in NO_AUTHORITY_NS and not any(r.rdtype == NS and r.name == self.origin
                                                    for r in result.answer):
            apex = self.nodes[self.origin]
            result.authority += self._signed(self.origin, apex, apex.find_rdataset(IN, NS), result)
        self._additional(result, result.answer + result.authority)

    def _any(self, owner: dns.name.Name, node: dns.node.Node, result: Lookup) -> Lookup:
        chosen = ordinary = last_resort = None
        for rdataset in node.rdatasets:
            if rdataset.rdtype == RRSIG and self._proving(result):
                continue          # they come with the RRset chosen
            if rdataset.rdtype in ANY_PREFERRED:
                chosen = rdataset
                break
            if rdataset.rdtype in ANY_LAST_RESORT:
                last_resort = rdataset
            else:
                ordinary = rdataset
        chosen = chosen or ordinary or last_resort
        if chosen is None:
            return self._negative(result, dns.rcode.NOERROR)
        result.answer += self._signed(owner, node, chosen, result)
        self._additional(result, result.answer)
        return result

    def _referral(self, cut: dns.name.Name, result: Lookup, first: bool) -> None:
        """The cut's NS (never signed: the child's) and, for DO, its signed DS
        RRset or the proof that it has none (RFC 4035 3.1.4)."""
        # reached through a CNAME, the answer stays authoritative for the CNAMEs
        if first:
            result.authoritative = False
        node = self.nodes[cut]
        ns = _rrset(cut, node.find_rdataset(IN, NS))
        result.authority.append(ns)
        if self._proving(result):
            ds = node.get_rdataset(IN, DS)
            if ds is not None:
                result.authority += self._signed(cut, node, ds, result)
            elif self.nsec3 is not None:
                self._ds_proof(cut, result)
            elif node.get_rdataset(IN, NSEC) is not None:
                self._deny_with(cut, result)
        self._additional(result, [ns])

    def _additional(self, result: Lookup, rrsets: Sequence[dns.rrset.RRset]) -> None:
        present = {(r.name, r.rdtype) for r in (*result.answer, *result.authority, *result.additional)}
        for rrset in rrsets:
            if rrset.rdtype == NS:
                targets = [rd.target for rd in rrset]
            elif rrset.rdtype == MX:
                targets = [rd.exchange for rd in rrset]
            elif rrset.rdtype == SRV:
                targets = [rd.target for rd in rrset]
            else:
                continue
            for target in targets:
                node = self.nodes.get(target)
                if node is None and target.is_subdomain(self.origin) and name_key(target) not in self.nonterminals:
                    node = self._wildcard(target)     # NSD expands wildcards here too
                if node is None:
                    continue
                for rdtype in (A, AAAA):
                    rdataset = node.get_rdataset(IN, rdtype)
                    if rdataset is not None and (target, rdtype) not in present:
                        present.add((target, rdtype))
                        result.additional += self._signed(target, node, rdataset, result)


def _next_closer(name: dns.name.Name, encloser: dns.name.Name) -> dns.name.Name:
    """The name one label longer than the closest encloser, on the way to ``name``."""
    return name.split(len(encloser) + 1)[1]


def _rrset(owner: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(owner, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
    rrset.update(rdataset)
    return rrset


class Zones:
    """Several zones; a question goes to the most specific apex above it."""

    def __init__(self, zones: Iterable[dns.zone.Zone | AuthoritativeZone]) -> None:
        self.by_origin: dict[dns.name.Name, AuthoritativeZone] = {}
        for zone in zones:
            z = zone if isinstance(zone, AuthoritativeZone) else AuthoritativeZone(zone)
            self.by_origin[z.origin] = z
        self.max_depth = max((len(o) for o in self.by_origin), default=0)
        # NSD keeps one name tree for all its zones: the apex of a zone below
        # another, and the names between them, exist (as empty
        # non-terminals) in the zone above.
        for origin in self.by_origin:
            name = origin
            while len(name) > 1:
                name = name.parent()
                parent = self.by_origin.get(name)
                if parent is not None:
                    below = origin
                    while below != name:
                        parent.nonterminals.add(name_key(below))
                        below = below.parent()
                    break

    def find(self, qname: dns.name.Name) -> AuthoritativeZone | None:
        for labels in range(min(len(qname), self.max_depth), 0, -1):
            zone = self.by_origin.get(qname.split(labels)[1])
            if zone is not None:
                return zone
        return None

    def lookup(self, qname: dns.name.Name, qtype: int, dnssec: bool = False) -> Lookup | None:
        """The answer from the zone holding ``qname``, following CNAMEs into
        every zone served here; None when no zone holds it. ``dnssec``: the
        query had DO."""
        zone = self.find(qname)
        if zone is None:
            return None
        if qtype == DS and qname == zone.origin:
            # DS lives on the parent side of a cut (RFC 4034 §5)
            parent = self.find(qname.parent()) if len(qname) > 1 else None
            zone = parent or zone
        result = Lookup(dnssec=dnssec)
        seen: set[dns.name.Name] = set()
        name = qname
        while True:
            target = zone.step(name, qtype, result, not seen)
            if target is None:
                return result
            seen.add(name)
            if target in seen or len(seen) >= MAX_CNAME_CHAIN:
                return result
            zone = self.find(target)
            if zone is None:
                return result   # the chain leaves what we serve: the CNAMEs alone
            name = target


def zone_process(zones: Iterable[str | os.PathLike | dns.zone.Zone | AuthoritativeZone] | Zones) -> Process:
    """The process that answers from zone files (paths, loaded zones, or a
    :class:`Zones`): ``None`` for names under no apex and for other classes,
    else a final, static answer."""
    if not isinstance(zones, Zones):
        items = list(zones)
        loaded = [z if isinstance(z, (dns.zone.Zone, AuthoritativeZone)) else load_zone(z) for z in items]
        zones = Zones(loaded)
    table = zones

    async def authoritative(*, src: Endpoint, dst: Endpoint,
                            query: dns.message.Message) -> Answer | None:
        if len(query.question) != 1:
            return None
        question = query.question[0]
        if question.rdclass != IN:
            return None
        dnssec = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        found = table.lookup(question.name, question.rdtype, dnssec)
        if found is None:
            return None
        response = dns.message.make_response(query)
        response.set_rcode(found.rcode)
        if found.authoritative:
            response.flags |= dns.flags.AA
        response.answer = found.answer
        response.authority = found.authority
        response.additional = found.additional
        return Answer(response, final=True, static=True)

    authoritative.zones = table  # type: ignore[attr-defined]
    return authoritative


class ZoneFiles:
    """The zone process for a set of zone files, reloadable while serving.

    ``stage()`` reads every file again and returns the swap of the new zones
    in whole: a file with an error raises (naming file and line) before
    anything changes, and the zones being served stay untouched."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self.paths = list(paths)
        self.zones = Zones(load_zones(self.paths))
        zones_now = self

        async def authoritative(*, src: Endpoint, dst: Endpoint,
                                query: dns.message.Message) -> Answer | None:
            return await zones_now._process(src=src, dst=dst, query=query)

        self._process = zone_process(self.zones)
        self.process: Process = authoritative

    @property
    def origins(self) -> list[dns.name.Name]:
        """The apex of every zone being served."""
        return list(self.zones.by_origin)

    def stage(self) -> Callable[[], None]:
        """Reads every file again (raising before anything changes) and
        returns the swap, so that a reload of several sources is all or nothing."""
        zones = Zones(load_zones(self.paths))

        def commit() -> None:
            self.zones, self._process = zones, zone_process(zones)
        return commit
