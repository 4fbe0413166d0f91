"""The image's python3.11 as build/relink.py links it: Debian's objects
without the built-in modules the appliance never imports, and
build/unicodedata_absent.py where the Unicode tables were.

The interpreter is run from the image itself (the initramfs unpacked with
zstd's own command, not the builder's code), through the image's loader
and libraries, as the guest would run it.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import make_image  # noqa: E402  (build/, put on the path by conftest)
import pytest
import relink  # noqa: E402

from .conftest import initramfs_entries, needs_build_tools

CONFIG_C = """#include "Python.h"
extern PyObject* PyInit__csv(void);
extern PyObject* PyInit_math(void);
extern PyObject* PyInit_unicodedata(void);
struct _inittab _PyImport_Inittab[] = {
    {"_csv", PyInit__csv},
    {"math", PyInit_math},
    {"unicodedata", PyInit_unicodedata},
    {0, 0}
};
"""


def test_the_table_loses_exactly_the_modules_left_out():
    table = relink.table_without(CONFIG_C, {"_csv", "unicodedata"})
    assert "math" in table and "PyInit_math" in table
    assert "_csv" not in table and "unicodedata" not in table
    assert table.count("{") == CONFIG_C.count("{") - 2


def test_a_module_the_table_does_not_hold_is_an_error():
    # a newer Python that moved a module out of its built-ins must not pass silently
    with pytest.raises(relink.RelinkError, match="spwd"):
        relink.table_without(CONFIG_C, {"_csv", "spwd"})


@pytest.fixture(scope="module")
def image_root(image, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("image-root")
    for name, mode, data, _ in initramfs_entries(make_image.IMAGES / "dns.initrd"):
        path = root / name
        if mode & 0o170000 == 0o040000:
            path.mkdir(parents=True, exist_ok=True)
        elif mode & 0o170000 == 0o100000:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode & 0o777)
    return root


def in_image(root: Path, code: str) -> subprocess.CompletedProcess:
    """``code`` run by the image's interpreter, loader and libraries, with /init's path."""
    return make_image.image_python(root, "-c", code, env={"PYTHONPATH": f"{root}/app/app.zip:{root}/app"},
                                   timeout=60)


@pytest.fixture(scope="module")
def python_dev(image) -> Path:
    """The unpacked libpython3.11-dev the image's build relinked from."""
    return make_image.python_dev_tree(make_image.packages.CACHE)


def libraries() -> list[Path]:
    return [Path("/lib/x86_64-linux-gnu") / soname for soname in relink.LIBRARIES]


@needs_build_tools
def test_the_image_interpreter_has_no_left_out_builtins(image_root):
    result = in_image(image_root, "import sys; print(' '.join(sys.builtin_module_names))")
    assert result.returncode == 0, result.stderr
    builtins = set(result.stdout.split())
    assert {"_socket", "_struct", "select", "math", "zlib", "_sha256"} <= builtins
    assert not builtins & set(relink.LEFT_OUT), builtins & set(relink.LEFT_OUT)
    result = in_image(image_root, "import pyexpat")
    assert "ModuleNotFoundError" in result.stderr


@needs_build_tools
def test_libexpat_leaves_with_pyexpat(image):
    assert "libexpat.so.1" not in image["libraries"]
    assert "libz.so.1" in image["libraries"] and "libm.so.6" in image["libraries"]


@needs_build_tools
def test_a_non_ascii_name_in_the_image_says_to_write_its_a_label(image_root):
    # the A-label comes from the host's Python (with the tables), not from the image
    a_label = "bücher".encode("idna").decode()
    assert a_label == "xn--bcher-kva"
    code = f"""
import dns.name
print(dns.name.from_text("{a_label}.example.").to_text())
print(dns.name.from_wire(b"\\x07b\\xc3\\xbccher\\x07example\\x00", 0)[0].to_text())
try:
    dns.name.from_text("bücher.example.")
except ValueError as e:
    print(type(e).__name__, e)
"""
    result = in_image(image_root, code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{a_label}.example."
    assert lines[1] == "b\\195\\188cher.example."          # names off the wire need no tables
    assert lines[2].startswith("UnicodeTablesLeftOut ") and "A-label (xn--" in lines[2]


@needs_build_tools
def test_the_relink_gives_the_same_bytes_twice(python_dev, tmp_path):
    relink.relink(python_dev, libraries(), tmp_path / "one")
    relink.relink(python_dev, libraries(), tmp_path / "two")
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


@needs_build_tools
def test_the_loaders_report_a_non_ascii_name_with_its_file_and_line(image_root, tmp_path):
    # a hosts file used to let the error out bare (a crash at boot, not a configuration error)
    (tmp_path / "hosts").write_text("192.0.2.9 printer.lan\n192.0.2.10 bücher.lan\n", encoding="utf-8")
    (tmp_path / "example.zone").write_text(
        "$ORIGIN example.\n$TTL 300\n@ IN SOA ns hostmaster 1 2 3 4 5\n@ IN NS ns\nns IN A 192.0.2.1\n"
        "bücher IN A 192.0.2.2\n", encoding="utf-8")
    code = f"""
from pathlib import Path
from unikernel.sources import zone
from unikernel.sources.hosts import load_hosts
for load in (lambda: load_hosts([Path("{tmp_path}/hosts")]),
             lambda: zone.ZoneFiles([Path("{tmp_path}/example.zone")])):
    try:
        load()
    except Exception as e:
        print(type(e).__name__, e)
"""
    result = in_image(image_root, code)
    assert result.returncode == 0, result.stderr
    hosts, zone_file = result.stdout.splitlines()
    assert hosts.startswith(f"HostsError {tmp_path}/hosts:2: bad name 'bücher.lan'") and "A-label" in hosts
    assert zone_file.startswith(f"ConfigError {tmp_path}/example.zone:6:") and "A-label" in zone_file


@needs_build_tools
def test_the_table_is_compiled_against_the_pinned_headers_alone(python_dev, tmp_path):
    # gcc's own list of the headers it read: every Python header must come from
    # the pinned libpython3.11-dev, none from the host (which may have none)
    dev = python_dev
    (tmp_path / "config.c").write_text((dev / relink.CONFIG_C).read_text())
    deps = subprocess.run(["gcc", "-M", *relink.include_flags(dev), "config.c"], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout.replace("\\\n", " ").split()
    python_headers = [d for d in deps if "python3.11" in d]
    assert any(d.endswith("x86_64-linux-gnu/python3.11/pyconfig.h") for d in python_headers), python_headers
    assert all(Path(d).resolve().is_relative_to(dev.resolve()) for d in python_headers), python_headers
