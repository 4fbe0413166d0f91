"""images/dns.xl: the appliance as a Xen PVH guest (``xl create images/dns.xl``).

PVH boots the same kernel file QEMU boots (images/dns.vmlinuz) through its
PVH entry point (the kernel's XEN_ELFNOTE_PHYS32_ENTRY note); the toolstack
accepts the compressed bzImage (zstd for the appliance's kernel, xz for
Debian's) and unpacks the ELF inside it. Under Xen the NIC is a vif, driven by
xen-netfront (built into the appliance's kernel next to virtio_net, with
CONFIG_XEN_PVH and the hvc0 console; with Debian's kernel a module PID 1
loads), and the console is hvc0. The memory is what the image was measured to
run in: 64 MB with the appliance's kernel, 128 MB with Debian's. ``xl shutdown`` makes
the guest kernel run /sbin/poweroff, which the image provides: it sends
SIGTERM to PID 1, which stops serving and powers off.

Xen cannot run where this was written (no Xen hypervisor, and no nested
virtualisation): the config is generated and checked (tests/boot), the
kernel's PVH entry is checked (``make_image.py --pvh`` boots it under QEMU,
which uses the same entry point), but no Xen boot has been tried.

The command line is the one the QEMU boot uses, with config.py's address:
``xl create images/dns.xl 'extra="ipv4=... forward=..."'`` cannot add to it
(xl's ``extra`` is the same field), so edit the file, or rebuild after
changing config.py.
"""
from __future__ import annotations

import re
from pathlib import Path

BRIDGE = "xenbr0"
MEMORY_MB = 128


def appliance_cmdline(ipv4: str, gateway: str | None, forward: list[str]) -> str:
    words = [f"ipv4={ipv4}"]
    if gateway:
        words.append(f"ipv4-gateway={gateway}")
    words += [f"forward={f}" for f in forward]
    return " ".join(words)


def guest_config(images: Path, *, ipv4: str | None = None, gateway: str | None = None,
                 forward: list[str] | None = None, name: str = "dns-appliance",
                 bridge: str = BRIDGE, memory: int = MEMORY_MB) -> str:
    if ipv4 is None:
        from unikernel.config import load
        appliance = load(Path(__file__).resolve().parent.parent / "config.py")
        ipv4, gateway, forward = appliance.ipv4, appliance.ipv4_gateway, appliance.forward
    cmdline = f"console=hvc0 panic=-1 {appliance_cmdline(ipv4, gateway, forward or [])}"
    return f"""\
# The DNS appliance as a Xen PVH guest. Made by `make image`; start it with
#   xl create -c {images}/dns.xl
# (dom0 needs the bridge below). The console is hvc0; `xl shutdown` and
# `xl destroy` stop it. Written by build/xen.py.
name = "{name}"
type = "pvh"
kernel = "{images}/dns.vmlinuz"
ramdisk = "{images}/dns.initrd"
cmdline = "{cmdline}"
memory = {memory}
vcpus = 1
# one NIC: xen-netfront in the guest, eth0 there, on dom0's bridge
vif = [ "bridge={bridge}" ]
# the appliance powers off on every error; a panic (panic=-1) reboots, which
# must end the guest too rather than boot it again in a loop
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
"""


_LINE = re.compile(r'^\s*([a-z_]+)\s*=\s*(.+?)\s*$')


def parse(text: str) -> dict[str, object]:
    """Reads the subset of xl.cfg syntax that guest_config writes: strings,
    integers and lists of strings. Raises ValueError on anything else (so a
    test catches a config xl would refuse)."""
    out: dict[str, object] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"line {number}: not `key = value`: {line!r}")
        key, value = m.groups()
        if key in out:
            raise ValueError(f"line {number}: {key} set twice")
        if re.fullmatch(r'"[^"]*"', value):
            out[key] = value[1:-1]
        elif re.fullmatch(r"\d+", value):
            out[key] = int(value)
        elif re.fullmatch(r'\[\s*("[^"]*"\s*(,\s*"[^"]*"\s*)*)?\]', value):
            out[key] = re.findall(r'"([^"]*)"', value)
        else:
            raise ValueError(f"line {number}: value is not a string, integer or list: {value!r}")
    return out
