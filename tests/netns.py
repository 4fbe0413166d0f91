"""Network namespaces for tests: the only place test traffic may go.

A test makes a namespace, puts a tap in it with the host side addressed
(192.0.2.1/24 by default, TEST-NET-1), runs the appliance on the tap's other
side, and removes the namespace afterwards. Nothing is ever addressed outside.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CLONE_NEWNET = 0x40000000
REPO = Path(__file__).resolve().parent.parent
# The project's interpreter (its .venv when there is one), so that an
# appliance a test starts has the project's packages whatever ran pytest.
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
_ids = itertools.count()

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"),
    reason="needs root, iproute2 and /dev/net/tun to make a network namespace with a tap",
)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


class Namespace:
    """``with Namespace() as ns:`` a fresh network namespace, removed on exit."""

    def __init__(self, prefix: str = "dnsapp") -> None:
        self.name = f"{prefix}{os.getpid()}x{next(_ids)}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            stop(p)
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(f"/etc/netns/{self.name}")

    # -- running things inside ---------------------------------------------
    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def run(self, *cmd: str, timeout: float = 30, check: bool = False, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True,
                              text=True, timeout=timeout, check=check, **kw)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        kw.setdefault("text", True)
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self.procs.append(p)
        return p

    def serve(self, *flags: str, tap: str = "tap0", ipv4: str = "192.0.2.2/24", gateway: str = "none",
              forward: str | None = "none", ready: str | None = "ready", timeout: float = 30,
              **kw) -> subprocess.Popen:
        """The unix target in here (`unikernel.cli`'s flags), started from the
        repository; waits for its `ready` line unless `ready` is None."""
        proc = self.popen(*unix_target(*flags, tap=tap, ipv4=ipv4, gateway=gateway, forward=forward),
                          cwd=str(REPO), **kw)
        if ready is not None:
            read_until(proc, ready, timeout)
        return proc

    def add_tap(self, tap: str = "tap0", host: str = "192.0.2.1/24") -> str:
        """A tap inside the namespace; its kernel side gets `host`."""
        self.ip("tuntap", "add", "dev", tap, "mode", "tap")
        self.ip("addr", "add", host, "dev", tap)
        self.ip("link", "set", tap, "up")
        return tap

    def add_veth(self, kernel: str = "veth0", ours: str = "veth1", host: str = "192.0.2.1/24",
                 mtu: int | None = None) -> str:
        """A veth pair inside the namespace: `kernel` addressed `host`, `ours`
        up with no address and no IPv6 (the kernel sends nothing from it), for
        the appliance's AF_PACKET link (`serve --packet ours`)."""
        self.ip("link", "add", kernel, "type", "veth", "peer", "name", ours)
        self.run("sysctl", "-qw", f"net.ipv6.conf.{ours}.disable_ipv6=1", check=True)
        self.ip("addr", "add", host, "dev", kernel)
        for dev in (kernel, ours):
            if mtu is not None:
                self.ip("link", "set", dev, "mtu", str(mtu))
            self.ip("link", "set", dev, "up")
        return ours

    @contextlib.contextmanager
    def entered(self):
        """Runs the body with this thread inside the namespace (for opening a
        tap from the test process itself; the fd stays bound afterwards)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            yield
        finally:
            _setns(own)
            os.close(own)
            os.close(target)

    def resolv_conf(self, text: str) -> None:
        """/etc/netns/NAME/resolv.conf, which `ip netns exec` mounts over /etc/resolv.conf."""
        os.makedirs(f"/etc/netns/{self.name}", exist_ok=True)
        with open(f"/etc/netns/{self.name}/resolv.conf", "w") as f:
            f.write(text)

    def add_loss(self, dev: str, percent: int) -> None:
        """nftables rules in the namespace that drop `percent`% of the frames
        each way on `dev` (this kernel has no netem)."""
        commands = [
            ("add", "table", "inet", "lossy"),
            ("add", "chain", "inet", "lossy", "out", "{ type filter hook output priority 0 ; }"),
            ("add", "chain", "inet", "lossy", "in", "{ type filter hook input priority 0 ; }"),
            ("add", "rule", "inet", "lossy", "out", "oifname", dev, "numgen", "random", "mod", "100",
             "<", str(percent), "drop"),
            ("add", "rule", "inet", "lossy", "in", "iifname", dev, "numgen", "random", "mod", "100",
             "<", str(percent), "drop"),
        ]
        for command in commands:
            result = self.run("nft", *command)
            assert result.returncode == 0, result.stdout + result.stderr


async def exec_in(ns: Namespace, *cmd: str, timeout: float = 60, stdin: bytes | None = None) -> tuple[int, str]:
    """Runs a command in the namespace from inside an event loop (so the
    stack on that loop keeps answering); returns (status, output)."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns.name, *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode()


def stop(proc: subprocess.Popen, grace: float = 5) -> None:
    """Ends `proc`: SIGTERM, and SIGKILL if it is still there after `grace` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unix_target(*flags: str, tap: str = "tap0", ipv4: str = "192.0.2.2/24", gateway: str = "none",
                forward: str | None = "none") -> list[str]:
    """The command line of the unix target on `tap` at `ipv4`: authoritative
    only by default, its own forwarding default with forward=None."""
    args = [PYTHON, "-m", "unikernel", "serve", "--tap", tap, "--ipv4", ipv4, "--ipv4-gateway", gateway]
    return args + (["--forward", forward] if forward is not None else []) + list(flags)


def read_until(proc: subprocess.Popen, word: str, timeout: float = 30.0) -> str:
    """The first line of `proc`'s output containing `word` (e.g. "ready").
    Reads with plain readline (select() would miss lines already buffered);
    a process that stays silent past `timeout` is killed, which ends the wait."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    seen = []
    try:
        while line := proc.stdout.readline():
            seen.append(line)
            if word in line:
                return line
    finally:
        watchdog.cancel()
    raise AssertionError(f"no line with {word!r} within {timeout} s; output: {''.join(seen)[-800:]}")


def counter(proc: subprocess.Popen, name: str) -> int:
    """The value of counter `name` in the SIGUSR1 dump of an appliance run as `proc`."""
    proc.send_signal(signal.SIGUSR1)
    return int(read_until(proc, f"{name} ", timeout=10).split()[-1])
