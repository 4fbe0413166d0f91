"""The validator against records signed at test time with dnspython and
cryptography keys, on a virtual clock: a root, a TLD ``example.`` and names
under it, answered by a table of messages (the "upstream")."""
from __future__ import annotations

import asyncio
import os
import struct

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from unikernel.resolver.dnssec import crypto, signatures
from unikernel.resolver.dnssec import nsec3 as nsec3_mod
from unikernel.resolver.dnssec.anchors import AnchorError, TrustAnchors, root_anchors
from unikernel.resolver.dnssec.chain import ChainOfTrust
from unikernel.resolver.dnssec.validator import Validator
from unikernel.resolver.dnssec.verdict import (
    EDE_DNSKEY_MISSING,
    EDE_DNSSEC_BOGUS,
    EDE_RRSIGS_MISSING,
    EDE_SIGNATURE_EXPIRED,
    EDE_SIGNATURE_NOT_YET_VALID,
    Security,
)

NOW = 1_800_000_000.0
INCEPTION, EXPIRATION = NOW - 3600, NOW + 7 * 86400
N = dns.name.from_text


class Key:
    def __init__(self, zone: str, private=None, flags: int = 257, algorithm=None) -> None:
        self.zone = N(zone)
        self.private = private or ec.generate_private_key(ec.SECP256R1())
        algorithm = algorithm or (dns.dnssec.Algorithm.ED25519 if isinstance(self.private, ed25519.Ed25519PrivateKey)
                                  else dns.dnssec.Algorithm.ECDSAP256SHA256)
        self.dnskey = dns.dnssec.make_dnskey(self.private.public_key(), algorithm, flags=flags)

    def ds(self, digest: str = "SHA256") -> dns.rrset.RRset:
        return dns.rrset.from_rdata(self.zone, 3600, dns.dnssec.make_ds(self.zone, self.dnskey, digest))

    def dnskeys(self) -> dns.rrset.RRset:
        return dns.rrset.from_rdata(self.zone, 3600, self.dnskey)

    def sign(self, rrset: dns.rrset.RRset, inception: float = INCEPTION, expiration: float = EXPIRATION,
             signer: Key | None = None) -> list[dns.rrset.RRset]:
        sig = dns.dnssec.sign(rrset, self.private, self.zone, self.dnskey, inception=inception,
                              expiration=expiration)
        return [rrset, dns.rrset.from_rdata(rrset.name, rrset.ttl, sig)]


def rrset(text: str) -> dns.rrset.RRset:
    name, ttl, rdclass, rdtype, *rdata = text.split(None, 4)
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, *rdata)


def nsec(owner: str, nxt: str, types: str) -> dns.rrset.RRset:
    return rrset(f"{owner} 300 IN NSEC {nxt} {types}")


def reply(answer=(), authority=(), rcode=dns.rcode.NOERROR) -> dns.message.Message:
    m = dns.message.Message()
    m.flags = dns.flags.QR | dns.flags.RA
    m.set_rcode(rcode)
    m.answer = [r for group in answer for r in group]
    m.authority = [r for group in authority for r in group]
    return m


class World:
    """The root and example. signed; ``replies[(name, type)]`` is what the
    upstream says; ``asked`` counts what was fetched."""

    def __init__(self) -> None:
        self.root = Key(".")
        self.tld = Key("example.")
        self.anchors = TrustAnchors.from_text(self.root.ds().to_text())
        root_soa = rrset(". 300 IN SOA a.root. h.root. 1 2 3 4 300")
        self.replies: dict[tuple[str, str], dns.message.Message] = {
            (".", "DNSKEY"): reply([self.root.sign(self.root.dnskeys())]),
            ("example.", "DS"): reply([self.root.sign(self.tld.ds())]),
            ("example.", "DNSKEY"): reply([self.tld.sign(self.tld.dnskeys())]),
            # unsigned.example. is delegated without DS
            ("unsigned.example.", "DS"): reply(authority=[
                self.tld.sign(rrset("example. 300 IN SOA ns.example. h.example. 1 2 3 4 300")),
                self.tld.sign(nsec("unsigned.example.", "www.example.", "NS RRSIG NSEC"))]),
            ("nowhere.", "DS"): reply(rcode=dns.rcode.NXDOMAIN, authority=[
                self.root.sign(root_soa), self.root.sign(nsec(".", "example.", "SOA NS RRSIG NSEC DNSKEY")),
                self.root.sign(nsec("example.", ".", "NS DS RRSIG NSEC"))]),
        }
        self.asked: list[tuple[str, str]] = []

    async def fetch(self, name: dns.name.Name, rdtype: int):
        key = (name.to_text().lower(), dns.rdatatype.to_text(rdtype))
        self.asked.append(key)
        await asyncio.sleep(0)
        return self.replies.get(key)

    def validator(self, anchors: TrustAnchors | None = None) -> Validator:
        return Validator(ChainOfTrust(anchors or self.anchors, self.fetch))

    def soa(self) -> list[dns.rrset.RRset]:
        return self.tld.sign(rrset("example. 300 IN SOA ns.example. h.example. 1 2 3 4 300"))


def run(validator: Validator, qname: str, rdtype: str, message: dns.message.Message, now: float = NOW):
    return asyncio.run(validator.validate(N(qname), dns.rdatatype.from_text(rdtype), message, now))


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_signed_answer_is_secure(world):
    message = reply([world.tld.sign(rrset("www.example. 300 IN A 192.0.2.1"))])
    verdict = run(world.validator(), "www.example.", "A", message)
    assert verdict.security is Security.SECURE, verdict
    assert verdict.valid_until == EXPIRATION


def test_changed_record_is_bogus(world):
    signed = world.tld.sign(rrset("www.example. 300 IN A 192.0.2.1"))
    forged = [rrset("www.example. 300 IN A 192.0.2.66"), signed[1]]
    verdict = run(world.validator(), "www.example.", "A", reply([forged]))
    assert verdict.security is Security.BOGUS and verdict.ede == EDE_DNSSEC_BOGUS


def test_unsigned_answer_in_signed_zone_is_bogus(world):
    world.replies[("www.example.", "DS")] = reply(authority=[
        world.soa(), world.tld.sign(nsec("www.example.", "example.", "A RRSIG NSEC"))])
    verdict = run(world.validator(), "www.example.", "A", reply([[rrset("www.example. 300 IN A 192.0.2.1")]]))
    assert verdict.security is Security.BOGUS and verdict.ede == EDE_RRSIGS_MISSING


def test_below_a_delegation_without_ds_is_insecure(world):
    verdict = run(world.validator(), "host.unsigned.example.", "A",
                  reply([[rrset("host.unsigned.example. 300 IN A 192.0.2.7")]]))
    assert verdict.security is Security.INSECURE, verdict


def test_time_outcomes_on_a_virtual_clock():
    """Not yet valid before inception, expired after expiration, and an
    answer whose keys were cached while valid turns bogus once they expire."""
    world = World()
    validator = world.validator()
    message = reply([world.tld.sign(rrset("www.example. 300 IN A 192.0.2.1"))])
    early = run(validator, "www.example.", "A", message, now=INCEPTION - 10)
    assert early.security is Security.BOGUS and early.ede == EDE_SIGNATURE_NOT_YET_VALID
    validator = world.validator()
    assert run(validator, "www.example.", "A", message).security is Security.SECURE
    fetched = len(world.asked)
    late = run(validator, "www.example.", "A", message, now=EXPIRATION + 10)
    assert late.security is Security.BOGUS and late.ede == EDE_SIGNATURE_EXPIRED
    assert len(world.asked) > fetched          # the cached keys expired with their signatures


def test_key_state_is_cached_and_walks_are_shared(world):
    validator = world.validator()
    message = reply([world.tld.sign(rrset("www.example. 300 IN A 192.0.2.1"))])

    async def many():
        return await asyncio.gather(*(validator.validate(N("www.example."), dns.rdatatype.A, message, NOW)
                                      for _ in range(20)))

    world.asked.clear()
    verdicts = asyncio.run(many())
    assert all(v.security is Security.SECURE for v in verdicts)
    assert sorted(world.asked) == [(".", "DNSKEY"), ("example.", "DNSKEY"), ("example.", "DS")]
    world.asked.clear()
    assert run(validator, "www.example.", "A", message).security is Security.SECURE
    assert world.asked == []


def test_nxdomain_proven_by_nsec_is_secure_and_without_wildcard_proof_bogus(world):
    proof = world.tld.sign(nsec("mail.example.", "www.example.", "A RRSIG NSEC"))
    apex = world.tld.sign(nsec("example.", "mail.example.", "SOA NS RRSIG NSEC DNSKEY"))
    whole = reply(rcode=dns.rcode.NXDOMAIN, authority=[world.soa(), proof, apex])
    assert run(world.validator(), "nope.example.", "A", whole).security is Security.SECURE
    # without the NSEC from the apex, *.example. is not shown to be absent
    partial = reply(rcode=dns.rcode.NXDOMAIN, authority=[world.soa(), proof])
    assert run(world.validator(), "nope.example.", "A", partial).security is Security.BOGUS


def test_nodata_needs_the_type_absent(world):
    at_www = world.tld.sign(nsec("www.example.", "example.", "A RRSIG NSEC"))
    assert run(world.validator(), "www.example.", "AAAA",
               reply(authority=[world.soa(), at_www])).security is Security.SECURE
    assert run(world.validator(), "www.example.", "A",
               reply(authority=[world.soa(), at_www])).security is Security.BOGUS


def test_wildcard_expansion_needs_proof_that_the_name_does_not_exist(world):
    expanded = rrset("a.wild.example. 300 IN A 192.0.2.9")
    wild = rrset("*.wild.example. 300 IN A 192.0.2.9")
    sig = world.tld.sign(wild)[1]
    sig_at_owner = dns.rrset.from_rdata(expanded.name, 300, sig[0])
    cover = world.tld.sign(nsec("*.wild.example.", "www.example.", "A RRSIG NSEC"))
    assert run(world.validator(), "a.wild.example.", "A",
               reply([[expanded, sig_at_owner]], authority=[cover])).security is Security.SECURE
    assert run(world.validator(), "a.wild.example.", "A",
               reply([[expanded, sig_at_owner]])).security is Security.BOGUS


def test_ed25519_zone(world):
    ed = Key("ed.example.", ed25519.Ed25519PrivateKey.generate())
    world.replies[("ed.example.", "DS")] = reply([world.tld.sign(ed.ds())])
    world.replies[("ed.example.", "DNSKEY")] = reply([ed.sign(ed.dnskeys())])
    verdict = run(world.validator(), "ed.example.", "TXT", reply([ed.sign(rrset('ed.example. 300 IN TXT "x"'))]))
    assert verdict.security is Security.SECURE, verdict


@pytest.mark.parametrize("algorithm", ["RSASHA256", "RSASHA512", "ECDSAP384SHA384", "ED448"])
def test_every_supported_algorithm(world, algorithm):
    from cryptography.hazmat.primitives.asymmetric import ed448, rsa
    private = {"RSASHA256": lambda: rsa.generate_private_key(65537, 2048),
               "RSASHA512": lambda: rsa.generate_private_key(65537, 2048),
               "ECDSAP384SHA384": lambda: ec.generate_private_key(ec.SECP384R1()),
               "ED448": ed448.Ed448PrivateKey.generate}[algorithm]()
    zone = f"{algorithm.lower()}.example."
    key = Key(zone, private, algorithm=dns.dnssec.Algorithm[algorithm])
    digest = "SHA384" if algorithm == "ECDSAP384SHA384" else "SHA256"     # DS digest 4 as well as 2
    world.replies[(zone, "DS")] = reply([world.tld.sign(key.ds(digest))])
    world.replies[(zone, "DNSKEY")] = reply([key.sign(key.dnskeys())])
    good = reply([key.sign(rrset(f'{zone} 300 IN TXT "x"'))])
    assert run(world.validator(), zone, "TXT", good).security is Security.SECURE
    forged = reply([[rrset(f'{zone} 300 IN TXT "y"'), good.answer[1]]])
    assert run(world.validator(), zone, "TXT", forged).security is Security.BOGUS


def test_ds_without_matching_key_is_bogus(world):
    stray = Key("stray.example.")
    other = Key("stray.example.")
    world.replies[("stray.example.", "DS")] = reply([world.tld.sign(other.ds())])
    world.replies[("stray.example.", "DNSKEY")] = reply([stray.sign(stray.dnskeys())])
    verdict = run(world.validator(), "stray.example.", "A",
                  reply([stray.sign(rrset("stray.example. 300 IN A 192.0.2.3"))]))
    assert verdict.security is Security.BOGUS and verdict.ede == EDE_DNSKEY_MISSING


def test_unknown_ds_algorithm_makes_the_zone_insecure(world):
    odd = Key("odd.example.")
    ds = dns.rdata.from_text("IN", "DS", f"{dns.dnssec.key_id(odd.dnskey)} 253 2 {'00' * 32}")
    world.replies[("odd.example.", "DS")] = reply([world.tld.sign(dns.rrset.from_rdata(N("odd.example."), 300, ds))])
    world.replies[("odd.example.", "DNSKEY")] = reply([odd.sign(odd.dnskeys())])
    verdict = run(world.validator(), "odd.example.", "A", reply([odd.sign(rrset("odd.example. 300 IN A 192.0.2.3"))]))
    assert verdict.security is Security.INSECURE, verdict


def test_key_trap_costs_a_bounded_number_of_signature_checks(world, monkeypatch):
    """Many keys sharing one key tag and many signatures: without the budget
    this is keys x signatures verifications (here 60 x 8 = 480)."""
    trap = Key("trap.example.")
    tag = dns.dnssec.key_id(trap.dnskey)
    colliding = [trap.dnskey] + [_key_with_tag(tag) for _ in range(59)]
    keys = dns.rrset.from_rdata_list(N("trap.example."), 300, colliding)
    world.replies[("trap.example.", "DS")] = reply([world.tld.sign(trap.ds())])
    world.replies[("trap.example.", "DNSKEY")] = reply([trap.sign(keys)])
    data = rrset("trap.example. 300 IN A 192.0.2.4")
    good = trap.sign(data)[1][0]
    wrong = [good.replace(signature=os.urandom(len(good.signature))) for _ in range(40)]
    calls = []
    real = crypto.verify
    monkeypatch.setattr(crypto, "verify", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    verdict = run(world.validator(), "trap.example.", "A",
                  reply([[data, dns.rrset.from_rdata_list(data.name, 300, wrong)]]))
    assert verdict.security is Security.BOGUS
    assert 0 < len(calls) <= signatures.SIGNATURE_CHECKS_PER_ANSWER < 60


def _key_with_tag(tag: int) -> dns.rdata.Rdata:
    """A DNSKEY (random bytes as an ECDSA key) whose key tag is ``tag``: the
    last two key bytes are chosen to fix the RFC 4034 appendix B checksum."""
    while True:
        body = bytearray(os.urandom(64))
        body[-2:] = b"\x00\x00"
        rdata = struct.pack("!HBB", 257, 3, 13) + bytes(body)
        total = sum((b << 8) if i % 2 == 0 else b for i, b in enumerate(rdata))
        total = (total + (total >> 16)) & 0xFFFF
        fix = (tag - total) % 0x10000
        body[-2:] = fix.to_bytes(2, "big")
        key = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, struct.pack("!HBB", 257, 3, 13) + bytes(body),
                                  0, 68)
        if dns.dnssec.key_id(key) == tag:
            return key


def test_nsec3_above_the_iteration_cap_is_insecure_without_hashing(world, monkeypatch):
    rd = dns.rdata.from_text("IN", "NSEC3", f"1 0 2500 ab {'0' * 32} A RRSIG")
    owner = N(f"{'1' * 32}.example.")
    proof = world.tld.sign(dns.rrset.from_rdata(owner, 300, rd))
    import hashlib
    hashed = []
    real_sha1 = hashlib.sha1
    monkeypatch.setattr(nsec3_mod.hashlib, "sha1", lambda *a: (hashed.append(1), real_sha1(*a))[1])
    verdict = run(world.validator(), "x.example.", "A", reply(rcode=dns.rcode.NXDOMAIN, authority=[world.soa(), proof]))
    assert verdict.security is Security.INSECURE, verdict
    assert hashed == []


def test_nsec3_name_error_and_nodata(world):
    """A tiny NSEC3 chain for example. (apex and www), hashed by dnspython."""
    def h(name: str) -> str:
        return dns.dnssec.nsec3_hash(name, "ab", 3, 1)

    names = sorted([("example.", "SOA NS RRSIG DNSKEY NSEC3PARAM"), ("www.example.", "A RRSIG")],
                   key=lambda n: h(n[0]))
    records = []
    for i, (name, types) in enumerate(names):
        nxt = h(names[(i + 1) % len(names)][0])
        rd = dns.rdata.from_text("IN", "NSEC3", f"1 0 3 ab {nxt} {types}")
        records.append(world.tld.sign(dns.rrset.from_rdata(N(f"{h(name)}.example."), 300, rd)))
    nx = reply(rcode=dns.rcode.NXDOMAIN, authority=[world.soa(), *records])
    assert run(world.validator(), "nope.example.", "A", nx).security is Security.SECURE
    nodata = reply(authority=[world.soa(), *records])
    assert run(world.validator(), "www.example.", "AAAA", nodata).security is Security.SECURE
    assert run(world.validator(), "www.example.", "A", nodata).security is Security.BOGUS


def test_no_anchor_means_insecure_and_missing_root_keys_bogus(world):
    other = TrustAnchors.from_text(Key("elsewhere.").ds().to_text())
    message = reply([world.tld.sign(rrset("www.example. 300 IN A 192.0.2.1"))])
    assert run(world.validator(other), "www.example.", "A", message).security is Security.INSECURE
    stripped = World()
    stripped.replies[(".", "DNSKEY")] = reply([[stripped.root.dnskeys()]])    # an upstream that drops RRSIGs
    verdict = run(stripped.validator(), "www.example.", "A",
                  reply([stripped.tld.sign(rrset("www.example. 300 IN A 192.0.2.1"))]))
    assert verdict.security is Security.BOGUS


def test_built_in_root_anchors_are_the_iana_ksks():
    anchors = root_anchors()
    tags = sorted(ds.key_tag for ds in anchors.closest(N("www.example.")).ds)
    assert tags == [20326, 38696]


def test_anchor_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "anchors"
    bad.write_text("example. 300 IN A 192.0.2.1\n")
    with pytest.raises(AnchorError, match="anchors"):
        TrustAnchors.from_files([bad])
    with pytest.raises(AnchorError, match="missing"):
        TrustAnchors.from_files([tmp_path / "missing"])


def test_cname_from_a_signed_zone_into_an_insecure_one_is_insecure(world):
    cname = world.tld.sign(rrset("out.example. 300 IN CNAME host.unsigned.example."))
    message = reply([cname, [rrset("host.unsigned.example. 300 IN A 192.0.2.7")]])
    assert run(world.validator(), "out.example.", "A", message).security is Security.INSECURE


def test_records_off_the_question_chain_are_not_judged(world):
    """An unsigned record for another name (what a poisoner adds) is not
    relayed, so it does not make a signed answer bogus."""
    message = reply([world.tld.sign(rrset("www.example. 300 IN A 192.0.2.1")),
                     [rrset("victim.example. 300 IN A 203.0.113.66")]])
    assert run(world.validator(), "www.example.", "A", message).security is Security.SECURE


def test_empty_non_terminal_nodata(world):
    ent = world.tld.sign(nsec("a.example.", "a.b.example.", "A RRSIG NSEC"))
    assert run(world.validator(), "b.example.", "A",
               reply(authority=[world.soa(), ent])).security is Security.SECURE


def test_arbitrary_responses_get_a_verdict_never_an_exception(world):
    """Responses made of the world's signed records shuffled into the wrong
    sections, for the wrong names and types: always a verdict."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    pool = [r for m in world.replies.values() for r in (*m.answer, *m.authority)]
    pool += world.tld.sign(rrset("www.example. 300 IN A 192.0.2.1")) + world.soa()
    names = ["www.example.", "example.", ".", "unsigned.example.", "nowhere.", "*.example.", "a.b.example."]
    types = ["A", "DS", "DNSKEY", "NSEC", "SOA", "CNAME", "RRSIG", "TXT"]
    validator = world.validator()

    @settings(max_examples=50, deadline=None)
    @given(st.sampled_from(names), st.sampled_from(types), st.lists(st.sampled_from(pool), max_size=5),
           st.lists(st.sampled_from(pool), max_size=5), st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN]))
    def check(qname, rdtype, answer, authority, rcode):
        verdict = run(validator, qname, rdtype, reply([answer], [authority], rcode))
        assert verdict.security in (Security.SECURE, Security.INSECURE, Security.BOGUS)

    check()
