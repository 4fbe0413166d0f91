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


def test_the_forwarder_benchmarks_unbound_configuration_is_one_unbound_accepts(tmp_path):
    """bench/forwarder.py and bench/misses.py both start Unbound from
    bench.common's ``unbound_forwarder``; unbound-checkconf (Unbound's own
    parser) accepts it in each form they use."""
    import shutil
    import subprocess

    import pytest

    from bench.common import unbound_forwarder
    checkconf = shutil.which("unbound-checkconf")
    if checkconf is None:
        pytest.skip("unbound-checkconf is missing (apt-get install unbound)")
    anchor = tmp_path / "anchor"
    anchor.write_text(". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n")
    for options in ({"cache_entries": 300_000}, {"validating": True, "anchor": anchor, "name": "validating"}):
        conf = unbound_forwarder(tmp_path, port=5301, upstream="192.0.2.1", **options)
        checked = subprocess.run([checkconf, str(conf)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        text = conf.read_text()
        assert "forward-addr: 192.0.2.1@53" in text and "num-threads: 1" in text
        assert ("validator iterator" in text) == bool(options.get("validating"))


class _RecordingNamespace:
    """What server_link asks of a tests.netns.Namespace, written down."""

    def __init__(self) -> None:
        self.made: list[tuple] = []

    def add_tap(self, name: str, address: str) -> None:
        self.made.append(("tap", name, address))

    def add_veth(self, ours: str, theirs: str, address: str) -> None:
        self.made.append(("veth", ours, theirs, address))


def test_one_helper_makes_the_appliances_and_the_bare_responders_links():
    import pytest

    from bench.common import BenchError, appliance_link, server_link
    from unikernel.cli import parse_serve
    ns = _RecordingNamespace()
    assert appliance_link(ns, "tap", "192.0.2.1/24") == ("--tap", "tap0")
    assert appliance_link(ns, "packet-norings", "192.0.2.1/24") == ("--packet", "veth1", "--packet-rings", "no")
    # the bare responder's, beside it: other devices, its own flags (bench/bare.py reads --tap and --packet)
    assert server_link(ns, "tap", "198.51.100.1/24", number=1) == ("tap1", ("--tap", "tap1"))
    assert server_link(ns, "packet", "198.51.100.1/24", number=1) == ("veth2", ("--packet", "veth3"))
    assert ns.made == [("tap", "tap0", "192.0.2.1/24"), ("veth", "veth0", "veth1", "192.0.2.1/24"),
                       ("tap", "tap1", "198.51.100.1/24"), ("veth", "veth2", "veth3", "198.51.100.1/24")]
    # and the appliance accepts what it is given
    serve = parse_serve([*appliance_link(ns, "packet", "192.0.2.1/24"), "--ipv4", "192.0.2.2/24"])
    assert serve is not None
    with pytest.raises(BenchError):
        server_link(ns, "wifi", "192.0.2.1/24")
