"""Compiles Python sources into a zip of .pyc files, byte for byte reproducibly.

Run by make_image.py with the image's own interpreter (Debian's python3.11,
unpacked from the pinned package), so the bytecode is exactly what the image
will load, and with PYTHONHASHSEED=0 so that constants whose order depends on
string hashes (frozensets) come out the same on every build.

The .pyc files are "unchecked hash" pycs (PEP 552): the interpreter loads them
without looking for a source file or comparing time stamps; the image ships
no .py files for them at all. Zip members are sorted, stored uncompressed (the
initramfs is compressed as a whole, which compresses better) and dated
1980-01-01.

    python3.11 pyzip.py < spec.json     # {"out": "x.zip", "files": [["src.py", "pkg/mod.pyc", "shown/path.py"], ...]}
"""
import importlib._bootstrap_external as external
import importlib.util
import json
import sys
import zipfile

FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def compile_to_pyc(source_path: str, shown_path: str) -> bytes:
    with open(source_path, "rb") as f:
        source = f.read()
    code = compile(source, shown_path, "exec", dont_inherit=True, optimize=0)
    return bytes(external._code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False))


def main() -> None:
    spec = json.load(sys.stdin)
    members = sorted(spec["files"], key=lambda item: item[1])
    with zipfile.ZipFile(spec["out"], "w", compression=zipfile.ZIP_STORED) as z:
        for source_path, member, shown_path in members:
            info = zipfile.ZipInfo(member, date_time=FIXED_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            z.writestr(info, compile_to_pyc(source_path, shown_path))


if __name__ == "__main__":
    main()
