"""Hosts overrides: files in /etc/hosts format, served as authoritative data.

Each line is an address followed by one or more names; ``#`` starts a comment.
A name listed there gets its A (IPv4 lines) and AAAA (IPv6 lines) records from
the files; the first name of a line is the canonical one, and the address's
PTR under in-addr.arpa / ip6.arpa points to it (the first line for an address
wins, as glibc and dnsmasq do). Answers are final, AA, and static (a pure
function of the question), so the server keeps them on its fast path.

A name in the files asked for another type (MX, TXT...) is not ours: the next
process (the forwarder) answers it, as dnsmasq does. A/AAAA of a listed name
with no address of that family is NODATA, final: the files win over forwarding;
it carries a SOA owned by the name (TTL and MINIMUM the hosts TTL) so that
resolvers behind us can cache it.

Errors name the file and line: ``data/hosts:7: bad address '10.0.0.300'``.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from unikernel.config import ConfigError
from unikernel.process import Answer, Endpoint, authoritative_response, single_in_question

DEFAULT_TTL = 60


class HostsError(ConfigError):
    """A hosts file that cannot be used; the message starts with file:line."""


@dataclass
class HostsTable:
    v4: dict[dns.name.Name, list[str]] = field(default_factory=dict)   # canonical name -> addresses
    v6: dict[dns.name.Name, list[str]] = field(default_factory=dict)
    ptr: dict[dns.name.Name, dns.name.Name] = field(default_factory=dict)   # reverse name -> host name

    def __len__(self) -> int:
        return len(set(self.v4) | set(self.v6))

    def add(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, names: list[dns.name.Name]) -> None:
        table = self.v4 if address.version == 4 else self.v6
        text = address.compressed
        for name in names:
            addresses = table.setdefault(name, [])
            if text not in addresses:
                addresses.append(text)
        self.ptr.setdefault(dns.reversename.from_address(text), names[0])


def parse_hosts(text: str, source: str = "<hosts>", table: HostsTable | None = None) -> HostsTable:
    """Adds the entries of one file's text to ``table`` (a new one by default)."""
    table = table if table is not None else HostsTable()
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source}:{lineno}"
        try:
            address = ipaddress.ip_address(fields[0])
        except ValueError:
            raise HostsError(f"{where}: bad address {fields[0]!r}") from None
        if len(fields) < 2:
            raise HostsError(f"{where}: address {fields[0]} without a name")
        names = []
        for word in fields[1:]:
            try:
                name = dns.name.from_text(word.rstrip(".") + ".")
            # ValueError: in the VM image a non-ASCII name (build/unicodedata_absent.py)
            except (dns.exception.DNSException, ValueError) as e:
                raise HostsError(f"{where}: bad name {word!r}: {e}") from None
            if name == dns.name.root or any(not label for label in name.labels[:-1]):
                raise HostsError(f"{where}: bad name {word!r}")
            names.append(name.canonicalize())
        table.add(address, names)
    return table


def load_hosts(paths: Iterable[str | Path]) -> HostsTable:
    table = HostsTable()
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise HostsError(f"{path}: cannot be read: {reason}") from None
        parse_hosts(text, str(path), table)
    return table


def hosts_process(table: HostsTable, *, ttl: int = DEFAULT_TTL, recursion_available: bool = False):
    """The process answering from ``table``."""

    async def hosts(*, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        q = single_in_question(query)
        if q is None:
            return None
        name = q.name.canonicalize()
        rdtype = q.rdtype
        records: list[tuple[dns.rdatatype.RdataType, list[str]]] = []
        if rdtype == dns.rdatatype.PTR:
            target = table.ptr.get(name)
            if target is None:
                return None
            records.append((dns.rdatatype.PTR, [target.to_text()]))
        elif name in table.v4 or name in table.v6:
            if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and name in table.v4:
                records.append((dns.rdatatype.A, table.v4[name]))
            if rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY) and name in table.v6:
                records.append((dns.rdatatype.AAAA, table.v6[name]))
            if rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.ANY):
                return None          # other types of a listed name: not ours
        else:
            return None
        response = authoritative_response(query, recursion_available=recursion_available)
        for rrtype, values in records:
            response.answer.append(dns.rrset.from_text_list(q.name, ttl, dns.rdataclass.IN, rrtype, values))
        if not records:
            # NODATA needs a SOA to be cached (RFC 2308 section 5): the name is
            # answered as the apex of an empty zone, as RFC 6303 zones are
            response.authority.append(dns.rrset.from_text(
                q.name, ttl, dns.rdataclass.IN, dns.rdatatype.SOA,
                f"{q.name.to_text()} nobody.invalid. 1 3600 1200 604800 {ttl}"))
        return Answer(response, final=True, static=True)

    hosts.table = table  # type: ignore[attr-defined]
    return hosts


class HostsFiles:
    """The hosts process for a set of files, reloadable while serving:
    ``stage()`` reads them again (raising, file and line named, before
    anything changes) and returns the swap, as ZoneFiles does."""

    def __init__(self, paths: Iterable[str | Path], table: HostsTable, *, recursion_available: bool = False) -> None:
        self.paths = list(paths)
        self.recursion_available = recursion_available
        self._process = hosts_process(table, recursion_available=recursion_available)

    async def process(self, *, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        return await self._process(src=src, dst=dst, query=query)

    def stage(self) -> Callable[[], None]:
        table = load_hosts(self.paths)

        def commit() -> None:
            self._process = hosts_process(table, recursion_available=self.recursion_available)
        return commit
