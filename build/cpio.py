"""A reproducible initramfs: the "newc" cpio format, written from a staged tree.

The kernel unpacks newc ("070701") archives. To make the same inputs give the
same bytes, every entry is written in sorted path order, with a fixed mtime,
owner root:root, inode numbers counted from 1 in that order, and modes reduced
to what the appliance needs (no setuid bits, no host umask leaking through).
Device nodes that must exist before devtmpfs is mounted (/dev/console, and
/dev/urandom for the interpreter's first seconds) are added as entries, since
an unprivileged build cannot mknod them in the staging tree.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` is the file's bytes or a symlink's target."""
    path: str                 # relative, no leading "/", e.g. "usr/bin/python3.11"
    mode: int                 # full st_mode: type bits | permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)   # (major, minor) for device nodes


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def entries_from_tree(root: Path) -> list[Entry]:
    """Every file, directory and symlink under ``root``, as entries.
    Permissions are normalised: 0755 if any execute bit is set, else 0644."""
    out: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(rel, stat.S_IFLNK | 0o777, os.readlink(full).encode()))
            elif stat.S_ISDIR(st.st_mode):
                # os.walk does not descend into symlinked dirs; real dirs become entries
                out.append(directory(rel))
            elif stat.S_ISREG(st.st_mode):
                perm = 0o755 if st.st_mode & 0o111 else 0o644
                out.append(Entry(rel, stat.S_IFREG | perm, full.read_bytes()))
            # sockets, fifos and device files in a staging tree are ignored on purpose
    return out


def _header(ino: int, entry: Entry, nlink: int, mtime: int, name: bytes) -> bytes:
    fields = (
        ino, entry.mode, 0, 0, nlink, mtime, len(entry.data),
        0, 0,                      # devmajor, devminor of the (virtual) filesystem
        entry.rdev[0], entry.rdev[1],
        len(name) + 1,             # name size includes the NUL
        0,                         # check (only used by the "070702" crc format)
    )
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write(out: BinaryIO, entries: Iterable[Entry], mtime: int = 0) -> None:
    """Writes ``entries`` (deduplicated by path, parents first via sorting) and
    the trailer. Raises ValueError on a duplicate path: two sources for one
    file is a build error, not something to resolve silently."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        p = e.path.strip("/")
        if not p:
            continue
        if p in by_path and by_path[p] != e:
            raise ValueError(f"cpio: two different entries for {p}")
        by_path[p] = Entry(p, e.mode, e.data, e.rdev)
    ino = 0
    for path in sorted(by_path):
        entry = by_path[path]
        ino += 1
        name = path.encode()
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        head = _header(ino, entry, nlink, mtime, name) + name + b"\0"
        out.write(head + _pad4(len(head)))
        out.write(entry.data + _pad4(len(entry.data)))
    tail = _header(0, Entry(TRAILER, 0), 1, 0, TRAILER.encode()) + TRAILER.encode() + b"\0"
    out.write(tail + _pad4(len(tail)))


def read(data: bytes) -> list[tuple[str, int, bytes, int]]:
    """Parses a newc archive into (path, mode, data, mtime); for tests and the
    build summary. Raises ValueError on anything that is not newc."""
    out = []
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"cpio: bad magic at {pos}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, mtime, filesize, namesize = f[1], f[5], f[6], f[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == TRAILER:
            return out
        out.append((name, mode, body, mtime))
