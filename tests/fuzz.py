"""`make fuzz`: the fuzzers, by name, with how many inputs each runs.

    python -m tests.fuzz frames 1000000 [--seed N]

Each fuzzer is a module with ``run(count, seed, report=print) -> int``
(the number of invariant violations; 0 is clean) that prints its counts.
Another fuzzer joins by adding its module to FUZZERS.
"""
from __future__ import annotations

import argparse
import importlib
import sys

FUZZERS = {
    "frames": "tests.fuzz_frames",     # Ethernet frames into a fresh stack per example
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("fuzzer", choices=sorted(FUZZERS))
    parser.add_argument("count", type=int)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    module = importlib.import_module(FUZZERS[args.fuzzer])
    violations = module.run(args.count, args.seed)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
