"""QEMU command lines and a running machine, shared by boot.py, floor.py and the tests.

The artefacts in images/ are the interface; this module only spells out the
QEMU options that boot them: the serial console, the NIC on a tap / user
networking / a ``dgram`` UDP socket, and a monitor socket for
``system_powerdown`` (or ``sendkey ctrl-alt-delete`` on ``pc``). QEMU runs
TCG unless DNS_APPLIANCE_ACCEL=kvm asks for KVM (see ``kvm_usable``).

The machine: the appliance's own kernel boots on ``-M microvm`` (no PCI, no
SeaBIOS, its virtio devices memory-mapped and described by hardware-reduced
ACPI; about 0.4 CPU seconds less than ``pc`` under TCG, see the README's
Figures), any other kernel (``KERNEL=debian``: its virtio modules are PCI
ones) on ``pc``, QEMU's default. An image's manifest says which kernel it has.
"""
from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import platform
import selectors
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
QEMU = "qemu-system-x86_64"
# The CPU model under TCG: QEMU's "max" (RDRAND among the rest, so the kernel
# RNG is ready before /init and PID 1 serves from its first interpreter).
# Fewer features (qemu64,+rdrand: no AVX2 for glibc and OpenSSL to pick, which
# TCG emulates) made no difference beyond the noise: the same images booted
# alternately with each, four rounds, used 4.58 against 4.64 and 4.34 against
# 4.49 CPU seconds of QEMU to the first answer (`python -m bench boot
# old=FOLDER@max new=FOLDER@qemu64,+rdrand`).
TCG_CPU = "max"
PC = "pc"
MICROVM = "microvm"


def default_machine(kernel: Path) -> str:
    """microvm for the appliance's own kernel (the manifest beside it says
    ``kind: appliance``; it has virtio-mmio, COM1 through ACPI and the ACPI
    power button microvm needs), pc for anything else: Debian's kernel, a
    kernel without a manifest, an older image whose kernel lacks them (those
    need ``machine=PC`` given: a manifest does not say which kernel options
    went in)."""
    try:
        kind = json.loads((kernel.parent / "dns.manifest.json").read_text())["kernel"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return PC
    return MICROVM if kind == "appliance" else PC


@functools.cache
def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz (x86-64 hosts only; None when it cannot be
    read). Under TCG the guest's RDTSC returns the host's counter, so this is
    the guest's TSC rate too. Read with RDTSC itself, from a page of code
    made executable for it (no file in /proc or /sys says it on every host),
    against CLOCK_MONOTONIC over 3 x 20 ms; the median."""
    if platform.machine() != "x86_64":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError):        # a host that refuses writable+executable pages
        return None
    page.write(b"\x0f\x31"              # rdtsc            edx:eax = the counter
               b"\x48\xc1\xe2\x20"      # shl rdx, 32
               b"\x48\x09\xd0"          # or rax, rdx
               b"\xc3")                  # ret
    host_tsc_khz.page = page             # type: ignore[attr-defined]  # the code lives as long as the function
    rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    rates = []
    for _ in range(3):
        t0, c0 = time.monotonic_ns(), rdtsc()
        time.sleep(0.02)
        t1, c1 = time.monotonic_ns(), rdtsc()
        rates.append((c1 - c0) * 1_000_000 // (t1 - t0))
    khz = int(statistics.median(rates))
    return khz if khz > 0 else None


def microvm_kernel_words(accel: str) -> list[str]:
    """What the kernel must be told on microvm under TCG. Its ACPI is
    hardware-reduced: no HPET and no ACPI PM timer to calibrate the TSC
    against, and no PIT tick until the local APIC timer is calibrated, which
    needs the TSC's rate. Calibrating against the PIT alone fails when QEMU's
    thread is descheduled mid-way (seen at load 3 on 2 cores), and the kernel
    then waits for a tick forever; ``tsc_early_khz`` gives it the rate instead.
    ``tsc=reliable``: with jiffies as the only other clock, the clocksource
    watchdog took the lost ticks of a busy host for a bad TSC and moved the
    guest's clock to jiffies (4 ms steps)."""
    if accel != "tcg":
        return []
    khz = host_tsc_khz()
    return [*([f"tsc_early_khz={khz}"] if khz else []), "tsc=reliable"]


def kvm_usable() -> bool:
    """True only when DNS_APPLIANCE_ACCEL=kvm asks for KVM.
    A /dev/kvm that opens, and even one that starts and quits a paused guest,
    does not mean KVM runs one: on a nested host seen here the probe passed
    and every boot then died in the kernel's first XRSTOR ("emulation
    failure"), so every boot test failed. Whether it works cannot be told
    short of booting, and every figure and target here is TCG's, so TCG is
    the default and KVM an opt-in."""
    return os.environ.get("DNS_APPLIANCE_ACCEL") == "kvm"


def accelerator() -> str:
    return "kvm" if kvm_usable() else "tcg"


@dataclass(frozen=True)
class Tap:
    ifname: str


@dataclass(frozen=True)
class User:
    """QEMU user networking (slirp): no root needed. Forwards host
    127.0.0.1:PORT (udp and tcp) to the guest's 53, and 127.0.0.1:METRICS
    (tcp) to its operator's port, 9153. Not ``restrict=on``: slirp then
    silently drops the replies to forwarded UDP."""
    host_port: int = 5353
    guest_ip: str = "10.0.2.15"
    metrics_port: int = 9153


@dataclass(frozen=True)
class Dgram:
    """Raw frames to and from a host UDP socket (QEMU >= 7.2), no root needed."""
    local: tuple[str, int]
    remote: tuple[str, int]


def netdev_args(net, mac: str | None = None, *, bus: str = "pci") -> list[str]:
    if net is None:
        return ["-nic", "none"]
    if isinstance(net, Tap):
        nd = f"tap,id=n0,ifname={net.ifname},script=no,downscript=no"
    elif isinstance(net, User):
        nd = (f"user,id=n0,net=10.0.2.0/24,dhcpstart={net.guest_ip},"
              f"hostfwd=udp:127.0.0.1:{net.host_port}-{net.guest_ip}:53,"
              f"hostfwd=tcp:127.0.0.1:{net.host_port}-{net.guest_ip}:53,"
              f"hostfwd=tcp:127.0.0.1:{net.metrics_port}-{net.guest_ip}:9153")
    elif isinstance(net, Dgram):
        nd = (f"dgram,id=n0,local.type=inet,local.host={net.local[0]},local.port={net.local[1]},"
              f"remote.type=inet,remote.host={net.remote[0]},remote.port={net.remote[1]}")
    else:
        raise TypeError(f"unknown network {net!r}")
    dev = f"virtio-net-{bus},netdev=n0" + (f",mac={mac}" if mac else "")
    return ["-netdev", nd, "-device", dev]


def command(kernel: Path, initrd: Path, *, memory: int = 128, append: str = "", net=None,
            monitor: Path | None = None, accel: str | None = None, rng: bool = True,
            console_on_stdio: bool = False, cpu: str | None = None, machine: str | None = None) -> list[str]:
    """The QEMU argv. The kernel command line always starts with the serial
    console and ``panic=-1`` (reboot at once on a panic, which ``-no-reboot``
    turns into QEMU exiting: a dead guest never hangs or loops). ``machine``
    is QEMU's ``-M`` (default: ``default_machine(kernel)``; ``pc`` is given
    as no ``-M`` at all, QEMU's default); with ``microvm...`` the virtio
    devices are virtio-mmio ones and the kernel gets ``microvm_kernel_words``."""
    accel = accel or accelerator()
    machine = machine or default_machine(kernel)
    micro = machine.startswith(MICROVM)
    bus = "device" if micro else "pci"
    words = ["console=ttyS0", "panic=-1", *(microvm_kernel_words(accel) if micro else []), append]
    cmd = [QEMU, *([] if machine == PC else ["-M", machine]), "-accel", accel, "-m", str(memory), "-nodefaults",
           "-no-user-config",
           "-display", "none", "-no-reboot",
           "-cpu", cpu or ("host" if accel == "kvm" else TCG_CPU),
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", " ".join(w for w in words if w)]
    cmd += ["-serial", "mon:stdio" if console_on_stdio else "stdio"]
    if monitor is not None:
        cmd += ["-monitor", f"unix:{monitor},server=on,wait=off"]
    if rng:
        # a hardware RNG for the guest: its kernel RNG is ready at once
        cmd += ["-device", f"virtio-rng-{bus}"]
    cmd += netdev_args(net, bus=bus)
    return cmd


@dataclass
class Machine:
    """A QEMU process whose serial console is collected as it runs."""
    cmd: list[str]
    monitor: Path | None = None
    prefix: tuple[str, ...] = ()        # e.g. ("ip", "netns", "exec", NAME): runs QEMU inside a namespace
    console: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    proc: subprocess.Popen | None = None

    def start(self) -> Machine:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*self.prefix, *self.cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        os.set_blocking(self.proc.stdout.fileno(), False)
        return self

    def pump(self, wait: float = 0) -> bool:
        """Reads what the console has; False once QEMU has closed it."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(wait, 0)):
                return True
        chunk = self.proc.stdout.read()
        if chunk:
            self.console += chunk
            return True
        return chunk is None   # None: nothing yet; b"": end of file

    def wait_for(self, marker: bytes, timeout: float, since: int = 0) -> float | None:
        """Seconds from QEMU start until ``marker`` appears on the console after
        offset ``since``, or None on timeout / QEMU exit."""
        deadline = time.monotonic() + timeout
        while True:
            if self.console.find(marker, since) >= 0:
                return time.monotonic() - self.started
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self.pump(min(left, 0.2)):
                return None

    def send_monitor(self, line: str, timeout: float = 10) -> str:
        """Runs one human-monitor command; returns what the monitor printed.
        Waits for the prompt before sending and for the next prompt after, so
        the command has been carried out when this returns."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(timeout)
                    s.connect(str(self.monitor))
                    _read_until(s, b"(qemu) ", deadline)
                    s.sendall(line.encode() + b"\n")
                    return _read_until(s, b"(qemu) ", deadline).decode(errors="replace")
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)       # QEMU has not opened the socket yet

    def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.2)
        if self.proc.poll() is not None:
            # QEMU is gone: collect what it wrote before exiting
            while self._drain():
                pass
        return self.proc.poll()

    def _drain(self) -> bool:
        chunk = self.proc.stdout.read()
        if chunk:
            self.console += chunk
            return True
        return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Machine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


def _read_until(sock: socket.socket, marker: bytes, deadline: float) -> bytes:
    data = b""
    while marker not in data:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(4096)
        if not chunk:           # QEMU closed the monitor (it is exiting): the command ran
            break
        data += chunk
    return data


@dataclass
class RunResult:
    seconds: float | None
    console: bytes
    exit_code: int | None
    cpu: float | None = None        # QEMU's CPU seconds when the marker came (under TCG: what the boot cost)


def run_until(cmd: list[str], marker: bytes, timeout: float) -> RunResult:
    """Boots, waits for ``marker`` on the console, then lets the guest power off
    (the floor's init does so itself) or kills it."""
    with Machine(cmd) as m:
        seconds = m.wait_for(marker, timeout)
        cpu = process_cpu_seconds(m.proc.pid) if seconds is not None else None
        code = m.wait_exit(10)
        return RunResult(seconds, bytes(m.console), code, cpu)


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
