"""Where the appliance's time goes: py-spy samples it while dnsperf loads it
with the authoritative benchmark's zone and queries (not part of `make bench`).

    .venv/bin/pip install py-spy      # a measuring tool, not a dependency
    .venv/bin/python -m bench.profile [--seconds 10] [--names 3000]

Prints the functions with the most samples of their own (leaf) time, then
with the most samples in them or below (inclusive), as shares of all samples;
``--native`` includes C frames (the tap's write, the kernel's side).
"""
from __future__ import annotations

import argparse
import collections
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.auth import APPLIANCE, HOST_SIDE, ORIGIN, write_queries, write_zone
from bench.common import ROOT, BenchError, appliance_command, dnsperf, wait_for_answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--names", type=int, default=3000)
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        print("bench.profile: py-spy is missing (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from tests.netns import Namespace

    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="dnsprof") as tmp, Namespace("dnsprof") as ns:
        work = Path(tmp)
        zone, queries = work / "zone", work / "queries.txt"
        write_queries(queries, write_zone(zone, args.names, rng), 20000, rng)
        ns.add_tap("tap0", HOST_SIDE)
        command = appliance_command("--forward", "none", "--tap", "tap0", "--ipv4", f"{APPLIANCE}/24",
                                    "--ipv4-gateway", "none", "--zone", str(zone))
        appliance = ns.popen(*command, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_answer(ns, APPLIANCE, f"host1.{ORIGIN}")
            dnsperf(ns, APPLIANCE, queries, passes=1)                  # fill the fast path
            raw = work / "profile.txt"
            record = [spy, "record", "--format", "raw", "-o", str(raw), "-r", "250", "-d", str(int(args.seconds)),
                      "-p", str(appliance.pid)] + (["--native"] if args.native else [])
            answered: list = []
            load = threading.Thread(target=lambda: answered.append(dnsperf(ns, APPLIANCE, queries,
                                                                           seconds=args.seconds + 2)[0]),
                                    daemon=True)
            load.start()
            subprocess.run(record, check=True, capture_output=True)
            load.join()
            report = summarise(raw, args.top)      # read before the temporary folder goes
        except (BenchError, subprocess.CalledProcessError) as e:
            print(f"bench.profile: {e} {getattr(e, 'stderr', b'')!r}", file=sys.stderr)
            return 2
    qps = answered[0].qps if answered else float("nan")
    # at 250 samples a second, one sample is 4 ms; per answer: 4 ms * share * seconds / answers
    per_answer_us = 1e6 / qps if qps else float("nan")
    print(f"over {args.seconds:g} s; {qps:.0f} QPS under py-spy, {per_answer_us:.1f} us of wall "
          "time per answer; a share below is that share of it")
    print(report)
    return 0


def summarise(raw: Path, top: int) -> str:
    """py-spy's raw samples as two tables: the functions with the most
    samples of their own (leaf) time, and in them or below (inclusive), as
    shares of all samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        # "function (path/file.py:line)" -> "function file.py": lines of one function add up
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples"]
    for title, table in (("own time", own), ("inclusive", inclusive)):
        lines.append(f"\n{title}:")
        lines += [f"{100 * n / total:6.1f} %  {frame}" for frame, n in table.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
