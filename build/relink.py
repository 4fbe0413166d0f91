"""The image's python3.11, linked again from Debian's own objects without the
built-in modules the appliance never imports.

Debian's python3.11 is one static link of libpython3.11.a, with 61 modules
built in. Some of them are big and none of the appliance's code asks for them:
``unicodedata`` alone is 1.1 MB of Unicode tables, and ``pyexpat`` pulls in
libexpat.so.1. Every byte of the executable is unpacked from the initramfs at
every boot, so they cost boot time and the image's 8 MB. The package
libpython3.11-dev (pinned beside python3.11-minimal, the same build) ships the
objects, the generated ``config.c`` (the table of built-in modules) and the
headers; this links the same objects with the same flags Debian's build used,
minus the left-out modules' objects and their rows of the table. Nothing is
compiled but that table and a one-line main(); the interpreter's code is
Debian's, byte for byte.

A module left out is simply not there: ``import pyexpat`` raises
ModuleNotFoundError, as it would on a Python built without it. The image
builder (make_image.check_imports) proves the appliance imports without them.

    python3 build/relink.py libpython3.11-dev.deb python3.11.out   # by hand
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# module name -> its objects in libpython3.11.a, and why the appliance does without it
LEFT_OUT = {
    "unicodedata": (("unicodedata.o",), "only IDNA's nameprep reads it: the image takes names as A-labels "
                                         "(build/unicodedata_absent.py)"),
    "pyexpat": (("pyexpat.o",), "XML: no part of the appliance parses XML (and libexpat.so.1 goes too)"),
    "_elementtree": (("_elementtree.o",), "XML"),
    "_pickle": (("_pickle.o",), "pickle: nothing is serialised with it"),
    "_csv": (("_csv.o",), "csv"),
    "cmath": (("cmathmodule.o",), "complex maths"),
    "_statistics": (("_statisticsmodule.o",), "statistics (the bench's, on the host)"),
    "spwd": (("spwdmodule.o",), "the shadow password file: the image has none"),
    "syslog": (("syslogmodule.o",), "syslog(3): the appliance logs to its console"),
    "xxsubtype": (("xxsubtype.o",), "CPython's example module"),
}

CONFIG_DIR = "usr/lib/python3.11/config-3.11-x86_64-linux-gnu"
STATIC_LIB = f"{CONFIG_DIR}/libpython3.11.a"
CONFIG_C = f"{CONFIG_DIR}/config.c"
# the headers of the package itself: Debian's python3.11/pyconfig.h is a wrapper that
# includes <x86_64-linux-gnu/python3.11/pyconfig.h>, found under usr/include, not the host's
INCLUDES = ("usr/include/python3.11", "usr/include")
# Debian's python3.11 is a non-PIE executable that exports the C API to
# extension modules (sysconfig's LINKFORSHARED and LDFLAGS on Debian 12)
LINK_FLAGS = ("-no-pie", "-Xlinker", "-export-dynamic", "-Wl,-O1", "-Wl,-Bsymbolic-functions", "-Wl,--build-id=sha1")
# the shared libraries the executable needs beside libc (Debian's links libexpat too, for pyexpat)
LIBRARIES = ("libz.so.1", "libm.so.6")
MAIN_C = ("extern int Py_BytesMain(int argc, char **argv);\n"
          "int main(int argc, char **argv) { return Py_BytesMain(argc, argv); }\n")


class RelinkError(Exception):
    pass


def table_without(config_c: str, left_out: set[str]) -> str:
    """Debian's generated config.c with the left-out modules' declarations and
    table rows removed; a module named here but not in the table is an error
    (a newer Python moved it), so the list cannot silently go stale."""
    kept: list[str] = []
    seen: set[str] = set()
    for line in config_c.splitlines(keepends=True):
        match = re.search(r"PyInit_(\w+)\(", line) or re.search(r'\{"(\w+)", PyInit_\w+\}', line)
        name = match.group(1) if match else None
        if name in left_out:
            seen.add(name)
            continue
        kept.append(line)
    if seen != left_out:
        raise RelinkError(f"not built into this python: {', '.join(sorted(left_out - seen))}")
    return "".join(kept)


def relink(dev_tree: Path, libraries: list[Path], out: Path) -> None:
    """Links ``out`` from the libpython3.11-dev tree; ``libraries`` are the
    files of :data:`LIBRARIES` it links against, by path (the image's own: the
    executable's NEEDED names come from their sonames)."""
    left_out = set(LEFT_OUT)
    dropped_objects = {obj for objects, _ in LEFT_OUT.values() for obj in objects} | {"config.o"}
    with tempfile.TemporaryDirectory(prefix="relink.") as tmp_name:
        tmp = Path(tmp_name)
        objects_dir = tmp / "objects"
        objects_dir.mkdir()
        run(["ar", "x", str((dev_tree / STATIC_LIB).resolve())], cwd=objects_dir)
        members = run(["ar", "t", str(dev_tree / STATIC_LIB)]).split()
        if len(members) != len(set(members)):
            raise RelinkError("libpython3.11.a holds two members of one name; `ar x` would lose one")
        missing = dropped_objects - set(members)
        if missing:
            raise RelinkError(f"libpython3.11.a has no {', '.join(sorted(missing))}")
        (tmp / "config.c").write_text(table_without((dev_tree / CONFIG_C).read_text(), left_out))
        (tmp / "main.c").write_text(MAIN_C)
        includes = include_flags(dev_tree)
        for name in ("config", "main"):
            run(["gcc", "-O2", "-fno-pie", *includes, "-c", f"{name}.c", "-o", f"{name}.o"], cwd=tmp)
        # the archive's order, so the link is the same every time
        kept = [str(objects_dir / m) for m in members if m not in dropped_objects]
        run(["gcc", *LINK_FLAGS, "-o", str(tmp / "python"), str(tmp / "main.o"), str(tmp / "config.o"),
             *kept, *map(str, libraries)], cwd=tmp)
        run(["strip", "--strip-all", str(tmp / "python")])
        shutil.copyfile(tmp / "python", out)
        out.chmod(0o755)


def include_flags(dev_tree: Path) -> list[str]:
    return [f"-I{dev_tree / d}" for d in INCLUDES]


def run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RelinkError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    return result.stdout


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tree:
        subprocess.run(["dpkg-deb", "-x", sys.argv[1], tree], check=True)
        relink(Path(tree), [Path("/lib/x86_64-linux-gnu") / soname for soname in LIBRARIES], Path(sys.argv[2]))
