"""The dashboard in a real browser: the unix target in a namespace answers
queries sent by dig, then headless Chromium (selenium + chromium-driver, run
inside the namespace) loads http://APPLIANCE:9153/ and the test reads what
the rendered page shows."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.netns import Namespace, needs_root

ROOT = Path(__file__).resolve().parent.parent.parent
HARD = Path(__file__).resolve().parent / "zones" / "hard.example.zone"
APPLIANCE = "192.0.2.2"

needs_browser = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("chromium", "chromedriver", "dig")),
    reason="needs chromium, chromium-driver and dig (apt install chromium chromium-driver dnsutils)")


@needs_root
@needs_browser
def test_the_page_shows_the_counts_it_was_sent(tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("ads.example.com\n")
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        ns.serve("--zone", str(HARD), "--blocklist", str(blocklist), "--identity", "dash-test",
                 ipv4=f"{APPLIANCE}/24")
        # a name that is HTML: the page must show it as text, never make it markup
        sent = [("<b>x</b><img>.example", "A", "+notcp")] + [("www.hard.example", "A", "+notcp")] * 7 \
            + [("ads.example.com", "A", "+notcp")] * 3 + [("mail.hard.example", "MX", "+tcp")] * 2
        for name, rdtype, transport in sent:
            result = ns.run("dig", f"@{APPLIANCE}", name, rdtype, transport, "+tries=2", "+time=3")
            assert result.returncode == 0, result.stdout
        screenshot = tmp_path / "dashboard.png"
        result = ns.run(sys.executable, "-m", "tests.browser", f"http://{APPLIANCE}:9153/", str(screenshot),
                        timeout=120, cwd=str(ROOT))
        assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["live"] == "live" and shown["identity"] == "dash-test" and shown["version"] == "v0.1.0"
    assert shown["total-queries"] == "13"
    assert shown["blocked-count"] == "3" and shown["blocked-share"] == "23.1%"
    assert shown["sources"] == {"zone": 9, "blocked": 3, "server": 1}        # REFUSED: in no zone
    assert shown["top-names"][:3] == [["www.hard.example.", "7"], ["ads.example.com.", "3"],
                                      ["mail.hard.example.", "2"]]
    assert shown["top-clients"] == [["192.0.2.1", "13"]]
    assert ["<b>x</b><img>.example.", "1"] in shown["top-names"] and shown["injected"] == 0
    newest = shown["recent"][0]
    assert newest[1:7] == ["192.0.2.1", "mail.hard.example.", "MX", "tcp", "NOERROR", "zone"]
    assert sorted(shown["rcodes"]) == [["NOERROR", "9"], ["NXDOMAIN", "3"], ["REFUSED", "1"]]
    assert shown["upstreams"] == [["no upstreams: authoritative only"]] and shown["cache-sub"] == "no cache"
    assert shown["bars"] == 60                      # ten minutes in ten-second bins
    assert screenshot.stat().st_size > 10_000
