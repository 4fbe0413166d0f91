"""The image without booting it: reproducibility, contents, the Xen config, and
PID 1's command-line handling.

The contents are checked with tools that are not the builder's where it
matters: the compressor's own command and Python's zipfile unpack the image, and the
kernel module order is checked against the ``depends=`` strings found by a
plain byte search rather than by the builder's ELF reader.
"""
from __future__ import annotations

import marshal
import stat
import subprocess
import sys
import zipfile
from io import BytesIO

import cpio  # noqa: E402  (build/, put on the path by conftest)
import init  # noqa: E402
import make_image  # noqa: E402
import pytest
import xen  # noqa: E402

from tests.netns import Namespace, needs_root

from .conftest import initramfs_entries, needs_build_tools

# -- PID 1's command line ---------------------------------------------------------

SETTINGS = {"ipv4": False, "ipv4-gateway": False, "forward": False, "log-queries": True, "cache-size": False}


def test_kernel_words_split_like_the_kernel():
    words = init.kernel_words('console=ttyS0 panic=-1  quiet ipv4=192.0.2.2/24 name="a b" x= \n')
    assert words == [("console", "ttyS0"), ("panic", "-1"), ("quiet", None), ("ipv4", "192.0.2.2/24"),
                     ("name", "a b"), ("x", "")]


def test_serve_argv_takes_ours_and_leaves_the_kernels():
    argv, ignored = init.serve_argv(
        "console=ttyS0 panic=-1 quiet ipv4=192.0.2.2/24 ipv4-gateway=192.0.2.1 forward=192.0.2.1 "
        "forward=192.0.2.3:5353 log-queries virtio_net.napi_tx=0 ipv4-gw=1.2.3.4 cache_size=50", SETTINGS)
    assert argv == ["--ipv4", "192.0.2.2/24", "--ipv4-gateway", "192.0.2.1", "--forward", "192.0.2.1",
                    "--forward", "192.0.2.3:5353", "--log-queries", "--cache-size", "50"]
    assert ignored == ["ipv4-gw=1.2.3.4"]          # a typo is reported, never passed silently


def test_serve_argv_booleans_and_missing_values():
    argv, ignored = init.serve_argv("log-queries=0 ipv4 forward=", SETTINGS)
    assert argv == []
    assert ignored == ["ipv4", "forward"]
    assert init.serve_argv("log-queries=yes", SETTINGS)[0] == ["--log-queries"]
    assert init.serve_argv("log-queries=maybe", SETTINGS) == ([], ["log-queries=maybe"])


def test_settings_come_from_the_unix_targets_parser():
    settings = init.appliance_settings()
    assert settings["ipv4"] is False and settings["ipv4-gateway"] is False and settings["forward"] is False
    assert settings["log-queries"] is True
    assert "tap" not in settings and "pcap" not in settings and "config" not in settings


def test_kernel_command_line_becomes_the_appliance():
    from unikernel.cli import parse_serve
    from unikernel.config import load
    argv, ignored = init.serve_argv("console=ttyS0 ipv4=192.0.2.2/24 ipv4-gateway=192.0.2.1 "
                                    "forward=192.0.2.1 forward=192.0.2.9", init.appliance_settings())
    appliance = parse_serve(argv, load(make_image.REPO / "config.py"))
    assert ignored == []
    assert appliance.ipv4 == "192.0.2.2/24" and appliance.ipv4_gateway == "192.0.2.1"
    assert appliance.forward == ["192.0.2.1", "192.0.2.9"]
    assert appliance.zones                      # config.py's zones stay


# -- the cpio writer ----------------------------------------------------------------

def test_cpio_is_sorted_root_owned_and_fixed_time():
    out = BytesIO()
    cpio.write(out, [cpio.Entry("b", 0o100644, b"xyz"), cpio.directory("a"),
                     cpio.Entry("a/x", 0o100755, b"1"), cpio.char_device("dev/console", 5, 1)], mtime=1234)
    data = out.getvalue()
    assert len(data) % 4 == 0
    members = cpio.read(data)
    assert [m[0] for m in members] == ["a", "a/x", "b", "dev/console"]
    assert all(m[3] == 1234 for m in members)
    assert stat.S_ISCHR(members[3][1])
    # uid and gid fields (the 4th and 5th of 13) are zero in every header
    for pos in range(len(data)):
        if data.startswith(b"070701", pos):
            assert data[pos + 6 + 16:pos + 6 + 32] == b"0" * 16
    with pytest.raises(ValueError):
        cpio.write(BytesIO(), [cpio.Entry("x", 0o100644, b"1"), cpio.Entry("x", 0o100644, b"2")])


# -- the built image -------------------------------------------------------------------

@needs_build_tools
def test_two_builds_give_identical_bytes(image, tmp_path):
    again = make_image.build(tmp_path / "again", make_image.packages.CACHE, force=True)
    for name in ("dns.vmlinuz", "dns.initrd"):
        assert (tmp_path / "again" / name).read_bytes() == (make_image.IMAGES / name).read_bytes(), name
    assert again["initrd"]["sha256"] == image["initrd"]["sha256"]


@needs_build_tools
def test_initramfs_contents(image):
    members = {name: (mode, data, mtime)
               for name, mode, data, mtime in initramfs_entries(make_image.IMAGES / "dns.initrd")}
    assert list(members) == sorted(members)
    assert {mtime for _, _, mtime in members.values()} == {make_image.packages.SOURCE_DATE_EPOCH}
    mode, data, _ = members["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and data.startswith(b"#!/usr/bin/python3.11 -S")
    # after its #! line, /init is a zipapp of init.py compiled: nothing to compile at boot
    assert zipfile.ZipFile(BytesIO(data)).namelist() == ["__main__.pyc"]
    assert stat.S_ISCHR(members["dev/console"][0])
    mode, helper, _ = members["sbin/poweroff"]                 # what `xl shutdown` makes the kernel run
    assert mode & 0o111 and helper.startswith(b"#!/usr/bin/python3.11") and b"SIGTERM" in helper
    assert "usr/bin/python3.11" in members and "lib64/ld-linux-x86-64.so.2" in members
    assert not any(n.endswith(".py") and n.startswith("usr/lib") for n in members)   # sources stay out

    # the stdlib zip holds unchecked-hash pycs only (PEP 552 flags == 0b01)
    stdlib = zipfile.ZipFile(BytesIO(members["usr/lib/python311.zip"][1]))
    names = stdlib.namelist()
    assert names == sorted(names) and all(n.endswith(".pyc") for n in names)
    assert "asyncio/__init__.pyc" in names and "encodings/utf_8.pyc" in names
    assert "ssl.pyc" in names and "tkinter/__init__.pyc" not in names      # ssl for DNS over TLS
    # dnspython's features are answered at build time, so nothing imports importlib.metadata
    assert not any(n.startswith("importlib/metadata/") for n in names)
    features = zipfile.ZipFile(BytesIO(members["app/app.zip"][1])).read("dns/_features.pyc")
    assert b"importlib" not in features and b"_cache" in features
    assert any(n.startswith("usr/lib/python3.11/lib-dynload/_ssl.") for n in members)
    assert "lib/x86_64-linux-gnu/libssl.so.3" in members and "lib/x86_64-linux-gnu/libcrypto.so.3" in members
    bundle = members[make_image.packages.CA_BUNDLE][1]           # Mozilla's roots, as Debian pins them
    assert bundle.count(b"-----BEGIN CERTIFICATE-----") > 100
    for n in names[:20]:
        assert int.from_bytes(stdlib.read(n)[4:8], "little") == 0b01
    # the methods dataclasses and namedtuples compile at import come compiled (init.PRECOMPILED)
    table = marshal.loads(members[init.PRECOMPILED.lstrip("/")][1])
    assert len(table) > 100 and {mode for mode, _ in table} == {"exec", "eval"}
    assert any("def __init__(self" in text for _, text in table)

    app = zipfile.ZipFile(BytesIO(members["app/app.zip"][1])).namelist()
    assert "dns/message.pyc" in app
    if image.get("compiled_modules"):
        # the hot path compiled (build/compiled.py): extension modules cannot load from a zip, so
        # netstack and unikernel lie under /app, each compiled module as a .so and not as a .pyc
        suffix = make_image.compiled.IMAGE_TARGET.suffix
        app = [n.removeprefix("app/") for n in members if n.startswith(("app/netstack/", "app/unikernel/"))]
        assert f"app/{make_image.compiled.GROUP}__mypyc{suffix}" in members
        assert "netstack/stack.pyc" not in app and f"netstack/stack{suffix}" in app
        assert f"unikernel/serve/server{suffix}" in app and f"netstack/link/packet{suffix}" in app
        assert not any(n.startswith(("netstack/", "unikernel/")) for n in zipfile.ZipFile(
            BytesIO(members["app/app.zip"][1])).namelist())
    else:
        assert "netstack/stack.pyc" in app
    assert "unikernel/main.pyc" in app
    assert "app/config.py" in members and "app/data/d1.signpo.st.zone" in members
    # DNSSEC checks signatures with libcrypto.so.3 through ctypes: no cryptography or cffi wheel
    assert "unikernel/resolver/dnssec/crypto.pyc" in app
    assert any(n.startswith("usr/lib/python3.11/lib-dynload/_ctypes.") for n in members)
    assert "lib/x86_64-linux-gnu/libffi.so.8" in members
    assert not any("cryptography" in n or "cffi" in n for n in members), "the cryptography wheel is back"
    # the appliance's kernel has its drivers built in: no modules to carry or load
    assert not any(n.startswith("lib/modules") for n in members)


@needs_build_tools
def test_debian_initramfs_carries_the_nic_modules_in_load_order(debian_image):
    members = {name: (mode, data, mtime)
               for name, mode, data, mtime in initramfs_entries(make_image.IMAGES / "debian" / "dns.initrd")}
    # every module comes after the ones its depends= names
    order = members["lib/modules/load-order"][1].decode().split()
    assert "virtio_net.ko" in order and "virtio_pci.ko" in order and "xen_netfront.ko" in order
    for position, name in enumerate(order):
        blob = members[f"lib/modules/{name}"][1]
        depends = blob.split(b"\0depends=")[1].split(b"\0")[0].decode() if b"\0depends=" in blob else ""
        for dep in filter(None, depends.split(",")):
            assert order.index(f"{dep.replace('-', '_')}.ko") < position, (name, dep)


@needs_build_tools
def test_size_target(image):
    kernel, total = image["kernel"]["bytes"], image["kernel"]["bytes"] + image["initrd"]["bytes"]
    assert kernel <= 3_000_000, f"kernel {kernel / 1e6:.2f} MB, the target is 3 MB"
    # issue 17's target, met since DNSSEC uses the image's libcrypto rather than
    # the cryptography wheel; with zstd for the kernel and the initramfs, since
    # the interpreter lost the built-in modules the appliance never imports
    assert total <= 8_000_000, f"kernel + initrd = {total / 1e6:.2f} MB, the target is 8 MB"


# -- Xen ------------------------------------------------------------------------------

def test_xen_config_is_a_pvh_guest(tmp_path):
    text = xen.guest_config(tmp_path, ipv4="192.0.2.2/24", gateway="192.0.2.1", forward=["192.0.2.1"])
    cfg = xen.parse(text)
    assert cfg["type"] == "pvh"
    assert cfg["kernel"] == f"{tmp_path}/dns.vmlinuz" and cfg["ramdisk"] == f"{tmp_path}/dns.initrd"
    assert cfg["memory"] == 128 and cfg["vcpus"] == 1
    assert cfg["vif"] == ["bridge=xenbr0"]
    assert cfg["on_reboot"] == cfg["on_crash"] == cfg["on_poweroff"] == "destroy"
    words = cfg["cmdline"].split()
    assert "console=hvc0" in words and "ipv4=192.0.2.2/24" in words and "forward=192.0.2.1" in words
    # the command line is what PID 1 understands
    argv, ignored = init.serve_argv(cfg["cmdline"], init.appliance_settings())
    assert argv == ["--ipv4", "192.0.2.2/24", "--ipv4-gateway", "192.0.2.1", "--forward", "192.0.2.1"]
    assert ignored == []


def test_xen_parse_refuses_what_xl_would():
    with pytest.raises(ValueError):
        xen.parse('kernel = /unquoted/path\n')
    with pytest.raises(ValueError):
        xen.parse('memory = 128\nmemory = 64\n')


@needs_build_tools
def test_built_xen_config_points_at_the_images(image, debian_image):
    cfg = xen.parse((make_image.IMAGES / "dns.xl").read_text())
    for key in ("kernel", "ramdisk"):
        assert (make_image.IMAGES / cfg[key].rsplit("/", 1)[1]).exists()
    # the kernel QEMU boots is the one Xen boots, with the memory it was measured to need
    assert cfg["kernel"] == f"{make_image.IMAGES}/dns.vmlinuz" and cfg["memory"] == image["kernel"]["memory_mb"]
    debian = xen.parse((make_image.IMAGES / "debian" / "dns.xl").read_text())
    assert debian["kernel"] == f"{make_image.IMAGES}/debian/dns.vmlinuz" and debian["memory"] == make_image.MEMORY_MB["debian"]
    assert "xen_netfront.ko" in debian_image["kernel_modules"]


# -- boot.py's choices --------------------------------------------------------------

def test_boot_without_a_tap_uses_user_networking_and_keeps_upstreams_local(monkeypatch):
    import argparse

    import boot
    import qemu

    from unikernel.config import Appliance
    appliance = Appliance(ipv4="192.168.1.2/24", ipv4_gateway="192.168.1.1", forward=["192.168.1.1"],
                          tap="no-such-tap0")
    net, options, hint = boot.plan(argparse.Namespace(mode="auto", tap=None, port=5353), appliance)
    assert isinstance(net, qemu.User) and net.host_port == 5353
    # the tap-side upstream becomes the host's loopback (slirp's 10.0.2.2), never the host's LAN
    assert options.split() == ["ipv4=10.0.2.15/24", "ipv4-gateway=10.0.2.2", "forward=10.0.2.2"]
    assert "dig @127.0.0.1 -p 5353" in hint
    args = qemu.netdev_args(net)
    assert "hostfwd=udp:127.0.0.1:5353-10.0.2.15:53" in args[1] and "restrict" not in args[1]
    assert "hostfwd=tcp:127.0.0.1:9153-10.0.2.15:9153" in args[1] and "/metrics" in hint

    net, options, hint = boot.plan(argparse.Namespace(mode="tap", tap="tap7", port=5353), appliance)
    assert net == qemu.Tap("tap7")
    assert options.split() == ["ipv4=192.168.1.2/24", "ipv4-gateway=192.168.1.1", "forward=192.168.1.1"]
    assert hint.startswith("dig @192.168.1.2 ")


def test_the_rng_counts_as_ready_only_when_the_kernel_said_so_before_running_init():
    ready_early = ["6,1,0,-;Linux version 6.1.0", "5,48,37686,-;random: crng init done",
                   "6,300,2779492,-;Run /init as init process"]
    assert init.rng_ready_before_init(ready_early)
    # ready only after /init ran: the interpreter's hash seed came from an unready RNG
    ready_late = ["6,1,0,-;Linux version 6.1.0", "6,300,2779492,-;Run /init as init process",
                  "5,301,2900000,-;random: crng init done"]
    assert not init.rng_ready_before_init(ready_late)
    assert not init.rng_ready_before_init(["6,1,0,-;Linux version", "garbage"])
    assert not init.rng_ready_before_init([])


PRECOMPILE_PROGRAM = """
import collections, dataclasses, sys
sys.path.insert(0, sys.argv[1])
import init
seen = init.record_compiled_sources() if sys.argv[2] == "record" else None
held = init.use_precompiled_sources(sys.argv[3]) if sys.argv[2] == "use" else None

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 2
    tags: tuple = dataclasses.field(default_factory=tuple)

Pair = collections.namedtuple("Pair", "left right")
if seen is not None:
    init.write_compiled_sources(seen, sys.argv[3])
    print(len(seen))
else:
    p = Point(1)
    print(held, repr(p), p == Point(1, 2), hash(p) == hash(Point(1)), Pair(1, right=2), Pair._fields)
"""


def run_program(tmp_path, text: str, *args: str) -> str:
    """Runs ``text`` in a fresh interpreter (what it patches stays there),
    build/ as its first argument, then ``args``; its output."""
    program = tmp_path / "program.py"
    program.write_text(text)
    return subprocess.run([sys.executable, str(program), str(make_image.BUILD), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def run_precompile_program(tmp_path, *args: str) -> str:
    return run_program(tmp_path, PRECOMPILE_PROGRAM, *args)


def test_precompiled_sources_behave_as_the_compiled_text(tmp_path):
    table = tmp_path / "table"
    # Point's __init__, __repr__, __eq__, __hash__, __setattr__, __delattr__; Pair's __new__
    assert int(run_precompile_program(tmp_path, "record", str(table))) >= 6
    with_table = run_precompile_program(tmp_path, "use", str(table))
    without = run_precompile_program(tmp_path, "plain", str(table))
    assert with_table.split(" ", 1)[1] == without.split(" ", 1)[1]
    assert with_table.startswith(("6 ", "7 ", "8 ")) and without.startswith("None ")
    assert "Point(x=1, y=2, tags=()) True True Pair(left=1, right=2) ('left', 'right')" in with_table


def test_precompiled_sources_are_what_runs(tmp_path):
    """The hook really takes the table's code: a table whose entry for a
    text holds other code changes what the class does; a text not in the
    table compiles as before; no table, nothing replaced."""
    table_path = tmp_path / "table"
    run_precompile_program(tmp_path, "record", str(table_path))
    table = marshal.loads(table_path.read_bytes())
    repr_text = next(text for mode, text in table if "def __repr__(self" in text)
    forged = repr_text.replace("return self.__class__.__qualname__", "return 'forged' or self.__class__.__qualname__")
    assert forged != repr_text
    table[("exec", repr_text)] = compile(forged, "<string>", "exec", dont_inherit=True)
    init_text = next(text for mode, text in table if "def __init__(self" in text)
    del table[("exec", init_text)]
    table_path.write_bytes(marshal.dumps(table))
    out = run_precompile_program(tmp_path, "use", str(table_path))
    assert " forged " in out and " True True " in out         # repr forged; __init__ compiled as before
    assert run_precompile_program(tmp_path, "use", str(tmp_path / "missing")).startswith("0 ")


STAGE_TWO_IMPORTS = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[3]]
import init
init.import_asyncio_without_ssl()
import asyncio, asyncio.base_events, asyncio.sslproto
from netstack.link.packet import PacketLink
from unikernel.cli import parse_serve
from unikernel.config import load
from unikernel.main import check, serve
check(parse_serve([], load(sys.argv[2])))
loaded = sorted(m for m in ("ssl", "_ssl", "netstack.tls", "unikernel.resolver.tls_upstream") if m in sys.modules)
print(loaded, asyncio.base_events.ssl, asyncio.sslproto.ssl)
from netstack import tls
print(type(tls.client_context()).__name__)
"""


def test_stage_two_imports_without_ssl(tmp_path):
    """What stage 2 imports for the default appliance leaves ssl (libssl,
    libcrypto) unloaded until something uses it, and DNS over TLS still
    gets it when it does."""
    out = run_program(tmp_path, STAGE_TWO_IMPORTS, str(make_image.REPO / "config.py"), str(make_image.REPO))
    assert out.splitlines() == ["[] None None", "SSLContext"]


# -- PID 1 and the link on a kernel without an IP stack ------------------------------

def test_ipv6_is_turned_off_only_where_the_kernel_has_it(tmp_path):
    assert init.keep_kernel_off_the_wire(str(tmp_path)) is False        # the appliance's kernel: no IPv6
    for scope in ("default", "all"):
        (tmp_path / "net/ipv6/conf" / scope).mkdir(parents=True)
        (tmp_path / "net/ipv6/conf" / scope / "disable_ipv6").write_text("0")
    assert init.keep_kernel_off_the_wire(str(tmp_path)) is True
    assert (tmp_path / "net/ipv6/conf/all/disable_ipv6").read_text() == "1"
    assert (tmp_path / "net/ipv6/conf/default/disable_ipv6").read_text() == "1"


@needs_root
def test_packet_link_brings_the_nic_up_without_ipv4_sockets(monkeypatch):
    """The appliance's kernel has no AF_INET: PacketLink must bring eth0 up
    through its own packet socket (it used an AF_INET socket, and the first
    boot on that kernel failed with EAFNOSUPPORT)."""
    import errno
    import socket

    from netstack.link.packet import PacketLink

    real_socket = socket.socket

    def no_inet(family=socket.AF_INET, *args, **kw):
        if family == socket.AF_INET:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args, **kw)

    with Namespace("nolink") as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        assert "state DOWN" in ns.run("ip", "link", "show", "eth0").stdout
        monkeypatch.setattr(socket, "socket", no_inet)
        with ns.entered():
            link = PacketLink("eth0")
        monkeypatch.undo()
        try:
            flags = ns.run("ip", "-o", "link", "show", "eth0").stdout
            assert "<" in flags and "UP" in flags.split("<")[1].split(">")[0].split(","), flags
        finally:
            link.close()


def test_boot_asks_for_the_memory_the_image_was_built_for(tmp_path):
    """make run booted every image with 128 MB, which Debian's kernel with
    this initramfs does not unpack in: the manifest says what each needs."""
    import json

    import boot

    manifest = tmp_path / "dns.manifest.json"
    manifest.write_text(json.dumps({"kernel": {"memory_mb": make_image.MEMORY_MB["debian"]}}))
    assert boot.built_for_memory(manifest) == make_image.MEMORY_MB["debian"]
    assert boot.built_for_memory(tmp_path / "missing.json") == 128


def test_qemu_command_names_the_machines_virtio_bus(tmp_path):
    """pc (the default) gets virtio PCI devices and no -M; microvm, which has
    no PCI bus, the virtio-mmio ones (QEMU refuses a -pci device there)."""
    import qemu
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    pc = qemu.command(kernel, initrd, accel="tcg", net=qemu.Tap("tap0"))
    assert "-M" not in pc
    assert "virtio-rng-pci" in pc and "virtio-net-pci,netdev=n0" in pc
    micro = qemu.command(kernel, initrd, accel="tcg", net=qemu.Tap("tap0"), machine="microvm,acpi=off")
    assert micro[micro.index("-M") + 1] == "microvm,acpi=off"
    assert "virtio-rng-device" in micro and "virtio-net-device,netdev=n0" in micro
    assert not any("-pci" in word for word in micro)
    # under TCG the kernel is told the TSC's rate (microvm has nothing to calibrate it against)
    words = micro[micro.index("-append") + 1].split()
    assert "tsc=reliable" in words and "tsc=reliable" not in pc[pc.index("-append") + 1].split()
    khz = qemu.host_tsc_khz()
    if khz is not None:
        assert f"tsc_early_khz={khz}" in words and 100_000 < khz < 10_000_000


def test_the_appliances_kernel_boots_on_microvm_and_any_other_on_pc(tmp_path):
    import json

    import qemu
    for kind, machine in (("appliance", qemu.MICROVM), ("debian", qemu.PC)):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "dns.manifest.json").write_text(json.dumps({"kernel": {"kind": kind}}))
        assert qemu.default_machine(folder / "dns.vmlinuz") == machine
        cmd = qemu.command(folder / "dns.vmlinuz", folder / "dns.initrd", accel="tcg", net=None)
        assert (cmd[cmd.index("-M") + 1] if "-M" in cmd else qemu.PC) == machine
    assert qemu.default_machine(tmp_path / "no-manifest" / "vmlinuz") == qemu.PC


def test_qemu_runs_tcg_unless_kvm_is_asked_for(monkeypatch):
    """A /dev/kvm that opens (and even one that starts a paused guest) does
    not mean KVM boots one: on such a host every boot died in the kernel's
    first XRSTOR. TCG is the default; KVM only when asked for."""
    import qemu
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: True)      # a /dev/kvm that opens
    passed = subprocess.CompletedProcess([], 0, b"", b"")                # ... and a paused guest that quits
    monkeypatch.setattr(qemu.subprocess, "run", lambda *args, **kwargs: passed)
    monkeypatch.delenv("DNS_APPLIANCE_ACCEL", raising=False)
    assert qemu.accelerator() == "tcg"
    assert "tcg" in qemu.command(qemu.IMAGES / "k", qemu.IMAGES / "i")
    monkeypatch.setenv("DNS_APPLIANCE_ACCEL", "kvm")
    assert qemu.accelerator() == "kvm"
