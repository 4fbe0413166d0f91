"""Trust anchors: where chains of trust start.

Built in: the root zone's key-signing keys as DS records, copied from IANA's
https://data.iana.org/root-anchors/root-anchors.xml (KSK-2017, key tag 20326,
and KSK-2024, key tag 38696). ``--trust-anchor FILE`` replaces them: zone-file
lines of DS or DNSKEY records, for the root or any other name (a DNSKEY
anchor's key is trusted as such; only keys with the SEP role are needed).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zonefile

ROOT_ANCHORS = """\
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
"""


class AnchorError(ValueError):
    """A trust-anchor file that cannot be used; the message names file and line."""


@dataclass
class Anchor:
    name: dns.name.Name
    ds: list = field(default_factory=list)         # DS rdata
    dnskeys: list = field(default_factory=list)    # DNSKEY rdata trusted as they are


class TrustAnchors:
    """Anchors by name; :meth:`closest` finds the one a name's chain starts at."""

    def __init__(self, anchors: Iterable[Anchor]) -> None:
        self.by_name: dict[dns.name.Name, Anchor] = {a.name: a for a in anchors}

    def closest(self, name: dns.name.Name) -> Anchor | None:
        """The deepest anchor at or above ``name``."""
        while True:
            anchor = self.by_name.get(name)
            if anchor is not None:
                return anchor
            if name == dns.name.root or len(name) == 0:
                return None
            name = name.parent()

    def __len__(self) -> int:
        return len(self.by_name)

    @classmethod
    def from_text(cls, text: str, source: str = "<anchors>") -> TrustAnchors:
        anchors: dict[dns.name.Name, Anchor] = {}
        try:
            records = dns.zonefile.read_rrsets(text, origin=dns.name.root, default_ttl=0, rdclass=None,
                                               default_rdclass=dns.rdataclass.IN)
        except dns.exception.DNSException as e:
            raise AnchorError(f"{source}: {e}") from None
        for rrset in records:
            anchor = anchors.setdefault(rrset.name, Anchor(rrset.name))
            if rrset.rdtype == dns.rdatatype.DS:
                anchor.ds.extend(rrset)
            elif rrset.rdtype == dns.rdatatype.DNSKEY:
                anchor.dnskeys.extend(rrset)
            else:
                raise AnchorError(f"{source}: {rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}: "
                                  "a trust anchor is a DS or DNSKEY record")
        if not anchors:
            raise AnchorError(f"{source}: no DS or DNSKEY records")
        return cls(anchors.values())

    @classmethod
    def from_files(cls, paths: Iterable[Path | str]) -> TrustAnchors:
        """Every file's anchors together; raises AnchorError."""
        merged: dict[dns.name.Name, Anchor] = {}
        for path in paths:
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise AnchorError(f"{path}: {e.strerror}") from None
            for anchor in cls.from_text(text, str(path)).by_name.values():
                into = merged.setdefault(anchor.name, Anchor(anchor.name))
                into.ds.extend(anchor.ds)
                into.dnskeys.extend(anchor.dnskeys)
        if not merged:
            raise AnchorError("no trust anchors")
        return cls(merged.values())


def root_anchors() -> TrustAnchors:
    return TrustAnchors.from_text(ROOT_ANCHORS, "built-in root anchors")
