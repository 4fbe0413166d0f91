"""The dig-like client (the tutorial's part 1): resolve a name through our stack.

    python -m unikernel dig --tap TAP --ipv4 ADDR/PREFIX [--ipv4-gateway GW] @SERVER NAME [TYPE] [+short] ...
    python -m unikernel dig --tap TAP --ipv4 ADDR/PREFIX @SERVER -x ADDR

It brings up our own stack on the tap (ARP, IPv4, UDP; TCP for truncated
replies once the stack has it), sends the question with the same stub resolver
the forwarder uses (random ID and port, strict reply matching), and prints the
reply the way dig does. Exit status as dig's: 0 for any reply (NXDOMAIN too),
9 when no server answered; 2 for bad arguments (this project's convention).

Query options, as dig spells them: ``+short``, ``+[no]rec[urse]``,
``+[no]edns``, ``+dnssec``, ``+bufsize=N``, ``+time=S``, ``+tries=N``,
``+tcp`` (ask over TCP), ``+ignore`` (keep a truncated UDP reply instead of
asking again over TCP).
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename

from unikernel.resolver.stub import DEFAULT_PAYLOAD, StubError, StubResolver, StubTimeout

EXIT_OK, EXIT_USAGE, EXIT_NO_REPLY = 0, 2, 9


class UsageError(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tap", default="tap0", help="tap device to attach to (created if missing)")
    parser.add_argument("--ipv4", required=True, metavar="ADDR/PREFIX", help="the client's own address")
    parser.add_argument("--ipv4-gateway", metavar="ADDR", help="gateway for servers off the subnet")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("-x", dest="reverse", metavar="ADDR", help="reverse lookup of an IPv4/IPv6 address")
    parser.add_argument("-p", dest="port", type=int, default=53, help="server port (default 53)")
    parser.add_argument("words", nargs="*", metavar="@SERVER NAME [TYPE] [+OPTION]",
                        help="as dig: @server, name, type, +short, +norecurse, +dnssec, ...")


class _Options:
    def __init__(self) -> None:
        self.server: str | None = None
        self.name: str | None = None
        self.rdtype: int | None = None
        self.short = False
        self.recurse = True
        self.edns = True
        self.dnssec = False
        self.bufsize = DEFAULT_PAYLOAD
        self.timeout = 5.0
        self.tries = 3
        self.ignore_tc = False
        self.tcp = False


def _parse_words(words: list[str], reverse: str | None) -> _Options:
    o = _Options()
    for word in words:
        if word.startswith("@"):
            o.server = word[1:]
        elif word.startswith("+"):
            _query_option(o, word[1:])
        elif o.name is not None and o.rdtype is None and _rdtype(word) is not None:
            o.rdtype = _rdtype(word)
        elif o.name is None:
            if _rdtype(word) is not None and word.upper() == word and reverse is None:
                o.rdtype = _rdtype(word)       # "dig MX example.com" is allowed too
            else:
                o.name = word
        elif word.upper() == "IN":
            continue
        else:
            raise UsageError(f"unexpected argument {word!r}")
    if reverse is not None:
        try:
            o.name = dns.reversename.from_address(reverse).to_text()
        except (ValueError, dns.exception.SyntaxError):
            raise UsageError(f"-x needs an IPv4 or IPv6 address, not {reverse!r}") from None
        o.rdtype = o.rdtype or dns.rdatatype.PTR
    if o.name is None:
        o.name = "."
        o.rdtype = o.rdtype or dns.rdatatype.NS
    o.rdtype = o.rdtype or dns.rdatatype.A
    return o


def _rdtype(word: str) -> int | None:
    try:
        value = dns.rdatatype.from_text(word)
    except (dns.rdatatype.UnknownRdatatype, ValueError):
        return None
    return None if value == dns.rdatatype.NONE else value


def _query_option(o: _Options, word: str) -> None:
    negated = word.startswith("no")
    base = word[2:] if negated else word
    key, _, value = base.partition("=")
    try:
        if key == "short":
            o.short = not negated
        elif key in ("rec", "recurse"):
            o.recurse = not negated
        elif key == "edns":
            o.edns = not negated
        elif key == "dnssec":
            o.dnssec = not negated
        elif key in ("bufsize", "buf"):
            o.bufsize = max(512, min(65535, int(value)))
        elif key == "time":
            o.timeout = max(1.0, float(value))
        elif key in ("tries", "retry"):
            o.tries = max(1, int(value) + (1 if key == "retry" else 0))
        elif key in ("tcp", "vc"):
            o.tcp = not negated
        elif key == "ignore":
            o.ignore_tc = not negated
        elif key in ("cmd", "comments", "question", "answer", "stats", "additional", "authority"):
            pass                    # display options we always show
        else:
            raise UsageError(f"unknown option +{word}")
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"bad value in +{word}") from None


def run(args: argparse.Namespace) -> int:
    try:
        options = _parse_words(list(args.words), args.reverse)
        interface = ipaddress.IPv4Interface(args.ipv4)
        gateway = ipaddress.IPv4Address(args.ipv4_gateway) if args.ipv4_gateway else None
        if options.server is None:
            if gateway is None:
                raise UsageError("no server: give @SERVER (or --ipv4-gateway, which is then asked)")
            options.server = str(gateway)
        server = ipaddress.IPv4Address(options.server)
        assert options.name is not None            # _parse_words defaults it to the root
        qname = dns.name.from_text(options.name)
        if not 0 < args.port < 65536:
            raise UsageError(f"port {args.port} out of range")
    except (UsageError, ValueError, dns.exception.DNSException) as e:
        print(f"dig: {e}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_dig(args, options, interface, gateway, server, qname))


async def _dig(args, o: _Options, interface, gateway, server: ipaddress.IPv4Address, qname) -> int:
    from netstack.link.tap import TapLink
    from netstack.stack import Stack

    try:
        link = TapLink(args.tap, mtu=args.mtu)
    except OSError as e:
        print(f"dig: cannot open tap {args.tap}: {e}", file=sys.stderr)
        return EXIT_USAGE
    stack = Stack(link, interface, gateway, mtu=args.mtu)
    await stack.start()
    try:
        stub = StubResolver(stack)
        command = " ".join(["@" + str(server), *(w for w in args.words if not w.startswith("@"))])
        if args.reverse:
            command += f" -x {args.reverse}"
        assert o.rdtype is not None                # _parse_words defaults it (A, NS or PTR)
        for _ in range(o.tries):
            try:
                reply = await stub.query((int(server), args.port), qname, o.rdtype, timeout=o.timeout,
                                         rd=o.recurse, payload=o.bufsize if o.edns else None,
                                         do=o.dnssec, use_tcp=not o.ignore_tc, tcp_only=o.tcp)
            except StubTimeout:
                if not o.short:
                    print(f";; communications error to {server}#{args.port}: timed out")
                continue
            except StubError as e:
                if not o.short:
                    print(f";; communications error to {server}#{args.port}: {e}")
                continue
            if reply.transport == "tcp" and not o.tcp and not o.short:
                print(";; Truncated, retrying in TCP mode.")
            print(format_short(reply.message) if o.short else
                  format_reply(reply.message, command=command, server=f"{server}#{args.port}({server})",
                               transport=reply.transport.upper(), elapsed=reply.elapsed,
                               size=len(reply.wire)), end="")
            return EXIT_OK
        print(";; no servers could be reached")
        return EXIT_NO_REPLY
    finally:
        stack.close()


# -- dig's presentation ----------------------------------------------------------------
_FLAG_ORDER = [("qr", dns.flags.QR), ("aa", dns.flags.AA), ("tc", dns.flags.TC), ("rd", dns.flags.RD),
               ("ra", dns.flags.RA), ("ad", dns.flags.AD), ("cd", dns.flags.CD)]


def _owner_column(text: str, width: int = 24) -> str:
    """dig pads owners to a tab stop: column 24 in sections, 32 in the
    question; at least one tab."""
    return text + "\t" * max(1, (width - len(text) + 7) // 8)


def format_rrset(rrset) -> list[str]:
    owner = _owner_column(rrset.name.to_text())
    cls = dns.rdataclass.to_text(rrset.rdclass)
    typ = dns.rdatatype.to_text(rrset.rdtype)
    return [f"{owner}{rrset.ttl}\t{cls}\t{typ}\t{rd.to_text()}" for rd in rrset]


def format_short(message: dns.message.Message) -> str:
    return "".join(f"{rd.to_text()}\n" for rrset in message.answer for rd in rrset)


def format_reply(message: dns.message.Message, *, command: str, server: str, transport: str = "UDP",
                 elapsed: float = 0.0, size: int = 0, when: float | None = None) -> str:
    flags = " ".join(name for name, bit in _FLAG_ORDER if message.flags & bit)
    lines = [
        f"; <<>> unikernel dig <<>> {command}",
        ";; global options: +cmd",
        ";; Got answer:",
        f";; ->>HEADER<<- opcode: {dns.opcode.to_text(message.opcode())}, "
        f"status: {dns.rcode.to_text(message.rcode())}, id: {message.id}",
        f";; flags: {flags}; QUERY: {len(message.question)}, ANSWER: {sum(len(r) for r in message.answer)}, "
        f"AUTHORITY: {sum(len(r) for r in message.authority)}, "
        f"ADDITIONAL: {sum(len(r) for r in message.additional) + (1 if message.edns >= 0 else 0)}",
    ]
    if message.flags & dns.flags.RD and not message.flags & dns.flags.RA:
        lines.append(";; WARNING: recursion requested but not available")
    lines.append("")
    if message.edns >= 0:
        edns_flags = " do" if message.ednsflags & dns.flags.DO else ""
        lines += [";; OPT PSEUDOSECTION:",
                  f"; EDNS: version: {message.edns}, flags:{edns_flags}; udp: {message.payload}"]
    lines.append(";; QUESTION SECTION:")
    for q in message.question:
        lines.append(f"{_owner_column(';' + q.name.to_text(), 32)}{dns.rdataclass.to_text(q.rdclass)}\t"
                     f"{dns.rdatatype.to_text(q.rdtype)}")
    for title, section in (("ANSWER", message.answer), ("AUTHORITY", message.authority),
                           ("ADDITIONAL", message.additional)):
        if section:
            lines += ["", f";; {title} SECTION:"]
            for rrset in section:
                lines += format_rrset(rrset)
    when = time.time() if when is None else when
    lines += [
        "",
        f";; Query time: {int(elapsed * 1000)} msec",
        f";; SERVER: {server} ({transport})",
        f";; WHEN: {time.strftime('%a %b %d %H:%M:%S %Z %Y', time.localtime(when))}",
        f";; MSG SIZE  rcvd: {size}",
        "",
        "",
    ]
    return "\n".join(lines)
