"""The appliance's declaration, as config.py writes it (MirageOS's config.ml).

``config.py`` at the top of the repository builds one :class:`Appliance`; the
unix target reads it (flags override it) and build/ bakes it into the image.
Unknown keys are refused, so a typo is an error rather than a silent default.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config.py"
# Debian's ca-certificates bundle: on a Debian host, and in the image (built
# from the pinned package), the default trust for tls:// upstreams.
DEBIAN_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DOT_PORT = 853                          # DNS over TLS (RFC 7858)


class ConfigError(ValueError):
    """A declaration that cannot be served; the message names what is wrong."""


# -- values as config.py, the command line and kernel command-line words spell them --

def parse_upstream(text: str, default_port: int = 53) -> tuple[int, int]:
    """``ADDR``, ``ADDR:PORT`` or ``ADDR#PORT`` (dnsmasq's spelling) -> (ip as
    int, port). IPv4 only: the stack speaks IPv4. Raises ValueError."""
    text = text.strip()
    return _endpoint(text, text.replace("#", ":"), default_port, "ADDR[:PORT]")


def _endpoint(text: str, where: str, default_port: int, want: str) -> tuple[int, int]:
    """``ADDR[:PORT]`` (`where`, a part of the upstream `text` the errors
    name) -> (ip as int, port). Raises ValueError."""
    addr, sep, port_text = where.partition(":")
    try:
        ip = int(ipaddress.IPv4Address(addr))
        port = int(port_text) if sep else default_port
    except ValueError:
        raise ValueError(f"bad upstream {text!r}: want {want} with an IPv4 address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad upstream {text!r}: port out of range")
    return ip, port


def is_tls_upstream(text: str) -> bool:
    return text.strip().lower().startswith("tls://")


def parse_tls_upstream(text: str) -> tuple[int, int, str]:
    """``tls://ADDR[:PORT]#NAME`` -> (ip as int, port, name). Raises ValueError."""
    body = text.strip()
    if not is_tls_upstream(body):
        raise ValueError(f"bad upstream {text!r}: want tls://ADDR[:PORT]#NAME")
    body = body[len("tls://"):]
    where, sep, name = body.partition("#")
    name = name.strip().rstrip(".")
    if not sep or not name:
        raise ValueError(f"bad upstream {text!r}: tls:// needs #NAME, the name its certificate carries")
    try:
        dns.name.from_text(name)
    except (dns.exception.DNSException, ValueError) as e:
        raise ValueError(f"bad upstream {text!r}: {name!r} is not a name ({e})") from None
    ip, port = _endpoint(text, where, DOT_PORT, "tls://ADDR[:PORT]#NAME")
    return ip, port, name


def yes_or_no(text: str) -> bool:
    """A switch's value as the command line (or a kernel command-line word
    such as ``serve-stale=yes``) spells it."""
    value = text.strip().lower()
    if value in ("yes", "y", "true", "on", "1"):
        return True
    if value in ("no", "n", "false", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


class AccessList:
    """Which clients may use forwarding (and the cache): ``acl(ip_int)``."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | str]) -> None:
        nets = []
        for n in networks:
            try:
                nets.append(ipaddress.IPv4Network(n, strict=False))
            except ValueError as e:
                raise ValueError(f"bad allowed network {str(n)!r}: {e}") from None
        self.networks = nets
        self._pairs = tuple((int(n.network_address), int(n.netmask)) for n in nets)

    def __call__(self, ip: int) -> bool:
        for network, mask in self._pairs:
            if ip & mask == network:
                return True
        return False

    def assign(self, other: AccessList) -> None:
        """Takes ``other``'s networks: whoever holds this list (the cache's
        fast-path hook) sees the change, with no call in between."""
        self.networks, self._pairs = list(other.networks), other._pairs

    def __repr__(self) -> str:
        return f"AccessList({[str(n) for n in self.networks]})"


@dataclass
class Appliance:
    tap: str = "tap0"                       # unix target: the tap device to attach to
    packet: str | None = None               # unix target: serve on this interface through AF_PACKET, not a tap
    packet_rings: bool = True               # AF_PACKET through PACKET_MMAP rings (no: a system call a frame)
    ipv4: str = "192.168.1.2/24"            # address/prefix
    ipv4_gateway: str | None = "192.168.1.1"
    mtu: int = 1500
    mac: str | None = None                  # None: a stable address derived from ipv4
    port: int = 53
    zones: list[str] = field(default_factory=list)     # zone files (RFC 1035 master format)
    hosts: list[str] = field(default_factory=list)     # /etc/hosts-format overrides
    forward: list[str] = field(default_factory=list)   # upstreams: ADDR[:PORT] or tls://ADDR[:PORT]#NAME
    tls_ca: str | None = None               # PEM bundle for tls:// upstreams; None: DEBIAN_CA_BUNDLE
    dot_cert: str | None = None             # with dot_key: also serve DNS over TLS on port 853
    dot_key: str | None = None
    allow: list[str] = field(default_factory=list)     # who may use forwarding; [] = own subnet
    cache_size: int = 10000
    bogus_nxdomain: list[str] = field(default_factory=list)   # answers with these addresses become NXDOMAIN
    randomize_case: bool = True             # 0x20 letter-case randomisation of upstream queries
    serve_stale: bool = False               # RFC 8767: expired answers while every upstream is down
    mdns: bool = True                       # .local (and our subnet's reverse names) asked on the link, RFC 6762
    mdns_domain: str | None = None          # a unicast domain answered from .local (RFC 8766), e.g. lan.example
    rrl_rate: int = 200                     # UDP responses a second per client /24 (NSD's default); 0: off
    rrl_slip: int = 2                       # every N-th limited response goes out truncated (0: none)
    # clients in `allow` (else our subnet, whose sources the stack checks by ARP)
    # are never rate-limited: a LAN behind one /24 would otherwise share 200 answers a second
    rrl_exempt_allowed: bool = True
    dnssec: bool = True                     # validate what is forwarded (DNSSEC); bogus answers get SERVFAIL
    trust_anchors: list[str] = field(default_factory=list)   # DS/DNSKEY files; [] = the root's built-in KSKs
    log_queries: bool = False               # one JSON object a line per answer, on stdout
    # zone transfers (unikernel/transfer/): who may AXFR/IXFR (CIDRs; [] = nobody),
    # the TSIG key they must sign with (NAME:ALGORITHM:BASE64SECRET), secondaries
    # told of a new serial by NOTIFY (ADDR[:PORT])
    allow_transfer: list[str] = field(default_factory=list)
    tsig: str | None = None
    notify: list[str] = field(default_factory=list)
    # zones pulled from a primary and kept by its SOA timers and NOTIFY: ZONE@ADDR[:PORT]
    secondary: list[str] = field(default_factory=list)
    # the operator's side (unikernel/ops, sources/blocklist, sources/chaos)
    metrics_port: int = 9153                # /metrics, /api/stats and the dashboard; 0: off
    blocklist: list[str] = field(default_factory=list)    # hosts-format or one-domain-a-line lists
    allowlist: list[str] = field(default_factory=list)    # names never blocked
    block_answer: str = "nxdomain"          # nxdomain (with EDE 15) or null (0.0.0.0 / ::)
    identity: str | None = None             # CHAOS id.server / hostname.bind; None: our address
    hide_version: bool = False              # CHAOS version.server / version.bind REFUSED
    base: Path = REPO                       # relative paths are resolved against this

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Interface(self.ipv4)
            if self.ipv4_gateway:
                ipaddress.IPv4Address(self.ipv4_gateway)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not 68 <= self.mtu <= 65535:
            raise ConfigError(f"mtu {self.mtu} out of range 68..65535")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics-port {self.metrics_port} out of range 0..65535 (0: off)")
        if self.block_answer not in ("nxdomain", "null"):
            raise ConfigError(f"block-answer {self.block_answer!r}: nxdomain or null")

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.ipv4)

    @property
    def gateway(self) -> ipaddress.IPv4Address | None:
        return ipaddress.IPv4Address(self.ipv4_gateway) if self.ipv4_gateway else None

    @property
    def upstream_ca(self) -> Path:
        return self.path(self.tls_ca) if self.tls_ca else Path(DEBIAN_CA_BUNDLE)

    def path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.base / p

    def replace(self, **changes) -> Appliance:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def load(path: Path | str = DEFAULT_CONFIG) -> Appliance:
    """Runs config.py and returns its ``appliance``; relative paths in it are
    taken from the file's own folder."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location("appliance_config", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be read")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    appliance = getattr(module, "appliance", None)
    if not isinstance(appliance, Appliance):
        raise ConfigError(f"{path}: must define `appliance = Appliance(...)`")
    return dataclasses.replace(appliance, base=path.resolve().parent)
