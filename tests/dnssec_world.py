"""A small signed Internet inside a test's namespace: a root, the TLD
``tld.`` and zones under it, signed at test time with ldns-signzone
(Debian's ldnsutils), served by NSD on 127.0.0.1; Unbound as an iterator
without validation (the appliance's upstream) and a second Unbound that
validates with the test root's anchor (the reference).

Zones (all NS ns.tld. = 127.0.0.1):

    .               RSASHA256, NSEC         the test root; its DS is the trust anchor
    tld.            RSASHA256, NSEC
    secure.tld.     ECDSAP256, NSEC         records, wildcard, CNAMEs, an empty non-terminal
    nsec3.tld.      ECDSAP256, NSEC3 opt-out, with the unsigned delegation sub.nsec3.tld.
    ed.tld.         ED25519, NSEC
    iter.tld.       ECDSAP256, NSEC3 with 200 iterations (above RFC 9276's cap)
    insecure.tld.   unsigned, delegated without DS
    broken.tld.     signed, then its A records changed (their signatures fail)
    expired.tld.    signed with signatures that expired in 2020
    nokey.tld.      signed, but the DS in tld. is of another key
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.netns import Namespace, read_until
from tests.nsd import nsd_conf

AUTH = "127.0.0.1"              # NSD, every zone
REFERENCE = "127.0.0.2"         # Unbound, validating with the test anchor
SOA_TAIL = "1 1800 900 604800 300"
TOOLS = ("nsd", "unbound", "ldns-keygen", "ldns-signzone")

ZONES: dict[str, str] = {
    ".": """
. NS ns.
ns. A 127.0.0.1
tld. NS ns.tld.
ns.tld. A 127.0.0.1
""",
    "tld.": """
tld. NS ns.tld.
ns.tld. A 127.0.0.1
""" + "".join(f"{z}.tld. NS ns.tld.\n" for z in ("secure", "nsec3", "ed", "iter", "insecure", "broken",
                                                "expired", "nokey")),
    "secure.tld.": """
secure.tld. NS ns.tld.
secure.tld. MX 10 mail.secure.tld.
www.secure.tld. A 192.0.2.80
www.secure.tld. AAAA 2001:db8::80
mail.secure.tld. A 192.0.2.25
txt.secure.tld. TXT "hello"
*.wild.secure.tld. A 192.0.2.99
*.wild.secure.tld. TXT "wild"
alias.secure.tld. CNAME www.secure.tld.
out.secure.tld. CNAME www.insecure.tld.
gone.secure.tld. CNAME nothing.secure.tld.
host.deep.er.secure.tld. A 192.0.2.3
""",
    "nsec3.tld.": """
nsec3.tld. NS ns.tld.
www.nsec3.tld. A 192.0.2.81
*.wild.nsec3.tld. A 192.0.2.98
sub.nsec3.tld. NS ns.tld.
""",
    "sub.nsec3.tld.": """
sub.nsec3.tld. NS ns.tld.
www.sub.nsec3.tld. A 192.0.2.82
""",
    "ed.tld.": """
ed.tld. NS ns.tld.
www.ed.tld. A 192.0.2.83
""",
    "iter.tld.": """
iter.tld. NS ns.tld.
www.iter.tld. A 192.0.2.84
""",
    "insecure.tld.": """
insecure.tld. NS ns.tld.
www.insecure.tld. A 192.0.2.85
""",
    "broken.tld.": """
broken.tld. NS ns.tld.
www.broken.tld. A 192.0.2.86
mail.broken.tld. A 192.0.2.86
""",
    "expired.tld.": """
expired.tld. NS ns.tld.
www.expired.tld. A 192.0.2.87
""",
    "nokey.tld.": """
nokey.tld. NS ns.tld.
www.nokey.tld. A 192.0.2.88
""",
}
ALGORITHMS = {".": "RSASHA256", "tld.": "RSASHA256", "ed.tld.": "ED25519"}
UNSIGNED = {"insecure.tld.", "sub.nsec3.tld."}
NSEC3 = {"nsec3.tld.": ["-n", "-p", "-t", "0"], "iter.tld.": ["-n", "-t", "200", "-s", "beef"]}
EXPIRED = ["-i", "20200101000000", "-e", "20200201000000"]

# Questions asked of both the appliance and the reference: (name, type)
QUESTIONS = [
    (".", "SOA"), (".", "DNSKEY"), ("tld.", "DS"), ("tld.", "NS"), ("nope.", "A"),
    ("www.secure.tld.", "A"), ("www.secure.tld.", "AAAA"), ("www.secure.tld.", "TXT"),
    ("secure.tld.", "MX"), ("secure.tld.", "DNSKEY"), ("secure.tld.", "DS"), ("txt.secure.tld.", "TXT"),
    ("nothing.secure.tld.", "A"), ("a.wild.secure.tld.", "A"), ("b.wild.secure.tld.", "TXT"),
    ("c.wild.secure.tld.", "AAAA"), ("alias.secure.tld.", "A"), ("out.secure.tld.", "A"),
    ("gone.secure.tld.", "A"), ("er.secure.tld.", "A"), ("deep.er.secure.tld.", "A"),
    ("host.deep.er.secure.tld.", "A"),
    ("www.nsec3.tld.", "A"), ("www.nsec3.tld.", "TXT"), ("none.nsec3.tld.", "A"), ("x.wild.nsec3.tld.", "A"),
    ("www.sub.nsec3.tld.", "A"), ("sub.nsec3.tld.", "DS"),
    ("www.ed.tld.", "A"), ("none.ed.tld.", "A"),
    ("www.iter.tld.", "A"), ("none.iter.tld.", "A"),
    ("www.insecure.tld.", "A"), ("none.insecure.tld.", "A"), ("insecure.tld.", "DS"),
    ("www.broken.tld.", "A"), ("www.expired.tld.", "A"), ("www.nokey.tld.", "A"),
]


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


class SignedWorld:
    """``with SignedWorld(ns, work, upstream="192.0.2.1"):`` signs the zones in
    ``work``, starts NSD, the iterator (on ``upstream``:53) and the reference."""

    def __init__(self, ns: Namespace, work: Path, *, upstream: str | list[str],
                 extra_zones: dict[str, str] | None = None) -> None:
        """``upstream``: the address(es) the iterator listens on; ``extra_zones``
        ({name under tld.: records}) are signed like secure.tld. and delegated
        from tld. with their DS."""
        self.ns = ns
        self.work = work
        self.upstreams = [upstream] if isinstance(upstream, str) else list(upstream)
        self.upstream = self.upstreams[0]
        self.zones = dict(ZONES)
        for zone, body in (extra_zones or {}).items():
            self.zones[zone] = body
            self.zones["tld."] += f"{zone} NS ns.tld.\n"
        self.anchor_file = work / "root.anchor"

    # -- zones --------------------------------------------------------------
    def _keygen(self, zone: str) -> str:
        algorithm = ALGORITHMS.get(zone, "ECDSAP256SHA256")
        bits = ["-b", "2048"] if algorithm.startswith("RSA") else []
        out = subprocess.run(["ldns-keygen", "-k", "-a", algorithm, *bits, zone], cwd=self.work,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def _ds(self, base: str) -> str:
        return (self.work / f"{base}.ds").read_text().strip()

    def sign(self) -> None:
        keys = {zone: self._keygen(zone) for zone in self.zones if zone not in UNSIGNED}
        stray = self._keygen("nokey.tld.")      # the key the DS of nokey.tld. is made from
        ds_lines = {zone: self._ds(base) for zone, base in keys.items()}
        ds_lines["nokey.tld."] = self._ds(stray)
        self.anchor_file.write_text(ds_lines["."] + "\n")
        self.files: dict[str, Path] = {}
        for zone, body in self.zones.items():
            parent_of = [child for child in ds_lines if child != zone and _parent(child) == zone]
            text = (f"$TTL 300\n{zone} SOA ns.tld. hostmaster.{zone if zone != '.' else ''} {SOA_TAIL}\n"
                    + body + "".join(ds_lines[c] + "\n" for c in parent_of))
            path = self.work / f"{zone.rstrip('.') or 'root'}.zone"
            path.write_text(text)
            if zone in UNSIGNED:
                self.files[zone] = path
                continue
            options = NSEC3.get(zone, []) + (EXPIRED if zone == "expired.tld." else [])
            subprocess.run(["ldns-signzone", *options, "-o", zone, str(path), keys[zone]], cwd=self.work,
                           capture_output=True, text=True, check=True)
            signed = Path(f"{path}.signed")
            if zone == "broken.tld.":
                signed.write_text(re.sub(r"(\.broken\.tld\.\s+\d+\s+IN\s+A\s+)192\.0\.2\.86", r"\g<1>192.0.2.66",
                                         signed.read_text()))
            self.files[zone] = signed

    # -- servers ------------------------------------------------------------
    def _unbound_conf(self, name: str, interfaces: list[str], validating: bool) -> Path:
        hints = self.work / "root.hints"
        hints.write_text(". 3600 NS ns.\nns. 3600 A 127.0.0.1\n")
        conf = self.work / f"{name}.conf"
        modules = "validator iterator" if validating else "iterator"
        anchor = f'    trust-anchor-file: "{self.anchor_file}"\n' if validating else ""
        listen = "".join(f"    interface: {address}\n" for address in interfaces)
        conf.write_text(f"""server:
{listen}    port: 53
    access-control: 0.0.0.0/0 allow
    do-not-query-localhost: no
    do-ip6: no
    module-config: "{modules}"
    root-hints: "{hints}"
{anchor}    username: ""
    chroot: ""
    directory: "{self.work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    qname-minimisation: no
    minimal-responses: no
    aggressive-nsec: no
    harden-dnssec-stripped: yes
    num-threads: 1
    msg-cache-size: 4m
    rrset-cache-size: 4m
remote-control:
    control-enable: no
""")
        return conf

    def __enter__(self) -> SignedWorld:
        self.sign()
        conf = nsd_conf(self.work, {z: p for z, p in self.files.items()}, address=AUTH)
        self.ns.ip("addr", "add", f"{REFERENCE}/8", "dev", "lo")
        nsd = self.ns.popen("nsd", "-d", "-c", str(conf))
        self._wait_answer(AUTH, "ns.tld.", nsd)
        self.iterator = self.ns.popen("unbound", "-d", "-c", str(self._unbound_conf("iterator", self.upstreams,
                                                                                      False)))
        self.reference = self.start_validator("reference", REFERENCE)
        self._wait_answer(self.upstream, "www.secure.tld.", self.iterator)
        self._wait_answer(REFERENCE, "www.secure.tld.", self.reference)
        return self

    def start_validator(self, name: str, address: str, *, wait: bool = False):
        """Another validating Unbound (with the test anchor) on ``address``;
        with ``wait``, returns once it answers (without asking it anything)."""
        if address != REFERENCE:
            self.ns.ip("addr", "add", f"{address}/8", "dev", "lo")
        proc = self.ns.popen("unbound", "-d", "-c", str(self._unbound_conf(name, [address], True)))
        if wait:                 # Unbound answers version.server itself, asking no one
            for _ in range(50):
                if self.ns.run("dig", f"@{address}", "+time=1", "+tries=1", "version.server", "TXT",
                               "CH").returncode == 0:
                    break
        return proc

    def _wait_answer(self, server: str, name: str, proc) -> None:
        for _ in range(50):
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited: {proc.stdout.read()[-2000:]}")
            out = self.ns.run("dig", f"@{server}", "+time=1", "+tries=1", "+short", name, "A")
            if out.returncode == 0 and out.stdout.strip():
                return
        raise RuntimeError(f"{server} never answered {name}")

    def __exit__(self, *exc) -> None:
        pass                     # the namespace ends the servers it started

    def dig(self, server: str, name: str, rdtype: str, *flags: str) -> str:
        return self.ns.run("dig", f"@{server}", "+time=5", "+tries=1", "+dnssec", "+nocmd", "+nostats",
                           *flags, name, rdtype).stdout


def _parent(zone: str) -> str:
    return "." if zone.count(".") == 1 else zone.split(".", 1)[1]


__all__ = ["SignedWorld", "QUESTIONS", "REFERENCE", "missing_tools", "read_until"]
