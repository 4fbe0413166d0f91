"""The hot path compiled with mypyc (build/compiled.py) sends what the pure
Python sends.

Every other test runs the sources (they monkeypatch, and compiled classes
cannot be patched). Here the compiled folder is built (cached by its inputs'
hash: 14-35 s once per checkout and change, then nothing) and the
frame-equality tests run against it in a subprocess whose path puts it
first, after checking that each compiled module is the extension module:
the kept answers' and the cache hits' frames byte for byte as the slow path
sends them (scapy checking both checksums), the frame fuzzer's invariants,
the server's, IPv4's, UDP's, ARP's and the links' unit tests. Then the unix
target on the compiled folder answers dig on a tap, from the fast path.
"""
from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import Namespace, needs_root, read_until

REPO = Path(__file__).resolve().parent.parent
ZONES = REPO / "tests" / "integration" / "zones"
sys.path.insert(0, str(REPO / "build"))
import compiled  # noqa: E402  (build/compiled.py)

# what the compiled path must send as the pure one does
FRAME_TESTS = ("tests/stack/test_fast_reply.py", "tests/stack/test_fast_cache_reply.py",
               "tests/stack/test_fuzz_frames.py", "tests/unit/test_server.py", "tests/unit/test_icmp_udp.py",
               "tests/unit/test_ipv4.py", "tests/unit/test_counters.py", "tests/unit/test_ethernet_arp.py",
               "tests/unit/test_packet_link.py", "tests/unit/test_link_drops.py", "tests/stack/test_packet_rings.py")
CHECK_THEN_TEST = """
import sys
import importlib
import os
suffix, modules, tests = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
for name in modules:
    module = importlib.import_module(name)
    assert module.__file__.endswith(suffix), f"{name} is not the compiled one: {module.__file__}"
print(f"compiled: {len(modules)} modules are extension modules", flush=True)
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--import-mode=append", *tests]))
"""


@pytest.fixture(scope="module")
def folder() -> Path:
    target = compiled.host_target()
    if shutil.which("gcc") is None or not (target.include / "Python.h").exists():
        pytest.skip(f"needs gcc and Python.h in {target.include} to compile with mypyc")
    return compiled.build(target)


def module_names() -> list[str]:
    return [m.removesuffix(".py").replace("/", ".") for m in compiled.MODULES]


def test_compiled_path_sends_what_the_pure_path_sends(folder):
    result = subprocess.run([sys.executable, "-c", CHECK_THEN_TEST, compiled.host_target().suffix,
                             ",".join(module_names()), *FRAME_TESTS],
                            cwd=str(REPO), env=compiled.environment(folder), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert f"compiled: {len(compiled.MODULES)} modules are extension modules" in result.stdout
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_pure_path_is_untouched_without_the_folder():
    # this process (every other test's) runs the sources
    for name in module_names():
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(".py"), module.__file__


def test_the_folder_follows_the_sources(tmp_path):
    target = compiled.host_target()
    for package in compiled.PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    before = compiled.input_digest(target, tmp_path)
    assert compiled.input_digest(target, tmp_path) == before
    # a module that is not compiled: mypyc reads its types, and the folder holds its copy
    with open(tmp_path / "unikernel" / "sources" / "zone.py", "a") as f:
        f.write("# edited\n")
    assert compiled.input_digest(target, tmp_path) != before     # another folder: no stale build is found


@needs_root
@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (apt install dnsutils)")
def test_unix_target_on_the_compiled_folder_answers_dig(folder):
    with Namespace() as ns:
        ns.add_tap("tap0", "192.0.2.1/24")
        proc = ns.popen(sys.executable, "-m", "unikernel", "serve", "--forward", "none", "--tap", "tap0",
                        "--ipv4", "192.0.2.2/24", "--ipv4-gateway", "none", "--zone", str(ZONES / "hard.example.zone"),
                        cwd=str(REPO), env=compiled.environment(folder))
        read_until(proc, "ready")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()       # ip netns exec execs the command
        assert f"{folder}/{compiled.GROUP}__mypyc" in maps, "the appliance did not load the compiled modules"
        for _ in range(3):          # the first from the slow path, then kept
            out = ns.run("dig", "@192.0.2.2", "WwW.HaRd.ExAmPlE", "A", "+norec", "+tries=1", "+time=2").stdout
            assert "status: NOERROR" in out and "flags: qr aa;" in out, out
            assert "WwW.HaRd.ExAmPlE.\t3600\tIN\tA\t192.0.2.80" in out, out
        proc.send_signal(signal.SIGUSR1)
        line = read_until(proc, "dns.fast.hit")
        assert line.split() == ["dns.fast.hit", "2"], line
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "Traceback" not in out, out


def test_prune_keeps_the_recent_builds_and_the_last_used(tmp_path):
    """The cache has a bound: builds beyond the KEEP most recently used go
    once unused for a day, half-way builds too; other targets' are not touched."""
    target = compiled.host_target()
    now = 1_000_000_000.0
    day = compiled.STALE

    def made(name: str, used: float, complete: bool = True) -> Path:
        path = tmp_path / "compiled" / name
        path.mkdir(parents=True)
        mark = path / compiled.MARK if complete else path
        if complete:
            mark.write_text(name)
        os.utime(mark, (used, used))
        return path

    recent = [made(f"host-recent{i}", now - 2 * day - i) for i in range(compiled.KEEP)]
    old = [made(f"host-old{i}", now - 3 * day - i) for i in range(3)]
    fresh_beyond_keep = made("host-fresh", now - 60)          # used a minute ago: kept, and first in line
    half_way_old = made("host-abc.x1y2", now - 2 * day, complete=False)
    half_way_now = made("host-def.z3w4", now - 10, complete=False)
    other_target = made("image-old", now - 9 * day)

    removed = compiled.prune(target, tmp_path, now=now)

    assert sorted(removed) == sorted([*old, recent[-1], half_way_old])
    for kept in (*recent[:-1], fresh_beyond_keep, half_way_now, other_target):
        assert kept.exists()
    for gone in removed:
        assert not gone.exists()
    assert compiled.prune(target, tmp_path, now=now) == []


def test_a_cached_build_counts_as_used(tmp_path, monkeypatch):
    target = compiled.host_target()
    monkeypatch.setattr(compiled, "input_digest", lambda *_: "0" * 40)
    folder = compiled.folder_for(target, tmp_path)
    folder.mkdir(parents=True)
    (folder / compiled.MARK).write_text("x")
    os.utime(folder / compiled.MARK, (1.0, 1.0))
    assert compiled.build(target, tmp_path) == folder
    assert (folder / compiled.MARK).stat().st_mtime > 1.0
