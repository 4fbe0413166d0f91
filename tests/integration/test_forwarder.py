"""The forwarder end to end: our stack on a tap in a namespace, a real upstream
(a small dnspython server this test runs on the tap's host side, counting the
queries it gets), and real clients (dig, glibc's getaddrinfo); our dig client's tests are in
test_dig.py, on the same network.

    namespace:  tap0 host side 192.0.2.1/24 (+ .3, .4)     tap1 host side 198.51.100.1/24
                upstream A 192.0.2.1:53, upstream B 192.0.2.3:53 (UDP and TCP)
    appliance:  192.0.2.2/24 on tap0 (in this process, clock injected)
    dig client: 198.51.100.2/24 on tap1, routed by the namespace's kernel
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.netns import PYTHON as PY
from tests.netns import REPO, Namespace, needs_root, unix_target

pytestmark = [needs_root, pytest.mark.root]

APPLIANCE = "192.0.2.2"
UP_A, UP_B, FORGER = "192.0.2.1", "192.0.2.3", "192.0.2.4"
SOA = "example.com. 3600 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 120"
RECORDS = {
    ("www.example.com.", "A"): ["www.example.com. 300 IN A 192.0.2.80"],
    ("mail.example.com.", "A"): ["mail.example.com. 60 IN A 192.0.2.25"],
    ("example.com.", "MX"): ["example.com. 300 IN MX 10 mail.example.com."],
    ("big.example.com.", "TXT"): ["big.example.com. 300 IN TXT " + " ".join(f'"{i:02d}' + "x" * 200 + '"' for i in range(12))],
}
HOSTS = "192.0.2.10 printer.lan printer\n192.0.2.11 nas.lan\n"
ZONE = """$ORIGIN corp.example.
$TTL 300
@    IN SOA ns.corp.example. host.corp.example. 1 7200 900 1209600 60
@    IN NS  ns.corp.example.
ns   IN A   192.0.2.2
intranet IN A 192.0.2.30
"""


# -- the upstream the test runs ------------------------------------------------------
class Upstream:
    """A dnspython DNS server on UDP and TCP inside the namespace, in threads.
    Modes: ``alive`` (else silent), ``wildcard`` (A answers for every unknown
    name), ``forge`` (forged replies sent before the real one)."""

    def __init__(self, ns: Namespace, address: str, *, forger: str | None = None) -> None:
        self.address = address
        self.queries: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.alive, self.wildcard, self.forge = True, None, False
        self.stopping = threading.Event()
        with ns.entered():
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((address, 53))
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((address, 53))
            self.tcp.listen(8)
            self.wrong_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.wrong_port.bind((address, 54))
            self.wrong_address = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if forger:
                self.wrong_address.bind((forger, 53))
        for sock in (self.udp, self.tcp):
            sock.settimeout(0.1)
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def reset(self) -> None:
        with self.lock:
            self.queries.clear()
        self.alive, self.wildcard, self.forge = True, None, False

    def asked(self, name: str, rdtype: str | None = None) -> int:
        with self.lock:
            return sum(1 for n, t, _ in self.queries if n == name and (rdtype is None or t == rdtype))

    def close(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(2)
        for s in (self.udp, self.tcp, self.wrong_port, self.wrong_address):
            s.close()

    def answer(self, wire: bytes, transport: str) -> dns.message.Message | None:
        query = dns.message.from_wire(wire)
        q = query.question[0]
        name, rdtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        with self.lock:
            self.queries.append((name, rdtype, transport))
        if not self.alive:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        found = RECORDS.get((name, rdtype))
        if found:
            response.answer = [_owned(dns.rrset.from_text(*_split(t)), q.name) for t in found]
        elif self.wildcard and rdtype == "A" and not any(n == name for n, _ in RECORDS):
            response.answer = [dns.rrset.from_text(q.name, 60, "IN", "A", self.wildcard)]
        elif name.endswith("example.com.") and any(n == name for n, _ in RECORDS):
            response.authority = [dns.rrset.from_text(*_split(SOA))]
        elif name == ".":
            pass
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority = [dns.rrset.from_text(*_split(SOA))]
        return response

    def _serve_udp(self) -> None:
        while not self.stopping.is_set():
            try:
                wire, peer = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                response = self.answer(wire, "udp")
            except Exception:
                continue
            if response is None:
                continue
            query = dns.message.from_wire(wire)
            limit = max(512, query.payload) if query.edns >= 0 else 512
            out = response.to_wire(max_size=65535)
            if len(out) > limit:
                response.answer = []
                response.flags |= dns.flags.TC
                out = response.to_wire(max_size=65535)
            if self.forge:
                self._send_forged(out, peer)
            self.udp.sendto(out, peer)

    def _send_forged(self, real: bytes, peer) -> None:
        fake = dns.message.from_wire(real)
        if fake.answer:
            fake.answer = [dns.rrset.from_text(fake.answer[0].name, 300, "IN", "A", "203.0.113.66")]
        forged = fake.to_wire()
        wrong_id = struct.pack("!H", struct.unpack_from("!H", forged)[0] ^ 0x5A5A) + forged[2:]
        other = dns.message.make_query("other.example.com.", "A")
        other.id = fake.id
        wrong_question = dns.message.make_response(other).to_wire()
        self.udp.sendto(wrong_id, peer)
        self.wrong_port.sendto(forged, peer)
        self.wrong_address.sendto(forged, peer)
        self.udp.sendto(wrong_question, peer)

    def _serve_tcp(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(3)
                try:
                    length = struct.unpack("!H", _recv_exactly(conn, 2))[0]
                    response = self.answer(_recv_exactly(conn, length), "tcp")
                    if response is not None:
                        out = response.to_wire(max_size=65535)
                        conn.sendall(struct.pack("!H", len(out)) + out)
                except (OSError, EOFError):
                    continue


def _recv_exactly(conn, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _split(text: str):
    name, ttl, cls, typ, rdata = text.split(None, 4)
    return name, int(ttl), cls, typ, rdata


def _owned(rrset, name):
    """The rrset owned by the question's name as asked (keeps the 0x20 case,
    as a real server does by compressing against the question)."""
    out = dns.rrset.RRset(name, rrset.rdclass, rrset.rdtype)
    out.update(rrset)
    out.ttl = rrset.ttl
    return out


# -- the appliance, in this process, with its clock injected ---------------------------
class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class Appliance:
    """``unikernel.main.serve`` on tap0 in a thread of this process."""

    def __init__(self, ns: Namespace, tmp: Path, **settings) -> None:
        from unikernel.config import Appliance as Declaration
        (tmp / "hosts").write_text(HOSTS)
        (tmp / "corp.zone").write_text(ZONE)
        defaults = dict(tap="tap0", ipv4=f"{APPLIANCE}/24", ipv4_gateway=UP_A,
                        zones=[str(tmp / "corp.zone")], hosts=[str(tmp / "hosts")],
                        forward=[f"{UP_A}:53"], base=tmp,
                        dnssec=False)     # the test's upstream is unsigned (tests/integration/test_dnssec_forwarder.py validates)
        defaults.update(settings)
        self.declaration = Declaration(**defaults)
        self.ns = ns
        self.clock = Clock()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stack = None

    def __enter__(self) -> Appliance:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(15):
            raise RuntimeError(f"appliance did not start: {self.error!r}")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surfaced by __enter__
            self.error = e
            self.ready.set()

    async def _main(self) -> None:
        import unikernel.main as main_mod
        from netstack.link.tap import TapLink
        from netstack.stack import Stack

        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        with self.ns.entered():
            link = TapLink(self.declaration.tap)
        real_stack = Stack.__init__

        def keep(stack_self, *a, **kw):       # remember the stack to read its counters
            real_stack(stack_self, *a, **kw)
            self.stack = stack_self
        Stack.__init__ = keep
        try:
            await main_mod.serve(self.declaration, link, stop=self.stop,
                                 ready=lambda line: self.ready.set(), clock=self.clock)
        finally:
            Stack.__init__ = real_stack

    @property
    def counters(self):
        return self.stack.counters


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    with Namespace("fwd") as ns:
        ns.add_tap("tap0", f"{UP_A}/24")
        ns.ip("addr", "add", f"{UP_B}/24", "dev", "tap0")
        ns.ip("addr", "add", f"{FORGER}/24", "dev", "tap0")
        ns.add_tap("tap1", "198.51.100.1/24")
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
        a, b = Upstream(ns, UP_A, forger=FORGER), Upstream(ns, UP_B)
        try:
            yield ns, a, b
        finally:
            a.close()
            b.close()


@pytest.fixture
def upstreams(net):
    ns, a, b = net
    a.reset()
    b.reset()
    return a, b


def dig(ns: Namespace, *args: str, server: str = APPLIANCE) -> dns.message.Message | None:
    """Real dig; its reply parsed back from +qr-less +nocmd output is fiddly, so
    we ask dig for the raw answer with +short where enough, else parse sections
    with dnspython from dig's presentation via ``dns.message.from_text``."""
    out = ns.run("dig", f"@{server}", "+time=6", "+tries=1", "+nocmd", "+nostats", "+noquestion", *args)
    if "connection timed out" in out.stdout or "no servers could be reached" in out.stdout:
        return None
    return _parse_dig(out.stdout)


def _parse_dig(text: str) -> dns.message.Message:
    """dig's output turned back into a message (header flags, rcode, sections)."""
    lines = text.splitlines()
    header = next(l for l in lines if "->>HEADER<<-" in l)
    flags_line = next(l for l in lines if l.startswith(";; flags:"))
    rcode = header.split("status: ")[1].split(",")[0]
    flags = flags_line.split(";; flags: ")[1].split(";")[0].split()
    qid = int(header.split("id: ")[1])
    out = [f"id {qid}", "opcode QUERY", f"rcode {rcode}", "flags " + " ".join(f.upper() for f in flags)]
    section = None
    for line in lines:
        if line.startswith(";; ANSWER SECTION"):
            section = "ANSWER"
            out.append(";ANSWER")
        elif line.startswith(";; AUTHORITY SECTION"):
            out.append(";AUTHORITY")
            section = "AUTHORITY"
        elif line.startswith(";; ADDITIONAL SECTION"):
            out.append(";ADDITIONAL")
            section = "ADDITIONAL"
        elif line.startswith(";") or not line.strip():
            if not line.strip():
                section = None
            continue
        elif section:
            out.append(line)
    return dns.message.from_text("\n".join(out))


def addresses(message) -> list[str]:
    return [rd.address for r in message.answer if r.rdtype in (1, 28) for rd in r]


# -- the tests ----------------------------------------------------------------------------
def test_forwarded_answers_and_cache(net, upstreams, tmp_path):
    ns, a, _ = net
    with Appliance(ns, tmp_path) as app:
        first = dig(ns, "www.example.com", "A")
        assert first is not None and addresses(first) == ["192.0.2.80"]
        assert first.flags & dns.flags.RA and not first.flags & dns.flags.AA
        assert a.asked("www.example.com.", "A") == 1
        # a cache hit: answered without the upstream, on the fast path
        fast_before = app.counters["cache.fast.hit"]
        again = dig(ns, "WWW.Example.COM", "A")
        assert addresses(again) == ["192.0.2.80"] and a.asked("www.example.com.", "A") == 1
        assert app.counters["cache.fast.hit"] == fast_before + 1
        assert again.answer[0].name.to_text() == "WWW.Example.COM."        # the client's case echoed
        # TTLs count down with the injected clock
        app.clock.offset += 100
        later = dig(ns, "www.example.com", "A")
        assert 195 <= later.answer[0].ttl <= 200
        app.clock.offset += 201
        dig(ns, "www.example.com", "A")
        assert a.asked("www.example.com.", "A") == 2                       # expired: asked again
        # other types, via the slow path of the cache (no EDNS: +noedns)
        mx = dig(ns, "example.com", "MX", "+noedns")
        assert mx.answer[0][0].exchange.to_text() == "mail.example.com."
        dig(ns, "example.com", "MX", "+noedns")
        assert a.asked("example.com.", "MX") == 1


def test_0x20_reaches_the_upstream(net, upstreams, tmp_path):
    ns, a, _ = net
    raw: list[str] = []
    real_answer = a.answer

    def spy(wire, transport):
        raw.append(dns.message.from_wire(wire).question[0].name.to_text())
        return real_answer(wire, transport)
    a.answer = spy
    try:
        with Appliance(ns, tmp_path):
            assert addresses(dig(ns, "www.example.com")) == ["192.0.2.80"]
    finally:
        a.answer = real_answer
    names = [n for n in raw if n.lower() == "www.example.com."]
    assert names and names[0] != "www.example.com."         # letter case was randomised


def test_negative_caching(net, upstreams, tmp_path):
    ns, a, _ = net
    with Appliance(ns, tmp_path) as app:
        nx = dig(ns, "nope.example.com")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].ttl == 120     # min(SOA TTL, MINIMUM)
        app.clock.offset += 60
        again = dig(ns, "nope.example.com")
        assert again.rcode() == dns.rcode.NXDOMAIN and 55 <= again.authority[0].ttl <= 60
        assert a.asked("nope.example.com.") == 1
        nodata = dig(ns, "www.example.com", "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        dig(ns, "www.example.com", "AAAA")
        assert a.asked("www.example.com.", "AAAA") == 1


def test_dead_upstream_gives_servfail_within_the_deadline(net, upstreams, tmp_path):
    ns, a, _ = net
    a.alive = False
    with Appliance(ns, tmp_path):
        reply = dig(ns, "www.example.com")        # dig gives up after 6 s; our deadline is 4 s
        assert reply is not None, "the client was left to time out"
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert a.asked("www.example.com.") >= 2      # retried before giving up


def test_failover_between_two_upstreams(net, upstreams, tmp_path):
    ns, a, b = net
    a.alive = False
    with Appliance(ns, tmp_path, forward=[f"{UP_A}:53", f"{UP_B}:53"]) as app:
        assert addresses(dig(ns, "www.example.com")) == ["192.0.2.80"]
        assert addresses(dig(ns, "mail.example.com")) == ["192.0.2.25"]
        assert b.asked("www.example.com.") == 1 and b.asked("mail.example.com.") == 1
        assert app.counters["forward.upstream.marked_down"] == 1
        asked_a = a.asked("example.com.", "MX")
        mx = dig(ns, "example.com", "MX")
        assert mx.answer and a.asked("example.com.", "MX") == asked_a      # a down upstream is skipped
        # it comes back: the health probe (every second) sees it answer
        a.alive = True
        deadline = time.monotonic() + 10
        while app.counters["forward.upstream.marked_up"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert app.counters["forward.upstream.marked_up"] == 1


def test_forged_replies_are_ignored(net, upstreams, tmp_path):
    ns, a, _ = net
    a.forge = True
    with Appliance(ns, tmp_path) as app:
        reply = dig(ns, "www.example.com")
        assert addresses(reply) == ["192.0.2.80"]
        c = app.counters
        assert c["stub.reply.bad_id.drop"] >= 1
        assert c["stub.reply.bad_port.drop"] >= 1
        assert c["stub.reply.bad_address.drop"] >= 1
        assert c["stub.reply.bad_question.drop"] >= 1


def test_nxdomain_wildcarding_is_undone(net, upstreams, tmp_path):
    ns, a, _ = net
    a.wildcard = "198.51.100.77"
    with Appliance(ns, tmp_path) as app:
        deadline = time.monotonic() + 10
        while app.counters["forward.wildcard.detected"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.counters["forward.wildcard.detected"] >= 1
        typo = dig(ns, "wwww.example.com")
        assert typo.rcode() == dns.rcode.NXDOMAIN and not typo.answer
        assert addresses(dig(ns, "www.example.com")) == ["192.0.2.80"]


def test_bogus_nxdomain_option(net, upstreams, tmp_path):
    ns, a, _ = net
    with Appliance(ns, tmp_path, bogus_nxdomain=["192.0.2.25"]):
        assert dig(ns, "mail.example.com").rcode() == dns.rcode.NXDOMAIN
        assert addresses(dig(ns, "www.example.com")) == ["192.0.2.80"]


def test_local_names_never_reach_the_upstream(net, upstreams, tmp_path):
    ns, a, _ = net
    with Appliance(ns, tmp_path):
        printer = dig(ns, "printer.lan")
        assert addresses(printer) == ["192.0.2.10"] and printer.flags & dns.flags.AA
        ptr = dig(ns, "-x", "192.0.2.10")
        assert ptr.answer[0][0].target.to_text() == "printer.lan."
        assert dig(ns, "intranet.corp.example").answer[0][0].address == "192.0.2.30"
        assert dig(ns, "nope.corp.example").rcode() == dns.rcode.NXDOMAIN      # zone's NXDOMAIN is final
        assert dig(ns, "laptop.local").rcode() == dns.rcode.NXDOMAIN
        assert addresses(dig(ns, "localhost")) == ["127.0.0.1"]
        assert dig(ns, "-x", "10.1.2.3").rcode() == dns.rcode.NXDOMAIN
        with a.lock:
            names = {n for n, _, _ in a.queries}
        leaked = names & {"printer.lan.", "10.2.1.192.in-addr.arpa.", "intranet.corp.example.",
                          "nope.corp.example.", "laptop.local.", "localhost.", "3.2.1.10.in-addr.arpa."}
        assert not leaked


def test_refused_outside_the_allowed_networks(net, upstreams, tmp_path):
    ns, a, _ = net
    with Appliance(ns, tmp_path, allow=["198.51.100.0/24"]) as app:
        refused = dig(ns, "www.example.com")
        assert refused.rcode() == dns.rcode.REFUSED and a.asked("www.example.com.") == 0
        # local data is still answered to everyone
        assert addresses(dig(ns, "printer.lan")) == ["192.0.2.10"]
    # and cached answers are not given to outsiders either
    with Appliance(ns, tmp_path, allow=[f"{UP_A}/32"]) as app:
        assert addresses(dig(ns, "www.example.com")) == ["192.0.2.80"]
        out = ns.run("dig", f"@{APPLIANCE}", "-b", UP_B, "+time=3", "+tries=1", "www.example.com")
        assert "status: REFUSED" in out.stdout
        assert app.counters["cache.fast.refused"] >= 1


def test_truncated_upstream_reply_is_retried_over_tcp(net, upstreams, tmp_path):
    ns, a, _ = net
    with Appliance(ns, tmp_path):
        out = ns.run("dig", f"@{APPLIANCE}", "+time=6", "+tries=1", "big.example.com", "TXT")
        assert "status: NOERROR" in out.stdout
        assert "(TCP)" in out.stdout                             # the client retried over our TCP
        assert all(f'"{i:02d}' + "x" * 200 + '"' in out.stdout for i in range(12))   # every string
        with a.lock:
            transports = [t for n, _, t in a.queries if n == "big.example.com."]
        assert "tcp" in transports                               # we asked the upstream again over TCP


def test_getaddrinfo_resolves_through_the_appliance(net, upstreams, tmp_path):
    ns, a, _ = net
    ns.resolv_conf(f"nameserver {APPLIANCE}\noptions timeout:3 attempts:1\n")
    with Appliance(ns, tmp_path):
        code = ("import socket; print(sorted({ai[4][0] for ai in "
                "socket.getaddrinfo('www.example.com', 80, socket.AF_INET)}))")
        out = ns.run(PY, "-c", code)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "['192.0.2.80']"
        hosts = ns.run("getent", "ahostsv4", "printer.lan")
        assert hosts.returncode == 0 and "192.0.2.10" in hosts.stdout


def test_serve_command_line_forwards(net, upstreams, tmp_path):
    """The unix target as users run it: flags, not a declaration object."""
    ns, a, _ = net
    (tmp_path / "hosts").write_text(HOSTS)
    proc = ns.serve("--hosts", str(tmp_path / "hosts"), "--no-0x20", "--dnssec", "no",
                    ipv4=f"{APPLIANCE}/24", gateway=UP_A, forward=f"{UP_A}:53", ready=None)
    try:
        line = ""
        deadline = time.monotonic() + 20
        while "ready" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "ready" in line, line
        assert addresses(dig(ns, "www.example.com")) == ["192.0.2.80"]
        assert addresses(dig(ns, "nas.lan")) == ["192.0.2.11"]
        with a.lock:
            names = [n for n, _, _ in a.queries]
        assert "www.example.com." in names
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_stale_while_upstreams_are_down(net, upstreams, tmp_path):
    ns, a, _ = net
    with Appliance(ns, tmp_path, serve_stale=True, forward=[f"{UP_A}:53"]) as app:
        assert addresses(dig(ns, "www.example.com")) == ["192.0.2.80"]
        a.alive = False
        app.clock.offset += 400                      # the 300 s TTL has run out
        stale = dig(ns, "www.example.com")
        assert addresses(stale) == ["192.0.2.80"] and stale.answer[0].ttl == 30    # RFC 8767's stale TTL
        assert app.counters["forward.stale.served_early"] + app.counters["forward.stale.served"] == 1


@pytest.mark.parametrize("flags,message", [
    (["--forward", "not-an-address"], "bad upstream 'not-an-address'"),
    (["--forward", UP_A, "--allow", "10.0.0.0/33"], "10.0.0.0/33"),
    (["--hosts", "HOSTS"], "hosts:2: bad address '192.0.2.300'"),
    (["--forward", APPLIANCE], "cannot forward to itself"),
    (["--forward", "127.0.0.1:5353"], "cannot forward to itself or to a loopback"),
])
def test_serve_rejects_bad_forwarder_settings(net, tmp_path, flags, message):
    ns, _, _ = net
    bad_hosts = tmp_path / "hosts"
    bad_hosts.write_text("192.0.2.10 ok.lan\n192.0.2.300 bad.lan\n")
    flags = [str(bad_hosts) if f == "HOSTS" else f for f in flags]
    out = ns.run(*unix_target(*flags, tap="tap9", ipv4=f"{APPLIANCE}/24", gateway=UP_A, forward=None),
                 cwd=str(REPO), timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
