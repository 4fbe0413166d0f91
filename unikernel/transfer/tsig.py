"""TSIG keys (RFC 8945) as the command line gives them: ``NAME:ALGORITHM:BASE64SECRET``.

The arithmetic is dnspython's (``dns.tsig``); this module only reads keys
and names the algorithms we accept.
"""
from __future__ import annotations

import base64
import binascii

import dns.exception
import dns.name
import dns.tsig

from unikernel.config import ConfigError

ALGORITHMS = {"hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha384": dns.tsig.HMAC_SHA384,
              "hmac-sha512": dns.tsig.HMAC_SHA512, "hmac-sha224": dns.tsig.HMAC_SHA224}


def parse_tsig(text: str) -> dns.tsig.Key:
    """``transfer-key:hmac-sha256:c2VjcmV0...`` -> a dnspython key; anything
    else is a ConfigError naming what is wrong (never the secret)."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError("tsig: expected NAME:ALGORITHM:BASE64SECRET")
    name, algorithm, secret = parts
    algorithm = algorithm.lower()
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"tsig {name}: algorithm {algorithm} not one of {', '.join(ALGORITHMS)}")
    try:
        key_name = dns.name.from_text(name)
        raw = base64.b64decode(secret, validate=True)
    except (dns.exception.DNSException, binascii.Error, ValueError) as e:
        raise ConfigError(f"tsig {name}: {e}") from None
    if len(raw) < 16:
        raise ConfigError(f"tsig {name}: a secret of {len(raw)} bytes is too short (16 at least)")
    return dns.tsig.Key(key_name, raw, ALGORITHMS[algorithm])
