"""``python -m bench [auth|forwarder|hot_path|dot|dnssec] [options]``: with no
name, every benchmark present runs in turn (auth, forwarder, hot_path, dot,
dnssec); each module provides ``main(argv) -> int``."""
from __future__ import annotations

import importlib
import importlib.util
import sys

BENCHMARKS = ("auth", "forwarder", "hot_path", "dot", "dnssec", "blocklist")


def main(argv: list[str]) -> int:
    names = [argv.pop(0)] if argv and argv[0] in BENCHMARKS else list(BENCHMARKS)
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
