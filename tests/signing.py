"""Zones signed at test time by ldns-signzone (ldnsutils), an implementation
that is not ours: keys from ldns-keygen, NSEC or NSEC3 (optionally opt-out)."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

needs_ldns = pytest.mark.skipif(shutil.which("ldns-signzone") is None or shutil.which("ldns-keygen") is None,
                                reason="needs ldns-signzone and ldns-keygen (apt install ldnsutils)")


@dataclass
class SignedZone:
    origin: str
    path: Path          # the signed master file
    ds: str             # the key's DS record, zone-file text
    dnskey: str         # the key's DNSKEY record, zone-file text
    key: str            # the key files' base name, to sign a later version with


def sign_zone(source: Path, origin: str, work: Path, *, nsec3: bool = False, opt_out: bool = False,
              extra: str = "", salt: str = "ab12", iterations: int = 0, key: str | None = None) -> SignedZone:
    """Signs a copy of ``source`` (with ``extra`` lines appended) in ``work``
    with one ECDSA P-256 key with the SEP flag set (a CSK): a new one, or
    ``key`` (the base name of an earlier SignedZone's key, in ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    unsigned = work / f"{origin}.zone"
    unsigned.write_text(source.read_text() + extra)
    base = key or subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", origin], cwd=work,
                                 capture_output=True, text=True, check=True).stdout.strip()
    command = ["ldns-signzone", "-o", origin, "-f", str(work / f"{origin}.signed")]
    if nsec3:
        command += ["-n", "-s", salt, "-t", str(iterations)] + (["-p"] if opt_out else [])
    subprocess.run([*command, str(unsigned), base], cwd=work, capture_output=True, text=True, check=True)
    return SignedZone(origin, work / f"{origin}.signed", (work / f"{base}.ds").read_text().strip(),
                      (work / f"{base}.key").read_text().strip(), base)
