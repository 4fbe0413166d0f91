"""Real mDNS responders on the host side of a test's tap: avahi-daemon (no
D-Bus, no chroot, config and static hosts in the namespace's own /etc) and
python-zeroconf (tests/zeroconf_responder.py). Both run inside a namespace the
test made, in the foreground, and stop with it.

avahi's configuration goes to /etc/netns/NAME/avahi/, which `ip netns exec`
mounts over /etc/avahi for that process only; its pid file and socket go to a
tmpfs mounted over /run/avahi-daemon in the same private mount namespace, so
nothing on the host is touched and two tests can each run one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import Namespace, read_until

ROOT = Path(__file__).resolve().parent.parent

needs_avahi = pytest.mark.skipif(shutil.which("avahi-daemon") is None,
                                 reason="needs avahi-daemon (apt install avahi-daemon)")

_AVAHI_CONF = """[server]
host-name={host_name}
use-ipv4=yes
use-ipv6=no
allow-interfaces={interface}
enable-dbus=no
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
publish-addresses=yes
[reflector]
[rlimits]
"""

_SERVICE = """<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group><name>{name}</name><service><type>{type}</type><port>{port}</port>
<host-name>{host}</host-name></service></service-group>
"""


def start_avahi(ns: Namespace, *, interface: str, hosts: dict[str, str],
                services: list[tuple[str, str, int, str]] = (), host_name: str = "avahi-peer",
                timeout: float = 30.0) -> subprocess.Popen:
    """avahi-daemon in `ns` on `interface`, publishing static `hosts`
    ({"printer.local": "192.0.2.20"}, forward and reverse) and `services`
    ([(instance name, "_http._tcp", port, host)]); returns once every one is
    established."""
    if shutil.which("avahi-daemon") is None:
        pytest.skip("needs avahi-daemon (apt install avahi-daemon) as the mDNS responder")
    etc = Path(f"/etc/netns/{ns.name}/avahi")
    (etc / "services").mkdir(parents=True, exist_ok=True)
    (etc / "avahi-daemon.conf").write_text(_AVAHI_CONF.format(host_name=host_name, interface=interface))
    (etc / "hosts").write_text("".join(f"{address} {name}\n" for name, address in hosts.items()))
    for i, (name, kind, port, host) in enumerate(services):
        (etc / "services" / f"s{i}.service").write_text(_SERVICE.format(name=name, type=kind, port=port, host=host))
    os.makedirs("/run/avahi-daemon", exist_ok=True)
    proc = ns.popen("sh", "-c", "mount -t tmpfs tmpfs /run/avahi-daemon && exec avahi-daemon --no-drop-root "
                    "--no-chroot --no-proc-title --no-rlimits --debug")
    expected = len(hosts) + len(services)
    established = 0
    while established < expected:
        line = read_until(proc, "successfully established", timeout)
        established += 1
        assert "collision" not in line, line
    return proc


def start_zeroconf(ns: Namespace, *, address: str, services: list[tuple[str, str, int, str, str]],
                   timeout: float = 30.0) -> subprocess.Popen:
    """python-zeroconf in `ns` bound to `address`, registering `services`
    ([(instance, "_http._tcp", port, host, host address)]); returns once
    they are announced."""
    args = [sys.executable, "-m", "tests.zeroconf_responder", address]
    for name, kind, port, host, host_address in services:
        args += [f"{name}|{kind}|{port}|{host}|{host_address}"]
    proc = ns.popen(*args, cwd=str(ROOT))
    read_until(proc, "ready", timeout)
    return proc
