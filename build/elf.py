"""Just enough ELF64 reading for the image builder: a section's bytes by name,
the shared libraries a program needs (DT_NEEDED), and a kernel module's
``.modinfo`` (where ``depends=`` lists the modules to load first), and whether
a note section holds a given note (a kernel's PVH entry).

No binutils needed on the host. Raises ValueError on anything that is not a
little-endian ELF64 file.
"""
from __future__ import annotations

import struct

SHT_DYNAMIC = 6
DT_NEEDED = 1


def _sections(data: bytes) -> tuple[list[tuple[int, int, int, int, int]], int]:
    """(name_offset, type, file_offset, size, link) for every section, and
    the index of the section that holds the section names."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    out = []
    for i in range(shnum):
        name, stype, _flags, _addr, offset, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + i * shentsize)
        out.append((name, stype, offset, size, link))
    if not out:
        raise ValueError("ELF file without section headers")
    return out, shstrndx


def section(data: bytes, wanted: str) -> bytes | None:
    sections, shstrndx = _sections(data)
    names_at = sections[shstrndx][2]
    for name, _type, offset, size, _link in sections:
        end = data.index(b"\0", names_at + name)
        if data[names_at + name:end].decode() == wanted:
            return data[offset:offset + size]
    return None


def needed(data: bytes) -> list[str]:
    """The DT_NEEDED sonames of a program or shared library."""
    sections, _ = _sections(data)
    out = []
    for _name, stype, offset, size, link in sections:
        if stype != SHT_DYNAMIC:
            continue
        strtab = sections[link][2]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                end = data.index(b"\0", strtab + value)
                out.append(data[strtab + value:end].decode())
    return out


def modinfo(data: bytes) -> dict[str, list[str]]:
    """A kernel module's ``.modinfo`` as key -> values (keys may repeat)."""
    raw = section(data, ".modinfo")
    if raw is None:
        raise ValueError("not a kernel module: no .modinfo section")
    out: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode(errors="replace").partition("=")
            out.setdefault(key, []).append(value)
    return out


def has_note(notes: bytes, owner: bytes, kind: int) -> bool:
    """True when an ELF note section's contents hold a note of ``owner`` and type ``kind``."""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        if name == owner and ntype == kind:
            return True
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
