#!/usr/bin/env python3
"""The floor: how long the same kernel takes to boot a trivial /init.

The trivial init is a 181-byte static x86-64 ELF program, assembled here by hand so
the measurement needs no toolchain and no busybox: it writes "floor: ready" to
the console and powers the machine off. Booting it under the same QEMU
settings as the appliance gives the least time any /init could reach, which is
what the appliance's "seconds to first answer" is compared with.

    .venv/bin/python build/floor.py            # builds images/floor.initrd, boots it 3 times
"""
from __future__ import annotations

import argparse
import io
import statistics
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpio  # noqa: E402
import qemu  # noqa: E402

LOAD_ADDRESS = 0x400000
MESSAGE = b"floor: ready\n"


def trivial_init_elf() -> bytes:
    """write(1, MESSAGE); reboot(POWER_OFF); loop. ELF64 header + one PT_LOAD."""
    code_offset = 64 + 56
    code = bytearray()
    code += b"\xb8\x01\x00\x00\x00"                 # mov eax, 1 (write)
    code += b"\xbf\x01\x00\x00\x00"                 # mov edi, 1
    lea_at = len(code)
    code += b"\x48\x8d\x35\x00\x00\x00\x00"         # lea rsi, [rip + msg]
    code += b"\xba" + struct.pack("<I", len(MESSAGE))  # mov edx, len
    code += b"\x0f\x05"                             # syscall
    code += b"\xb8\xa9\x00\x00\x00"                 # mov eax, 169 (reboot)
    code += b"\xbf\xad\xde\xe1\xfe"                 # mov edi, LINUX_REBOOT_MAGIC1
    code += b"\xbe\x69\x19\x12\x28"                 # mov esi, LINUX_REBOOT_MAGIC2
    code += b"\xba\xdc\xfe\x21\x43"                 # mov edx, LINUX_REBOOT_CMD_POWER_OFF
    code += b"\x0f\x05"                             # syscall
    code += b"\xeb\xfe"                             # jmp . (only if poweroff failed)
    msg_at = len(code)
    struct.pack_into("<i", code, lea_at + 3, msg_at - (lea_at + 7))
    code += MESSAGE
    size = code_offset + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, LOAD_ADDRESS + code_offset,
                                 64, 0, 0, 64, 56, 1, 0, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, LOAD_ADDRESS, LOAD_ADDRESS, size, size, 0x1000)
    return header + program + bytes(code)


def floor_initrd() -> bytes:
    out = io.BytesIO()
    cpio.write(out, [
        cpio.directory("dev"),
        cpio.char_device("dev/console", 5, 1),
        cpio.Entry("init", 0o100755, trivial_init_elf()),
    ])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default=str(qemu.IMAGES / "dns.vmlinuz"))
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--append", default="", help="more kernel command-line words (e.g. quiet)")
    ap.add_argument("--machine", help="QEMU -M (default: microvm for the appliance's kernel, as its manifest "
                                      "says, pc for any other; e.g. pc to compare)")
    args = ap.parse_args(argv)
    initrd = qemu.IMAGES / "floor.initrd"
    initrd.parent.mkdir(parents=True, exist_ok=True)
    initrd.write_bytes(floor_initrd())
    machine = args.machine or qemu.default_machine(Path(args.kernel))
    times: list[float] = []
    cpus: list[float] = []
    for i in range(args.runs):
        cmd = qemu.command(Path(args.kernel), initrd, memory=args.memory, net=None, append=args.append,
                           machine=machine)
        result = qemu.run_until(cmd, b"floor: ready", timeout=args.timeout)
        if result.seconds is None:
            print(f"floor: run {i + 1}: no 'ready' within {args.timeout:.0f} s", file=sys.stderr)
            print(result.console[-2000:].decode(errors="replace"), file=sys.stderr)
            return 1
        times.append(result.seconds)
        cpus.append(result.cpu or 0.0)
        print(f"floor: run {i + 1}: {result.seconds:.2f} s to ready, {result.cpu or 0:.2f} CPU s of QEMU "
              f"({qemu.accelerator()})")
    print(f"floor: median {statistics.median(times):.2f} s ({statistics.median(cpus):.2f} CPU s) over "
          f"{len(times)} runs, kernel {args.kernel}, -m {args.memory}, -M {machine}"
          f"{f', +{args.append!r}' if args.append else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
