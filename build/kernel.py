"""The appliance's own kernel: Linux from Debian's ``linux-source-6.1``, configured
for this one program and nothing else.

The configuration is the committed fragment ``build/kernel.config`` merged onto
``allnoconfig`` together with the kernel's own tinyconfig fragments, by the
kernel's ``scripts/kconfig/merge_config.sh -n``; every option the fragment asks
for is then checked in the final ``.config`` (merge_config only warns), so a
dependency the fragment missed fails the build instead of quietly dropping a
driver. Everything is built in (no modules).

Two files come out. ``bzImage`` (zstd, 1.5 MB) is the image's kernel: QEMU's
``-kernel`` boots it by the Linux boot protocol, and Xen's toolstack unpacks
the ELF inside it and starts that at its PVH entry. ``vmlinux`` stripped of
its symbols is that ELF itself, which QEMU and Xen can also boot directly
through the PVH entry note, with nothing to decompress; it is 12 MB, though,
since x86-64's linker script aligns text, rodata and data to 2 MB pages and
the file keeps the gaps (``make_image.py --pvh`` writes it as dns.vmlinux).

Reproducible: the build's time stamp, user, host and build number are fixed,
the locale is C, and source paths are mapped away by the kernel's own
``-fmacro-prefix-map``; two builds of the same inputs give the same bytes
(tests/boot/test_kernel.py builds it twice). A build is kept in the cache
under the hash of its inputs (the source pin, the fragment, this file, the
compiler and linker versions), so it is compiled once per machine and input.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

import elf  # noqa: E402
import packages  # noqa: E402

BUILD = Path(__file__).resolve().parent
FRAGMENT = BUILD / "kernel.config"
# The kernel's own tinyconfig, as `make tinyconfig` assembles it, under ours.
TINY_FRAGMENTS = ("kernel/configs/tiny-base.config", "kernel/configs/tiny.config", "arch/x86/configs/tiny.config")
ARCH = "x86_64"
TARBALL = "./usr/src/linux-source-6.1.tar.xz"
# Lines kbuild prints for a build of this fragment (about one per target,
# counted on a build of it); only used to show how far a build has got.
EXPECTED_STEPS = 1400
XEN_ELFNOTE_PHYS32_ENTRY = 18

_OPTION = re.compile(r"^(?:(CONFIG_\w+)=(.*)|# (CONFIG_\w+) is not set)$")


class KernelError(Exception):
    """The kernel cannot be built; the message says why."""


@dataclass(frozen=True)
class Kernel:
    path: Path                  # the bzImage in the cache
    vmlinux: Path               # the stripped ELF inside it (PVH entry)
    config: Path                # the final .config it was built from
    release: str                # e.g. "6.1.192"
    built_seconds: float | None  # None when it came from the cache


def requested_options(text: str) -> dict[str, str]:
    """CONFIG_NAME -> value ("n" for "is not set") of a config fragment."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _OPTION.match(line.strip())
        if m:
            if m.group(1):
                out[m.group(1)] = m.group(2)
            else:
                out[m.group(3)] = "n"
    return out


def unexplained_options(text: str) -> list[str]:
    """Options of a fragment that have no comment line right above them (the
    fragment's rule: every option says why it is there). A comment may cover a
    run of consecutive options."""
    bad = []
    explained = False
    for line in text.splitlines():
        line = line.strip()
        if _OPTION.match(line):
            if not explained:
                bad.append(line)
        else:
            explained = line.startswith("#")       # a reason; a blank line ends its run
    return bad


def config_mismatches(requested: dict[str, str], final_config: str) -> list[str]:
    """The requested options the final .config does not hold as asked."""
    final = requested_options(final_config)
    return [f"{name}: asked {value}, got {final.get(name, 'n (not offered: a dependency is missing)')}"
            for name, value in requested.items() if final.get(name, "n") != value]


def build_environment(epoch: int = packages.SOURCE_DATE_EPOCH) -> dict[str, str]:
    """What makes two builds give the same bytes: no clock, no user or host
    name, no build counter, one locale."""
    stamp = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(epoch))
    return {"KBUILD_BUILD_TIMESTAMP": stamp, "KBUILD_BUILD_USER": "dns", "KBUILD_BUILD_HOST": "appliance",
            "KBUILD_BUILD_VERSION": "1", "LC_ALL": "C", "TZ": "UTC", "ARCH": ARCH}


def toolchain() -> str:
    """The compiler's and linker's versions: a different toolchain is a different input."""
    lines = []
    for tool in ("gcc", "ld"):
        try:
            result = subprocess.run([tool, "--version"], capture_output=True, text=True)
        except FileNotFoundError as e:
            raise KernelError(f"{tool} is missing: `make deps` installs the kernel's build tools") from e
        lines.append(result.stdout.splitlines()[0] if result.stdout else tool)
    return "\n".join(lines)


def input_digest(source: packages.Deb) -> str:
    h = hashlib.sha256()
    h.update(repr((source, TINY_FRAGMENTS, ARCH, sorted(build_environment().items()))).encode())
    h.update(toolchain().encode())
    for path in (FRAGMENT, Path(__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()


def unpack_source(source_deb: Path, into: Path) -> Path:
    """The tarball inside linux-source-6.1's .deb, unpacked once (renamed into
    place only when complete); returns the source tree."""
    if not into.exists():
        into.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=into.name + ".", dir=into.parent))
        try:
            deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(source_deb)], stdout=subprocess.PIPE)
            inner = subprocess.Popen(["tar", "-xO", TARBALL], stdin=deb.stdout, stdout=subprocess.PIPE)
            deb.stdout.close()
            unpacked = subprocess.run(["tar", "-xJ", "-C", str(tmp)], stdin=inner.stdout)
            inner.stdout.close()
            if inner.wait() or deb.wait() or unpacked.returncode:
                raise KernelError(f"could not unpack {TARBALL} from {source_deb.name}")
            tmp.rename(into)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    trees = [p for p in into.iterdir() if (p / "Makefile").exists()]
    if len(trees) != 1:
        raise KernelError(f"{into} does not hold one kernel source tree")
    return trees[0]


def run_logged(command: list[str], cwd: Path, env: dict[str, str], log: TextIO,
               on_line=None) -> int:
    """Runs a command with its output appended to ``log`` line by line."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    for line in proc.stdout:
        log.write(line)
        if on_line is not None:
            on_line(line)
    return proc.wait()


class CompileProgress:
    """Shows how far the compile has got: a live line on a terminal, a line
    every 10 % otherwise (CI logs)."""

    def __init__(self, out: TextIO, began: float) -> None:
        self.out, self.began = out, began
        self.live = out.isatty()
        self.steps = 0
        self.shown = 0

    def line(self, text: str) -> None:
        words = text.split()
        if len(words) < 2 or not words[0].isupper():      # kbuild's "  CC      kernel/fork.o"
            return
        self.steps += 1
        done = min(self.steps, EXPECTED_STEPS)
        elapsed = time.monotonic() - self.began
        if self.live:
            bar = "#" * (20 * done // EXPECTED_STEPS)
            print(f"\r      [{bar:<20}] {self.steps}/~{EXPECTED_STEPS} {elapsed:5.0f} s {words[-1][:40]:<40}",
                  end="", file=self.out, flush=True)
        elif 10 * done // EXPECTED_STEPS > self.shown:
            self.shown = 10 * done // EXPECTED_STEPS
            print(f"      {10 * self.shown} % ({self.steps} steps, {elapsed:.0f} s)", file=self.out, flush=True)

    def finish(self) -> None:
        if self.live:
            print(file=self.out)


def release_of(source_tree: Path) -> str:
    fields = {}
    with open(source_tree / "Makefile") as f:
        for line in f:
            name, eq, value = line.partition("=")
            if eq and name.strip() in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
                fields[name.strip()] = value.strip()
            if len(fields) == 3:
                break
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"


def has_pvh_entry(vmlinux: bytes) -> bool:
    notes = elf.section(vmlinux, ".notes") or b""
    return elf.has_note(notes, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY)


def build(source_deb: Path, cache: Path, *, source: packages.Deb = packages.KERNEL_SOURCE,
          jobs: int | None = None, out: TextIO = sys.stdout) -> Kernel:
    """The appliance kernel for these inputs: from the cache, or compiled now
    (a few minutes on two cores)."""
    digest = input_digest(source)
    kernels = cache / "kernel"
    done = kernels / f"vmlinux-{digest[:16]}"
    tree = unpack_source(source_deb, kernels / f"source-{source.sha256[:16]}")
    release = release_of(tree)
    if all((done / name).exists() for name in ("bzImage", "vmlinux", "config")):
        return Kernel(done / "bzImage", done / "vmlinux", done / "config", release, None)

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=done.name + ".", dir=kernels))
    failed_log = kernels / f"failed-{digest[:16]}.log"      # where a failed build's log is kept
    objects = work / "obj"
    objects.mkdir()
    env = {**os.environ, **build_environment()}
    try:
        with open(work / "build.log", "w") as log:
            fragments = [str(tree / f) for f in TINY_FRAGMENTS] + [str(FRAGMENT)]
            code = run_logged(["sh", "scripts/kconfig/merge_config.sh", "-n", "-O", str(objects), *fragments],
                              tree, env, log)
            config = (objects / ".config").read_text() if (objects / ".config").exists() else ""
            if code != 0 or not config:
                raise KernelError(f"merge_config.sh failed; see {failed_log}")
            wrong = config_mismatches(requested_options(FRAGMENT.read_text()), config)
            if wrong:
                raise KernelError("build/kernel.config asks for options the kernel does not give:\n  "
                                  + "\n  ".join(wrong))
            progress = CompileProgress(out, began)
            print(f"      compiling Linux {release} (make -j{jobs or os.cpu_count()} bzImage)", file=out, flush=True)
            code = run_logged(["make", "-C", str(tree), f"O={objects}", f"ARCH={ARCH}",
                               f"-j{jobs or os.cpu_count()}", "bzImage"], tree, env, log, progress.line)
            progress.finish()
        if code != 0:
            tail = (work / "build.log").read_text(errors="replace")[-3000:]
            raise KernelError(f"the kernel did not compile (log kept in {failed_log}):\n{tail}")
        # symbols and the compiler's .comment go; the program headers and the
        # PVH note that QEMU and Xen boot from stay (as arch/x86/boot does)
        subprocess.run(["objcopy", "-R", ".comment", "-S", str(objects / "vmlinux"), str(work / "vmlinux")],
                       check=True)
        if not has_pvh_entry((work / "vmlinux").read_bytes()):
            raise KernelError("the kernel has no PVH entry point (CONFIG_PVH)")
        shutil.copy(objects / "arch/x86/boot/bzImage", work / "bzImage")
        shutil.copy(objects / ".config", work / "config")
        shutil.rmtree(objects)          # ~100 MB of objects; a changed input rebuilds from nothing anyway
        seconds = time.monotonic() - began
        (work / "seconds").write_text(f"{seconds:.0f}\n")
        shutil.rmtree(done, ignore_errors=True)
        work.rename(done)
    finally:
        if work.exists():
            if (work / "build.log").exists():
                shutil.copy(work / "build.log", failed_log)
            shutil.rmtree(work, ignore_errors=True)
    return Kernel(done / "bzImage", done / "vmlinux", done / "config", release, seconds)
