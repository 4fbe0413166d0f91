"""The benchmarks start the appliance with one command line, bench.common's
``appliance_command``, and that line turns RRL off.

Every benchmark's load comes from one client /24 (the namespace's side of
the tap), which the appliance's default RRL (200 answers a second per /24,
as NSD's) caps: bench/dot.py and bench/dnssec.py, starting the appliance
with their own command lines and without ``--rrl-rate 0``, measured RRL's
ceiling (dot: misses at ~200-500 QPS, a quarter of them lost; dnssec: cache
hits at ~250 QPS) instead of the appliance.
"""
import ast
from pathlib import Path

from unikernel.cli import parse_serve

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _spells_serve(path: Path) -> list[int]:
    """Lines of ``path`` that write out a ``-m unikernel serve`` command line."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            words = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if any(words[i:i + 2] == ["unikernel", "serve"] for i in range(len(words))):
                lines.append(node.lineno)
    return lines


def test_no_benchmark_writes_its_own_appliance_command_line():
    found = {path.name: _spells_serve(path) for path in sorted(BENCH.glob("*.py")) if path.name != "common.py"}
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_the_benchmarks_appliance_runs_without_rrl_unless_a_flag_says_otherwise(monkeypatch):
    from bench import common
    from bench.common import appliance_command
    monkeypatch.setattr(common, "_built", [None])           # the pure Python (MYPYC=0)
    command = appliance_command("--tap", "tap0", "--ipv4", "192.0.2.2/24", "--forward", "192.0.2.1:53")
    assert command[1:4] == ["-m", "unikernel", "serve"]
    assert parse_serve(command[4:]).rrl_rate == 0
    # a flag given after the benchmark's own wins (bench misses --appliance-flag=--rrl-rate=200)
    assert parse_serve(appliance_command("--tap", "tap0", "--rrl-rate=200")[4:]).rrl_rate == 200


def test_on_the_compiled_build_the_same_command_runs_with_the_folder_first(monkeypatch):
    from bench import common
    monkeypatch.setattr(common, "_built", [None])
    pure = common.appliance_command("--tap", "tap0")
    folder = Path("/cache/compiled/host-0123")
    monkeypatch.setattr(common, "_built", [folder])
    command = common.appliance_command("--tap", "tap0")
    # env execs the interpreter: the pid started is the appliance's, as the CPU figures need
    assert command[0] == "env" and command[-len(pure):] == pure
    assert f"PYTHONPATH={folder}:{common.ROOT}" in command and "PYTHONSAFEPATH=1" in command
