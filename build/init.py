#!/usr/bin/python3.11 -SuE
"""PID 1 of the appliance image: the boot glue between the kernel and ``main``.

The kernel here is only the NIC driver. The appliance's own kernel
(build/kernel.config) has its drivers built in and no IP stack at all; with
Debian's stock kernel (``make image KERNEL=debian``) the drivers are modules
and the kernel has IPv4 and IPv6. This program runs in two stages, both as
PID 1:

stage 1 ("boot"): mount /proc, /sys and devtmpfs; turn Ctrl-Alt-Del into a
  signal; with a kernel that has IPv6, disable it before any NIC exists, and
  never give the NIC an IPv4 address, so the kernel's own stack stays off the
  wire; when the image carries NIC modules (Debian's kernel only), load them
  (finit_module through ctypes, in the order the image builder worked out from
  the modules' ``depends=``); wait until the kernel RNG is ready; then exec
  stage 2. The interpreter that runs stage 1 may have started before the RNG
  was ready (its hash seed then came from the unready /dev/urandom); that is
  harmless here because stage 1 reads no input from the network. When the
  kernel log proves the RNG was ready before /init started (RDRAND with
  random.trust_cpu, as under KVM or QEMU's ``-cpu max``), stage 2 runs in the
  same interpreter instead: its seed is already good.

stage 2 ("serve"): a fresh interpreter, started after the RNG is ready, so
  its hash seed (query names are attacker-chosen dict keys) and every query ID
  and port it draws are unpredictable. It reads the options from the kernel
  command line (``ipv4=ADDR/PREFIX ipv4-gateway=ADDR forward=ADDR ...``, the
  unix target's flag names), opens AF_PACKET on eth0 and runs ``serve``.

Every exit path powers the machine off: SIGTERM, Ctrl-Alt-Del (SIGINT), the
ACPI power button (SIGPWR: QEMU's ``system_powerdown``, which the kernel's tiny
power-button driver turns into that signal to PID 1, on microvm and on pc alike)
and the end of ``serve`` cleanly; an error after printing its cause. PID 1 never exits,
so the kernel never panics on its account.

The module is importable (tests use ``kernel_words`` and ``serve_argv``); it
only acts when run as /init.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import time

APP = "/app"
APP_ZIP = "/app/app.zip"
CONFIG = "/app/config.py"
# code objects for the source text the standard library compiles while the
# appliance is imported (build/make_image.py writes it; see use_precompiled_sources)
PRECOMPILED = "/app/precompiled-sources"
PRECOMPILE_OUT = "DNS_APPLIANCE_PRECOMPILE_OUT"
MODULES = "/lib/modules"
NIC = "eth0"
NIC_WAIT_SECONDS = 10.0
STAGE_VARIABLE = "DNS_APPLIANCE_STAGE"
# The signals that ask PID 1 to power off, and the reason it then prints.
POWER_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "ctrl-alt-del", signal.SIGPWR: "power button"}
# Power-off requests that came before stage 2's loop took the signals over.
EARLY_REQUESTS: list[str] = []

# <linux/reboot.h>
LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 0x28121969
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_CAD_OFF = 0x00000000
SYS_FINIT_MODULE = 313            # x86-64
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8

# Words of the kernel command line that belong to the kernel, never to us,
# even if a future appliance setting had the same name.
KERNEL_WORDS = frozenset({
    "console", "panic", "quiet", "loglevel", "init", "rdinit", "root", "ro", "rw",
    "earlyprintk", "debug", "nokaslr", "mitigations", "noapic", "acpi", "noreplace-smp",
    "tsc", "clocksource", "initrd", "mem", "maxcpus", "nosmp", "printk", "rootfstype",
    "tsc_early_khz",
})
HOST_OPTIONS = frozenset({"--tap", "--pcap", "--config", "--help"})
TRUE_WORDS = {"1", "yes", "true", "on", ""}
FALSE_WORDS = {"0", "no", "false", "off"}


def log(message: str) -> None:
    """One line on the serial console, stamped with seconds since boot."""
    try:
        with open("/proc/uptime") as f:
            stamp = f.read().split()[0]
    except OSError:
        stamp = "?"
    print(f"[init {stamp}] {message}", flush=True)


# -- the kernel command line -------------------------------------------------

def kernel_words(cmdline: str) -> list[tuple[str, str | None]]:
    """Splits /proc/cmdline into (name, value) pairs in order; value None for a
    bare word. Double quotes group a value with spaces, as the kernel's own
    parser allows (``name="a b"``)."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    out: list[tuple[str, str | None]] = []
    for word in words:
        if word == "--":          # everything after "--" is init's argv; we read it all the same
            continue
        name, eq, value = word.partition("=")
        out.append((name, value if eq else None))
    return out


def serve_argv(cmdline: str, settings: dict[str, bool]) -> tuple[list[str], list[str]]:
    """Turns the kernel command line into the unix target's argv.

    ``settings`` maps each flag name the appliance understands (``ipv4``,
    ``ipv4-gateway``, ``forward``...) to whether it is a boolean switch.
    ``name=value`` becomes ``--name value`` (repeatable: ``forward=`` may
    appear several times); a boolean is ``name``, ``name=1`` or ``name=0``.
    Returns (argv, ignored): words that are neither ours nor the kernel's are
    reported, so a typo does not pass silently."""
    argv: list[str] = []
    ignored: list[str] = []
    for name, value in kernel_words(cmdline):
        flag = name.replace("_", "-")
        if name in KERNEL_WORDS or "." in name:
            continue
        if flag not in settings:
            ignored.append(name if value is None else f"{name}={value}")
            continue
        if settings[flag]:
            v = (value or "").lower()
            if v in TRUE_WORDS:
                argv.append(f"--{flag}")
            elif v not in FALSE_WORDS:
                ignored.append(f"{name}={value}")
        elif value is None or value == "":
            ignored.append(name)
        else:
            argv += [f"--{flag}", value]
    return argv, ignored


def appliance_settings() -> dict[str, bool]:
    """The unix target's ``serve`` options as flag names -> whether each is a
    switch (takes no value), read from its own parser, so a new flag needs no
    change here. Options about the host (--tap, --pcap, --config) are not
    settable from a VM's command line."""
    from unikernel.cli import build_parser
    serve = next(action.choices["serve"] for action in build_parser()._actions
                 if getattr(action, "choices", None) and "serve" in action.choices)
    out = {}
    for action in serve._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in HOST_OPTIONS:
                out[option[2:]] = action.nargs == 0
    return out


# -- system calls ------------------------------------------------------------

class System:
    """The few system calls PID 1 needs that the os module does not offer."""

    def __init__(self) -> None:
        import ctypes
        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        self.libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            errno = self.ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(self, source: str, target: str, fstype: str, flags: int = 0) -> None:
        os.makedirs(target, exist_ok=True)
        self._check(self.libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None),
                    f"mount {fstype} on {target}")

    def finit_module(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            c = self.ctypes
            self._check(self.libc.syscall(c.c_long(SYS_FINIT_MODULE), c.c_int(fd), c.c_char_p(b""),
                                          c.c_int(0)), f"finit_module {os.path.basename(path)}")
        finally:
            os.close(fd)

    def reboot(self, command: int) -> None:
        c = self.ctypes
        self._check(self.libc.reboot(c.c_int(command)), "reboot")


def power_off(system: System | None, reason: str) -> None:
    """Never returns: syncs and powers off; if even that fails, sleeps forever
    rather than letting PID 1 exit (which would panic the kernel)."""
    log(f"poweroff: {reason}")
    try:
        os.sync()
        (system or System()).reboot(LINUX_REBOOT_CMD_POWER_OFF)
    except BaseException as e:      # noqa: BLE001 - nothing may escape PID 1
        log(f"poweroff failed: {e!r}")
    while True:
        time.sleep(3600)


# -- stage 1 -----------------------------------------------------------------

def mount_filesystems(system: System) -> None:
    for source, target, fstype, flags in (
        ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID),
    ):
        try:
            system.mount(source, target, fstype, flags)
        except OSError as e:
            if e.errno != 16:           # EBUSY: already mounted (the kernel may automount devtmpfs)
                raise


def write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def keep_kernel_off_the_wire(sysctl: str = "/proc/sys") -> bool:
    """IPv6 off for every interface created from now on (and existing ones):
    no link-local address, no DAD, no router solicitations. IPv4 needs nothing:
    the kernel never gets an address, so it answers no ARP and no packet.
    Returns False when the kernel has no IPv6 (the appliance's own kernel has
    no IP stack at all): then there is nothing to turn off."""
    if not os.path.isdir(f"{sysctl}/net/ipv6"):
        return False
    for scope in ("default", "all"):
        write_sysctl(f"{sysctl}/net/ipv6/conf/{scope}/disable_ipv6", "1")
    return True


def load_modules(system: System, folder: str = MODULES) -> list[str]:
    """Loads the modules listed in ``load-order``, which only an image with
    Debian's kernel has; ENODEV (a driver with no device, e.g. xen-netfront
    under QEMU) and EEXIST are not errors."""
    loaded = []
    try:
        with open(os.path.join(folder, "load-order")) as f:
            names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return loaded
    for name in names:
        try:
            system.finit_module(os.path.join(folder, name))
            loaded.append(name)
        except OSError as e:
            if e.errno not in (17, 19):       # EEXIST, ENODEV
                log(f"modules: {name}: {e.strerror}")
    return loaded


def wait_for_rng() -> float:
    """Blocks until the kernel's RNG is initialised; returns the seconds it took.
    Linux >= 5.18 makes a blocking getrandom() generate jitter entropy itself,
    so this ends even without a hardware RNG; virtio-rng or RDRAND make it
    immediate."""
    start = time.monotonic()
    try:
        os.getrandom(1, os.GRND_NONBLOCK)
        return 0.0
    except BlockingIOError:
        log("rng: waiting for the kernel RNG to be ready")
    os.getrandom(1)
    return time.monotonic() - start


def rng_ready_before_init(kernel_log: list[str]) -> bool:
    """True when the kernel said "random: crng init done" before it said it
    runs /init ("Run /init as init process"), from /dev/kmsg records
    ("PRIORITY,SEQUENCE,MICROSECONDS,FLAGS;MESSAGE") in their order: the
    interpreter running /init then drew its hash seed from a ready RNG.
    The order, not the time stamps: /proc/self/stat's start time, which this
    was compared with, is when PID 1's task was made, tens of milliseconds
    into the boot and seconds before the kernel executes /init, so a boot
    whose RNG was ready at 38 ms (microvm's, RDRAND) started a second
    interpreter for nothing; pc's was ready at 0 and passed by luck."""
    for record in kernel_log:
        message = record.partition(";")[2].rstrip()
        if message.startswith("random: crng init done"):
            return True
        if message.startswith("Run ") and message.endswith(" as init process"):
            return False
    return False


def read_kernel_log(limit: int = 4096) -> list[str]:
    records = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        for _ in range(limit):
            try:
                records.append(os.read(fd, 8192).decode(errors="replace"))
            except BlockingIOError:
                break
            except OSError:         # EPIPE: a record was overwritten while reading
                continue
    finally:
        os.close(fd)
    return records


def rng_ready_before_we_started() -> bool:
    """True only when the kernel log proves the RNG was ready before this
    interpreter started, i.e. before it drew its hash seed. Anything unclear
    (no such line, unreadable log) is False: then stage 2 gets a fresh
    interpreter."""
    try:
        return rng_ready_before_init(read_kernel_log())
    except OSError:
        return False


def stage_boot() -> None:
    system = None
    try:
        system = System()
        mount_filesystems(system)
        system.reboot(LINUX_REBOOT_CMD_CAD_OFF)   # Ctrl-Alt-Del now sends SIGINT to PID 1
        if not keep_kernel_off_the_wire():
            log("net: the kernel has no IPv6 to turn off")
        if os.path.isdir(MODULES):
            log(f"modules: {' '.join(load_modules(system)) or 'none loaded'}")
        waited = wait_for_rng()
        log(f"rng: ready{f' after {waited:.1f} s' if waited else ''}")
    except BaseException as e:      # noqa: BLE001 - PID 1 must not exit
        import traceback
        traceback.print_exc()
        power_off(system, f"fatal: {type(e).__name__}: {e}")
    if rng_ready_before_we_started():
        # this interpreter's hash seed already came from a ready RNG (RDRAND,
        # or a host that seeded the guest): serve from here, saving a start
        log("rng: was ready before /init started; serving from this interpreter")
        stage_serve()
        return
    try:
        # a fresh interpreter, seeded by the ready RNG; a clean environment,
        # since the kernel passes unknown cmdline words as variables
        os.execve(sys.executable, [sys.executable, "-SuE", "/init"],
                  {STAGE_VARIABLE: "serve", "PATH": "/usr/bin", "HOME": "/"})
    except BaseException as e:      # noqa: BLE001 - PID 1 must not exit
        import traceback
        traceback.print_exc()
        power_off(system, f"fatal: {type(e).__name__}: {e}")


# -- stage 2 -----------------------------------------------------------------

# Where the standard library compiles source text at import time: every
# dataclass's __init__, __repr__, __eq__... (dataclasses._create_fn execs the
# text it writes) and every namedtuple's __new__ (collections evals a lambda).
# The text is the same at every boot, since it comes from the class
# definitions alone, so the image builder compiles it once and stage 2 takes
# the code objects instead of running the compiler: 138 texts, a tenth of the
# import time on the host, more under TCG.
SOURCE_COMPILERS = (("dataclasses", "exec"), ("collections", "eval"))


def _hook_source_compilers(choose) -> None:
    """Gives dataclasses and collections an ``exec`` and an ``eval`` that
    run ``choose(mode, text)`` in place of each text they compile: a code
    object, or the text itself to compile as before."""
    import builtins
    for module_name, mode in SOURCE_COMPILERS:
        run = getattr(builtins, mode)

        def hooked(source, globals=None, locals=None, *, _run=run, _mode=mode):
            return _run(choose(_mode, source) if isinstance(source, str) else source, globals, locals)
        setattr(__import__(module_name), mode, hooked)


def use_precompiled_sources(path: str = PRECOMPILED) -> int:
    """Runs a precompiled code object where dataclasses and collections would
    compile a text that is in the table at ``path``, and compiles as before
    otherwise (a class the build did not see). The table holds (mode, text)
    -> code, compiled by this image's interpreter as the builtins would
    compile that text from those modules (``dont_inherit``: they use no
    __future__ flags). Returns how many texts it holds; 0 (and nothing
    replaced) when there is no table."""
    import marshal
    try:
        with open(path, "rb") as f:
            table = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return 0
    if not isinstance(table, dict):
        return 0
    _hook_source_compilers(lambda mode, source: table.get((mode, source), source))
    return len(table)


def import_asyncio_without_ssl() -> None:
    """asyncio imports ``ssl`` for its TLS transports, which the appliance
    never uses (its TLS is netstack.tls over its own TCP), and ``ssl`` maps
    libssl and libcrypto: under TCG that is time the first answer waits for.
    asyncio is written to run where ssl is missing (its modules then hold
    ``ssl = None``), so it is imported as if it were, and ``ssl`` is left
    importable for the code that does use it (DNS over TLS, imported when an
    appliance has it)."""
    hidden = "ssl" not in sys.modules
    if hidden:
        sys.modules["ssl"] = None       # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        if hidden:
            del sys.modules["ssl"]


def record_compiled_sources() -> dict:
    """Build time: the texts dataclasses and collections compile from here on,
    gathered through the same hook, for ``write_compiled_sources``."""
    seen: dict = {}

    def note(mode: str, source: str) -> str:
        seen[(mode, source)] = None
        return source
    _hook_source_compilers(note)
    return seen


def write_compiled_sources(seen: dict, path: str) -> None:
    import marshal
    table = {key: compile(key[1], "<string>", key[0], dont_inherit=True) for key in sorted(seen)}
    with open(path, "wb") as f:
        marshal.dump(table, f)


def wait_for_nic(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"/sys/class/net/{name}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stage_serve() -> None:
    # Until the appliance is ready it only builds what it keeps (modules, zones,
    # tables): the collector's passes over the growing heap would find nothing,
    # and cost a tenth of the imports. serve() collects once and freezes what
    # it built before saying ready; the collector runs from then on.
    gc.disable()
    system = System()
    try:
        use_precompiled_sources()
        import_asyncio_without_ssl()
        import asyncio
        sys.path.insert(0, APP_ZIP)
        sys.path.insert(1, APP)
        with open("/proc/cmdline") as f:
            cmdline = f.read()
        import logging

        from netstack.link.packet import PacketLink
        from unikernel.cli import UsageError, parse_serve
        from unikernel.config import ConfigError, load
        from unikernel.main import check, serve

        argv, ignored = serve_argv(cmdline, appliance_settings())
        if ignored:
            log(f"cmdline: ignored (not an appliance setting): {' '.join(ignored)}")
        log(f"cmdline: {' '.join(argv) or '(config.py as built)'}")
        try:
            appliance = parse_serve(argv, load(CONFIG))
            loaded = check(appliance)
        except (UsageError, ConfigError) as e:
            power_off(system, f"fatal: bad kernel command line or config: {' '.join(str(e).split())}")
        logging.basicConfig(level=logging.INFO if appliance.log_queries else logging.WARNING,
                            format="%(name)s: %(message)s", stream=sys.stdout)
        if not wait_for_nic(NIC, NIC_WAIT_SECONDS):
            power_off(system, f"fatal: no {NIC} after {NIC_WAIT_SECONDS:.0f} s (is there a virtio-net or Xen vif?)")

        def announce(line: str) -> None:
            gc.enable()
            log(line)

        async def run() -> str:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            why: list[str] = []

            def request(name: str) -> None:
                why.append(name)
                stop.set()
            for signum, reason in POWER_SIGNALS.items():
                loop.add_signal_handler(signum, request, reason)
            if EARLY_REQUESTS:          # asked for while booting: served as soon as serving starts, then ended
                request(EARLY_REQUESTS[0])
            link = PacketLink(NIC, mtu=appliance.mtu, rings=appliance.packet_rings)
            await serve(appliance, link, loaded=loaded, stop=stop, ready=announce, build_inputs=build_inputs())
            return why[0] if why else "serve returned"

        reason = asyncio.run(run())
        power_off(system, f"clean ({reason})")
    except BaseException as e:      # noqa: BLE001 - PID 1 must not exit
        import traceback
        traceback.print_exc()
        power_off(system, f"fatal: {type(e).__name__}: {e}")


def build_inputs() -> str:
    """The image's input hash, which make_image.py writes beside the code
    (/metrics reports it as dnsapp_build_info's ``inputs``)."""
    try:
        with open(f"{APP}/build-inputs") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def list_imports() -> None:
    """Build time, not boot time: imports what stage 2 imports, checks the
    built-in configuration as stage 2 does (parsing its zones and hosts
    files), imports every module of the packages named in
    DNS_APPLIANCE_IMPORT_ALL (dnspython imports record types lazily, at the
    first query that needs one, and they need standard modules of their own),
    then prints every loaded module and its file. The image builder keeps the
    standard library modules named here."""
    import importlib
    import pkgutil
    out = os.environ.get(PRECOMPILE_OUT)
    seen = record_compiled_sources() if out else {}
    for name in sys.argv[2:]:
        importlib.import_module(name)
    for package in filter(None, os.environ.get("DNS_APPLIANCE_IMPORT_ALL", "").split(",")):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            try:
                importlib.import_module(info.name)
            except Exception:       # noqa: BLE001 - optional extras (trio, aioquic, cryptography...)
                pass
    from unikernel.cli import parse_serve
    from unikernel.config import load
    from unikernel.main import check
    check(parse_serve([], load(os.environ.get("DNS_APPLIANCE_CONFIG", CONFIG))))
    appliance_settings()
    if out:
        write_compiled_sources(seen, out)
    for name, module in sorted(sys.modules.items()):
        print(name, getattr(module, "__file__", None) or "")


def keep_early_power_requests() -> None:
    """The kernel gives PID 1 no signal it has no handler for, so a power-off
    asked for while it boots (QEMU's system_powerdown during the imports, a
    host's SIGTERM) would be lost and the guest would run on: until stage 2's
    loop installs its own handlers, each such signal is noted here, and the
    loop stops at once when it starts. (One that comes while the kernel
    starts /init, or during stage 1's exec of a second interpreter, before
    this runs, is still lost.)"""
    for signum, reason in POWER_SIGNALS.items():
        signal.signal(signum, lambda _signum, _frame, reason=reason: EARLY_REQUESTS.append(reason))


def main() -> None:
    if os.getpid() != 1:
        if sys.argv[1:2] == ["list-imports"]:
            list_imports()
            return
        sys.exit("init: this is PID 1 of the appliance image; run it with `make boot`")
    keep_early_power_requests()
    if os.environ.get(STAGE_VARIABLE) == "serve":
        stage_serve()
    else:
        stage_boot()


if __name__ == "__main__":
    main()
