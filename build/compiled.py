#!/usr/bin/env python3
"""The per-packet path compiled with mypyc: the links (tap, packet), the
stack's receive path, its Ethernet/ARP/IPv4/UDP layers, the reply frame and
the checksum (netstack), the DNS fast path (unikernel/wire.py, the server,
RRL).

What comes out is a folder that holds both packages whole: the compiled
modules as extension modules (``.so``) beside every other module's source,
and mypyc's shared runtime library at its top. A folder put first on
``sys.path`` therefore decides every import of ``netstack`` and
``unikernel``: Python's path finder prefers an extension module over the
``.py`` of the same name, and the sources that are not compiled come from
the same folder, not from the repository.

It is built once per input hash into ``~/.cache/dns-appliance/compiled/``
(``DNS_APPLIANCE_CACHE`` moves it), like the kernel: the hash covers every
source file of both packages (the copies are in the folder, and mypyc reads
the types of what the compiled modules import), this file, mypy's version,
gcc's and the Python headers compiled against. The folder's name is that
hash, and a caller asks for the folder of the sources as they are now, so a
stale build cannot be run: an edit means a new folder (14-35 s from
nothing on this machine's 2 shared cores, most of it gcc on mypyc's one C
file).

Two targets: ``host``, the interpreter running this (the venv's, for the unix
target, the tests and the bench), and ``image``, Debian's python3.11 in the
image, compiled against Debian's own headers (``python3.11-dev``), stripped.

The pure-Python path stays the default of the code itself: nothing imports
this file, and without the folder on the path the sources run as before.
``MYPYC=0`` turns the compiled path off where it would be used (``make
serve``, ``make bench``, ``make image``).

    build/compiled.py [--target host|image]     build if needed, print the folder
    build/compiled.py run ARGS...               exec python ARGS with the folder first
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

BUILD = Path(__file__).resolve().parent
REPO = BUILD.parent
sys.path.insert(0, str(BUILD))

import packages  # noqa: E402

PACKAGES = ("netstack", "unikernel")
# What the hot path runs through for every packet, compiled; everything else
# (TCP, ARP, ICMP, the slow path, the resolver) stays interpreted. Not
# netstack/counters.py: Counters subclasses collections.Counter, and compiled
# its views over super() count wrong (tests/unit/test_counters.py fails).
MODULES = ("netstack/link/tap.py", "netstack/link/packet.py",      # the unix target's link, the image's
           "netstack/checksum.py", "netstack/tally.py", "netstack/ethernet.py", "netstack/arp.py", "netstack/ipv4.py",
           "netstack/udp.py", "netstack/stack.py",
           "unikernel/wire.py", "unikernel/serve/rrl.py", "unikernel/serve/server.py")
GROUP = "hotpath"              # mypyc's shared library: hotpath__mypyc<suffix>
# gcc -Os (mypyc passes -O<level>): in bench frames -Os, -O2 and -O3 are one
# figure (2.8-3.1 us a frame, interleaved; the time is in CPython's runtime,
# not in the compiled code's own instructions), and -Os takes 174 kB of xz in
# the image where -O3 takes 301 kB.
OPT_LEVEL = "s"
CFLAGS = ("-fwrapv", "-fPIC", "-DNDEBUG", "-fno-semantic-interposition")
MARK = ".complete"              # written last: a folder without it is not a build
# The cache's bound: every edit of the sources is a new folder (2-4 MB each),
# so after a build the folders of the same target beyond the KEEP most
# recently used go, once unused for STALE seconds. A day, because a process
# started from a folder imports the modules it has not needed yet (mDNS,
# transfers) from it for as long as it runs; a build's MARK is touched when
# it is used.
KEEP = 6
STALE = 24 * 3600


class CompileError(Exception):
    """The modules cannot be compiled; the message says why."""


@dataclass(frozen=True)
class Target:
    """The CPython the modules are built for: where its headers are, the
    suffix its extension modules take, whether to strip them."""
    name: str
    include: Path
    suffix: str
    strip: bool

    def headers_digest(self) -> str:
        h = hashlib.sha256()
        for header in ("patchlevel.h", "pyconfig.h", "object.h"):
            path = self.include / header
            h.update(path.read_bytes() if path.exists() else b"-")
        return h.hexdigest()


def host_target() -> Target:
    return Target("host", Path(sysconfig.get_paths()["include"]), sysconfig.get_config_var("EXT_SUFFIX"), False)


# Debian's python3.11 (the image's interpreter, packages.USERSPACE) finds
# extension modules by this suffix; its headers come with python3.11-dev.
IMAGE_TARGET = Target("image", Path(f"/usr/include/{packages.PYTHON}"), ".cpython-311-x86_64-linux-gnu.so", True)
TARGETS = {"host": host_target, "image": lambda: IMAGE_TARGET}


def wanted() -> bool:
    """False when ``MYPYC=0`` asks for the pure-Python path."""
    return os.environ.get("MYPYC", "1") != "0"


def sources(repo: Path = REPO) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (repo / package).rglob("*.py") if "__pycache__" not in p.parts)


def _version(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.split("\n")[0]
    except FileNotFoundError:
        return "missing"


def input_digest(target: Target, repo: Path = REPO) -> str:
    import mypy.version
    h = hashlib.sha256()
    h.update(repr((str(repo), MODULES, GROUP, OPT_LEVEL, CFLAGS, target.name, target.suffix, target.strip,
                   target.headers_digest(), mypy.version.__version__, _version(["gcc", "--version"]))).encode())
    h.update(Path(__file__).read_bytes())
    for p in sources(repo):
        h.update(str(p.relative_to(repo)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def folder_for(target: Target, cache: Path = packages.CACHE) -> Path:
    return cache / "compiled" / f"{target.name}-{input_digest(target)[:20]}"


def build(target: Target | None = None, cache: Path = packages.CACHE, out: TextIO = sys.stdout) -> Path:
    """The folder for the sources as they are now, compiled if it is not in
    the cache yet."""
    target = target or host_target()
    folder = folder_for(target, cache)
    if (folder / MARK).exists():
        os.utime(folder / MARK)          # last used now: prune keeps it
        return folder
    if not (target.include / "Python.h").exists():
        raise CompileError(f"no Python.h in {target.include} (apt install {packages.PYTHON}-dev)")
    if shutil.which("gcc") is None:
        raise CompileError("gcc is missing (apt install gcc)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    print(f"compiled: mypyc {len(MODULES)} modules for the {target.name}'s Python ({folder.name})",
          file=out, flush=True)
    work = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        tree = work / "tree"
        for src in sources():
            dest = tree / src.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        # config.py's default paths are relative to the package's folder
        # (unikernel.config.REPO): this checkout's, so the folder is per checkout
        for name in ("config.py", "data"):
            (tree / name).symlink_to(REPO / name)
        extensions = _generate(tree, work / "c", out)
        _compile(extensions, tree, work / "c", target, out)
        (tree / MARK).write_text(f"{folder.name}\n")
        if folder.exists():             # a build left half-way by an earlier run
            shutil.rmtree(folder)
        tree.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"compiled: done in {time.monotonic() - began:.0f} s: {folder}", file=out, flush=True)
    removed = prune(target, cache)
    if removed:
        print(f"compiled: removed {len(removed)} unused older builds from {folder.parent}", file=out, flush=True)
    return folder


def prune(target: Target, cache: Path = packages.CACHE, *, now: float | None = None) -> list[Path]:
    """Removes the target's builds beyond the KEEP most recently used that
    have not been used for STALE seconds, and builds left half-way (no MARK)
    as long ago; returns what it removed."""
    now = time.time() if now is None else now
    builds = []
    for path in (cache / "compiled").glob(f"{target.name}-*"):
        mark = path / MARK
        try:
            used = (mark if mark.exists() else path).stat().st_mtime
        except FileNotFoundError:       # another checkout's prune got there first
            continue
        builds.append((mark.exists(), used, path))
    complete = sorted((b for b in builds if b[0]), key=lambda b: b[1], reverse=True)
    doomed = [path for done, used, path in complete[KEEP:] + [b for b in builds if not b[0]]
              if now - used > STALE]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def _generate(tree: Path, c_dir: Path, out: TextIO) -> list:
    """mypyc's C for MODULES (type-checked first: mypyc refuses code mypy
    rejects), as setuptools Extensions: one per module plus the group's
    shared library."""
    from mypyc.build import mypycify
    print("      mypy + mypyc: generating C", file=out, flush=True)
    here = os.getcwd()
    os.chdir(tree)              # mypyc names modules by their path from here
    try:
        return mypycify(list(MODULES), opt_level=OPT_LEVEL, debug_level="0", target_dir=str(c_dir),
                        group_name=GROUP)
    except SystemExit as e:     # mypyc exits with mypy's errors printed
        raise CompileError(f"mypyc refused the modules (status {e.code}); see the errors above") from e
    finally:
        os.chdir(here)
        shutil.rmtree(tree / ".mypy_cache", ignore_errors=True)


def _compile(extensions: list, tree: Path, c_dir: Path, target: Target, out: TextIO) -> None:
    """gcc for each extension, two at a time (the machine's cores), into the
    tree beside the sources (the group's library at its top)."""
    def one(ext) -> str:
        source = Path(ext.sources[0])
        source = source if source.is_absolute() else tree / source
        name = ext.name.replace(".", "/") + target.suffix
        dest = tree / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        include = [f"-I{d if Path(d).is_absolute() else tree / d}" for d in ext.include_dirs]
        command = ["gcc", *CFLAGS, *ext.extra_compile_args, *include, f"-I{target.include}",
                   "-shared", str(source), "-o", str(dest)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"gcc failed on {source.name}:\n{result.stderr[-3000:]}")
        if target.strip:
            subprocess.run(["strip", "--strip-unneeded", str(dest)], check=True)
        return name

    done = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        # the group's library first: it is most of the work
        for name in pool.map(one, sorted(extensions, key=lambda e: "__mypyc" not in e.name)):
            done += 1
            print(f"      gcc {done}/{len(extensions)} {name}", file=out, flush=True)


def environment(folder: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that runs Python on ``folder``'s modules: the folder
    first on the path, then the repository (tests/, bench/), and no current
    directory prepended (PYTHONSAFEPATH: ``python -m unikernel`` in the
    repository would otherwise import the sources)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO)])
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        # exec, so the pid is the program's (the bench measures it)
        if not wanted():
            os.execv(sys.executable, [sys.executable, *argv[1:]])
        try:
            folder = build(out=sys.stderr)
        except CompileError as e:
            print(f"compiled: error: {e}", file=sys.stderr)
            return 1
        os.execve(sys.executable, [sys.executable, *argv[1:]], environment(folder))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(TARGETS), default="host")
    args = parser.parse_args(argv)
    try:
        folder = build(TARGETS[args.target](), out=sys.stderr)
    except CompileError as e:
        print(f"compiled: error: {e}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
