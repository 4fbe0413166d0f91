"""Blocklists: names (and every name below them) the appliance will not resolve.

Files in the formats people download, mixed freely:

* hosts format, as StevenBlack's lists: ``0.0.0.0 ads.example.com`` (any
  address, several names a line); the hosts files' own names (``localhost``,
  ``broadcasthost``...) and names that are addresses are skipped;
* one domain a line, as Pi-hole's and AdGuard's "domains" lists, also written
  ``||ads.example.com^`` or ``*.ads.example.com``.

``#`` starts a comment (``!`` too, at the start of a line, as AdGuard writes
them); blank lines are ignored. A line that is none of these is counted and
reported with its file and line, never fatal.

A query for a listed name or any name below it is answered NXDOMAIN with
Extended DNS Error 15 (Blocked, RFC 8914), or, in ``null`` mode, with
``0.0.0.0`` / ``::`` (other types NODATA), EDE 15 as well. The allowlist
overrides: the most specific listed ancestor decides, and where a name is in
both lists the allowlist wins.

Memory: a name is kept as the 64-bit hash (Python's keyed SipHash, seeded per
process) of its lowercased text, in an open-addressing table in one
``array('q')`` at most half full: 8 to 16 bytes a name instead of the ~100 of
a set of bytes objects, so a million names fit a small VM (``python -m bench
blocklist`` measures it). Two names share a hash with probability about
n / 2**64 per lookup, 5e-14 for a million: accepted.
"""
from __future__ import annotations

import collections
import ipaddress
import os
from array import array
from collections.abc import Callable, Iterable

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from unikernel.config import ConfigError
from unikernel.process import Answer, Endpoint, single_in_question

EDE_BLOCKED = dns.edns.EDECode.BLOCKED     # 15, RFC 8914
BLOCKED_TTL = 10            # short: unblocking a name takes effect soon at the clients too
MODES = ("nxdomain", "null")
REPORTED_MALFORMED = 20     # lines named in a load's report; the rest only counted
# names hosts-format lists carry for the hosts file they also are, never blocked
HOSTS_OWN_NAMES = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
                             "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
                             "ip6-allhosts", "0.0.0.0"})
_SINKS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "0"})     # what hosts-format lists point names at
_MAX_NAME_TEXT = 253
# str.translate tables that delete the characters allowed: what is left is wrong
_NAME_CHARS = dict.fromkeys(map(ord, "abcdefghijklmnopqrstuvwxyz0123456789-_."))
_ADDRESS_CHARS = dict.fromkeys(map(ord, "0123456789abcdef.:"))


class BlocklistError(ConfigError):
    """A blocklist file that cannot be read at all (missing, unreadable)."""


class Listing:
    """What one load read: the names' hashes in an open-addressing table
    (linear probing, 0 marks a free slot), and what was wrong."""

    def __init__(self, hashes: array | None = None) -> None:
        self.table = _table_of(hashes if hashes is not None else array("q"))
        self.mask = len(self.table) - 1
        self.count = sum(1 for h in self.table if h)    # distinct names
        self.names = 0                      # lines that listed a name (duplicates included)
        self.malformed = 0
        self.report: list[str] = []         # "file:line: text", the first REPORTED_MALFORMED

    def __len__(self) -> int:
        return self.count

    def contains(self, name: bytes) -> bool:
        """Whether the lowercased name (text, no final dot) is listed."""
        h = hash(name) or 1
        table, mask = self.table, self.mask
        i = h & mask
        while True:
            slot = table[i]
            if slot == h:
                return True
            if not slot:
                return False
            i = (i + 1) & mask


def _table_of(hashes: array) -> array:
    size = 8
    while size < 2 * len(hashes):
        size *= 2
    table = array("q", bytes(8 * size))
    mask = size - 1
    for h in hashes:
        h = h or 1
        i = h & mask
        while table[i] and table[i] != h:
            i = (i + 1) & mask
        table[i] = h
    return table


def read_lists(paths: Iterable[str | os.PathLike]) -> Listing:
    """Every name in the files; raises BlocklistError only for a file that
    cannot be read, and counts (and reports) malformed lines."""
    hashes = array("q")
    names = malformed = 0
    report: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    listed = _names_of(line)
                    if listed is None:
                        malformed += 1
                        if len(report) < REPORTED_MALFORMED:
                            report.append(f"{path}:{number}: {line.strip()[:80]!r}")
                        continue
                    for name in listed:
                        hashes.append(hash(name.encode("ascii")))
                    names += len(listed)
        except OSError as e:
            raise BlocklistError(f"{path}: {e.strerror or e}") from None
    listing = Listing(hashes)
    listing.names, listing.malformed, listing.report = names, malformed, report
    return listing


def _names_of(line: str) -> list[str] | None:
    """The names a line lists ([] for none), or None when it is malformed."""
    if "#" in line:
        line = line.split("#", 1)[0]
    words = line.split()
    if not words or words[0].startswith("!"):
        return []
    first = words[0]
    if first in _SINKS or (len(words) > 1 and _is_address(first)):
        names = []
        for word in words[1:]:
            name = _domain(word)
            if name is None:
                return None
            if name not in HOSTS_OWN_NAMES and not _is_address(name):
                names.append(name)
        return names
    if len(words) > 1:
        return None
    if first.startswith("||") and first.endswith("^"):
        first = first[2:-1]
    elif first.startswith("*."):
        first = first[2:]
    name = _domain(first)
    if name is None or _is_address(name):
        return None
    return [name]


def _domain(word: str) -> str | None:
    """The word as a lowercased name without its final dot, or None when it
    is not a host name (letters, digits, ``-`` and ``_``; labels of 1 to 63)."""
    name = word.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.strip("-_.") or len(name) > _MAX_NAME_TEXT or name.translate(_NAME_CHARS):
        return None
    labels = name.split(".")
    if "" in labels or max(map(len, labels)) > 63:
        return None
    return name


def _is_address(word: str) -> bool:
    if word.translate(_ADDRESS_CHARS):      # a character no address has: cheaper than trying
        return False
    try:
        ipaddress.ip_address(word)
    except ValueError:
        return False
    return True


class Blocklist:
    """The blocklist source: ``process`` answers blocked names, ``stage()``
    reads the files again (raising before anything changes) and returns the
    swap to commit, so SIGHUP can reload it together with the zones."""

    def __init__(self, blocklists: Iterable[str | os.PathLike], allowlists: Iterable[str | os.PathLike] = (),
                 *, mode: str = "nxdomain", recursion_available: bool = True, counters=None) -> None:
        if mode not in MODES:
            raise ConfigError(f"block-answer {mode!r}: must be one of {', '.join(MODES)}")
        self.blocklist_paths = list(blocklists)
        self.allowlist_paths = list(allowlists)
        self.mode = mode
        self.recursion_available = recursion_available
        self.counters = counters if counters is not None else collections.Counter()
        self.blocked, self.allowed = read_lists(self.blocklist_paths), read_lists(self.allowlist_paths)

    def __len__(self) -> int:
        return len(self.blocked)

    @property
    def report(self) -> list[str]:
        return self.blocked.report + self.allowed.report

    @property
    def malformed(self) -> int:
        return self.blocked.malformed + self.allowed.malformed

    def stage(self) -> Callable[[], None]:
        blocked, allowed = read_lists(self.blocklist_paths), read_lists(self.allowlist_paths)

        def commit() -> None:
            self.blocked, self.allowed = blocked, allowed
        return commit

    def blocks(self, labels: tuple[bytes, ...]) -> bool:
        """Whether the name (its lowercased labels, the root's last) is
        blocked: its most specific listed ancestor (itself included)
        decides, the allowlist winning ties. A label holding a dot cannot be
        listed, so no suffix that includes one is looked up."""
        blocked, allowed = self.blocked, self.allowed
        check_allowed = len(allowed) > 0
        first = 0
        for i, label in enumerate(labels):
            if b"." in label:
                first = i + 1      # no suffix holding this label can be listed
        for start in range(first, len(labels) - 1):
            text = b".".join(labels[start:-1])
            if check_allowed and allowed.contains(text):
                return False
            if blocked.contains(text):
                return True
        return False

    async def process(self, *, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        question = single_in_question(query)
        if question is None or not self.blocks(question.name.canonicalize().labels):
            return None
        self.counters["blocklist.blocked"] += 1
        response = dns.message.make_response(query)
        if self.recursion_available:
            response.flags |= dns.flags.RA
        if self.mode == "null" and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            address = "0.0.0.0" if question.rdtype == dns.rdatatype.A else "::"
            response.answer.append(dns.rrset.from_text(question.name, BLOCKED_TTL, dns.rdataclass.IN,
                                                       question.rdtype, address))
        elif self.mode == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
        if query.edns >= 0:
            response.use_edns(0, options=[dns.edns.EDEOption(EDE_BLOCKED)])
        return Answer(response, final=True, static=True)
