#!/usr/bin/env python3
"""``make image``: config.py, the code and data/ become images/dns.vmlinuz,
images/dns.initrd and images/dns.xl.

Steps (each shown as it runs):

1. fetch   the pinned Debian packages (apt-get download) and the dnspython
           wheel (pip download) into the cache, checking their SHA-256;
2. unpack  them with dpkg-deb -x into the cache (once per pin set);
   relink  python3.11 from Debian's objects without the built-in modules the
           appliance never imports (build/relink.py; once per input);
3. kernel  the appliance's own (build/kernel.py: linux-source-6.1 configured
           by build/kernel.config, compiled once per input hash into the
           cache), or with ``--kernel debian`` Debian's stock one and its NIC
           modules;
4. record  which standard library modules the appliance imports, by running
           build/init.py's ``list-imports`` stage with the image's own
           interpreter: it imports what PID 1 imports and loads config.py
           (so dnspython imports the record types the zones use). The list
           is generated on every build, never maintained by hand;
5. compile those modules, and the appliance's own code with dnspython, into
           unchecked-hash .pyc zips (build/pyzip.py, run by that interpreter);
6. collect the interpreter, its extension modules and the shared libraries
           they need (read from DT_NEEDED, not guessed), the NIC kernel
           modules and everything they depend on (read from ``depends=``);
7. pack    a sorted newc cpio with fixed times and root ownership, compressed
           with zstd (see packages.COMPRESSOR for the measurements): the
           same inputs give the same bytes;
8. write   the Xen PVH guest config, and print a summary of what takes space.

A build whose inputs have not changed since the last one is skipped
(``--force`` rebuilds).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

BUILD = Path(__file__).resolve().parent
REPO = BUILD.parent
sys.path.insert(0, str(BUILD))

import compiled  # noqa: E402
import cpio  # noqa: E402
import elf  # noqa: E402
import init as pid1  # noqa: E402
import kernel as appliance_kernel  # noqa: E402
import packages  # noqa: E402
import relink  # noqa: E402
import xen  # noqa: E402

IMAGES = REPO / "images"
APP_PACKAGES = ("unikernel", "netstack")
# Modules stage 2 imports (build/init.py); list-imports imports them, then
# records everything that came with them.
SERVE_IMPORTS = ("unikernel.main", "unikernel.cli", "unikernel.config", "netstack.link.packet", "unikernel.ops.site",
                 "asyncio", "signal", "ctypes", "traceback", "logging", "importlib",
                 # imported only when the appliance uses them: DNS over TLS, mDNS,
                 # zone transfers out and NOTIFY (by main), h11 (by the operator's
                 # port, on its first connection)
                 "ssl", "netstack.tls", "unikernel.resolver.tls_upstream", "unikernel.serve.tls",
                 "unikernel.sources.mdns", "unikernel.transfer.outbound", "unikernel.transfer.notify", "h11")
# Codecs kept whatever the recording saw, because they are looked up by name
# when first used: dnspython's IDNA (idna, punycode) and the Unicode and byte
# codecs text handling may name; the other hundred (code pages, CJK tables,
# 0.5 MB of bytecode) are never named by the appliance or dnspython.
CODECS_BY_NAME = ("aliases", "ascii", "latin_1", "utf_8", "utf_8_sig", "utf_16", "utf_16_be", "utf_16_le",
                  "utf_32", "utf_32_be", "utf_32_le", "idna", "punycode", "raw_unicode_escape", "unicode_escape",
                  "charmap", "hex_codec", "base64_codec",
                  "cp437")     # zipfile decodes member names with it (importlib.metadata reads app.zip)
# dnspython's modules that cannot load in the image (their optional packages
# are not there) or serve another platform: left out of app.zip.
DNSPYTHON_LEFT_OUT = ("dns/quic/", "dns/dnssecalgs/", "dns/_trio_backend.py", "dns/win32util.py")
# Imported, but optional for their importers, and costly: each is left out
# on purpose, and the build checks (step 5) that the appliance still imports.
LEFT_OUT = {
    "_hashlib": "hashlib falls back to the built-in _sha*/_md5/_blake2 without OpenSSL",
    "bz2": "zipfile and shutil (pulled in by importlib.metadata) tolerate its absence",
    "_bz2": "with bz2; needs libbz2",
    "lzma": "zipfile and shutil tolerate its absence",
    "_lzma": "with lzma; needs liblzma",
}
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
# Loaded with dlopen, so no DT_NEEDED names them: DNSSEC's signature checks
# (unikernel.resolver.dnssec.crypto, through ctypes).
DLOPENED_LIBRARIES = ("libcrypto.so.3",)
# Checks signatures the host's openssl made at build time (signatures_by_openssl)
# with the appliance's verifier, using only what the image holds: ctypes,
# libffi and libcrypto.so.3 found by soname.
DNSSEC_CHECK = """
import json, sys
from unikernel.resolver.dnssec import crypto
for algorithm, key, signature, data in json.load(sys.stdin):
    key, signature, data = bytes.fromhex(key), bytes.fromhex(signature), bytes.fromhex(data)
    assert crypto.verify(algorithm, key, signature, data), f"algorithm {algorithm}: openssl's signature fails"
    assert not crypto.verify(algorithm, key, signature, data + b"x"), f"algorithm {algorithm}: a changed text verifies"
"""
LOADER = "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
PYLIB = f"usr/lib/{packages.PYTHON}"
KERNELS = ("appliance", "debian")
# The least guest memory each kernel's image runs in (measured: tests/boot/test_smoke.py);
# the Xen config asks for it.
# The guest memory each kernel is booted with (and Xen's config asks for). The
# initramfs is held in RAM unpacked beside its compressed form while it
# unpacks: with the appliance's kernel 56 MB is the least that answers and 48
# runs out (measured), so 96 leaves room for the caches; Debian's kernel and
# its modules want more.
MEMORY_MB = {"appliance": 96, "debian": 192}


POWEROFF_HELPER = b"""#!/usr/bin/python3.11 -SE
# run by the kernel for an orderly poweroff (e.g. Xen's `xl shutdown`): PID 1 does it
import os, signal
os.kill(1, signal.SIGTERM)
"""


class BuildError(Exception):
    """A build that cannot go on; the message says why and what to do."""


class Progress:
    """Numbered steps with their duration, and a live line for long loops when
    the output is a terminal."""

    def __init__(self, total: int, out=sys.stdout) -> None:
        self.total, self.out, self.n = total, out, 0
        self.live = out.isatty()
        self.began = time.monotonic()
        self.step_began = self.began

    def step(self, title: str) -> None:
        self.n += 1
        self.step_began = time.monotonic()
        print(f"image [{self.n}/{self.total}] {title}", file=self.out, flush=True)

    def item(self, text: str, done: int, of: int) -> None:
        if self.live:
            bar = "#" * (20 * done // max(of, 1))
            print(f"\r      [{bar:<20}] {done}/{of} {text[:50]:<50}", end="", file=self.out, flush=True)
            if done == of:
                print(file=self.out)
        else:
            print(f"      {done}/{of} {text}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", file=self.out, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.began


# -- 1. fetch ----------------------------------------------------------------

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_deb(deb: packages.Deb, cache: Path) -> Path:
    folder = cache / "debs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / deb.filename
    if path.exists() and sha256(path) == deb.sha256:
        return path
    path.unlink(missing_ok=True)
    command = ["apt-get", "download", "-q", f"{deb.name}={deb.version}"]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0 and os.geteuid() == 0:
        # apt's package lists may be missing or stale (a fresh machine): refresh once
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0 or not path.exists():
        raise BuildError(f"apt-get download {deb.name}={deb.version} failed:\n{result.stderr.strip()}\n"
                         f"(the mirror may have moved on: `apt-cache policy {deb.name}` shows what it "
                         f"has; update the pin in build/packages.py)")
    got = sha256(path)
    if got != deb.sha256:
        raise BuildError(f"{deb.filename}: SHA-256 {got}, pinned {deb.sha256}")
    return path


def fetch_wheel(wheel: packages.Wheel, cache: Path) -> Path:
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / wheel.filename
    if not (path.exists() and sha256(path) == wheel.sha256):
        result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                 "--only-binary", ":all:", "-d", str(folder),
                                 f"{wheel.name}=={wheel.version}"], capture_output=True, text=True)
        if result.returncode != 0 or not path.exists():
            raise BuildError(f"pip download {wheel.name}=={wheel.version} failed:\n{result.stderr.strip()}")
        got = sha256(path)
        if got != wheel.sha256:
            raise BuildError(f"{wheel.filename}: SHA-256 {got}, pinned {wheel.sha256}")
    return path


# -- 2. unpack ---------------------------------------------------------------

def unpack(debs: list[Path], into: Path) -> Path:
    """dpkg-deb -x every package into one tree, once: the tree's name is a
    hash of the packages, and it is renamed into place only when complete."""
    if into.exists():
        return into
    tmp = Path(tempfile.mkdtemp(prefix=into.name + ".", dir=into.parent))
    try:
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(into)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return into


def python_dev_tree(cache: Path) -> Path:
    """Where the pinned libpython3.11-dev is unpacked (build/relink.py's input)."""
    return cache / "trees" / f"python-dev-{packages.PYTHON_DEV.sha256[:16]}"


def relinked_userspace(root: Path, python_dev: Path) -> Path:
    """The unpacked userspace with build/relink.py's python3.11 in place of
    Debian's, and build/unicodedata_absent.py as the stdlib's unicodedata
    (relink leaves the built-in one out); once per input, beside the tree it
    derives from, hard-linked to it but for those two files."""
    key = hashlib.sha256(b"".join([root.name.encode(), packages.PYTHON_DEV.sha256.encode(),
                                   (BUILD / "relink.py").read_bytes(),
                                   (BUILD / "unicodedata_absent.py").read_bytes()])).hexdigest()[:16]
    into = root.with_name(f"{root.name}-relinked-{key}")
    if into.exists():
        return into
    tmp = Path(tempfile.mkdtemp(prefix=into.name + ".", dir=into.parent))
    try:
        tree = tmp / "tree"
        subprocess.run(["cp", "-al", str(root), str(tree)], check=True)
        python = tree / "usr/bin" / packages.PYTHON
        python.unlink()                     # a hard link to Debian's: never write through it
        try:
            relink.relink(python_dev, [find_library(root, soname) for soname in relink.LIBRARIES], python)
        except relink.RelinkError as e:
            raise BuildError(f"relinking {packages.PYTHON}: {e}") from e
        shutil.copyfile(BUILD / "unicodedata_absent.py", tree / PYLIB / "unicodedata.py")
        tree.rename(into)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return into


def unpack_wheel(wheel: Path, into: Path) -> Path:
    if not into.exists():
        tmp = Path(tempfile.mkdtemp(prefix=into.name + ".", dir=into.parent))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
        tmp.rename(into)
    return into


# dnspython's dns._features answers have() by scanning the installed
# distributions with importlib.metadata, whose import (email, zipfile, csv...)
# is a tenth of the appliance's imports. The image's packages never change
# after the build, so the image gets the answers the build computes instead.
SETTLED_FEATURES = '''"""dnspython's dns._features for the appliance image, written by
build/make_image.py: the optional features' availability, computed at build
time by the image's interpreter against exactly the packages the image holds,
so the boot imports no importlib.metadata. have() and force() as upstream."""

_requirements: dict[str, list[str]] = {requirements!r}

_cache: dict[str, bool] = {answers!r}


def have(feature: str) -> bool:
    return _cache.get(feature, False)


def force(feature: str, enabled: bool) -> None:
    _cache[feature] = enabled
'''
FEATURES_QUESTION = """
import json
import dns._features as features
print(json.dumps([features._requirements, {name: features.have(name) for name in sorted(features._requirements)}]))
"""


def settle_dnspython_features(root: Path, dnspython: Path, into: Path) -> Path:
    """A copy of the dnspython tree whose dns/_features.py holds the answers
    the image's interpreter gives, with the image's packages (dnspython and
    h11) as the only ones on its path."""
    result = image_python(root, "-c", FEATURES_QUESTION, env={"PYTHONPATH": str(dnspython)})
    if result.returncode != 0:
        raise BuildError(f"asking dnspython for its features failed:\n{result.stderr.strip()[-3000:]}")
    requirements, answers = json.loads(result.stdout)
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(dnspython, into)
    (into / "dns" / "_features.py").write_text(SETTLED_FEATURES.format(requirements=requirements, answers=answers))
    return into


# -- the image's interpreter, run on the build host ----------------------------

def image_python(root: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Runs Debian's python3.11 from the unpacked tree through the unpacked
    dynamic loader and libraries, so no host Python or libc is involved."""
    environment = {"PYTHONHOME": str(root / "usr"), "PYTHONHASHSEED": "0",
                   "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    environment.update(env or {})
    libs = ":".join(str(root / d) for d in LIB_DIRS)
    return subprocess.run([str(root / LOADER), "--library-path", libs,
                           str(root / "usr/bin" / packages.PYTHON), "-S", *args],
                          env=environment, capture_output=True, text=True, **kw)


def check_data_files() -> None:
    """Only data/ is baked into the image (as /app/data): every zone, hosts
    and trust-anchor file config.py names must be there, or the VM would miss it."""
    from unikernel.config import load
    appliance = load(REPO / "config.py")
    data = (REPO / "data").resolve()
    for name in [*appliance.zones, *appliance.hosts, *appliance.trust_anchors]:
        path = appliance.path(name).resolve()
        if not path.is_relative_to(data):
            raise BuildError(f"config.py names {name}, which is not in data/ (only data/ goes into the image)")
        if not path.is_file():
            raise BuildError(f"config.py names {name}, which does not exist")


# -- 4. record ---------------------------------------------------------------

def record_imports(root: Path, dnspython: Path, h11: Path) -> list[tuple[str, str]]:
    """(module name, file) for every module the appliance loads at start."""
    path = ":".join(str(p) for p in (REPO, dnspython, h11))
    result = image_python(root, str(BUILD / "init.py"), "list-imports", *SERVE_IMPORTS,
                          env={"PYTHONPATH": path, "DNS_APPLIANCE_IMPORT_ALL": "dns",
                               "DNS_APPLIANCE_CONFIG": str(REPO / "config.py")})
    if result.returncode != 0:
        raise BuildError(f"recording the appliance's imports failed (does it import?):\n"
                         f"{result.stderr.strip()[-3000:]}")
    out = []
    for line in result.stdout.splitlines():
        name, _, file = line.partition(" ")
        out.append((name, file.strip()))
    return out


def stdlib_selection(root: Path, recorded: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Relative paths under usr/lib/python3.11 of the .py modules to compile,
    and of the lib-dynload extension modules to copy."""
    stdlib = root / PYLIB
    sources: set[str] = set()
    extensions: set[str] = set()
    for name, file in recorded:
        if not file or name in LEFT_OUT:
            continue
        path = Path(file)
        try:
            rel = path.resolve().relative_to(stdlib.resolve()).as_posix()
        except ValueError:
            continue
        if rel.startswith("lib-dynload/"):
            extensions.add(rel)
        elif rel.endswith(".py"):
            sources.add(rel)
    for codec in CODECS_BY_NAME:
        sources.add(f"encodings/{codec}.py")
    sources.add("encodings/__init__.py")
    return sorted(sources), sorted(extensions)


# -- 5. compile --------------------------------------------------------------

def python_zip(root: Path, files: list[tuple[Path, str, str]], out: Path) -> bytes:
    """files: (source, member name .pyc, path shown in tracebacks)."""
    spec = {"out": str(out), "files": [[str(s), m, shown] for s, m, shown in files]}
    result = image_python(root, "-X", "no_debug_ranges", str(BUILD / "pyzip.py"), input=json.dumps(spec))
    if result.returncode != 0:
        raise BuildError(f"compiling failed:\n{result.stderr.strip()[-3000:]}")
    return out.read_bytes()


def init_zipapp(root: Path, tmp: Path) -> bytes:
    """/init: build/init.py's own #! line, then a zip holding it compiled as
    __main__.pyc, which the interpreter runs as it would the source (zipapp's
    layout). Compiling the source at every boot cost a quarter of a second
    under TCG, before the first line PID 1 prints."""
    shebang = (BUILD / "init.py").read_bytes().partition(b"\n")[0] + b"\n"
    program = python_zip(root, [(BUILD / "init.py", "__main__.pyc", "/init")], tmp / "init.zip")
    return shebang + program


def package_sources(base: Path, package: str) -> list[Path]:
    return sorted(p for p in (base / package).rglob("*.py") if "__pycache__" not in p.parts)


def check_imports(root: Path, stdlib_zip: bytes, extensions: list[str], app_zip: bytes, tmp: Path,
                  loose: list[tuple[str, bytes]] | None = None) -> bytes:
    """Runs list-imports again with nothing but what the image will hold:
    the two zips, the chosen extension modules, and what lies loose under
    /app (``loose``: the compiled hot path). A module the selection
    missed fails the build here rather than the boot; then DNSSEC's verifier
    checks signatures made by the host's openssl. Returns the table of the
    source text that dataclasses and namedtuples compiled meanwhile, compiled
    (build/init.py's use_precompiled_sources: /app/precompiled-sources)."""
    home = tmp / "check" / "usr"
    (home / "lib" / packages.PYTHON / "lib-dynload").mkdir(parents=True)
    (home / "lib" / "python311.zip").write_bytes(stdlib_zip)
    for rel in extensions:
        shutil.copy(root / PYLIB / rel, home / "lib" / packages.PYTHON / rel)
    (tmp / "check" / "app.zip").write_bytes(app_zip)
    for name, data in loose or []:
        (tmp / "check" / "app" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "check" / "app" / name).write_bytes(data)
    app_path = f"{tmp / 'check' / 'app.zip'}:{tmp / 'check' / 'app'}"      # init.py's order: app.zip, /app
    # -X no_debug_ranges: the precompiled table's code without column tables, as the .pyc zips
    result = image_python(root, "-X", "no_debug_ranges", str(BUILD / "init.py"), "list-imports", *SERVE_IMPORTS,
                          env={"PYTHONHOME": str(home),
                               "PYTHONPATH": app_path,
                               "DNS_APPLIANCE_IMPORT_ALL": "dns",
                               "DNS_APPLIANCE_CONFIG": str(REPO / "config.py"),
                               pid1.PRECOMPILE_OUT: str(tmp / "precompiled-sources")})
    if result.returncode != 0 or result.stderr.strip():
        raise BuildError("the appliance does not import from the selected modules alone:\n"
                         f"{result.stderr.strip()[-3000:]}")
    if loose:
        files = {name: file.strip() for name, _, file in (line.partition(" ") for line in result.stdout.splitlines())}
        suffix = compiled.IMAGE_TARGET.suffix
        interpreted = [m for m in compiled_module_names() if not files.get(m, "").endswith(suffix)]
        if interpreted:
            raise BuildError(f"the image's interpreter does not load the compiled {', '.join(interpreted)}")
    result = image_python(root, "-c", DNSSEC_CHECK, input=json.dumps(signatures_by_openssl(tmp / "openssl")),
                          env={"PYTHONHOME": str(home), "PYTHONPATH": app_path})
    if result.returncode != 0:
        raise BuildError(f"DNSSEC validation does not work in the image:\n{result.stderr.strip()[-3000:]}")
    return (tmp / "precompiled-sources").read_bytes()


def signatures_by_openssl(work: Path) -> list[list]:
    """[algorithm, DNSKEY key field, RRSIG signature field, signed text] (hex)
    for RSA/SHA-256, ECDSA P-256 and Ed25519 signatures made here by the
    host's openssl: fresh keys, so the image's verifier is checked against
    signatures it has never seen."""
    work.mkdir(parents=True, exist_ok=True)
    text = b"DNSSEC self-check of the image's verifier"
    (work / "text").write_bytes(text)

    def openssl(*args: str) -> bytes:
        try:
            result = subprocess.run(["openssl", *args], cwd=work, capture_output=True, check=False)
        except FileNotFoundError as e:
            raise BuildError("openssl (apt install openssl) signs what the build checks DNSSEC with") from e
        if result.returncode != 0:
            raise BuildError(f"openssl {' '.join(args)} failed:\n{result.stderr.decode(errors='replace')}")
        return result.stdout

    out = []
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem")
    modulus = bytes.fromhex(openssl("rsa", "-in", "rsa.pem", "-noout", "-modulus").decode().split("=", 1)[1])
    signature = openssl("dgst", "-sha256", "-sign", "rsa.pem", "text")
    out.append([8, (b"\x03\x01\x00\x01" + modulus).hex(), signature.hex(), text.hex()])   # RFC 3110, e = 65537
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.pem")
    point = openssl("pkey", "-in", "ec.pem", "-pubout", "-outform", "DER")[-64:]            # X || Y after 0x04
    out.append([13, point.hex(), ecdsa_raw(openssl("dgst", "-sha256", "-sign", "ec.pem", "text"), 32).hex(),
                text.hex()])
    openssl("genpkey", "-algorithm", "ED25519", "-out", "ed.pem")
    key = openssl("pkey", "-in", "ed.pem", "-pubout", "-outform", "DER")[-32:]
    signature = openssl("pkeyutl", "-sign", "-inkey", "ed.pem", "-rawin", "-in", "text")
    out.append([15, key.hex(), signature.hex(), text.hex()])
    return out


def ecdsa_raw(der: bytes, size: int) -> bytes:
    """RFC 6605's r || s from a DER ECDSA-Sig-Value (SEQUENCE of two short INTEGERs)."""
    if der[0] != 0x30 or der[2] != 0x02:
        raise BuildError("openssl's ECDSA signature is not a DER SEQUENCE of INTEGERs")
    r_length = der[3]
    r, rest = der[4:4 + r_length], der[4 + r_length:]
    s = rest[2:2 + rest[1]]
    return r.lstrip(b"\0").rjust(size, b"\0") + s.lstrip(b"\0").rjust(size, b"\0")


# -- the hot path compiled with mypyc (build/compiled.py) ----------------------
# Extension modules cannot be imported from a zip, and init.py puts app.zip
# before /app on the path: when they ship, netstack and unikernel lie loose
# under /app (.pyc beside the compiled .so) and app.zip keeps dnspython and h11.

def compiled_module_names() -> list[str]:
    return [m.removesuffix(".py").replace("/", ".") for m in compiled.MODULES]


def compiled_hot_path() -> list[tuple[str, bytes]]:
    """(path under /app, contents) of the compiled modules and mypyc's
    library, built for the image's python3.11; none with MYPYC=0."""
    if not compiled.wanted():
        return []
    try:
        folder = compiled.build(compiled.IMAGE_TARGET)
    except compiled.CompileError as e:
        raise BuildError(f"{e} (MYPYC=0 builds the image with the pure-Python hot path)") from e
    return [(p.relative_to(folder).as_posix(), p.read_bytes())
            for p in sorted(folder.rglob(f"*{compiled.IMAGE_TARGET.suffix}"))]


def loose_app_packages(root: Path, app_files: list[tuple[Path, str, str]], shipped: list[tuple[str, bytes]],
                       tmp: Path) -> tuple[list[tuple[Path, str, str]], list[tuple[str, bytes]]]:
    """app.zip's files less netstack and unikernel, and what lies loose under
    /app instead: their .pyc (not the compiled modules') and ``shipped``."""
    if not shipped:
        return app_files, []
    own = [f for f in app_files if f[1].split("/")[0] in APP_PACKAGES]
    skipped = {m.removesuffix(".py") + ".pyc" for m in compiled.MODULES}
    with zipfile.ZipFile(io.BytesIO(python_zip(root, [f for f in own if f[1] not in skipped], tmp / "own.zip"))) as z:
        loose = [(name, z.read(name)) for name in z.namelist()]
    return [f for f in app_files if f not in own], loose + shipped


# -- 6. collect --------------------------------------------------------------

def find_library(root: Path, soname: str) -> Path:
    for d in LIB_DIRS:
        candidate = root / d / soname
        if candidate.exists():
            return candidate.resolve()
    raise BuildError(f"shared library {soname} is in none of the pinned packages: add its package "
                     f"to build/packages.py")


def library_closure(root: Path, programs: list[bytes], dlopened: tuple[str, ...] = ()) -> dict[str, bytes]:
    """soname -> contents, for every library the programs need (and the
    ``dlopened`` sonames), transitively."""
    found: dict[str, bytes] = {}
    todo = [*dlopened, *(n for p in programs for n in elf.needed(p))]
    while todo:
        soname = todo.pop()
        if soname in found:
            continue
        data = find_library(root, soname).read_bytes()
        found[soname] = data
        todo += elf.needed(data)
    return found


def ca_bundle(root: Path) -> bytes:
    """The PEM bundle update-ca-certificates would write: every certificate
    the pinned ca-certificates package ships, in name order."""
    files = sorted((root / packages.CA_SOURCES).glob("*.crt"))
    if not files:
        raise BuildError(f"no certificates under {packages.CA_SOURCES} in the pinned ca-certificates")
    return b"".join(f.read_bytes().rstrip(b"\n") + b"\n" for f in files)


def module_name(name: str) -> str:
    return name.replace("-", "_")


def kernel_modules(kernel_root: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(file name, contents) of the wanted modules and their dependencies, in
    an order where each module comes after everything in its ``depends=``."""
    tree = kernel_root / "lib/modules" / packages.KERNEL_RELEASE / "kernel"
    index = {module_name(p.name.split(".ko")[0]): p for p in tree.rglob("*.ko*")}
    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = module_name(name)
        if key in done:
            return
        if key in chain:
            raise BuildError(f"module dependency cycle: {' -> '.join(chain + (key,))}")
        path = index.get(key)
        if path is None:
            raise BuildError(f"kernel module {name} is not in {packages.KERNEL.name}")
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            import lzma
            data = lzma.decompress(data)
        info = elf.modinfo(data)
        for dep in filter(None, ",".join(info.get("depends", [""])).split(",")):
            visit(dep, chain + (key,))
        done.add(key)
        ordered.append((f"{key}.ko", data))

    for name in wanted:
        visit(name, ())
    return ordered


# -- 7. pack -----------------------------------------------------------------

def compress(data: bytes) -> bytes:
    result = subprocess.run(list(packages.COMPRESSOR), input=data, capture_output=True, check=True)
    return result.stdout


def input_digest(paths: list[Path], kernel: str) -> str:
    h = hashlib.sha256()
    pin = packages.KERNEL if kernel == "debian" else appliance_kernel.input_digest(packages.KERNEL_SOURCE)
    h.update(repr((kernel, pin, packages.USERSPACE, packages.DNSPYTHON, packages.H11, packages.NIC_MODULES,
                   packages.SOURCE_DATE_EPOCH, packages.COMPRESSOR, compiled.wanted())).encode())
    for p in sorted(paths):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def repo_inputs() -> list[Path]:
    files = [REPO / "config.py", *BUILD.glob("*.py"), appliance_kernel.FRAGMENT]
    for package in APP_PACKAGES:
        files += package_sources(REPO, package)
    files += [p for p in (REPO / "data").rglob("*") if p.is_file()]
    return files


def human(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def build(out_dir: Path, cache: Path, force: bool = False, pvh: bool = False, kernel: str = "appliance") -> dict:
    if kernel not in KERNELS:
        raise BuildError(f"unknown kernel {kernel!r}: one of {', '.join(KERNELS)}")
    progress = Progress(9)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = input_digest(repo_inputs(), kernel)
    stamp = out_dir / ".inputs"
    outputs = [out_dir / n for n in ("dns.vmlinuz", "dns.initrd", "dns.xl", "dns.manifest.json")]
    if pvh:
        outputs.append(out_dir / "dns.vmlinux")
    if not force and stamp.exists() and stamp.read_text() == digest and all(p.exists() for p in outputs):
        print(f"image: {out_dir.relative_to(REPO) if out_dir.is_relative_to(REPO) else out_dir} "
              f"is up to date (inputs unchanged; --force rebuilds)")
        return json.loads((out_dir / "dns.manifest.json").read_text())

    progress.step("fetch pinned packages")
    debs = []
    pins = [packages.KERNEL if kernel == "debian" else packages.KERNEL_SOURCE, *packages.USERSPACE,
            packages.PYTHON_DEV]
    for i, deb in enumerate(pins, 1):
        cached = (cache / "debs" / deb.filename).exists()
        if not cached:
            progress.note(f"downloading {deb.name}={deb.version} (apt-get download) ...")
        debs.append(fetch_deb(deb, cache))
        progress.item(f"{deb.name} {deb.version}{' (cached)' if cached else ''}", i, len(pins))
    wheel = fetch_wheel(packages.DNSPYTHON, cache)
    h11_wheel = fetch_wheel(packages.H11, cache)
    progress.note(" ".join(w.filename for w in (packages.DNSPYTHON, packages.H11)))

    progress.step("unpack with dpkg-deb -x")
    trees = cache / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    user_key = hashlib.sha256("".join(d.sha256 for d in packages.USERSPACE).encode()).hexdigest()[:16]
    root = unpack(debs[1:-1], trees / f"userspace-{user_key}")
    python_dev = unpack(debs[-1:], python_dev_tree(cache))
    dnspython = unpack_wheel(wheel, trees / f"dnspython-{packages.DNSPYTHON.sha256[:16]}")
    h11 = unpack_wheel(h11_wheel, trees / f"h11-{packages.H11.sha256[:16]}")
    dnspython = settle_dnspython_features(root, dnspython, dnspython.with_name(dnspython.name + "-settled"))
    progress.note(f"{root}")

    progress.step(f"relink {packages.PYTHON} without {len(relink.LEFT_OUT)} built-in modules (build/relink.py)")
    root = relinked_userspace(root, python_dev)
    progress.note(f"{root}: {human((root / 'usr/bin' / packages.PYTHON).stat().st_size)}, "
                  f"left out: {' '.join(relink.LEFT_OUT)}")

    modules: list[tuple[str, bytes]] = []
    if kernel == "debian":
        progress.step("kernel: Debian's stock kernel and its NIC modules")
        kernel_root = unpack(debs[:1], trees / f"kernel-{packages.KERNEL.sha256[:16]}")
        kernel_image = (kernel_root / "boot" / f"vmlinuz-{packages.KERNEL_RELEASE}").read_bytes()
        kernel_release, kernel_format, kernel_seconds = packages.KERNEL_RELEASE, "xz bzImage", None
        modules = kernel_modules(kernel_root, packages.NIC_MODULES)
        progress.note(f"{kernel_root}")
    else:
        progress.step("kernel: the appliance's own (build/kernel.config)")
        try:
            built = appliance_kernel.build(debs[0], cache)
        except appliance_kernel.KernelError as e:
            raise BuildError(str(e)) from e
        kernel_image = built.path.read_bytes()
        kernel_release, kernel_format, kernel_seconds = built.release, "zstd bzImage", built.built_seconds
        progress.note(f"{built.path} ({'cached' if kernel_seconds is None else f'compiled in {kernel_seconds:.0f} s'})")

    check_data_files()
    progress.step("record the modules the appliance imports")
    recorded = record_imports(root, dnspython, h11)
    sources, extensions = stdlib_selection(root, recorded)
    progress.note(f"{len(recorded)} modules loaded; keeping {len(sources)} stdlib sources, "
                  f"{len(extensions)} extension modules: "
                  f"{' '.join(Path(e).name.split('.')[0] for e in extensions)}")

    progress.step("compile .pyc zips")
    with tempfile.TemporaryDirectory() as tmp:
        stdlib_files = [(root / PYLIB / rel, rel[:-3] + ".pyc", f"/{PYLIB}/{rel}") for rel in sources]
        stdlib_zip = python_zip(root, stdlib_files, Path(tmp) / "stdlib.zip")
        init_program = init_zipapp(root, Path(tmp))
        app_files = []
        for base, pkgs in ((REPO, APP_PACKAGES), (dnspython, ("dns",)), (h11, ("h11",))):
            for package in pkgs:
                for src in package_sources(base, package):
                    rel = src.relative_to(base).as_posix()
                    if rel.startswith(DNSPYTHON_LEFT_OUT):
                        continue
                    app_files.append((src, rel[:-3] + ".pyc", f"/app/{rel}"))
        app_files, loose = loose_app_packages(root, app_files, compiled_hot_path(), Path(tmp))
        app_zip = python_zip(root, app_files, Path(tmp) / "app.zip")
        precompiled = check_imports(root, stdlib_zip, extensions, app_zip, Path(tmp), loose)
    progress.note(f"python311.zip {human(len(stdlib_zip))} ({len(stdlib_files)} modules), "
                  f"app.zip {human(len(app_zip))} ({len(app_files)} modules); "
                  + (f"loose under /app: netstack and unikernel, {len(compiled.MODULES)} modules compiled "
                     f"(mypyc); " if loose else "")
                  + "the appliance imports from them alone")

    progress.step("collect interpreter, libraries and kernel modules")
    entries: list[cpio.Entry] = []
    groups: dict[str, int] = {}

    def add(group: str, entry: cpio.Entry) -> None:
        entries.append(entry)
        groups[group] = groups.get(group, 0) + len(entry.data)

    for d in ("dev", "proc", "sys", "run", "tmp", "app", "lib", "lib64", "usr", "usr/bin",
              "usr/lib", PYLIB, f"{PYLIB}/lib-dynload", "lib/x86_64-linux-gnu"):
        add("structure", cpio.directory(d))
    # before devtmpfs is mounted: the console for init's stdio, and urandom so
    # that the first interpreter can start before the kernel RNG is ready
    add("structure", cpio.char_device("dev/console", 5, 1))
    add("structure", cpio.char_device("dev/urandom", 1, 9, 0o666))
    add("structure", cpio.char_device("dev/null", 1, 3, 0o666))
    add("init", cpio.Entry("init", 0o100755, init_program))
    # the kernel runs /sbin/poweroff for an orderly shutdown it is asked for
    # (Xen's `xl shutdown`); it hands the request to PID 1 as SIGTERM
    add("structure", cpio.directory("sbin"))
    add("init", cpio.Entry("sbin/poweroff", 0o100755, POWEROFF_HELPER))
    interpreter = (root / "usr/bin" / packages.PYTHON).read_bytes()
    add("python interpreter", cpio.Entry(f"usr/bin/{packages.PYTHON}", 0o100755, interpreter))
    add("python stdlib (.pyc zip)", cpio.Entry("usr/lib/python311.zip", 0o100644, stdlib_zip))
    ext_data = []
    for rel in extensions:
        data = (root / PYLIB / rel).read_bytes()
        ext_data.append(data)
        add("python extension modules", cpio.Entry(f"{PYLIB}/{rel}", 0o100644, data))
    libraries = library_closure(root, [interpreter, *ext_data], DLOPENED_LIBRARIES)
    for soname, data in sorted(libraries.items()):
        add("shared libraries", cpio.Entry(f"lib/x86_64-linux-gnu/{soname}", 0o100755, data))
    loader = (root / LOADER).resolve().read_bytes()
    add("shared libraries", cpio.Entry(LOADER, 0o100755, loader))
    add("structure", cpio.Entry("lib64/ld-linux-x86-64.so.2", 0o120777, b"/" + LOADER.encode()))
    if modules:             # Debian's kernel; the appliance's has its drivers built in
        add("structure", cpio.directory("lib/modules"))
        for name, data in modules:
            add("kernel modules", cpio.Entry(f"lib/modules/{name}", 0o100644, data))
        order = "".join(f"{name}\n" for name, _ in modules).encode()
        add("kernel modules", cpio.Entry("lib/modules/load-order", 0o100644, order))
    add("appliance code + dnspython + h11 (.pyc zip)", cpio.Entry("app/app.zip", 0o100644, app_zip))
    for name, data in loose:
        for parent in Path(name).parents[:-1]:
            add("structure", cpio.directory(f"app/{parent.as_posix()}"))
        group = "compiled hot path (mypyc .so)" if name.endswith(".so") else "netstack + unikernel (.pyc, loose)"
        add(group, cpio.Entry(f"app/{name}", 0o100755 if name.endswith(".so") else 0o100644, data))
    # what /metrics reports as the image's inputs (dnsapp_build_info)
    add("config.py + data/", cpio.Entry("app/build-inputs", 0o100644, digest.encode()))
    add("config.py + data/", cpio.Entry("app/config.py", 0o100644, (REPO / "config.py").read_bytes()))
    add("precompiled dataclass and namedtuple methods", cpio.Entry(pid1.PRECOMPILED.lstrip("/"), 0o100644, precompiled))
    for entry in cpio.entries_from_tree(REPO / "data"):
        add("config.py + data/", cpio.Entry(f"app/data/{entry.path}", entry.mode, entry.data))
    add("config.py + data/", cpio.directory("app/data"))
    for d in ("etc", "etc/ssl", "etc/ssl/certs"):
        add("structure", cpio.directory(d))
    add("CA bundle (ca-certificates)", cpio.Entry(packages.CA_BUNDLE, 0o100644, ca_bundle(root)))
    progress.note(f"libraries: {' '.join(sorted(libraries))}; "
                  f"modules: {' '.join(n for n, _ in modules) or 'none'}")

    progress.step(f"pack initramfs (newc cpio, {packages.COMPRESSOR[0]})")
    raw = io.BytesIO()
    cpio.write(raw, entries, mtime=packages.SOURCE_DATE_EPOCH)
    initrd = compress(raw.getvalue())
    progress.note(f"cpio {human(len(raw.getvalue()))} -> {packages.COMPRESSOR[0]} {human(len(initrd))}")

    progress.step("write images/")
    write_atomic(out_dir / "dns.vmlinuz", kernel_image)
    write_atomic(out_dir / "dns.initrd", initrd)
    write_atomic(out_dir / "dns.xl", xen.guest_config(out_dir, memory=MEMORY_MB[kernel]).encode())
    (out_dir / "dns.vmlinux").unlink(missing_ok=True)      # never leave one from older inputs
    if pvh:
        vmlinux = uncompressed_kernel(kernel_image) if kernel == "debian" else built.vmlinux.read_bytes()
        write_atomic(out_dir / "dns.vmlinux", vmlinux)
        progress.note(f"dns.vmlinux (PVH entry, uncompressed): {human(len(vmlinux))}")
    manifest = {
        "kernel": {"file": "dns.vmlinuz", "bytes": len(kernel_image), "kind": kernel, "release": kernel_release,
                   "format": kernel_format, "built_seconds": kernel_seconds, "memory_mb": MEMORY_MB[kernel],
                   "sha256": hashlib.sha256(kernel_image).hexdigest()},
        "initrd": {"file": "dns.initrd", "bytes": len(initrd), "cpio_bytes": len(raw.getvalue()),
                   "sha256": hashlib.sha256(initrd).hexdigest()},
        "space": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "stdlib_modules": [s[:-3].replace("/", ".").removesuffix(".__init__") for s in sources],
        "extension_modules": [Path(e).name.split(".")[0] for e in extensions],
        "libraries": sorted(libraries),
        "kernel_modules": [n for n, _ in modules],
        "compiled_modules": compiled_module_names() if loose else [],
        "inputs": digest,        # what /metrics reports as dnsapp_build_info's inputs
    }
    write_atomic(out_dir / "dns.manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    stamp.write_text(digest)
    summary(manifest, progress.elapsed())
    return manifest


XEN_ELFNOTE_PHYS32_ENTRY = 18


def uncompressed_kernel(bzimage: bytes) -> bytes:
    """The vmlinux ELF inside a bzImage whose payload is xz (Debian's), for
    booting through the PVH entry point (``-kernel vmlinux``): no
    decompression at boot, at the price of a file ~7x larger."""
    import lzma
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise BuildError("the kernel's payload is not xz; cannot extract vmlinux")
    vmlinux = lzma.LZMADecompressor().decompress(bzimage[start:])
    notes = elf.section(vmlinux, ".notes") or b""
    if vmlinux[:4] != b"\x7fELF" or not elf.has_note(notes, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY):
        raise BuildError("the kernel has no PVH entry point (CONFIG_PVH)")
    return vmlinux


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def summary(manifest: dict, seconds: float) -> None:
    k, i = manifest["kernel"]["bytes"], manifest["initrd"]["bytes"]
    print(f"\nimage: built in {seconds:.1f} s")
    kernel = manifest["kernel"]
    print(f"  images/dns.vmlinuz  {human(k):>10}   {kernel['kind']} kernel, Linux {kernel['release']} "
          f"({kernel['format']})")
    print(f"  images/dns.initrd   {human(i):>10}   {packages.COMPRESSOR[0]} of a "
          f"{human(manifest['initrd']['cpio_bytes'])} cpio")
    print(f"  together            {human(k + i):>10}")
    print("  in the initramfs, before compression:")
    total = sum(manifest["space"].values())
    for group, size in manifest["space"].items():
        print(f"    {group:<40} {human(size):>10} {100 * size / total:5.1f} %")
    print(f"  images/dns.xl: Xen PVH guest config, {kernel['memory_mb']} MB "
          f"({len(manifest['kernel_modules'])} kernel modules, "
          f"{len(manifest['stdlib_modules'])} stdlib modules)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=IMAGES, help="output folder (default images/)")
    ap.add_argument("--cache", type=Path, default=packages.CACHE, help="download cache (default %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    ap.add_argument("--kernel", choices=KERNELS, default="appliance",
                    help="the appliance's own kernel (default), or Debian's stock kernel with its NIC modules")
    ap.add_argument("--pvh", action="store_true",
                    help="also write images/dns.vmlinux, the uncompressed kernel for booting through its "
                         "PVH entry (nothing to decompress at boot; several times larger)")
    args = ap.parse_args(argv)
    try:
        build(args.out.resolve(), args.cache, force=args.force, pvh=args.pvh, kernel=args.kernel)
    except BuildError as e:
        print(f"image: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
