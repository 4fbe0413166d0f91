"""`unikernel check`: the declaration and every file it names checked, and
what would be served described, without serving. Zone files are judged as
NSD's nsd-checkzone judges them (the same verdict, the same line)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APEX = "$ORIGIN ex.\n$TTL 60\n@ SOA ns hm 1 7200 900 1209600 300\n@ NS ns\nns A 192.0.2.1\n"


def check(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unikernel", "check", *flags], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_the_default_appliance_checks_and_says_what_it_serves():
    result = check()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    [zone] = [line for line in lines if line.startswith("zone ")]
    # the serial, as the zone file spells it
    serial = re.search(r"^\s*(\d+)\s*;\s*serial", (REPO / "data" / "d1.signpo.st.zone").read_text(), re.M | re.I)
    assert zone.startswith("zone d1.signpo.st.: serial ")
    if serial:
        assert f"serial {serial.group(1)}," in zone
    assert any(line.startswith("forward to ") and "DNSSEC validated" in line for line in lines)


ZONES = {
    "good": APEX + "www A 192.0.2.2\nmail MX 10 www\n",
    "cname and other data": APEX + "x CNAME www\nx A 192.0.2.3\n",
    "bad address": APEX + "www A 192.0.2.300\n",
    "unknown type": APEX + "www FOO 1\n",
    "no SOA": "$ORIGIN ex.\n$TTL 60\n@ NS ns\nns A 192.0.2.1\n",
}


@pytest.mark.skipif(shutil.which("nsd-checkzone") is None, reason="needs nsd-checkzone (apt install nsd)")
@pytest.mark.parametrize("case", sorted(ZONES))
def test_zone_files_are_judged_as_nsd_checkzone_judges_them(tmp_path, case):
    zone = tmp_path / "ex.zone"
    zone.write_text(ZONES[case])
    theirs = subprocess.run(["nsd-checkzone", "ex.", str(zone)], capture_output=True, text=True, timeout=30)
    ours = check("--zone", str(zone), "--forward", "none")
    assert (ours.returncode == 0) == (theirs.returncode == 0), (ours.stderr, theirs.stdout + theirs.stderr)
    if ours.returncode:
        assert ours.returncode == 2 and not ours.stdout.strip().endswith("ok")
        their_line = re.search(rf"{re.escape(str(zone))}:(\d+):", theirs.stderr)
        our_line = re.search(rf"{re.escape(str(zone))}:(\d+):", ours.stderr)
        if their_line and case != "no SOA":        # NSD names its last line for a missing SOA
            assert our_line and our_line.group(1) == their_line.group(1), (ours.stderr, theirs.stderr)
    else:
        assert "zone ex.: serial 1, 4 names, unsigned" in ours.stdout      # ex., ns, www, mail


def test_other_errors_are_named_and_exit_2(tmp_path):
    for flags, says in ((["--tsig", "k:hmac-md5:AAAA"], "tsig"),
                        (["--forward", "127.0.0.1"], "loopback"),
                        (["--hosts", str(tmp_path / "missing")], "missing")):
        result = check(*flags)
        assert result.returncode == 2 and says in result.stderr, (flags, result.stderr)
