"""What every benchmark shares: dnsperf runs (throughput, and latency at a
fixed load), a process tree's CPU time and memory, medians and verdicts."""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else "python3"
FIXED_LOAD_QPS = 10_000     # the latency figure's load: below every server's saturation here


class BenchError(RuntimeError):
    pass


_built: list[Path | None] = []


def compiled_folder() -> Path | None:
    """The build the benchmarks measure: the hot path compiled with mypyc
    (build/compiled.py, built once per input hash, so it is the sources as
    they are), or None with ``MYPYC=0``: the pure Python."""
    if not _built:
        sys.path.insert(0, str(ROOT / "build"))
        import compiled
        if not compiled.wanted():
            _built.append(None)
        else:
            try:
                _built.append(compiled.build(out=sys.stderr))
            except compiled.CompileError as e:
                raise BenchError(f"compiling the hot path failed (MYPYC=0 measures the pure Python): {e}") from e
    return _built[0]


def build_measured() -> str:
    """One line naming the build a benchmark measures."""
    folder = compiled_folder()
    if folder is None:
        return "build      pure Python (MYPYC=0)"
    return f"build      mypyc-compiled hot path ({folder.name}; MYPYC=0 for the pure Python)"


def check_build(pid: int) -> None:
    """A BenchError unless process ``pid`` runs the build benchmarks measure
    (its memory maps name the compiled library, or none)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    folder = compiled_folder()
    if (folder is not None) != ("__mypyc" in maps) or (folder is not None and str(folder) not in maps):
        raise BenchError(f"process {pid} does not run the build measured ({build_measured()})")


@dataclass
class Throughput:
    qps: float
    latency_ms: float
    completed: int
    lost: int
    cpu_seconds: float
    codes: str

    @property
    def cpu_per_1000(self) -> float:
        return 1000 * self.cpu_seconds / self.completed if self.completed else float("nan")


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every descendant, in seconds."""
    if str(ROOT / "build") not in sys.path:
        sys.path.insert(0, str(ROOT / "build"))
    from qemu import process_cpu_seconds
    return sum(process_cpu_seconds(p) or 0.0 for p in _tree(pid))


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, each shared page
    counted once: the sum of their proportional set sizes (Pss), since NSD's
    server and xfrd processes share most of their pages with the parent."""
    total = 0
    for p in _tree(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        m = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        total += int(m.group(1)) * 1024 if m else 0
    return total


# The appliance's links a benchmark can put it on (`--link`): the unix
# target's tap, or AF_PACKET on a veth (the VM image's link) through its
# PACKET_MMAP rings or a system call a frame.
LINKS = ("tap", "packet", "packet-norings")


def server_link(ns, link: str, host_side: str, number: int = 0) -> tuple[str, tuple[str, ...]]:
    """Makes a server's link in `ns`, the kernel's side addressed
    `host_side`: a tap ``tap<number>``, or a veth pair whose kernel end is
    ``veth<2 number>`` and whose server end ``veth<2 number + 1>``. Returns
    the kernel's device and the flags that attach a server to the other end
    (``--tap NAME`` or ``--packet NAME``: the appliance's and bench/bare.py's)."""
    if link not in LINKS:
        raise BenchError(f"no link {link!r}: one of {', '.join(LINKS)}")
    if link == "tap":
        ns.add_tap(f"tap{number}", host_side)
        return f"tap{number}", ("--tap", f"tap{number}")
    kernel_side, server_side = f"veth{2 * number}", f"veth{2 * number + 1}"
    ns.add_veth(kernel_side, server_side, host_side)
    return kernel_side, ("--packet", server_side)


def appliance_link(ns, link: str, host_side: str) -> tuple[str, ...]:
    """Makes the appliance's link in `ns` (:func:`server_link`) and returns
    the serve flags that attach to it, the rings' choice included."""
    _, flags = server_link(ns, link, host_side)
    if link == "tap":
        return flags
    return (*flags, "--packet-rings", "no" if link == "packet-norings" else "yes")


def appliance_command(*flags: str) -> list[str]:
    """``python -m unikernel serve`` with RRL off, then ``flags`` (a flag
    given again among them wins). Every benchmark's load comes from one
    client /24, the namespace's side of the tap, which the appliance's
    default RRL (200 answers a second per /24, as NSD's) would cap: the
    benchmarks measure the server, as NSD's do with rrl-ratelimit 0. On
    the compiled build (:func:`compiled_folder`) through ``env``, which
    execs, so the pid the benchmark measures is the appliance's."""
    command = [PYTHON, "-m", "unikernel", "serve", "--rrl-rate", "0", *flags]
    folder = compiled_folder()
    if folder is None:
        return command
    sys.path.insert(0, str(ROOT / "build"))
    import compiled
    env = compiled.environment(folder, {})
    return ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *command]


def wait_for_answer(ns, address: str, name: str, timeout: float = 30, port: int = 53,
                    proc: subprocess.Popen | None = None) -> float:
    """Seconds until ``address`` answers ``name`` with NOERROR; a BenchError
    when ``proc`` (the server) exits first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"the server for {address} exited with status {proc.returncode} before answering")
        r = ns.run("dig", f"@{address}", "-p", str(port), name, "+tries=1", "+time=1", timeout=10)
        if r.returncode == 0 and "status: NOERROR" in r.stdout:
            return time.monotonic() - start
        time.sleep(0.05)
    raise BenchError(f"{address} does not answer {name} within {timeout:g} s")


def dnsperf(ns, address: str, queries: Path, *, port: int = 53, seconds: float | None = None,
            passes: int | None = None, clients: int = 1, outstanding: int = 100, pid: int | None = None,
            max_qps: int | None = None, verbose: bool = False) -> tuple[Throughput, list[float]]:
    """One dnsperf run; with ``verbose``, also every answer's latency in ms
    (dnsperf -v prints one line per query)."""
    args = ["dnsperf", "-s", address, "-p", str(port), "-d", str(queries), "-t", "2",
            "-c", str(clients), "-q", str(outstanding)]
    args += ["-n", str(passes)] if passes else ["-l", str(seconds)]
    if max_qps:
        args += ["-Q", str(max_qps)]
    if verbose:
        args.append("-v")
    before = cpu_seconds(pid) if pid else 0.0
    r = ns.run(*args, timeout=(seconds or 120) + 60)
    used = cpu_seconds(pid) - before if pid else 0.0
    out = r.stdout
    if r.returncode != 0 or "Queries per second" not in out:
        raise BenchError(f"dnsperf against {address}:{port} failed: {out[-400:]} {r.stderr[-400:]}")

    def number(pattern: str) -> float:
        m = re.search(pattern, out)
        if not m:
            raise BenchError(f"dnsperf output lacks {pattern!r}")
        return float(m.group(1))

    codes = re.search(r"Response codes:\s+(.*)", out)
    latencies = [float(m.group(1)) * 1000 for m in re.finditer(r"^> \S+ .* ([\d.]+)$", out, re.M)] if verbose else []
    return Throughput(number(r"Queries per second:\s+([\d.]+)"), number(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
                      int(number(r"Queries completed:\s+(\d+)")), int(number(r"Queries lost:\s+(\d+)")), used,
                      codes.group(1) if codes else ""), latencies


def all_noerror(r: Throughput, server: str, port: int) -> Throughput:
    """``r`` when every answer was NOERROR, else a BenchError."""
    if not r.codes.startswith("NOERROR") or "," in r.codes:
        raise BenchError(f"{server}:{port} did not answer everything with NOERROR: {r.codes or 'no response codes'}")
    return r


def dnsperf_noerror(ns, server: str, port: int, queries: Path, *, duration: float | None = None,
                    passes: int | None = None) -> dict:
    """The forwarding benchmarks' run: 4 clients, 64 queries in flight, for
    ``duration`` seconds or ``passes`` (default 1) over ``queries``; every
    answer NOERROR (else BenchError)."""
    r, _ = dnsperf(ns, server, queries, port=port, seconds=duration, passes=None if duration else passes or 1,
                   clients=4, outstanding=64)
    all_noerror(r, server, port)
    return {"qps": r.qps, "latency_ms": r.latency_ms, "completed": r.completed, "lost": r.lost}


def wait_ready(proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    """Returns once the appliance ``proc`` prints its "ready" line (its
    stdout a pipe); a BenchError when it exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready" in line:
            return
        if not line and proc.poll() is not None:
            break
    raise BenchError(f"{what} did not become ready")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def verdict(name: str, ratio: float, *, at_least: float | None = None, at_most: float | None = None) -> tuple[str, bool]:
    """One line saying whether a ratio meets its target."""
    if at_least is not None:
        ok = ratio >= at_least
        return f"verdict    {name}: {ratio:.2f}x (target >= {at_least:g}x) {'met' if ok else 'NOT met'}", ok
    if at_most is not None:
        ok = ratio <= at_most
        return f"verdict    {name}: {ratio:.2f}x (target <= {at_most:g}x) {'met' if ok else 'NOT met'}", ok
    return f"verdict    {name}: {ratio:.2f}x (reported, no numeric target)", True


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unbound_forwarder(work: Path, *, port: int, upstream: str, name: str = "unbound", validating: bool = False,
                      anchor: Path | None = None, cache_entries: int = 0) -> Path:
    """The peer the forwarder benchmarks (bench/forwarder.py's cache hits,
    bench/misses.py's misses) measure against, written to ``work``:
    Unbound on 127.0.0.1@``port``, one thread, forwarding everything to
    ``upstream`` (port 53), iterator only or validating with ``anchor``,
    full responses, caches of 64 MB or more for ``cache_entries``."""
    conf = work / f"{name}.conf"
    modules = "validator iterator" if validating else "iterator"
    conf.write_text(f"""server:
    interface: 127.0.0.1@{port}
    port: {port}
    num-threads: 1
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    do-ip6: no
    do-not-query-localhost: no
    access-control: 0.0.0.0/0 allow
    module-config: "{modules}"
    {f'trust-anchor-file: "{anchor}"' if validating else ''}
    qname-minimisation: no
    minimal-responses: no
    aggressive-nsec: no
    msg-cache-size: {max(64, cache_entries // 1000)}m
    rrset-cache-size: {max(64, cache_entries // 500)}m
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {upstream}@53
""")
    return conf
