"""``python -m bench [auth|forwarder|zones|hot_path|frames|dot|dnssec|misses|blocklist|stats] [options]``:
with no name, every
benchmark runs in turn, each given the same options (each ignores those
meant for the others). Each provides ``main(argv) -> int``; the exit status
is the worst: 0 every target met, 1 a target not met, 2 a benchmark failed.
``boot`` (QEMU boots of built images, root) runs only when named.

Bounded by default (a few minutes in all); ``--long`` gives longer rounds
and the million-name zone. ``make bench BENCH_ARGS=--long``.

Every benchmark measures the hot path compiled with mypyc
(build/compiled.py), built first if the sources changed; ``MYPYC=0``
measures the pure Python. The first line printed names the build."""
from __future__ import annotations

import importlib
import importlib.util
import sys

BENCHMARKS = ("auth", "forwarder", "zones", "hot_path", "frames", "dot", "dnssec", "misses", "blocklist", "stats")
# run only when named: they need what the others do not (root, QEMU, built images)
ON_REQUEST = ("boot",)
# what --long means for each: longer rounds, and the million-name zone
LONG = ["--seconds", "15", "--duration", "15", "--rounds", "5", "--zone-seconds", "10", "--fill", "100000"]


def main(argv: list[str]) -> int:
    names = [argv.pop(0)] if argv and argv[0] in BENCHMARKS + ON_REQUEST else list(BENCHMARKS)
    if "--long" in argv:
        argv = LONG + argv          # later options win: --long --rounds 3 keeps 3
    from bench.common import BenchError, build_measured, compiled_folder
    try:
        folder = compiled_folder()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    if folder is not None:
        # first on the path: the in-process benchmarks (frames, hot_path)
        # import the compiled modules, as the appliance does (appliance_command)
        sys.path.insert(0, str(folder))
    print(build_measured(), flush=True)
    status = 0
    for name in names:
        if importlib.util.find_spec(f"bench.{name}") is None:
            if len(names) == 1:
                print(f"bench: no benchmark named {name}", file=sys.stderr)
                return 2
            continue
        print(f"== bench {name}", flush=True)
        status = max(status, importlib.import_module(f"bench.{name}").main(list(argv)))
    return status


sys.exit(main(sys.argv[1:]))
