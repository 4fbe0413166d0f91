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

The bytecode is made smaller, which the boot pays for twice (unpacking the
initramfs, unmarshalling at import): make_image runs this with
``-X no_debug_ranges``, so code objects carry line numbers but not PEP 657's
column ranges (tracebacks lose only their ``^^^`` markers), and the
docstrings of modules and functions are left out (``__doc__`` is None, as
under ``-OO``, but asserts stay). Class docstrings stay: dnspython's
exceptions use theirs as the default message, and dataclasses would compute
one with inspect.signature at import for a class that has none.

    python3.11 pyzip.py < spec.json     # {"out": "x.zip", "files": [["src.py", "pkg/mod.pyc", "shown/path.py"], ...]}
"""
import ast
import importlib._bootstrap_external as external
import importlib.util
import json
import sys
import zipfile

FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def without_docstrings(tree: ast.Module) -> ast.Module:
    """Module and function docstrings dropped (a body left empty gets a pass)."""
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = node.body[0] if node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = node.body[1:] or [ast.copy_location(ast.Pass(), first)]
    return tree


def compile_to_pyc(source_path: str, shown_path: str) -> bytes:
    with open(source_path, "rb") as f:
        source = f.read()
    tree = without_docstrings(ast.parse(source, shown_path))
    code = compile(tree, shown_path, "exec", dont_inherit=True, optimize=0)
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
