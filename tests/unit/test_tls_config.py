"""DoT settings that cannot work are one line on stderr and exit status 2,
before a device is touched: certificates and keys that do not load, a CA
bundle that is not one, tls:// upstreams without a name, an upstream given
twice. The tap named here must never be created."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tlscerts import make_pki, needs_openssl

ROOT = Path(__file__).resolve().parents[2]
TAP = "dnsbadtls0"

pytestmark = [needs_openssl]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unikernel", "serve", "--tap", TAP, *args],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))


def cases(pki, tmp: Path):
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other_key = pki.other_ca.with_suffix(".key")
    return [
        (["--dot-cert", "/nonexistent/cert.pem", "--dot-key", str(pki.key)], "/nonexistent/cert.pem"),
        (["--dot-cert", str(pki.cert)], "dot-key"),
        (["--dot-cert", str(pki.cert), "--dot-key", str(other_key)], "cannot be loaded"),   # not its key
        (["--dot-cert", str(garbage), "--dot-key", str(pki.key)], str(garbage)),
        (["--forward", "tls://192.0.2.1"], "#NAME"),
        (["--forward", "tls://192.0.2.1#dns.test", "--tls-ca", str(garbage)], "tls-ca"),
        (["--forward", "tls://192.0.2.1#dns.test", "--tls-ca", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
        (["--forward", "192.0.2.1:853", "--forward", "tls://192.0.2.1#dns.test", "--tls-ca", str(pki.ca)],
         "given twice"),
    ]


def test_bad_dot_settings_exit_2_with_one_line_and_no_device(pki, tmp_path):
    for args, expected in cases(pki, tmp_path):
        result = serve(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and expected in lines[0], (args, lines)
        assert not Path(f"/sys/class/net/{TAP}").exists()
