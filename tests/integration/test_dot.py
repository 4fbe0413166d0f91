"""DNS over TLS end to end, in a namespace, against implementations that are
not ours (certificates made by openssl at test time):

    namespace:  tap0 host side 192.0.2.1/24
                NSD on 127.0.0.1:5300 (inside the namespace): the zone example.
                Unbound on 192.0.2.1:853 (DoT) and :53, resolving example. from NSD
    appliance:  192.0.2.2/24 on tap0 (unikernel.main.serve in this process),
                forwarding to tls://192.0.2.1#dot.test, serving DoT on 853

Serving: kdig +tls (several queries on one connection) and Python's ssl as
clients of the appliance's port 853. Upstream: answers come through Unbound's
DoT, a capture on the tap shows no packet to port 53 leaving the appliance,
and a wrong NAME or an untrusted CA gives SERVFAIL with, again, nothing in
plain text. Loss: 15% both ways by nftables.
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest
from scapy.layers.inet import TCP, UDP

from tests.netns import Namespace, exec_in, needs_root
from tests.nsd import nsd_conf
from tests.stackutil import serving, tap_link
from tests.tlscerts import make_pki, needs_openssl
from unikernel.config import Appliance

pytestmark = [needs_root, needs_openssl, pytest.mark.root]

HOST, APPLIANCE = "192.0.2.1", "192.0.2.2"
SECOND_HOST = "192.0.2.3"          # a second client address on the host side
NAME = "dot.test"

UPSTREAM_ZONE = textwrap.dedent("""
    $ORIGIN example.
    $TTL 300
    @       IN SOA  ns1 hostmaster 1 7200 900 1209600 300
            IN NS   ns1
    ns1     IN A    192.0.2.53
    www     IN A    192.0.2.80
    mail    IN A    192.0.2.25
""") + "".join(f"host{i} IN A 198.51.100.{i}\n" for i in range(20))

LOCAL_ZONE = textwrap.dedent("""
    $ORIGIN local.test.
    $TTL 300
    @       IN SOA  ns1 hostmaster 1 7200 900 1209600 300
            IN NS   ns1
    ns1     IN A    192.0.2.2
""") + "".join(f"host{i} IN A 203.0.113.{i}\n" for i in range(20))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), name=NAME, addresses=(HOST, APPLIANCE))


def unbound_conf(work: Path, pki) -> Path:
    conf = work / "unbound.conf"
    conf.write_text(textwrap.dedent(f"""
        server:
            interface: {HOST}@853
            interface: {HOST}@8853
            interface: {HOST}@53
            tls-port: 853
            tls-additional-port: 8853
            tls-service-key: "{pki.key}"
            tls-service-pem: "{pki.cert}"
            access-control: 0.0.0.0/0 allow
            do-not-query-localhost: no
            username: ""
            chroot: ""
            directory: "{work}"
            pidfile: "{work}/unbound.pid"
            use-syslog: no
            logfile: ""
            verbosity: 1
            module-config: "iterator"
            qname-minimisation: no
            num-threads: 1
        stub-zone:
            name: "example."
            stub-addr: 127.0.0.1@5300
        remote-control:
            control-enable: no
    """))
    return conf


def start_upstream(ns: Namespace, work: Path, pki) -> None:
    """NSD, then Unbound in front of it; returns once Unbound answers over TLS."""
    zone = work / "example.zone"
    zone.write_text(UPSTREAM_ZONE)
    ns.popen("nsd", "-d", "-c", str(nsd_conf(work, {"example.": zone}, address="127.0.0.1", port=5300)))
    ns.popen("unbound", "-d", "-c", str(unbound_conf(work, pki)))


async def wait_upstream(ns: Namespace, pki) -> None:
    for _ in range(50):
        rc, out = await exec_in(ns, "kdig", f"@{HOST}", "+tls", f"+tls-ca={pki.ca}", f"+tls-hostname={NAME}",
                                "+time=1", "+retry=0", "www.example", "A", timeout=10)
        if rc == 0 and "192.0.2.80" in out:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Unbound does not answer over TLS: {out}")


def with_appliance(tmp_path, pki, body, *, forward=None, tls_ca=None, lossy: int = 0, capture: bool = False):
    """Runs ``await body(ns)`` with the appliance on tap0 (serving local.test and DoT,
    forwarding to `forward`), NSD and Unbound upstream; returns (result, captured packets)."""
    local = tmp_path / "local.test.zone"
    local.write_text(LOCAL_ZONE)
    appliance = Appliance(tap="tap0", ipv4=f"{APPLIANCE}/24", ipv4_gateway=HOST, zones=[str(local)],
                          forward=forward or [], tls_ca=str(tls_ca or pki.ca),
                          dot_cert=str(pki.cert), dot_key=str(pki.key), allow=["192.0.2.0/24"],
                          dnssec=False)    # the upstream's zones are unsigned (validation: test_dnssec_*.py)
    with Namespace() as ns:
        link = tap_link(ns, lossy)
        start_upstream(ns, tmp_path, pki)
        pcap = tmp_path / "tap0.pcap"
        if capture:
            dump = ns.popen("tcpdump", "-i", "tap0", "-U", "--immediate-mode", "-n", "-Z", "root", "-w", str(pcap), "ip")

        async def main():
            await wait_upstream(ns, pki)
            return await serving(appliance, link, lambda: body(ns))

        result = asyncio.run(main())
        packets = []
        if capture:
            time.sleep(1)           # what the kernel holds for tcpdump is written before it stops
            dump.terminate()
            dump.wait(5)
            from scapy.utils import rdpcap
            packets = list(rdpcap(str(pcap)))
    return result, packets


def kdig(*args: str, pki) -> tuple[str, ...]:
    return ("kdig", f"@{APPLIANCE}", "+tls", f"+tls-ca={pki.ca}", f"+tls-hostname={NAME}", "+time=5",
            "+retry=2", *args)


needs_kdig = pytest.mark.skipif(shutil.which("kdig") is None, reason="needs kdig (knot-dnsutils)")
needs_servers = pytest.mark.skipif(shutil.which("unbound") is None or shutil.which("nsd") is None,
                                   reason="needs unbound and nsd")


@needs_kdig
@needs_servers
def test_kdig_over_tls_several_queries_on_one_connection(tmp_path, pki):
    async def body(ns):
        names = [f"host{i}.local.test" for i in range(5)]
        return await exec_in(ns, *kdig("+keepopen", *(a for n in names for a in (n, "A")), pki=pki), timeout=60)

    (rc, out), packets = with_appliance(tmp_path, pki, body, capture=True)
    assert rc == 0, out
    for i in range(5):
        assert f"203.0.113.{i}" in out, out
    assert out.count("status: NOERROR") == 5 and out.count("PADDING") == 5, out
    syns = [p for p in packets if TCP in p and p[TCP].dport == 853 and p[TCP].flags == "S"]
    assert len(syns) == 1, [p.summary() for p in syns]          # all five on one connection


PYTHON_CLIENT = textwrap.dedent("""
    import socket, ssl, struct, sys
    import dns.message
    context = ssl.create_default_context(cafile=sys.argv[1])
    queries = [dns.message.make_query(f"host{i}.local.test", "A", use_edns=0) for i in range(8)]
    queries.append(dns.message.make_query("host1.local.test", "A", use_edns=False))
    with socket.create_connection((sys.argv[2], 853), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=sys.argv[3]) as s:
            s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
            f = s.makefile("rb")
            for _ in queries:
                n = struct.unpack("!H", f.read(2))[0]
                wire = f.read(n)
                r = dns.message.from_wire(wire)
                print(r.id, dns.rcode.to_text(r.rcode()), len(wire), r.edns, r.answer[0][0].address, flush=True)
""")


@needs_servers
@pytest.mark.parametrize("lossy", [0, 15])
def test_pythons_ssl_pipelines_on_one_connection_and_answers_are_padded(tmp_path, pki, lossy):
    async def body(ns):
        return await exec_in(ns, sys.executable, "-c", PYTHON_CLIENT, str(pki.ca), APPLIANCE, NAME, timeout=120)

    (rc, out), _ = with_appliance(tmp_path, pki, body, lossy=lossy)
    assert rc == 0, out
    lines = [line.split() for line in out.splitlines()]
    assert len(lines) == 9, out
    for _id, rcode, size, edns, _address in lines[:8]:
        assert rcode == "NOERROR" and edns == "0" and int(size) % 468 == 0, out     # RFC 8467 block padding
    assert lines[8][3] == "-1" and int(lines[8][2]) % 468 != 0, out               # no EDNS: no padding
    assert sorted(line[4] for line in lines[:8]) == sorted(f"203.0.113.{i}" for i in range(8))


@needs_servers
def test_garbage_and_silent_clients_do_not_starve_a_real_one(tmp_path, pki):
    holder = textwrap.dedent("""
        import socket, sys, time
        # 24 silent handshakes, past the 16 the server runs at once; from two
        # addresses, since the stack takes at most 16 connections per client
        silent = [socket.create_connection((sys.argv[1], 853), timeout=5, source_address=(src, 0))
                  for src in sys.argv[2:] for _ in range(12)]
        junk = socket.create_connection((sys.argv[1], 853), timeout=5)
        junk.sendall(b"\\x16\\x03\\x01\\x00\\x05hello" + bytes(100))
        try:
            print("junk", junk.recv(100)[:1].hex() or "eof", flush=True)
        except ConnectionResetError:
            print("junk reset", flush=True)
        print("holding", flush=True)
        time.sleep(8)
    """)

    async def body(ns):
        ns.ip("addr", "add", f"{SECOND_HOST}/24", "dev", "tap0")
        held = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns.name, sys.executable, "-c", holder, APPLIANCE, HOST, SECOND_HOST,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        junk = (await asyncio.wait_for(held.stdout.readline(), 20)).decode()
        await asyncio.wait_for(held.stdout.readline(), 20)             # "holding": 24 handshakes pending
        answered = await exec_in(ns, sys.executable, "-c", PYTHON_CLIENT, str(pki.ca), APPLIANCE, NAME,
                                 timeout=30)
        held.kill()
        await held.wait()
        return junk, answered

    (junk, (rc, out)), _ = with_appliance(tmp_path, pki, body)
    assert junk.split()[1] in ("15", "eof", "reset"), junk     # a TLS alert (0x15), or the connection ends
    assert rc == 0 and len(out.splitlines()) == 9, out         # the real client got through meanwhile


def plain_dns_from_appliance(packets) -> list:
    """Packets the appliance sent to port 53, over UDP or TCP: there must be none."""
    return [p.summary() for p in packets
            if p.haslayer("IP") and p["IP"].src == APPLIANCE
            and ((UDP in p and p[UDP].dport == 53) or (TCP in p and p[TCP].dport == 53))]


def dig(*args: str) -> tuple[str, ...]:
    return ("dig", f"@{APPLIANCE}", "+time=3", "+tries=8", *args)     # 28% of UDP exchanges fail at 15% loss


@needs_servers
@pytest.mark.parametrize("lossy", [0, 15])
def test_forwarding_over_tls_to_unbound_and_nothing_in_plain_text(tmp_path, pki, lossy):
    async def body(ns):
        # the first query may wait for TCP's and TLS's handshakes over the lossy
        # link longer than a client's deadline: ask until one answer came (bounded)
        for _ in range(10):
            rc, out = await exec_in(ns, *dig("ns1.example", "A"), timeout=30)
            if "status: NOERROR" in out:
                break
        outs = []
        for name in ("www.example", "mail.example", "host3.example", "nonexistent.example"):
            outs.append(await exec_in(ns, *dig(name, "A"), timeout=30))
        return outs

    outs, packets = with_appliance(tmp_path, pki, body, forward=[f"tls://{HOST}#{NAME}"], lossy=lossy,
                                   capture=True)
    (rc1, www), (rc2, mail), (rc3, host3), (rc4, nx) = outs
    assert rc1 == 0 and "status: NOERROR" in www and "192.0.2.80" in www, www
    assert "192.0.2.25" in mail and "198.51.100.3" in host3, mail + host3
    assert "status: NXDOMAIN" in nx, nx
    assert plain_dns_from_appliance(packets) == []
    to_853 = [p for p in packets if TCP in p and p["IP"].src == APPLIANCE and p[TCP].dport == 853]
    assert to_853, "nothing went to the upstream's port 853"
    if not lossy:      # pooled: one connection carried the probes and the four questions
        assert len([p for p in to_853 if p[TCP].flags == "S"]) == 1


@needs_servers
@pytest.mark.parametrize("wrong", ["name", "ca"])
def test_a_certificate_that_does_not_verify_gives_servfail_never_plain_text(tmp_path, pki, wrong):
    async def body(ns):
        return await exec_in(ns, *dig("www.example", "A"), timeout=30)

    forward = [f"tls://{HOST}#{'wrong.test' if wrong == 'name' else NAME}"]
    (rc, out), packets = with_appliance(tmp_path, pki, body, forward=forward, capture=True,
                                        tls_ca=pki.other_ca if wrong == "ca" else None)
    assert rc == 0 and "status: SERVFAIL" in out, out
    assert plain_dns_from_appliance(packets) == []


@needs_servers
def test_a_failing_tls_upstream_fails_over_to_the_next(tmp_path, pki):
    async def body(ns):
        return [await exec_in(ns, *dig(name, "A"), timeout=30) for name in ("www.example", "mail.example")]

    forward = [f"tls://{HOST}#wrong.test", f"tls://{HOST}:8853#{NAME}"]     # the first never verifies
    outs, packets = with_appliance(tmp_path, pki, body, forward=forward, capture=True)
    for (rc, out), address in zip(outs, ("192.0.2.80", "192.0.2.25")):
        assert rc == 0 and "status: NOERROR" in out and address in out, out
    assert plain_dns_from_appliance(packets) == []
    assert [p for p in packets if TCP in p and p["IP"].src == APPLIANCE and p[TCP].dport == 8853]
