"""DNSSEC signature checks through the system's OpenSSL (``libcrypto.so.3``)
with ctypes, and the RFC 4034 signed data and DS digests they are made over.

Why not dnspython's ``dns.dnssec``: it does its arithmetic with the
``cryptography`` wheel, which carries a second, statically linked OpenSSL
(12.5 MB unpacked) into an image that already ships libcrypto for TLS, and
takes seconds to import under QEMU's TCG.

A DNSKEY's public key is re-encoded as the DER SubjectPublicKeyInfo OpenSSL
reads (``d2i_PUBKEY``): RSA from RFC 3110's exponent and modulus, ECDSA from
RFC 6605's X || Y, EdDSA from RFC 8080's raw key; an ECDSA signature's
r || s becomes DER ``SEQUENCE { INTEGER r, INTEGER s }``. Then
``EVP_DigestVerify`` (one shot, as EdDSA requires) says yes or no.

Decoding a key is most of a check's cost (``d2i_PUBKEY`` validates an
ECDSA point: 130 of 170 µs for one P-256 check), and a zone's few keys sign
every answer in it, so the last :data:`MAX_KEPT_KEYS` decoded keys are kept,
by their DER bytes, and freed when they fall out.

Every failure is a defined "does not verify": a key or signature of the
wrong shape, or anything libcrypto refuses (its error queue is cleared).
Only an algorithm outside :data:`ALGORITHMS` is an error of its own
(:class:`UnsupportedAlgorithm`), and a libcrypto that cannot be loaded is
:class:`CryptoUnavailable`, naming the library.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import dns.name

SONAME = "libcrypto.so.3"
RSA_MIN_BITS, RSA_MAX_BITS = 512, 4096          # RFC 3110 section 2 (and 4096 keeps one check's cost bounded)
MAX_KEPT_KEYS = 256                             # decoded public keys kept (the least recently used freed)


class UnsupportedAlgorithm(ValueError):
    """A DNSKEY/RRSIG algorithm number this module does not implement."""


class CryptoUnavailable(RuntimeError):
    """libcrypto could not be loaded: the image or host lacks libssl3."""


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str
    digest: str | None          # the EVP digest name; None for EdDSA, which hashes inside
    key_kind: str               # "rsa", "ec" or "eddsa"
    curve_oid: bytes = b""      # ECDSA: the named curve; EdDSA: the key's own OID
    size: int = 0               # ECDSA: bytes of one coordinate; EdDSA: bytes of the key


# DER-encoded OBJECT IDENTIFIER contents (without tag and length)
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")       # 1.2.840.113549.1.1.1
_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")            # 1.2.840.10045.2.1
_PRIME256V1 = bytes.fromhex("2a8648ce3d030107")             # 1.2.840.10045.3.1.7
_SECP384R1 = bytes.fromhex("2b81040022")                    # 1.3.132.0.34
_ED25519 = bytes.fromhex("2b6570")                          # 1.3.101.112
_ED448 = bytes.fromhex("2b6571")                            # 1.3.101.113

ALGORITHMS: dict[int, _Algorithm] = {
    8: _Algorithm("RSASHA256", "SHA256", "rsa"),
    10: _Algorithm("RSASHA512", "SHA512", "rsa"),
    13: _Algorithm("ECDSAP256SHA256", "SHA256", "ec", _PRIME256V1, 32),
    14: _Algorithm("ECDSAP384SHA384", "SHA384", "ec", _SECP384R1, 48),
    15: _Algorithm("ED25519", None, "eddsa", _ED25519, 32),
    16: _Algorithm("ED448", None, "eddsa", _ED448, 57),
}
DS_DIGESTS = {2: hashlib.sha256, 4: hashlib.sha384}     # RFC 4509, RFC 6605


# -- DER, just the few shapes a public key and an ECDSA signature need ---------

def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _der_integer(value: bytes) -> bytes:
    """A non-negative big-endian integer: no redundant leading zeros, one added
    where the top bit would make it negative."""
    value = value.lstrip(b"\0") or b"\0"
    if value[0] & 0x80:
        value = b"\0" + value
    return _der(0x02, value)


def _spki(algorithm_identifier: bytes, public_key: bytes) -> bytes:
    return _der(0x30, _der(0x30, algorithm_identifier) + _der(0x03, b"\0" + public_key))


def public_key_der(algorithm: int, key: bytes) -> bytes | None:
    """The DER SubjectPublicKeyInfo of a DNSKEY's public key field, or None
    when the field has the wrong shape for its algorithm."""
    spec = ALGORITHMS.get(algorithm)
    if spec is None:
        raise UnsupportedAlgorithm(f"DNSSEC algorithm {algorithm}")
    if spec.key_kind == "rsa":
        # RFC 3110 2: exponent length in one byte, or zero then two bytes
        if len(key) < 1:
            return None
        if key[0]:
            exponent_length, rest = key[0], key[1:]
        elif len(key) >= 3:
            exponent_length, rest = int.from_bytes(key[1:3], "big"), key[3:]
        else:
            return None
        exponent, modulus = rest[:exponent_length], rest[exponent_length:]
        if len(exponent) != exponent_length or not exponent.strip(b"\0") or not modulus or modulus[0] == 0:
            return None
        bits = int.from_bytes(modulus, "big").bit_length()
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS or len(exponent) * 8 > RSA_MAX_BITS:
            return None
        rsa_key = _der(0x30, _der_integer(modulus) + _der_integer(exponent))
        return _spki(_der(0x06, _RSA_ENCRYPTION) + _der(0x05, b""), rsa_key)
    if spec.key_kind == "ec":
        if len(key) != 2 * spec.size:
            return None
        return _spki(_der(0x06, _EC_PUBLIC_KEY) + _der(0x06, spec.curve_oid), b"\x04" + key)
    if len(key) != spec.size:
        return None
    return _spki(_der(0x06, spec.curve_oid), key)


def signature_der(algorithm: int, signature: bytes) -> bytes | None:
    """The signature as OpenSSL wants it: ECDSA's r || s as DER, the others
    as they are; None when an ECDSA signature has the wrong length."""
    spec = ALGORITHMS.get(algorithm)
    if spec is None:
        raise UnsupportedAlgorithm(f"DNSSEC algorithm {algorithm}")
    if spec.key_kind != "ec":
        return signature
    if len(signature) != 2 * spec.size:
        return None
    r, s = signature[:spec.size], signature[spec.size:]
    return _der(0x30, _der_integer(r) + _der_integer(s))


# -- libcrypto -----------------------------------------------------------------

class _Libcrypto:
    """The few EVP calls a verification makes, with their C signatures."""

    def __init__(self, library: ctypes.CDLL) -> None:
        p, n = ctypes.c_void_p, ctypes.c_size_t
        self.d2i_PUBKEY = _function(library, "d2i_PUBKEY", p, [p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long])
        self.EVP_PKEY_free = _function(library, "EVP_PKEY_free", None, [p])
        self.EVP_MD_CTX_new = _function(library, "EVP_MD_CTX_new", p, [])
        self.EVP_MD_CTX_free = _function(library, "EVP_MD_CTX_free", None, [p])
        self.EVP_get_digestbyname = _function(library, "EVP_get_digestbyname", p, [ctypes.c_char_p])
        self.EVP_DigestVerifyInit = _function(library, "EVP_DigestVerifyInit", ctypes.c_int, [p, p, p, p, p])
        self.EVP_DigestVerify = _function(library, "EVP_DigestVerify", ctypes.c_int,
                                          [p, ctypes.c_char_p, n, ctypes.c_char_p, n])
        self.ERR_clear_error = _function(library, "ERR_clear_error", None, [])
        # decoded keys (EVP_PKEY pointers) by their DER bytes, least recently used first
        self.keys: OrderedDict[bytes, int] = OrderedDict()
        self.digests = {}
        for spec in ALGORITHMS.values():
            if spec.digest is not None:
                md = self.EVP_get_digestbyname(spec.digest.encode())
                if not md:
                    raise CryptoUnavailable(f"{SONAME} has no {spec.digest} digest")
                self.digests[spec.digest] = md

    def key(self, key_der: bytes) -> int | None:
        """The decoded key (kept, see MAX_KEPT_KEYS), or None when libcrypto
        refuses it (never kept: it is refused again, at the same cost)."""
        pkey = self.keys.get(key_der)
        if pkey is not None:
            self.keys.move_to_end(key_der)
            return pkey
        buffer = ctypes.c_char_p(key_der)
        pkey = self.d2i_PUBKEY(None, ctypes.byref(buffer), len(key_der))
        if not pkey:
            self.ERR_clear_error()
            return None
        self.keys[key_der] = pkey
        while len(self.keys) > MAX_KEPT_KEYS:
            self.EVP_PKEY_free(self.keys.popitem(last=False)[1])
        return pkey

    def verify(self, key_der: bytes, digest: str | None, signature: bytes, data: bytes) -> bool:
        pkey = self.key(key_der)
        if pkey is None:
            return False
        ctx = self.EVP_MD_CTX_new()
        try:
            if not ctx:
                return False
            md = self.digests[digest] if digest is not None else None
            if self.EVP_DigestVerifyInit(ctx, None, md, None, pkey) != 1:
                return False
            return self.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1
        finally:
            self.ERR_clear_error()          # a failed check leaves errors queued; never let them pile up
            self.EVP_MD_CTX_free(ctx)       # the key stays kept: the context held a reference of its own


def _function(library: ctypes.CDLL, name: str, restype, argtypes: list):
    function = getattr(library, name)
    function.restype, function.argtypes = restype, argtypes
    return function


@functools.cache
def libcrypto() -> _Libcrypto:
    """The loaded library, once per process (as an extension module is loaded
    once): by soname, so the dynamic loader's own search finds it; the image
    has no ldconfig cache, and ctypes.util.find_library would need one."""
    try:
        library = ctypes.CDLL(SONAME)
        return _Libcrypto(library)
    except (OSError, AttributeError) as e:
        raise CryptoUnavailable(f"DNSSEC signature checks need {SONAME} (Debian's libssl3): {e}") from e


def verify(algorithm: int, key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` by the DNSKEY public key field ``key`` of
    ``algorithm`` verifies over ``data``. Raises only UnsupportedAlgorithm
    (an algorithm outside ALGORITHMS) and CryptoUnavailable."""
    spec = ALGORITHMS.get(algorithm)
    if spec is None:
        raise UnsupportedAlgorithm(f"DNSSEC algorithm {algorithm}")
    key_der = public_key_der(algorithm, key)
    signature_for_openssl = signature_der(algorithm, signature)
    if key_der is None or signature_for_openssl is None:
        return False
    return libcrypto().verify(key_der, spec.digest, signature_for_openssl, data)


# -- what is signed and digested (RFC 4034) ------------------------------------

def signed_data(owner: dns.name.Name, rdtype: int, rdclass: int, rdatas: Iterable, rrsig) -> bytes:
    """RFC 4034 3.1.8.1 (with RFC 4035 5.3.2 for wildcards): the RRSIG's
    fields before its signature, the signer in canonical form, then each RR
    of the set in canonical form and order (RFC 4034 6.2, 6.3), with the
    RRSIG's original TTL, and the owner replaced by ``*.<closest encloser>``
    when the RRSIG has fewer labels than the owner (an expanded wildcard)."""
    labels = len(owner) - 1 - (1 if owner.is_wild() else 0)
    if rrsig.labels < labels:
        owner = dns.name.Name((b"*",) + owner.labels[-(rrsig.labels + 1):])
    head = struct.pack("!HBBIIIH", rrsig.type_covered, rrsig.algorithm, rrsig.labels, rrsig.original_ttl,
                       rrsig.expiration, rrsig.inception, rrsig.key_tag)
    data = [head, rrsig.signer.to_digestable()]
    owner_wire = owner.to_digestable()
    fixed = struct.pack("!HHI", rdtype, rdclass, rrsig.original_ttl)
    for rdata in sorted(set(r.to_digestable() for r in rdatas)):
        data += [owner_wire, fixed, struct.pack("!H", len(rdata)), rdata]
    return b"".join(data)


def ds_digest(zone: dns.name.Name, dnskey, digest_type: int) -> bytes | None:
    """RFC 4034 5.1.4: the digest of the owner's canonical name and the
    DNSKEY rdata, or None for a digest type outside DS_DIGESTS."""
    digest = DS_DIGESTS.get(digest_type)
    if digest is None:
        return None
    return digest(zone.canonicalize().to_wire() + dnskey.to_digestable()).digest()
