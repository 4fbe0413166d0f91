"""``python -m bench boot [--runs N] [--cpu MODEL ...] [--machine M ...] [LABEL=]FOLDER[@CPU] ...``: seconds
from QEMU's start to the first DNS answer for image folders (each holding a
dns.vmlinuz and dns.initrd; default images/), booted in turn, round after
round, so that the noise of shared cores falls on each alike. Each boot runs
on a tap in a namespace of its own with ``printk.time=1``, and the phases are
read from its console: where the kernel starts and ends unpacking the
initramfs and starts /init, PID 1's first line, the
line PID 1 prints once its imports are done (``cmdline:``), ``ready:``, and
the answer as the host sees it, with the CPU seconds QEMU had used by then
(under TCG the guest is QEMU's CPU: that figure moves less with the load of
other jobs on shared cores than the wall-clock one). Prints every boot, then the medians and the
load average. Needs root and QEMU; not run by plain ``python -m bench``.

    .venv/bin/python -m bench boot --runs 3 old=/tmp/old/images new=images
    .venv/bin/python -m bench boot --cpu max --cpu qemu64 images
    .venv/bin/python -m bench boot before=/tmp/old/images@max after=images
    .venv/bin/python -m bench boot --append '' --append quiet images
    .venv/bin/python -m bench boot --machine pc --machine microvm images

The machine is qemu.py's default for each folder's kernel (microvm for the
appliance's own, as its manifest says) unless ``--machine`` names it; an
image from before the appliance's kernel had virtio-mmio needs ``--machine pc``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, cpu_seconds

HOST, GUEST = "192.0.2.1", "192.0.2.2"
NAME = "ns0.d1.signpo.st"        # in the baked-in zone: answered without a forwarder
TIMEOUT = 120
KERNEL_LINE = re.compile(rb"^\[\s*(\d+\.\d+)\] (.*)$", re.M)
INIT_LINE = re.compile(rb"^\[init (\d+\.\d+)\] (.*)$", re.M)
# what each kernel phase is called on the console: the first line that starts
# with one of these (a kernel with a RAM disk says it is trying to unpack)
KERNEL_PHASES = {"unpack": (b"Unpacking initramfs", b"Trying to unpack rootfs image as initramfs"),
                 "unpacked": (b"Freeing initrd memory",), "init": (b"Run /init as init process",)}
COLUMNS = ("unpack", "unpacked", "init", "pid1", "imports", "ready", "answer")


@dataclass
class Boot:
    seconds: float
    cpu: float                  # QEMU's CPU seconds until then: what the boot cost, less the waiting for a core
    phases: dict[str, float]


def phases(console: bytes) -> dict[str, float]:
    """Guest seconds since boot of each phase found on the console."""
    out: dict[str, float] = {}
    for stamp, text in KERNEL_LINE.findall(console):
        for name, start in KERNEL_PHASES.items():
            if name not in out and text.startswith(start):
                out[name] = float(stamp)
    for stamp, text in INIT_LINE.findall(console):
        out.setdefault("pid1", float(stamp))
        if text.startswith(b"cmdline:"):
            out.setdefault("imports", float(stamp))
        elif text.startswith(b"ready:"):
            out.setdefault("ready", float(stamp))
    return out


def boot(folder: Path, *, memory: int, cpu: str | None, append: str = "", machine: str | None = None) -> Boot:
    import dns.message
    import dns.query
    import qemu

    from tests.netns import Namespace
    with Namespace("bootbench") as ns:
        ns.add_tap("tap0", f"{HOST}/24")
        cmd = qemu.command(folder / "dns.vmlinuz", folder / "dns.initrd", memory=memory, net=qemu.Tap("tap0"),
                           cpu=cpu, machine=machine,
                           append=f"ipv4={GUEST}/24 ipv4-gateway={HOST} printk.time=1 {append}".strip())
        with qemu.Machine(cmd, prefix=("ip", "netns", "exec", ns.name)) as vm:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and vm.proc.poll() is None:
                vm.pump(0)
                try:
                    with ns.entered():
                        dns.query.udp(dns.message.make_query(NAME, "A"), GUEST, timeout=0.1)
                except Exception:       # noqa: BLE001 - not up yet: ask again
                    continue
                seconds = time.monotonic() - vm.started
                cpu = cpu_seconds(vm.proc.pid)
                vm.wait_for(b"ready:", 5)
                console = bytes(vm.console)
                return Boot(seconds, cpu, phases(console))
            raise RuntimeError(f"{folder}: no answer within {TIMEOUT} s; console:\n"
                               + vm.console.decode(errors="replace")[-3000:])


def row(label: str, b: Boot) -> str:
    cells = [f"{b.phases[c]:5.2f}" if c in b.phases else "    -" for c in COLUMNS[:-1]]
    return f"  {label:<22} {' '.join(cells)} {b.seconds:6.2f} {b.cpu:6.2f}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench boot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", default=[str(ROOT / "images")], help="[LABEL=]FOLDER[@CPU] of images, booted with -cpu CPU if given")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=64, help="guest MB (default 64, issue 17's target)")
    ap.add_argument("--cpu", action="append", help="QEMU -cpu model (repeat to compare; default qemu.py's)")
    ap.add_argument("--append", action="append",
                    help="more kernel command-line words, e.g. quiet (repeat to compare; '' for none). The "
                         "kernel's phases need its info lines: with quiet only PID 1's and the answer show")
    ap.add_argument("--machine", action="append",
                    help="QEMU -M, e.g. pc or microvm (repeat to compare; default qemu.py's for each kernel)")
    args, _ = ap.parse_known_args(argv)
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        print("bench boot: needs root (a namespace with a tap) and qemu-system-x86_64", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "build"))
    variants = []
    for spec in args.folders:
        label, eq, folder = spec.partition("=")
        folder, label = (folder, label) if eq else (label, Path(label).name or label)
        folder, at, own_cpu = folder.partition("@")
        for cpu in [own_cpu] if at else args.cpu or [None]:
            for words in args.append or [""]:
                for machine in args.machine or [None]:
                    variants.append((f"{label}{f' -M {machine}' if machine else ''}{f' -cpu {cpu}' if cpu else ''}"
                                     f"{f' +{words}' if words else ''}", Path(folder), cpu, words, machine))
    results: dict[str, list[Boot]] = {label: [] for label, *_ in variants}
    load = os.getloadavg()
    print(f"bench boot: -m {args.memory}, {args.runs} rounds, load average {load[0]:.2f} {load[1]:.2f}")
    print(f"  {'':<22} {' '.join(f'{c:>5}' for c in COLUMNS[:-1])} {COLUMNS[-1]:>6} {'cpu':>6}"
          "   (guest s since boot; answer: host s since QEMU started; cpu: QEMU's CPU s until the answer)")
    for _ in range(args.runs):
        for label, folder, cpu, words, machine in variants:
            b = boot(folder, memory=args.memory, cpu=cpu, append=words, machine=machine)
            results[label].append(b)
            print(row(label, b), flush=True)
    print("medians:")
    for label, boots in results.items():
        median = {c: statistics.median(b.phases[c] for b in boots) for c in COLUMNS[:-1]
                  if all(c in b.phases for b in boots)}
        print(row(label, Boot(statistics.median(b.seconds for b in boots), statistics.median(b.cpu for b in boots),
                              median)))
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f}")
    return 0
