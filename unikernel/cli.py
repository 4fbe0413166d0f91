"""The unix target: ``python -m unikernel serve [flags]``.

With no flags, everything comes from ``config.py`` (the appliance's
declaration); flags override it. Option names are the Appliance's field names
with ``_`` written ``-`` (``--ipv4-gateway``), so the VM's PID 1 can turn
kernel command-line words (``ipv4=...``) into the same options.

Any error in flags, config or zone files: one line on stderr, exit status 2,
before a device is touched.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import signal
import sys
from pathlib import Path
from typing import NoReturn

from unikernel import config as config_mod
from unikernel.config import Appliance, ConfigError, yes_or_no

EXIT_OK, EXIT_USAGE = 0, 2


class UsageError(Exception):
    """A bad command line; the message is the one line printed."""


def _interface(text: str) -> str:
    try:
        ipaddress.IPv4Interface(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _address_or_none(text: str) -> str:
    if text.lower() in ("", "none", "off"):
        return "none"
    try:
        ipaddress.IPv4Address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and an exception, not usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unikernel", description="The DNS appliance (unix target).")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    serve = commands.add_parser("serve", help="serve DNS on a tap device (or, with --packet, a NIC)")
    _add_serve_options(serve)
    serve.set_defaults(func=run_serve)
    check = commands.add_parser("check", help="check the declaration and every file it names, serve nothing")
    _add_serve_options(check)
    check.set_defaults(func=run_check)

    # `dig` takes its own options (unikernel/dig.py); main() hands them over whole
    commands.add_parser("dig", help="query a DNS server through our own stack (see: dig --help)")
    return parser


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    """serve's options (check takes the same: it checks what serve would serve)."""
    serve.add_argument("--config", metavar="FILE", help="the appliance declaration (default: config.py)")
    serve.add_argument("--tap", help="tap device to attach to (created when missing)")
    serve.add_argument("--ipv4", metavar="ADDR/PREFIX", type=_interface, help="our address, e.g. 192.168.1.2/24")
    serve.add_argument("--ipv4-gateway", metavar="ADDR", type=_address_or_none,
                       help="default gateway ('none' for none)")
    serve.add_argument("--zone", "--zones", dest="zones", action="append", metavar="FILE",
                       help="zone file (RFC 1035 master format); repeat for several; replaces config.py's")
    serve.add_argument("--port", type=int, help="DNS port (default 53)")
    serve.add_argument("--mtu", type=int)
    serve.add_argument("--mac", metavar="XX:XX:XX:XX:XX:XX")
    serve.add_argument("--log-queries", action="store_true", default=None, help="log every query")
    serve.add_argument("--pcap", metavar="FILE", help="write every frame to a pcap file")
    # forwarder, cache, hosts overrides (unikernel/resolver/forwarder.py, cache.py, sources/hosts.py)
    serve.add_argument("--forward", action="append", metavar="ADDR[:PORT]|tls://ADDR[:PORT]#NAME",
                       help="upstream resolver for what no local data answers; repeat for several. "
                            "tls://: DNS over TLS (port 853 by default), the certificate verified for NAME")
    serve.add_argument("--tls-ca", metavar="FILE",
                       help="PEM bundle that tls:// upstreams' certificates must chain to "
                            "(default: Debian's ca-certificates bundle)")
    serve.add_argument("--dot-cert", metavar="FILE", help="certificate chain (PEM) to serve DNS over TLS on 853")
    serve.add_argument("--dot-key", metavar="FILE", help="the private key (PEM) for --dot-cert")
    serve.add_argument("--hosts", action="append", metavar="FILE", type=lambda v: str(Path(v).resolve()),
                       help="/etc/hosts-format overrides (A/AAAA and PTR); repeat for several")
    serve.add_argument("--allow", action="append", metavar="CIDR",
                       help="clients that may use forwarding and the cache (default: our own subnet)")
    serve.add_argument("--bogus-nxdomain", action="append", metavar="ADDR",
                       help="answers carrying this address become NXDOMAIN (as dnsmasq's option)")
    serve.add_argument("--no-0x20", dest="randomize_case", action="store_false", default=None,
                       help="do not randomise the letter case of upstream queries")
    serve.add_argument("--randomize-case", nargs="?", const=True, type=yes_or_no, metavar="yes|no",
                       help="0x20 letter-case randomisation of upstream queries (default yes)")
    serve.add_argument("--serve-stale", nargs="?", const=True, type=yes_or_no, metavar="yes|no",
                       help="give expired cached answers while no upstream answers (RFC 8767)")
    serve.add_argument("--cache-size", type=int, metavar="N", help="most answers kept in the cache")
    serve.add_argument("--trust-anchor", dest="trust_anchors", action="append", metavar="FILE",
                       type=lambda v: str(Path(v).resolve()),
                       help="DNSSEC trust anchors (DS or DNSKEY records, zone-file format) replacing the "
                            "root's built-in ones; repeat for several")
    serve.add_argument("--dnssec", nargs="?", const=True, type=yes_or_no, metavar="yes|no",
                       help="validate forwarded answers with DNSSEC (default yes)")
    _add_field_options(serve)


def _add_field_options(parser: argparse.ArgumentParser) -> None:
    """An option for every Appliance field not declared above, named after
    it (``cache_size`` -> ``--cache-size``), so config.py and the command line
    never drift apart. Lists take the option repeatedly or comma-separated;
    booleans take ``--x``, ``--x=yes`` or ``--x=no``."""
    declared = {action.dest for action in parser._actions}
    for f in dataclasses.fields(Appliance):
        if f.name in declared or f.name == "base":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        if kind.startswith("list"):
            parser.add_argument(flag, dest=f.name, action="append", metavar="VALUE",
                                help=f"{f.name} (repeat, or separate with commas)")
        elif kind == "bool":
            parser.add_argument(flag, dest=f.name, nargs="?", const=True, type=yes_or_no, metavar="yes|no")
        elif kind == "int":
            parser.add_argument(flag, dest=f.name, type=int)
        else:
            parser.add_argument(flag, dest=f.name)


# Options that are not Appliance fields, or are handled apart.
_NOT_FIELDS = {"command", "func", "config", "pcap"}


def parse_serve(argv: list[str], appliance: Appliance | None = None) -> Appliance:
    """The appliance that ``serve argv`` means: ``appliance`` (or the one in
    ``--config`` / config.py) with the flags given overriding it."""
    args = build_parser().parse_args(["serve", *argv])
    return _appliance_of(args, appliance)


def _appliance_of(args: argparse.Namespace, appliance: Appliance | None) -> Appliance:
    if appliance is None or args.config:
        appliance = config_mod.load(args.config) if args.config else config_mod.load()
    changes = {}
    for name, value in vars(args).items():
        if name in _NOT_FIELDS or value is None:
            continue
        if isinstance(value, list):
            value = [item for v in value for item in (v.split(",") if name != "zones" else [v]) if item]
            if value == ["none"]:       # `--forward none`: clear what config.py declares
                value = []
        if name in ("zones", "hosts", "blocklist", "allowlist"):
            # files named on the command line are relative to where we run
            value = [str(Path(v).resolve()) for v in value]
        if name in ("tls_ca", "dot_cert", "dot_key"):
            value = str(Path(value).resolve())
        if name == "ipv4_gateway" and value == "none":
            value = None
        changes[name] = value
    return appliance.replace(**changes)


def run_serve(args: argparse.Namespace) -> int:
    from unikernel import main as main_mod

    appliance = _appliance_of(args, None)
    loaded = main_mod.check(appliance)       # zone files, MAC... before touching a device
    if appliance.log_queries:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    else:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    from netstack.link import Link

    link: Link
    if appliance.packet:
        from netstack.link.packet import PacketLink
        try:
            link = PacketLink(appliance.packet, mtu=appliance.mtu, rings=appliance.packet_rings)
        except OSError as e:
            raise ConfigError(f"interface {appliance.packet} (AF_PACKET): {e}") from None
    else:
        from netstack.link.tap import TapLink
        try:
            link = TapLink(appliance.tap, mtu=appliance.mtu)
        except (OSError, ValueError) as e:
            raise ConfigError(f"tap {appliance.tap}: {e}") from None
    if args.pcap:
        from netstack.link.pcap import PcapTee
        link = PcapTee(link, args.pcap)
    return asyncio.run(_serve_until_signal(appliance, link, loaded))


def run_check(args: argparse.Namespace) -> int:
    """What serve would serve, checked and described; exit 2 (by main) at
    the first error, naming its file and line."""
    from unikernel import main as main_mod

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    appliance = _appliance_of(args, None)
    for line in main_mod.describe(appliance, main_mod.check(appliance)):
        print(line)
    print("ok")
    return EXIT_OK


async def _serve_until_signal(appliance: Appliance, link, loaded) -> int:
    from unikernel import main as main_mod

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await main_mod.serve(appliance, link, loaded=loaded, stop=stop, ready=lambda line: print(line, flush=True))
    print("stopped", flush=True)
    return EXIT_OK


def run_dig(argv: list[str]) -> int:
    try:
        from unikernel import dig as dig_mod
    except ImportError as e:
        raise UsageError(f"unikernel dig: not available in this build ({e})") from None
    parser = _Parser(prog="unikernel dig", description="Resolve a name through our own stack.")
    dig_mod.add_arguments(parser)
    return dig_mod.run(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv[:1] == ["dig"]:
            return run_dig(argv[1:])
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            raise UsageError("unikernel: a command is needed: serve, check or dig")
        return args.func(args)
    except (UsageError, ConfigError) as e:
        print(_one_line(str(e)), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _one_line(message: str) -> str:
    return " ".join(message.split())
