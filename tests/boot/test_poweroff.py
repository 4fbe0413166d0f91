"""A clean power-off on each machine the appliance's kernel boots on, the way a
host asks for one: QEMU's ``system_powerdown`` (the ACPI power button: on
microvm its Generic Event Device notifies the PNP0C0C button, on pc the PM1
fixed power button fires; the kernel's tiny power-button driver sends PID 1
SIGPWR either way), and on pc also ``sendkey ctrl-alt-delete`` through the
PS/2 keyboard (which microvm does not have). Each boot uses QEMU's user
networking (no root, nothing leaves QEMU's process) and waits for ``ready:``
before asking. QEMU must then exit by itself (ACPI S5: the GED's sleep
register on microvm, PM1a on pc), with PID 1's reason on the console.
"""
from __future__ import annotations

import socket

import pytest
import qemu  # noqa: E402  (build/, put on the path by conftest)

from .conftest import needs_qemu

pytestmark = [pytest.mark.qemu, needs_qemu]

BOOT_TIMEOUT = 300


def free_port() -> int:
    """A loopback port free for TCP and UDP both (slirp forwards both on it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@pytest.mark.parametrize(("machine", "request_line", "reason"), [
    (qemu.MICROVM, "system_powerdown", "power button"),
    (qemu.PC, "system_powerdown", "power button"),
    (qemu.PC, "sendkey ctrl-alt-delete", "ctrl-alt-del"),
])
def test_the_host_powers_the_appliance_off_cleanly(image, tmp_path, machine, request_line, reason):
    monitor = tmp_path / "monitor.sock"
    net = qemu.User(host_port=free_port(), metrics_port=free_port())
    cmd = qemu.command(qemu.IMAGES / "dns.vmlinuz", qemu.IMAGES / "dns.initrd", memory=image["kernel"]["memory_mb"],
                       net=net, monitor=monitor, machine=machine, append=f"ipv4={net.guest_ip}/24 ipv4-gateway=10.0.2.2")
    with qemu.Machine(cmd, monitor=monitor) as vm:
        assert vm.wait_for(b"ready:", BOOT_TIMEOUT) is not None, vm.console.decode(errors="replace")[-3000:]
        mark = len(vm.console)
        vm.send_monitor(request_line)
        code = vm.wait_exit(60)
        console = vm.console[mark:].decode(errors="replace")
        assert code == 0, f"QEMU did not exit after {request_line}; console:\n{console[-3000:]}"
        assert f"poweroff: clean ({reason})" in console
        assert "reboot: Power down" in console
        assert "Kernel panic" not in vm.console.decode(errors="replace")


def test_a_power_off_asked_for_while_booting_is_kept(image, tmp_path):
    """system_powerdown while PID 1 is still importing (before its loop has
    signal handlers): the kernel gives PID 1 no signal it has no handler for,
    so without build/init.py's keep_early_power_requests the request was lost
    and the guest ran on."""
    monitor = tmp_path / "monitor.sock"
    net = qemu.User(host_port=free_port(), metrics_port=free_port())
    cmd = qemu.command(qemu.IMAGES / "dns.vmlinuz", qemu.IMAGES / "dns.initrd", memory=image["kernel"]["memory_mb"],
                       net=net, monitor=monitor, append=f"ipv4={net.guest_ip}/24 ipv4-gateway=10.0.2.2")
    with qemu.Machine(cmd, monitor=monitor) as vm:
        # PID 1's first lines come from stage 1; its imports take a second or more after them under TCG
        assert vm.wait_for(b"rng: ready", BOOT_TIMEOUT) is not None, vm.console.decode(errors="replace")[-3000:]
        vm.send_monitor("system_powerdown")
        code = vm.wait_exit(120)
        console = vm.console.decode(errors="replace")
        assert code == 0, f"QEMU did not exit after an early system_powerdown; console:\n{console[-3000:]}"
        assert console.index("rng: ready") < console.index("poweroff: clean (power button)")
        assert "Kernel panic" not in console
