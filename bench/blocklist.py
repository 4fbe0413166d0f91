"""``python -m bench blocklist [--names N]``: what a blocklist of N names
(default 1,000,000, in StevenBlack's hosts format) costs the appliance:
load time, resident memory kept after the load and at its peak, and the
lookup time of a blocked and an unblocked name. Runs each load in a fresh
process, so the figures are the list's and nothing else's."""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("ads", "track", "metrics", "cdn", "pixel", "stats", "tag", "beacon", "analytics", "click", "serve",
         "media", "img", "static", "api")
TLDS = ("com", "net", "org", "io", "de", "ru", "info", "xyz", "co.uk")

MEASURE = r"""
import json, resource, sys, time, timeit
import dns.name
from unikernel.sources.blocklist import Blocklist

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

before = rss()
t = time.perf_counter()
blocklist = Blocklist([sys.argv[1]])
load = time.perf_counter() - t
after = rss()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
blocked = dns.name.from_text("x.y." + sys.argv[2]).labels
free = dns.name.from_text("www.example.org").labels
assert blocklist.blocks(blocked) and not blocklist.blocks(free)
n = 100_000
print(json.dumps({"names": len(blocklist), "load_s": load, "kept_bytes": after - before, "peak_rss": peak,
                  "rss_before": before,
                  "lookup_blocked_us": timeit.timeit(lambda: blocklist.blocks(blocked), number=n) / n * 1e6,
                  "lookup_free_us": timeit.timeit(lambda: blocklist.blocks(free), number=n) / n * 1e6}))
"""


def write_list(path: Path, count: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    last = ""
    with open(path, "w") as f:
        f.write("# Title: generated for bench/blocklist.py\n127.0.0.1 localhost\n0.0.0.0 0.0.0.0\n\n")
        for i in range(count):
            last = f"{rng.choice(WORDS)}{rng.randrange(10**6)}.{rng.choice(WORDS)}-{i}.{rng.choice(TLDS)}"
            f.write(f"0.0.0.0 {last}\n")
    return last


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench blocklist")
    parser.add_argument("--names", type=int, default=1_000_000)
    args, _ = parser.parse_known_args(argv)     # options meant for other benchmarks are ignored
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hosts"
        last = write_list(path, args.names)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(path), last], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
    figures = json.loads(out.stdout)
    mib = 1024 * 1024
    print(f"blocklist of {figures['names']:,} names ({path.name} format, {args.names:,} lines): "
          f"load {figures['load_s']:.2f} s, kept {figures['kept_bytes'] / mib:.1f} MiB "
          f"({figures['kept_bytes'] / max(figures['names'], 1):.1f} bytes a name), "
          f"peak RSS {figures['peak_rss'] / mib:.0f} MiB (process alone {figures['rss_before'] / mib:.0f} MiB), "
          f"lookup {figures['lookup_blocked_us']:.2f} µs blocked / {figures['lookup_free_us']:.2f} µs not")
    return 0
