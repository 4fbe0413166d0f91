"""Test certificates made by openssl at test time: a CA and leaf certificates
it signs, and a second CA that nobody trusts."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@dataclass
class Pki:
    ca: Path                 # the trusted CA's certificate (PEM)
    other_ca: Path           # a CA that signed nothing the tests trust
    cert: Path               # leaf for `name` (and the IP addresses given), signed by `ca`
    key: Path
    name: str


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _ca(directory: Path, stem: str, subject: str) -> tuple[Path, Path]:
    key, cert = directory / f"{stem}.key", directory / f"{stem}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", subject,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    return cert, key


def make_pki(directory: Path, name: str = "dot.test", addresses: tuple[str, ...] = ()) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca(directory, "ca", "/CN=dns-appliance test CA")
    other_ca, _ = _ca(directory, "other-ca", "/CN=untrusted test CA")
    key, csr, cert = directory / "leaf.key", directory / "leaf.csr", directory / "leaf.pem"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}", cwd=directory)
    alt = ",".join([f"DNS:{name}", *(f"IP:{a}" for a in addresses)])
    ext = directory / "leaf.ext"
    ext.write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=directory)
    return Pki(ca=ca, other_ca=other_ca, cert=cert, key=key, name=name)
