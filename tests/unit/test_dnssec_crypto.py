"""unikernel.resolver.dnssec.crypto (libcrypto through ctypes) against
signatures it did not make: cryptography's keys signing through dnspython,
and whole zones signed by ldns-signzone and BIND's dnssec-signzone, one key
of each algorithm; DS digests against ldns-keygen's and dnssec-dsfromkey's."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from unikernel.resolver.dnssec import crypto, signatures

A = dns.dnssec.Algorithm
N = dns.name.from_text
ZONE = N("example.")
NOW = 1_800_000_000
ALGORITHM_NAMES = ("RSASHA256", "RSASHA512", "ECDSAP256SHA256", "ECDSAP384SHA384", "ED25519", "ED448")


def private_key(algorithm: A):
    if algorithm in (A.RSASHA256, A.RSASHA512):
        return rsa.generate_private_key(65537, 2048)
    if algorithm == A.ECDSAP256SHA256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == A.ECDSAP384SHA384:
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate() if algorithm == A.ED25519 else ed448.Ed448PrivateKey.generate()


class Signed:
    """An RRset signed by cryptography through dnspython, and what our side checks."""

    def __init__(self, algorithm: A, owner: str = "www.Example.") -> None:
        self.private = private_key(algorithm)
        self.dnskey = dns.dnssec.make_dnskey(self.private.public_key(), algorithm, flags=257)
        self.rrset = dns.rrset.from_text(owner, 300, "IN", "A", "192.0.2.2", "192.0.2.1")
        self.rrsig = dns.dnssec.sign(self.rrset, self.private, ZONE, self.dnskey,
                                     inception=NOW - 3600, expiration=NOW + 3600)

    def data(self) -> bytes:
        return crypto.signed_data(self.rrset.name, self.rrset.rdtype, self.rrset.rdclass, self.rrset, self.rrsig)


@pytest.fixture(scope="module", params=list(A.__members__[n] for n in ALGORITHM_NAMES), ids=ALGORITHM_NAMES)
def signed(request) -> Signed:
    return Signed(request.param)


def test_signature_by_cryptography_verifies(signed):
    assert crypto.verify(signed.dnskey.algorithm, signed.dnskey.key, signed.rrsig.signature, signed.data())


def test_signed_data_is_dnspythons(signed):
    """RFC 4034 3.1.8.1, canonical owner case and RR order: the bytes
    dnspython's signer signed."""
    assert signed.data() == dns.dnssec._make_rrsig_signature_data(signed.rrset, signed.rrsig)


def test_a_flipped_bit_fails(signed):
    data, signature, key = signed.data(), signed.rrsig.signature, signed.dnskey.key
    algorithm = signed.dnskey.algorithm
    assert not crypto.verify(algorithm, key, signature, data[:-1] + bytes([data[-1] ^ 1]))
    assert not crypto.verify(algorithm, key, signature[:10] + bytes([signature[10] ^ 0x10]) + signature[11:], data)
    assert not crypto.verify(algorithm, key[:-1] + bytes([key[-1] ^ 1]), signature, data)


def test_a_kept_key_checks_as_a_fresh_one(signed):
    """The decoded key is kept after the first check: the second check (a
    kept key) verifies the same signature and refuses a changed one, and
    libcrypto decoded the key once."""
    lib = crypto.libcrypto()
    data, signature, key = signed.data(), signed.rrsig.signature, signed.dnskey.key
    algorithm = signed.dnskey.algorithm
    assert crypto.verify(algorithm, key, signature, data)
    assert crypto.public_key_der(algorithm, key) in lib.keys
    kept = dict(lib.keys)
    assert crypto.verify(algorithm, key, signature, data)
    assert not crypto.verify(algorithm, key, signature, data[:-1] + bytes([data[-1] ^ 1]))
    assert lib.keys == kept                  # no key decoded again


def test_kept_keys_are_bounded_and_the_evicted_freed(monkeypatch):
    lib = crypto.libcrypto()
    freed = []
    real_free = lib.EVP_PKEY_free

    def free(pkey):
        assert pkey not in lib.keys.values()         # no longer kept when it is freed
        freed.append(pkey)
        real_free(pkey)

    monkeypatch.setattr(lib, "EVP_PKEY_free", free)
    monkeypatch.setattr(crypto, "MAX_KEPT_KEYS", 3)
    kept_before = len(lib.keys)
    made = [Signed(A.ED25519) for _ in range(5)]
    for one in made:
        assert crypto.verify(one.dnskey.algorithm, one.dnskey.key, one.rrsig.signature, one.data())
    assert len(lib.keys) == 3
    assert len(freed) == kept_before + 5 - 3          # every key that fell out, freed once
    kept_ders = [crypto.public_key_der(one.dnskey.algorithm, one.dnskey.key) for one in made[-3:]]
    assert list(lib.keys)[-3:] == kept_ders          # the last used are kept
    first = made[0]                                  # evicted: decoded again, still verifies
    assert crypto.verify(first.dnskey.algorithm, first.dnskey.key, first.rrsig.signature, first.data())


def test_a_key_libcrypto_refuses_is_not_kept():
    lib = crypto.libcrypto()
    before = len(lib.keys)
    bad_point = b"\x04" * 64                        # not on P-256
    assert not crypto.verify(13, bad_point, b"\x01" * 64, b"data")
    assert crypto.public_key_der(13, bad_point) not in lib.keys and len(lib.keys) <= before


def test_another_key_of_the_same_algorithm_fails(signed):
    other = Signed(A(signed.dnskey.algorithm))
    assert not crypto.verify(signed.dnskey.algorithm, other.dnskey.key, signed.rrsig.signature, signed.data())


@pytest.mark.parametrize(("made", "claimed"), [(A.RSASHA256, A.RSASHA512), (A.RSASHA512, A.RSASHA256),
                                               (A.ECDSAP256SHA256, A.ECDSAP384SHA384),
                                               (A.ECDSAP384SHA384, A.ECDSAP256SHA256),
                                               (A.ED25519, A.ED448), (A.ED25519, A.ECDSAP256SHA256)])
def test_the_wrong_algorithm_fails(made, claimed):
    signed = Signed(made)
    assert not crypto.verify(claimed, signed.dnskey.key, signed.rrsig.signature, signed.data())


@pytest.mark.parametrize("algorithm", [1, 3, 5, 7, 12, 17, 253, 254])
def test_an_unknown_algorithm_is_reported_as_such(algorithm):
    with pytest.raises(crypto.UnsupportedAlgorithm):
        crypto.verify(algorithm, b"\x03\x01\x00\x01" + b"\xc1" * 128, b"\0" * 128, b"data")


def test_verify_rrset_reports_an_unknown_algorithm_as_unusable():
    signed = Signed(A.ED25519)
    odd = signed.rrsig.replace(algorithm=253)
    key = signed.dnskey.replace(algorithm=253)
    result = signatures.verify_rrset(signed.rrset, [odd], ZONE, dns.rdataset.from_rdata(300, key), NOW,
                                     signatures.Budget())
    assert not isinstance(result, signatures.Checked) and "unusable RRSIG" in result.reason


@pytest.mark.parametrize("key", [b"", b"\x00", b"\x00\x00", b"\x03\x01\x00", b"\x01\x03",
                                 b"\x03\x01\x00\x01" + b"\x00" * 128,            # modulus with a leading zero
                                 b"\x03\x01\x00\x01" + b"\xc1" * 32,             # 256 bits: under RFC 3110's 512
                                 b"\x03\x01\x00\x01" + b"\xc1" * 520,            # over 4096 bits
                                 b"\x03\x00\x00\x00" + b"\xc1" * 128])           # exponent zero
def test_a_malformed_rsa_key_does_not_verify(key):
    signed = Signed(A.RSASHA256)
    assert not crypto.verify(8, key, signed.rrsig.signature, signed.data())


def test_a_point_not_on_the_curve_does_not_verify():
    signed = Signed(A.ECDSAP256SHA256)
    assert not crypto.verify(13, b"\x01" * 64, signed.rrsig.signature, signed.data())


@settings(max_examples=300, deadline=None)
@given(algorithm=st.sampled_from(sorted(crypto.ALGORITHMS)), key=st.binary(max_size=600),
       signature=st.binary(max_size=600), data=st.binary(max_size=64))
def test_any_bytes_give_a_verdict_never_an_exception(algorithm, key, signature, data):
    assert crypto.verify(algorithm, key, signature, data) is False


def test_a_missing_libcrypto_is_named(monkeypatch):
    monkeypatch.setattr(crypto, "SONAME", "libcrypto-that-is-not-there.so.3")
    crypto.libcrypto.cache_clear()
    try:
        with pytest.raises(crypto.CryptoUnavailable, match="libcrypto-that-is-not-there"):
            crypto.libcrypto()
        signed = Signed(A.ED25519)
        result = signatures.verify_rrset(signed.rrset, [signed.rrsig], ZONE,
                                         dns.rdataset.from_rdata(300, signed.dnskey), NOW, signatures.Budget())
        assert not isinstance(result, signatures.Checked) and "libcrypto-that-is-not-there" in result.reason
    finally:
        crypto.libcrypto.cache_clear()


# -- zones signed by other implementations -------------------------------------

UNSIGNED = """$ORIGIN example.
$TTL 300
@      IN SOA ns1 hostmaster 1 3600 900 86400 300
@      IN NS  ns1
@      IN MX  10 Mail.Example.
ns1    IN A   192.0.2.1
www    IN A   192.0.2.2
www    IN A   192.0.2.3
www    IN AAAA 2001:db8::2
*.w    IN TXT "from a wildcard"
sub    IN NS  ns.sub
ns.sub IN A   192.0.2.9
"""

def run(command: list[str], cwd: Path) -> str:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def sign_with_ldns(work: Path, algorithm: str) -> tuple[Path, Path]:
    base = run(["ldns-keygen", "-a", algorithm, "-b", "2048", "-k", "example."], work)
    (work / "example.zone").write_text(UNSIGNED)
    run(["ldns-signzone", "-o", "example.", "-f", "example.signed", "example.zone", base], work)
    return work / "example.signed", work / f"{base}.key"


def sign_with_bind(work: Path, algorithm: str) -> tuple[Path, Path]:
    size = ["-b", "2048"] if algorithm.startswith("RSA") else []
    base = run(["dnssec-keygen", "-q", "-a", algorithm, *size, "-f", "KSK", "-K", ".", "example."], work)
    (work / "example.zone").write_text(UNSIGNED)
    run(["dnssec-signzone", "-q", "-S", "-z", "-K", ".", "-o", "example.", "-f", "example.signed",
         "example.zone"], work)
    return work / "example.signed", work / f"{base}.key"


@pytest.fixture(scope="module", params=[(s, a) for s in ("ldns", "bind") for a in ALGORITHM_NAMES],
                ids=[f"{s}-{a}" for s in ("ldns", "bind") for a in ALGORITHM_NAMES])
def signed_zone(request, tmp_path_factory):
    signer, algorithm = request.param
    if shutil.which("ldns-signzone" if signer == "ldns" else "dnssec-signzone") is None:
        pytest.skip(f"needs {'ldnsutils' if signer == 'ldns' else 'bind9-utils'}")
    work = tmp_path_factory.mktemp(f"{signer}-{algorithm}")
    path, key_file = (sign_with_ldns if signer == "ldns" else sign_with_bind)(work, algorithm)
    zone = dns.zone.from_file(str(path), origin="example.", relativize=False)
    return zone, key_file


def signed_rrsets(zone: dns.zone.Zone):
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            if rdataset.rdtype == dns.rdatatype.RRSIG:
                continue
            sigs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, rdataset.rdtype)
            if sigs:
                yield dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)), list(sigs)


def zone_keys(zone: dns.zone.Zone) -> dns.rdataset.Rdataset:
    return zone.find_rdataset(ZONE, dns.rdatatype.DNSKEY)


def at_signing_time(sigs) -> float:
    return float(max(s.inception for s in sigs) + 60)


def test_every_rrset_of_a_zone_signed_elsewhere_verifies(signed_zone):
    zone, _ = signed_zone
    checked = 0
    for rrset, sigs in signed_rrsets(zone):
        result = signatures.verify_rrset(rrset, sigs, ZONE, zone_keys(zone), at_signing_time(sigs),
                                         signatures.Budget())
        assert isinstance(result, signatures.Checked), (rrset, result)
        checked += 1
    assert checked >= 8        # SOA, NS, MX, DNSKEY, A and AAAA at www, ns1's A, the wildcard's TXT, NSEC...


def test_a_wildcard_expansion_verifies_and_a_forged_owner_does_not(signed_zone):
    zone, _ = signed_zone
    wild = zone.find_rdataset("*.w.example.", dns.rdatatype.TXT)
    sigs = list(zone.find_rdataset("*.w.example.", dns.rdatatype.RRSIG, dns.rdatatype.TXT))
    expanded = dns.rrset.from_rdata_list(N("a.b.w.example."), wild.ttl, list(wild))
    now = at_signing_time(sigs)
    assert isinstance(signatures.verify_rrset(expanded, sigs, ZONE, zone_keys(zone), now, signatures.Budget()),
                      signatures.Checked)
    forged = dns.rrset.from_rdata_list(N("a.b.x.example."), wild.ttl, list(wild))
    assert not isinstance(signatures.verify_rrset(forged, sigs, ZONE, zone_keys(zone), now, signatures.Budget()),
                          signatures.Checked)


def test_a_changed_record_or_signature_of_a_zone_signed_elsewhere_fails(signed_zone):
    zone, _ = signed_zone
    www = zone.find_rdataset("www.example.", dns.rdatatype.A)
    sigs = list(zone.find_rdataset("www.example.", dns.rdatatype.RRSIG, dns.rdatatype.A))
    now = at_signing_time(sigs)
    changed = dns.rrset.from_text("www.example.", www.ttl, "IN", "A", "192.0.2.2", "192.0.2.4")
    assert not isinstance(signatures.verify_rrset(changed, sigs, ZONE, zone_keys(zone), now, signatures.Budget()),
                          signatures.Checked)
    flipped = [s.replace(signature=s.signature[:-1] + bytes([s.signature[-1] ^ 1])) for s in sigs]
    real = dns.rrset.from_rdata_list(N("www.example."), www.ttl, list(www))
    assert not isinstance(signatures.verify_rrset(real, flipped, ZONE, zone_keys(zone), now, signatures.Budget()),
                          signatures.Checked)


def test_ds_digests_match_the_signers(signed_zone, tmp_path):
    """SHA-256 and SHA-384 DS records computed by dnssec-dsfromkey (BIND) for
    the zone's key, matched by our hashlib digests."""
    zone, key_file = signed_zone
    if shutil.which("dnssec-dsfromkey") is None:
        pytest.skip("needs bind9-utils (dnssec-dsfromkey)")
    key = dns.rdata.from_text("IN", "DNSKEY", key_file.read_text().split("DNSKEY", 1)[1].split(";")[0])
    for digest in ("SHA-256", "SHA-384"):
        text = run(["dnssec-dsfromkey", "-a", digest, str(key_file)], key_file.parent)
        ds = dns.rdata.from_text("IN", "DS", text.split(" DS ", 1)[1])
        assert signatures.ds_matches(ZONE, key, ds), text
        wrong = ds.replace(digest=bytes([ds.digest[0] ^ 1]) + ds.digest[1:])
        assert not signatures.ds_matches(ZONE, key, wrong)
