"""The one entry every target runs: the unix target (``python -m unikernel
serve``) and PID 1 of the VM image both call :func:`serve` with an
:class:`~unikernel.config.Appliance` and a link.

The resolution chain lives in :func:`resolution_chain`, and only there.
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import ipaddress
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from netstack import ethernet
from netstack.stack import Stack
from unikernel.config import AccessList, Appliance, ConfigError, parse_upstream
from unikernel.process import Process, compose, processor_of_process
from unikernel.resolver.cache import Cache
from unikernel.resolver.dnssec.anchors import AnchorError, TrustAnchors, root_anchors
from unikernel.resolver.dnssec.chain import ChainOfTrust
from unikernel.resolver.dnssec.validator import Validator
from unikernel.resolver.forwarder import Forwarder, forwarder
from unikernel.resolver.stub import StubResolver
from unikernel.resolver.validation import Validation
from unikernel.serve.server import DnsServer, FastLookup
from unikernel.serve.tcp import DnsTcpServer
from unikernel.sources import zone as zones_mod
from unikernel.sources.hosts import HostsTable, hosts_process, load_hosts
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
    trust_anchors: TrustAnchors | None = None     # when forwarding with DNSSEC validation


def check(appliance: Appliance) -> Loaded:
    """Everything that can be wrong with the declaration, found before a
    device is touched: raises ConfigError; returns the zones and hosts
    files, loaded."""
    parse_mac(appliance.mac)
    if not 0 < appliance.port < 65536:
        raise ConfigError(f"port {appliance.port} out of range 1..65535")
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
    anchors = None
    if appliance.forward and appliance.dnssec:
        try:
            anchors = (TrustAnchors.from_files(appliance.path(a) for a in appliance.trust_anchors)
                       if appliance.trust_anchors else root_anchors())
        except AnchorError as e:
            raise ConfigError(f"trust anchor {e}") from None
    return Loaded(zone_files, hosts, anchors)


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
        chain.append(loaded.zone_files.process)
        lifecycle.append(loaded.zone_files)   # reloadable on SIGHUP
    recursion = bool(appliance.forward)
    if loaded.hosts is not None:
        chain.append(hosts_process(loaded.hosts, recursion_available=recursion))
    if recursion:
        # special-use names are answered here so that they never leak upstream;
        # without a forwarder the appliance is authoritative-only and, like
        # NSD, refuses every name its zones and hosts do not hold (issue 3)
        chain.append(special_process(recursion_available=recursion))
    if appliance.forward:
        try:
            cache = Cache(max_entries=appliance.cache_size, serve_stale=appliance.serve_stale,
                          counters=stack.counters,
                          **({"max_bytes": budgets["cache"]} if budgets else {}))
            validation = None
            if loaded.trust_anchors is not None:
                # the chain of trust asks its DS/DNSKEY questions through the
                # forwarder's upstreams (``relay`` is bound just below)
                async def fetch(name, rdtype):
                    return await relay.fetch_for_validation(name, rdtype)
                chain_of_trust = ChainOfTrust(loaded.trust_anchors, fetch, counters=stack.counters)
                # RRSIG validity is wall-clock time (seconds since the epoch)
                validation = Validation(Validator(chain_of_trust, counters=stack.counters), wall_clock=time.time,
                                        counters=stack.counters)
            relay: Forwarder = forwarder(
                appliance.forward, stub=StubResolver(stack, counters=stack.counters), cache=cache,
                allow=appliance.allow or [str(appliance.interface.network)],
                randomize_case=appliance.randomize_case, bogus_nxdomain=appliance.bogus_nxdomain,
                clock=stack.now, validation=validation)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        chain.append(relay)
        fast_lookups.append(relay.fast_lookup)
        lifecycle.append(relay)

    if not chain:
        async def nothing(*, src, dst, query):
            return None
        chain.append(nothing)
    return compose(*chain), fast_lookups, lifecycle


async def serve(appliance: Appliance, link, *, loaded: Loaded | None = None,
                stop: asyncio.Event | None = None, ready: Callable[[str], object] = print,
                clock: Callable[[], float] | None = None) -> None:
    """Builds the stack on ``link``, serves DNS as ``appliance`` declares
    (with the files ``check`` loaded; checked here when not given), says
    ``ready ...`` once queries are answered, runs until ``stop`` is set
    (forever without one), then closes everything."""
    if loaded is None:
        loaded = check(appliance)
    stop = stop or asyncio.Event()
    stack = Stack(link, appliance.interface, appliance.gateway, mtu=appliance.mtu,
                  mac=parse_mac(appliance.mac), clock=clock)
    budgets = memory_budgets(available_memory())
    process, fast_lookups, lifecycle = resolution_chain(appliance, stack, loaded, budgets)
    server = DnsServer(stack, appliance.port, processor_of_process(process),
                       fast_lookups=fast_lookups, log_queries=appliance.log_queries,
                       max_kept_bytes=budgets["static"])
    server.tcp_server = DnsTcpServer(stack.tcp, appliance.port, server.handle_tcp,
                                     max_answer_bytes=budgets["tcp"])
    log.info("memory budgets: static answers %d MiB, cache %d MiB, TCP answers %d MiB",
             *(budgets[k] >> 20 for k in ("static", "cache", "tcp")))
    # The zones are loaded for good: move them out of the collector's way, so
    # full collections do not walk every record while queries wait.
    gc.collect()
    gc.freeze()
    started: list = []
    loop = asyncio.get_running_loop()
    def reload() -> None:
        """SIGHUP: read the zone files again; on any error keep serving the
        zones already loaded."""
        try:
            count = sum(item.reload() for item in lifecycle if hasattr(item, "reload"))
        except ConfigError as e:
            stack.counters["dns.reload.failed"] += 1
            log.warning("reload failed, still serving the zones loaded before: %s", " ".join(str(e).split()))
            return
        server.forget_kept_answers()
        stack.counters["dns.reload.done"] += 1
        log.warning("reloaded %d zone file(s)", count)

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
        ready(f"ready: DNS on {ipaddress.IPv4Address(stack.address)}:{appliance.port} "
              f"(tap {getattr(link, 'name', appliance.tap)}, zones: {zones})")
        await stop.wait()
    finally:
        for item in reversed(started):
            try:
                outcome = item.close() if hasattr(item, "close") else None
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("closing %r failed", item)
        server.close()
        stack.close()
        if signals_installed:
            for signum in signals:
                loop.remove_signal_handler(signum)
