"""The one entry every target runs: the unix target (``python -m unikernel
serve``) and PID 1 of the VM image both call :func:`serve` with an
:class:`~unikernel.config.Appliance` and a link.

The resolution chain lives in :func:`resolution_chain`, and only there.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import ipaddress
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from netstack import ethernet
from netstack.stack import Stack
from unikernel import __version__
from unikernel.config import AccessList, Appliance, ConfigError, parse_upstream
from unikernel.ops import stats as stats_mod
from unikernel.process import Process, compose, labelled, processor_of_process
from unikernel.resolver.cache import Cache
from unikernel.resolver.forwarder import forwarder
from unikernel.resolver.stub import StubResolver
from unikernel.serve.server import DnsServer, FastLookup
from unikernel.serve.tcp import DnsTcpServer
from unikernel.sources import zone as zones_mod
from unikernel.sources.blocklist import Blocklist
from unikernel.sources.chaos import chaos_process
from unikernel.sources.hosts import HostsFiles, HostsTable, load_hosts
from unikernel.sources.special import special_process

log = logging.getLogger("unikernel.main")


def parse_mac(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return ethernet.mac_from_str(text)
    except ValueError as e:
        raise ConfigError(f"mac {e}") from None


@dataclass
class Loaded:
    """What :func:`check` read from the files the declaration names, handed
    to :func:`serve` so that each file is parsed once."""
    zone_files: zones_mod.ZoneFiles | None
    hosts: HostsTable | None
    blocklist: Blocklist | None = None


def check(appliance: Appliance) -> Loaded:
    """Everything that can be wrong with the declaration, found before a
    device is touched: raises ConfigError; returns the zones and hosts
    files, loaded."""
    parse_mac(appliance.mac)
    if not 0 < appliance.port < 65536:
        raise ConfigError(f"port {appliance.port} out of range 1..65535")
    if appliance.metrics_port == appliance.port:
        raise ConfigError(f"metrics-port {appliance.metrics_port} is the DNS port")
    gateway = appliance.gateway
    if gateway is not None and gateway not in appliance.interface.network:
        raise ConfigError(f"gateway {gateway} is not on {appliance.interface.network}")
    hosts = load_hosts(appliance.path(h) for h in appliance.hosts) if appliance.hosts else None
    try:
        for upstream in appliance.forward:
            address, _port = parse_upstream(upstream)
            if address == int(appliance.interface.ip) or address >> 24 in (0, 127):
                raise ConfigError(f"forward {upstream}: the appliance cannot forward to itself "
                                  "or to a loopback address (its stack has no loopback)")
        AccessList(appliance.allow)
        for bogus in appliance.bogus_nxdomain:
            ipaddress.IPv4Address(bogus)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    zone_files = zones_mod.ZoneFiles(appliance.path(z) for z in appliance.zones) if appliance.zones else None
    blocklist = None
    if appliance.blocklist:
        blocklist = Blocklist([appliance.path(b) for b in appliance.blocklist],
                              [appliance.path(a) for a in appliance.allowlist], mode=appliance.block_answer)
        log.warning("blocklists: %d names", len(blocklist))
        if blocklist.malformed:
            log.warning("blocklists: %d line(s) not understood, skipped; %s", blocklist.malformed,
                        "; ".join(blocklist.report))
    return Loaded(zone_files, hosts, blocklist)


# The tables that network input fills (kept answers, the cache, TCP answers
# waiting for slow readers) share one byte budget: at most this much, and at
# most BUDGET_SHARE of the memory the machine has available at start, so that
# a 128 MiB VM under a flood of odd names stays clear of the OOM killer.
MAX_BUDGET = 64 * 1024 * 1024
BUDGET_SHARE = 0.4


def memory_budgets(available: int | None) -> dict[str, int]:
    """Byte budgets for the static table, the cache and TCP answers, split
    3 : 4 : 1, from the bytes available (None: unknown, take the maximum)."""
    total = MAX_BUDGET if available is None else min(MAX_BUDGET, int(available * BUDGET_SHARE))
    total = max(total, 4 * 1024 * 1024)
    return {"static": total * 3 // 8, "cache": total * 4 // 8, "tcp": total // 8}


def available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolution_chain(appliance: Appliance, stack, loaded: Loaded,
                     budgets: dict[str, int] | None = None) -> tuple[Process, list[FastLookup], list]:
    """The appliance's answer to every query, as the seed composes it:
    ``compose(zones, hosts, special-use, forwarder)``.

    Returns ``(process, fast_lookups, lifecycle)``:

    * ``process``: the composed process (local zones first; each later link
      only sees what the earlier ones left unanswered or answered with an
      error without being final);
    * ``fast_lookups``: hot-path callables ``(key, src_ip, now) -> wire | None``
      (e.g. the cache's), tried after the server's own static answers;
    * ``lifecycle``: objects whose ``start()`` (optional, may be async) runs
      once the server is up and whose ``close()`` runs on stop.

    To add a link: build it here, append it to ``chain`` in its place, and
    add its fast lookup / lifecycle object if it has one.
    """
    chain: list[Process] = []
    fast_lookups: list[FastLookup] = []
    lifecycle: list = []

    if loaded.zone_files is not None:
        chain.append(labelled("zone", loaded.zone_files.process))
        lifecycle.append(loaded.zone_files)   # reloadable on SIGHUP
    recursion = bool(appliance.forward)
    if loaded.hosts is not None:
        hosts_files = HostsFiles([appliance.path(h) for h in appliance.hosts], loaded.hosts,
                                 recursion_available=recursion)
        chain.append(labelled("hosts", hosts_files.process))
        lifecycle.append(hosts_files)         # reloadable on SIGHUP
    if loaded.blocklist is not None:
        # after the local zones and hosts (never before them), before the
        # cache and the forwarder
        loaded.blocklist.counters = stack.counters
        loaded.blocklist.recursion_available = recursion
        chain.append(labelled("blocked", loaded.blocklist.process))
        lifecycle.append(loaded.blocklist)    # reloadable on SIGHUP
    if recursion:
        # special-use names are answered here so that they never leak upstream;
        # without a forwarder the appliance is authoritative-only and, like
        # NSD, refuses every name its zones and hosts do not hold (issue 3)
        chain.append(labelled("special", special_process(recursion_available=recursion)))
    if appliance.forward:
        try:
            cache = Cache(max_entries=appliance.cache_size, serve_stale=appliance.serve_stale,
                          counters=stack.counters,
                          **({"max_bytes": budgets["cache"]} if budgets else {}))
            relay = forwarder(appliance.forward, stub=StubResolver(stack, counters=stack.counters), cache=cache,
                              allow=appliance.allow or [str(appliance.interface.network)],
                              randomize_case=appliance.randomize_case,
                              bogus_nxdomain=appliance.bogus_nxdomain, clock=stack.now)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        chain.append(labelled("forward", relay))
        fast_lookups.append(relay.fast_lookup)
        lifecycle.append(relay)

    if not chain:
        async def nothing(*, src, dst, query):
            return None
        chain.append(nothing)
    return compose(*chain), fast_lookups, lifecycle


def operator_side(appliance: Appliance, stack, server: DnsServer, lifecycle: list, stats: stats_mod.QueryStats,
                  *, started: float, build_inputs: str):
    """The operator's port (/metrics, /api/stats, the dashboard) over the
    parts built above: their metric collectors, handed to the HTTP side."""
    from unikernel.ops import metrics
    from unikernel.ops.http import HttpServer
    from unikernel.ops.site import OpsSite
    from unikernel.resolver.forwarder import Forwarder

    collectors: list[metrics.Collector] = [
        functools.partial(metrics.counter_families, stack.counters),
        functools.partial(metrics.kept_answer_families, server),
        functools.partial(metrics.tcp_families, stack.tcp),
        functools.partial(metrics.process_families, stack.now, started),
        functools.partial(metrics.build_families, __version__, build_inputs),
    ]
    for item in lifecycle:
        if isinstance(item, Forwarder):
            rtt = stats_mod.UpstreamRtt([u.name for u in item.upstreams])
            item.upstreams.observe_rtt = rtt.observe
            collectors.append(functools.partial(metrics.cache_families, item.cache))
            collectors.append(functools.partial(metrics.upstream_families, item.upstreams, stack.now,
                                                rtt.histograms))
        elif isinstance(item, Blocklist):
            collectors.append(functools.partial(metrics.blocklist_families, item))
    site = OpsSite(stats, collectors, clock=stack.now, identity=identity_of(appliance), version=__version__)
    allowed = AccessList(appliance.allow or [str(appliance.interface.network)])
    return HttpServer(stack.tcp, appliance.metrics_port, site.routes(), allowed=allowed, counters=stack.counters)


def identity_of(appliance: Appliance) -> str:
    return appliance.identity or str(appliance.interface.ip)


def _write_line(line: str) -> None:
    """The query log's lines, each flushed: someone may be tailing the console."""
    sys.stdout.write(line)
    sys.stdout.flush()


async def serve(appliance: Appliance, link, *, loaded: Loaded | None = None,
                stop: asyncio.Event | None = None, ready: Callable[[str], object] = print,
                clock: Callable[[], float] | None = None, build_inputs: str = "source") -> None:
    """Builds the stack on ``link``, serves DNS as ``appliance`` declares
    (with the files ``check`` loaded; checked here when not given), says
    ``ready ...`` once queries are answered, runs until ``stop`` is set
    (forever without one), then closes everything. ``build_inputs`` is what
    /metrics reports the code was built from (the image's input hash)."""
    if loaded is None:
        loaded = check(appliance)
    stop = stop or asyncio.Event()
    stack = Stack(link, appliance.interface, appliance.gateway, mtu=appliance.mtu,
                  mac=parse_mac(appliance.mac), clock=clock)
    budgets = memory_budgets(available_memory())
    process, fast_lookups, lifecycle = resolution_chain(appliance, stack, loaded, budgets)
    chaos = chaos_process(identity=identity_of(appliance), version=None if appliance.hide_version else __version__)
    # what every reply is told to: the statistics the operator's port shows, the query log
    stats = stats_mod.QueryStats() if appliance.metrics_port else None
    observers: list[stats_mod.Observe] = [stats.record] if stats is not None else []
    if appliance.log_queries:
        from unikernel.ops.querylog import QueryLog
        observers.append(QueryLog(_write_line, clock=stack.now, wall_clock=time.time,
                                  counters=stack.counters).record)
    server = DnsServer(stack, appliance.port, processor_of_process(process),
                       fast_lookups=fast_lookups, observe=stats_mod.fan_out(observers),
                       chaos=processor_of_process(labelled("chaos", chaos)), max_kept_bytes=budgets["static"])
    server.tcp_server = DnsTcpServer(stack.tcp, appliance.port, server.handle_tcp,
                                     max_answer_bytes=budgets["tcp"])
    log.info("memory budgets: static answers %d MiB, cache %d MiB, TCP answers %d MiB",
             *(budgets[k] >> 20 for k in ("static", "cache", "tcp")))
    # The zones are loaded for good: move them out of the collector's way, so
    # full collections do not walk every record while queries wait.
    gc.collect()
    gc.freeze()
    started: list = []
    ops_http = None
    loop = asyncio.get_running_loop()
    def reload() -> None:
        """SIGHUP: read the zone files, hosts files and blocklists again, all or nothing:
        on any error keep serving what was loaded before."""
        reloadable = [item for item in lifecycle if hasattr(item, "stage")]
        try:
            commits = [item.stage() for item in reloadable]
        except ConfigError as e:
            stack.counters["dns.reload.failed"] += 1
            log.warning("reload failed, still serving what was loaded before: %s", " ".join(str(e).split()))
            return
        for commit in commits:
            commit()
        for item in reloadable:
            if isinstance(item, Blocklist) and item.malformed:
                log.warning("blocklists: %d line(s) not understood, skipped; %s", item.malformed,
                            "; ".join(item.report))
        # answers kept or cached from before may be wrong now (a name newly blocked)
        server.forget_kept_answers()
        for item in lifecycle:
            cache = getattr(item, "cache", None)
            if cache is not None:
                cache.clear()
        stack.counters["dns.reload.done"] += 1
        zone_files = sum(len(item.paths) for item in reloadable if isinstance(item, zones_mod.ZoneFiles))
        hosts_files = sum(len(item.paths) for item in reloadable if isinstance(item, HostsFiles))
        lists = sum(len(item.blocklist_paths) + len(item.allowlist_paths) for item in reloadable
                    if isinstance(item, Blocklist))
        log.warning("reloaded %d zone file(s), %d hosts file(s), %d block/allow list(s)", zone_files, hosts_files,
                    lists)

    signals = {signal.SIGUSR1: stack.log_counters,   # every counter to the log
               signal.SIGHUP: reload}
    try:
        for signum, handler in signals.items():
            loop.add_signal_handler(signum, handler)
        signals_installed = True
    except (NotImplementedError, RuntimeError, ValueError):   # not the main thread
        signals_installed = False
    try:
        await stack.start()
        server.start()
        server.tcp_server.start()
        for item in lifecycle:
            start = getattr(item, "start", None)
            if start is not None:
                outcome = start()
                if inspect.isawaitable(outcome):
                    await outcome
            started.append(item)
        zones = ", ".join(str(z) for z in appliance.zones) or "none"
        started_at = stack.now()
        if stats is not None:
            # once DNS is served; `ready` then says both are up
            ops_http = operator_side(appliance, stack, server, lifecycle, stats, started=started_at,
                                     build_inputs=build_inputs)
            ops_http.start()
        ready(f"ready: DNS on {ipaddress.IPv4Address(stack.address)}:{appliance.port} "
              f"(tap {getattr(link, 'name', appliance.tap)}, zones: {zones})"
              + (f", metrics on :{appliance.metrics_port}" if ops_http is not None else ""))
        await stop.wait()
    finally:
        for item in reversed(started):
            try:
                outcome = item.close() if hasattr(item, "close") else None
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("closing %r failed", item)
        if ops_http is not None:
            ops_http.close()
        server.close()
        stack.close()
        if signals_installed:
            for signum in signals:
                loop.remove_signal_handler(signum)
