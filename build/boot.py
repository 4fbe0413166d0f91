#!/usr/bin/env python3
"""Boots images/dns.vmlinuz + images/dns.initrd under QEMU, the serial console
on this terminal.

    build/boot.py --tap tap0     # `make boot`: the tutorial's static setup on tap0
    build/boot.py --auto         # `make run`: tap0 when it is ready, else user networking
    build/boot.py --user         # QEMU user networking, 127.0.0.1:5353 -> the guest's 53

--tap: the guest gets config.py's address (192.168.1.2/24, gateway
192.168.1.1) on the tap; QEMU creates the tap if it is missing (root), but
this script never addresses anything on the host: give the tap its host side
yourself (``ip addr add 192.168.1.1/24 dev tap0 && ip link set tap0 up``).

--user: no root and no tap needed. The guest is 10.0.2.15/24 behind QEMU's
slirp; udp and tcp on 127.0.0.1:5353 are forwarded to its port 53 (without
slirp's ``restrict=on``, which silently drops forwarded UDP replies), and tcp
on 127.0.0.1:9153 to its operator's port (/metrics, the dashboard).

--auto picks --tap when we are root and config.py's tap exists, is up and has
an address on the appliance's subnet, and --user otherwise.

In the console: Ctrl-A X quits QEMU at once; Ctrl-A C opens the QEMU monitor,
where ``system_powerdown`` (the ACPI power button) powers the appliance's
kernel off cleanly, on microvm (its default) and on pc; on pc ``sendkey
ctrl-alt-delete`` does too, and is the one for ``KERNEL=debian`` (Debian's
ACPI button driver is a module PID 1 does not load).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # config.py needs unikernel.config

import qemu  # noqa: E402

REPO = qemu.REPO
SLIRP_HOST = "10.0.2.2"        # the host as seen from QEMU user networking


def tap_ready(name: str, subnet: ipaddress.IPv4Network) -> bool:
    """True when tap ``name`` exists, is up and has a host address in ``subnet``."""
    if not os.path.exists(f"/sys/class/net/{name}"):
        return False
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", name], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        words = line.split()
        if "inet" in words:
            address = ipaddress.IPv4Interface(words[words.index("inet") + 1])
            if address.ip in subnet:
                return True
    return False


def configured():
    from unikernel.config import load
    return load(REPO / "config.py")


def plan(args, appliance) -> tuple[object, str, str]:
    """(network, kernel command-line options, what to tell the user)."""
    mode = args.mode
    if mode == "auto":
        usable = os.geteuid() == 0 and tap_ready(appliance.tap, appliance.interface.network)
        mode = "tap" if usable else "user"
        if not usable:
            print(f"boot: {appliance.tap} is not set up (needs root, the tap, and a host address on "
                  f"{appliance.interface.network}); using QEMU user networking", file=sys.stderr)
    if mode == "tap":
        forward = " ".join(f"forward={f}" for f in appliance.forward)
        tap = args.tap or appliance.tap
        options = f"ipv4={appliance.ipv4}"
        if appliance.ipv4_gateway:
            options += f" ipv4-gateway={appliance.ipv4_gateway}"
        hint = (f"dig @{appliance.interface.ip} ns0.d1.signpo.st"
                + ("" if tap_ready(tap, appliance.interface.network) else
                   f"   (first: ip addr add {appliance.gateway or 'HOST/PREFIX'}/"
                   f"{appliance.interface.network.prefixlen} dev {tap} && ip link set {tap} up)"))
        return qemu.Tap(tap), f"{options} {forward}".strip(), hint
    net = qemu.User(host_port=args.port)
    options = f"ipv4={net.guest_ip}/24 ipv4-gateway={SLIRP_HOST}"
    if appliance.forward:
        # config.py's upstreams live on the tap's side (192.168.1.1 in the
        # tutorial); through slirp they would be looked for on whatever
        # network the host is on. The host itself is SLIRP_HOST here, which
        # slirp maps to the host's loopback: ask the resolver there instead.
        options += f" forward={SLIRP_HOST}"
        print(f"boot: user networking: forwarding to the host's 127.0.0.1:53 (the guest's {SLIRP_HOST}) "
              f"instead of {', '.join(appliance.forward)}", file=sys.stderr)
    return net, options, (f"dig @127.0.0.1 -p {args.port} ns0.d1.signpo.st   (and +tcp); "
                          f"curl http://127.0.0.1:{net.metrics_port}/metrics   (the dashboard: /)")


def built_for_memory(manifest: Path, fallback: int = 128) -> int:
    """The guest memory the image was built for (the appliance's kernel and
    Debian's need different amounts), or ``fallback`` without a manifest."""
    try:
        return int(json.loads(manifest.read_text())["kernel"]["memory_mb"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--tap", metavar="NAME", help="QEMU's NIC on this tap device")
    group.add_argument("--user", dest="mode", action="store_const", const="user", help="QEMU user networking")
    group.add_argument("--auto", dest="mode", action="store_const", const="auto",
                       help="tap when it is set up, else user networking")
    ap.add_argument("--port", type=int, default=5353, help="host port for --user (default 5353)")
    ap.add_argument("--memory", "-m", type=int, default=None,
                    help="guest memory in MiB (default: what the image was built for, its manifest's memory_mb)")
    ap.add_argument("--append", default="", help="more kernel command-line words, e.g. 'forward=192.0.2.1'")
    ap.add_argument("--kernel", type=Path, default=qemu.IMAGES / "dns.vmlinuz")
    ap.add_argument("--initrd", type=Path, default=qemu.IMAGES / "dns.initrd")
    ap.add_argument("--machine", help="QEMU -M (default: microvm for the appliance's kernel, pc for Debian's)")
    ap.add_argument("--print", action="store_true", help="print the QEMU command instead of running it")
    args = ap.parse_args(argv)
    if args.tap:
        args.mode = "tap"
    args.mode = args.mode or "auto"
    for f in (args.kernel, args.initrd):
        if not f.exists():
            print(f"boot: {f} is missing: run `make image` first", file=sys.stderr)
            return 1
    if args.memory is None:
        args.memory = built_for_memory(args.kernel.parent / "dns.manifest.json")
    appliance = configured()
    net, options, hint = plan(args, appliance)
    machine = args.machine or qemu.default_machine(args.kernel)
    cmd = qemu.command(args.kernel, args.initrd, memory=args.memory, net=net,
                       append=f"{options} {args.append}".strip(), console_on_stdio=True, machine=machine)
    power_off = "system_powerdown" if machine.startswith(qemu.MICROVM) else "sendkey ctrl-alt-delete"
    if args.print:
        print(shlex.join(cmd))
        return 0
    print(f"boot: {shlex.join(cmd)}", file=sys.stderr)
    print(f"boot: once it says 'ready', try:  {hint}", file=sys.stderr)
    print(f"boot: Ctrl-A X quits; Ctrl-A C, then `{power_off}`, powers off cleanly", file=sys.stderr)
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
