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
from typing import TYPE_CHECKING, NamedTuple

import dns.tsig

from netstack import ethernet
from netstack.stack import Stack
from unikernel import __version__
from unikernel.config import (
    DOT_PORT,
    AccessList,
    Appliance,
    ConfigError,
    is_tls_upstream,
    parse_tls_upstream,
    parse_upstream,
)
from unikernel.ops import stats as stats_mod
from unikernel.process import Process, compose, labelled, processor_of_process
from unikernel.resolver.cache import Cache
from unikernel.resolver.dnssec.anchors import AnchorError, TrustAnchors, root_anchors
from unikernel.resolver.dnssec.chain import ChainOfTrust
from unikernel.resolver.dnssec.validator import Validator
from unikernel.resolver.forwarder import Forwarder, forwarder
from unikernel.resolver.stub import StubResolver
from unikernel.resolver.transports import UpstreamTransports
from unikernel.resolver.validation import Validation
from unikernel.serve.rrl import ResponseRateLimiter
from unikernel.serve.server import DnsServer, FastLookup
from unikernel.serve.tcp import DnsTcpServer
from unikernel.sources import zone as zones_mod
from unikernel.sources.blocklist import Blocklist
from unikernel.sources.chaos import chaos_process
from unikernel.sources.hosts import HostsFiles, HostsTable, load_hosts
from unikernel.sources.special import special_process
from unikernel.transfer.secondary import (
    MAX_TRANSFER_RECORDS,
    RECORD_BYTES,
    SecondaryService,
    SecondaryZones,
    parse_secondary,
    records_within,
)
from unikernel.transfer.tsig import parse_tsig

if TYPE_CHECKING:
    # The parts a default appliance never builds (DNS over TLS, mDNS, zone
    # transfers out, NOTIFY) are imported by the function that builds each,
    # so that the VM's first answer does not wait for their imports.
    import ssl

    from unikernel.resolver.tls_upstream import TlsUpstream
    from unikernel.transfer.notify import NotifyService
    from unikernel.transfer.outbound import TransferServer

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
    tsig: dns.tsig.Key | None = None
    trust_anchors: TrustAnchors | None = None     # when forwarding with DNSSEC validation
    blocklist: Blocklist | None = None


def check(appliance: Appliance) -> Loaded:
    """Everything that can be wrong with the declaration, found before a
    device is touched: raises ConfigError; returns the zones and hosts
    files, loaded."""
    parse_mac(appliance.mac)
    if not 0 < appliance.port < 65536:
        raise ConfigError(f"port {appliance.port} out of range 1..65535")
    if appliance.rrl_rate < 0 or appliance.rrl_slip < 0:
        raise ConfigError("rrl-rate and rrl-slip must be 0 or more")
    if appliance.metrics_port == appliance.port:
        raise ConfigError(f"metrics-port {appliance.metrics_port} is the DNS port")
    gateway = appliance.gateway
    if gateway is not None and gateway not in appliance.interface.network:
        raise ConfigError(f"gateway {gateway} is not on {appliance.interface.network}")
    hosts = load_hosts(appliance.path(h) for h in appliance.hosts) if appliance.hosts else None
    tls_contexts(appliance)
    try:
        seen: set[tuple[int, int]] = set()
        for upstream in appliance.forward:
            if is_tls_upstream(upstream):
                address, port, _name = parse_tls_upstream(upstream)
            else:
                address, port = parse_upstream(upstream)
            if (address, port) in seen:      # one transport per address and port
                raise ConfigError(f"forward {upstream}: that address and port is given twice")
            seen.add((address, port))
            if address == int(appliance.interface.ip) or address >> 24 in (0, 127):
                raise ConfigError(f"forward {upstream}: the appliance cannot forward to itself "
                                  "or to a loopback address (its stack has no loopback)")
        AccessList(appliance.allow)
        if appliance.mdns and appliance.mdns_domain:
            from unikernel.sources.mdns import check_domain
            check_domain(appliance.mdns_domain)
        for bogus in appliance.bogus_nxdomain:
            ipaddress.IPv4Address(bogus)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    tsig = parse_tsig(appliance.tsig) if appliance.tsig else None
    try:
        for cidr in appliance.allow_transfer:
            ipaddress.IPv4Network(cidr, strict=False)
        if appliance.notify:
            from unikernel.transfer.notify import parse_target
            for target in appliance.notify:
                parse_target(target)
        for secondary in appliance.secondary:
            parse_secondary(secondary)
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
    blocklist = None
    if appliance.blocklist:
        blocklist = Blocklist([appliance.path(b) for b in appliance.blocklist],
                              [appliance.path(a) for a in appliance.allowlist], mode=appliance.block_answer)
        log.warning("blocklists: %d names", len(blocklist))
        if blocklist.malformed:
            log.warning("blocklists: %d line(s) not understood, skipped; %s", blocklist.malformed,
                        "; ".join(blocklist.report))
    return Loaded(zone_files, hosts, tsig, anchors, blocklist)


def describe(appliance: Appliance, loaded: Loaded) -> list[str]:
    """What the appliance would serve, a line each, from what :func:`check`
    read (``unikernel check`` prints it, as nsd-checkconf and
    unbound-checkconf say that a configuration holds)."""
    lines = [f"address {appliance.interface} gateway {appliance.gateway or 'none'}, DNS on port {appliance.port}"]
    if loaded.zone_files is not None:
        for path, zone in zip(loaded.zone_files.paths, loaded.zone_files.zones.by_origin.values()):
            lines.append(f"zone {zone.origin}: serial {zone.soa[0].serial}, {len(zone.nodes) + len(zone.hashed)} "
                         f"names, {'signed' if zone.signed else 'unsigned'} ({path})")
    for secondary in appliance.secondary:
        lines.append(f"secondary {secondary}")
    if loaded.hosts is not None:
        lines.append(f"hosts: {len(loaded.hosts)} names from {len(appliance.hosts)} file(s)")
    if loaded.blocklist is not None:
        lines.append(f"blocklist: {len(loaded.blocklist)} names"
                     + (f", {loaded.blocklist.malformed} line(s) not understood" if loaded.blocklist.malformed else ""))
    if appliance.forward:
        dnssec = f"DNSSEC validated ({len(loaded.trust_anchors)} trust anchor(s))" if loaded.trust_anchors else \
            "DNSSEC not validated"
        lines.append(f"forward to {', '.join(appliance.forward)}; {dnssec}")
    else:
        lines.append("forward: none (authoritative only)")
    if appliance.mdns:
        lines.append("mDNS: .local names asked on the link"
                     + (f", {appliance.mdns_domain} answered from them" if appliance.mdns_domain else ""))
    if appliance.dot_cert:
        lines.append(f"DNS over TLS on 853 with {appliance.dot_cert}")
    if appliance.metrics_port:
        lines.append(f"metrics and dashboard on port {appliance.metrics_port}")
    if loaded.tsig is not None:
        lines.append(f"TSIG key {loaded.tsig.name} ({loaded.tsig.algorithm})")
    return lines


def tls_contexts(appliance: Appliance) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(context for tls:// upstreams, context for serving DNS over TLS), each
    None when not used; a CA bundle, certificate or key that cannot be loaded
    is a ConfigError naming the file. ``ssl`` is imported here, by what uses
    it: in the image it maps libssl and libcrypto, which the first answer
    need not wait for (build/init.py imports asyncio without it)."""
    tls_upstreams = any(is_tls_upstream(u) for u in appliance.forward)
    if not (appliance.dot_cert or appliance.dot_key or tls_upstreams):
        return None, None
    import ssl

    from netstack import tls
    client = server = None
    if tls_upstreams:
        ca = appliance.upstream_ca
        try:
            client = tls.client_context(str(ca))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"tls-ca {ca}: cannot be loaded as a PEM bundle: {e}") from None
    if bool(appliance.dot_cert) != bool(appliance.dot_key):
        raise ConfigError("dot-cert and dot-key go together: give both to serve DNS over TLS")
    if appliance.dot_cert and appliance.dot_key:
        cert, key = appliance.path(appliance.dot_cert), appliance.path(appliance.dot_key)
        try:
            server = tls.server_context(str(cert), str(key))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"dot-cert {cert} / dot-key {key}: cannot be loaded: {e}") from None
    return client, server


# The tables that network input fills (kept answers, the cache, TCP answers
# waiting for slow readers) share one byte budget: at most this much, and at
# most BUDGET_SHARE of the memory the machine has available at start, so that
# a 128 MiB VM under a flood of odd names stays clear of the OOM killer.
MAX_BUDGET = 64 * 1024 * 1024
BUDGET_SHARE = 0.4
# Secondary zones, filled by their primaries, have a share of their own: a
# zone of a million records must not take a 128 MiB VM down.
SECONDARY_SHARE = 0.2


def memory_budgets(available: int | None) -> dict[str, int]:
    """Byte budgets for the static table, the cache and TCP answers, split
    3 : 4 : 1, from the bytes available (None: unknown, take the maximum);
    and the secondary zones' (unknown: what their fixed record bound takes)."""
    total = MAX_BUDGET if available is None else min(MAX_BUDGET, int(available * BUDGET_SHARE))
    total = max(total, 4 * 1024 * 1024)
    secondary = MAX_TRANSFER_RECORDS * RECORD_BYTES
    if available is not None:
        secondary = min(secondary, int(available * SECONDARY_SHARE))
    return {"static": total * 3 // 8, "cache": total * 4 // 8, "tcp": total // 8, "secondary": secondary}


def available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def allowed_clients(appliance: Appliance) -> AccessList:
    """Who may recurse, get mDNS answers and reach the operator's port:
    ``allow``, or the appliance's own subnet."""
    return AccessList(appliance.allow or [str(appliance.interface.network)])


def rate_limiter(appliance: Appliance, counters) -> ResponseRateLimiter | None:
    """RRL as declared (None when ``rrl_rate`` is 0)."""
    if not appliance.rrl_rate:
        return None
    return ResponseRateLimiter(appliance.rrl_rate, appliance.rrl_slip, counters=counters,
                               exempt=allowed_clients(appliance) if appliance.rrl_exempt_allowed else None)


def reload_sources(lifecycle: list, server, counters) -> bool:
    """SIGHUP: reads the zone files, hosts files and blocklists again, all or
    nothing: every file is read before anything changes, and on any error
    what was loaded before keeps being served (False). Then kept answers are
    forgotten and the cache is made to agree: forwarded answers for names a
    zone now holds are flushed; with hosts files or blocklists reloaded the
    whole cache goes (a name newly listed may be cached, and the fast path
    asks the cache before any source)."""
    reloadable = [item for item in lifecycle if hasattr(item, "stage")]
    try:
        commits = [item.stage() for item in reloadable]
    except ConfigError as e:
        counters["dns.reload.failed"] += 1
        log.warning("reload failed, still serving what was loaded before: %s", " ".join(str(e).split()))
        return False
    for commit in commits:
        commit()
    for item in reloadable:
        if isinstance(item, Blocklist) and item.malformed:
            log.warning("blocklists: %d line(s) not understood, skipped; %s", item.malformed,
                        "; ".join(item.report))
    server.forget_kept_answers()
    origins = [origin for item in reloadable for origin in getattr(item, "origins", ())]
    listed = any(isinstance(item, (HostsFiles, Blocklist)) for item in reloadable)
    for item in lifecycle:
        if isinstance(item, Cache):
            if listed:
                item.clear()
            else:
                item.forget_under(origins)
    counters["dns.reload.done"] += 1
    zone_files = sum(len(item.paths) for item in reloadable if isinstance(item, zones_mod.ZoneFiles))
    hosts_files = sum(len(item.paths) for item in reloadable if isinstance(item, HostsFiles))
    lists = sum(len(item.blocklist_paths) + len(item.allowlist_paths) for item in reloadable
                if isinstance(item, Blocklist))
    log.warning("reloaded %d zone file(s), %d hosts file(s), %d block/allow list(s)", zone_files, hosts_files, lists)
    return True


class Chain(NamedTuple):
    """What :func:`resolution_chain` builds; see there."""
    local: Process
    forwarded: Process | None
    fast_lookups: list[FastLookup]
    lifecycle: list

    @property
    def process(self) -> Process:
        """The whole chain as one process: the seed's ``compose(local..., forwarder)``."""
        return self.local if self.forwarded is None else compose(self.local, self.forwarded)


def upstream_transports(appliance: Appliance, stack) -> tuple[list[tuple[int, int]], UpstreamTransports]:
    """The forwarder's upstreams as endpoints, and the transports that reach
    them: DNS over TLS for those declared ``tls://``, the stub resolver's
    UDP/TCP for the others."""
    client_context, _ = tls_contexts(appliance)
    endpoints: list[tuple[int, int]] = []
    tls_upstreams: dict[tuple[int, int], TlsUpstream] = {}
    for text in appliance.forward:
        if is_tls_upstream(text):
            from unikernel.resolver.tls_upstream import TlsUpstream
            ip, port, name = parse_tls_upstream(text)
            assert client_context is not None      # tls_contexts makes one when a tls:// upstream is given
            tls_upstreams[(ip, port)] = TlsUpstream(stack.tcp, ip, port, name, client_context,
                                                    counters=stack.counters)
            endpoints.append((ip, port))
        else:
            endpoints.append(parse_upstream(text))
    return endpoints, UpstreamTransports(StubResolver(stack, counters=stack.counters), tls_upstreams)


def resolution_chain(appliance: Appliance, stack, loaded: Loaded,
                     budgets: dict[str, int] | None = None) -> Chain:
    """The appliance's answer to every query, as the seed composes it:
    ``compose(zones, hosts, mdns, special-use, forwarder)``, in two parts so
    that the server bounds local and forwarded work apart (a flood of names
    whose upstreams never answer must not starve the names that are ours).

    Returns a :class:`Chain`:

    * ``local``: the composed local process (zones first; each later link
      only sees what the earlier ones left unanswered or answered with an
      error without being final);
    * ``forwarded``: the forwarder (None when the appliance does not forward),
      asked what ``local`` left, as ``compose`` would;
    * ``fast_lookups``: hot-path callables ``(key, src_ip, now) -> wire | None``
      (e.g. the cache's), tried after the server's own static answers;
    * ``lifecycle``: objects whose ``start()`` (optional, may be async) runs
      once the server is up and whose ``close()`` runs on stop.

    To add a link: build it here, append it to ``chain`` in its place, and
    add its fast lookup / lifecycle object if it has one.
    """
    chain: list[Process] = []
    forwarded: Process | None = None
    fast_lookups: list[FastLookup] = []
    lifecycle: list = []

    if loaded.zone_files is not None:
        chain.append(labelled("zone", loaded.zone_files.process))
        lifecycle.append(loaded.zone_files)   # reloadable on SIGHUP
    if appliance.secondary:
        secondaries = SecondaryZones(appliance.secondary, key=loaded.tsig, counters=stack.counters,
                                     clock=stack.now)
        chain.append(secondaries.process)
        # transfers at start, then by the timers
        budget = (budgets or memory_budgets(None))["secondary"]
        lifecycle.append(SecondaryService(stack, secondaries,
                                          max_records=records_within(budget, len(secondaries.zones))))
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
    querier = mdns_querier(appliance, stack) if appliance.mdns else None
    if querier is not None:
        # .local and our subnet's reverse names are asked on the link, whether
        # or not there is a forwarder, and never go upstream (issue 13)
        chain.append(labelled("mdns", querier.process))
        lifecycle.append(querier)
    if recursion:
        # special-use names are answered here so that they never leak upstream;
        # without a forwarder the appliance is authoritative-only and, like
        # NSD, refuses every name its zones and hosts do not hold (issue 3)
        special = special_process(recursion_available=recursion)
        chain.append(labelled("special", querier.not_kept(special) if querier is not None else special))
    if appliance.forward:
        try:
            cache = Cache(max_entries=appliance.cache_size, serve_stale=appliance.serve_stale,
                          counters=stack.counters,
                          **({"max_bytes": budgets["cache"]} if budgets else {}))
            endpoints, transports = upstream_transports(appliance, stack)
            lifecycle.append(transports)          # closed after the forwarder that uses it
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
                endpoints, stub=transports, cache=cache, allow=allowed_clients(appliance),
                randomize_case=appliance.randomize_case, bogus_nxdomain=appliance.bogus_nxdomain,
                clock=stack.now, validation=validation)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        forwarded = labelled("forward", relay)
        fast_lookups.append(relay.fast_lookup)
        lifecycle.append(relay)
        lifecycle.append(cache)               # flushed of what a reloaded zone shadows

    if not chain:
        async def nothing(*, src, dst, query):
            return None
        chain.append(nothing)
    return Chain(compose(*chain), forwarded, fast_lookups, lifecycle)


def mdns_querier(appliance: Appliance, stack):
    """The mDNS source on the stack's link; answers only the clients that
    may use the forwarder (``allow``, by default our subnet)."""
    from unikernel.sources.mdns import MdnsQuerier
    return MdnsQuerier(stack.udp, interface=appliance.interface,
                       allowed=allowed_clients(appliance),
                       join=stack.join_group, leave=stack.leave_group, counters=stack.counters,
                       clock=stack.now, domain=appliance.mdns_domain,
                       recursion_available=bool(appliance.forward))


def zone_transfers(appliance: Appliance, stack, loaded: Loaded) -> tuple[TransferServer | None, NotifyService | None]:
    """AXFR/IXFR out to ``allow_transfer`` and NOTIFY to ``notify``, for the
    zone files served (none without zones or without either setting)."""
    if loaded.zone_files is None or not (appliance.allow_transfer or appliance.notify):
        return None, None
    from unikernel.transfer.outbound import TransferServer
    transfers = TransferServer(loaded.zone_files.zones, allow=appliance.allow_transfer, key=loaded.tsig,
                               counters=stack.counters)
    notify = None
    if appliance.notify:
        from unikernel.transfer.notify import Notifier, NotifyService, parse_target
        notifier = Notifier((parse_target(t) for t in appliance.notify), key=loaded.tsig, counters=stack.counters)
        notify = NotifyService(stack, notifier, clock=stack.now)
    return transfers, notify


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
    zone_files = next((item for item in lifecycle if isinstance(item, zones_mod.ZoneFiles)), None)
    secondaries = next((item.zones for item in lifecycle if isinstance(item, SecondaryService)), None)
    if zone_files is not None or secondaries is not None:
        # read at each scrape: a reload or a transfer swaps the zones in whole
        collectors.append(lambda: metrics.zone_families(
            zone_files.zones.by_origin.values() if zone_files is not None else (),
            secondaries.zones.values() if secondaries is not None else (), stack.now))
    site = OpsSite(stats, collectors, clock=stack.now, identity=identity_of(appliance), version=__version__)
    return HttpServer(stack.tcp, appliance.metrics_port, site.routes(), allowed=allowed_clients(appliance),
                      counters=stack.counters)


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
    chain = resolution_chain(appliance, stack, loaded, budgets)
    lifecycle = chain.lifecycle
    _, dot_context = tls_contexts(appliance)
    # DNS over TLS answers wait for slow readers as TCP's do: the two share TCP's budget
    stream_answer_bytes = budgets["tcp"] // 2 if dot_context is not None else budgets["tcp"]
    chaos = chaos_process(identity=identity_of(appliance), version=None if appliance.hide_version else __version__)
    # what every reply is told to: the statistics the operator's port shows, the query log
    stats = stats_mod.QueryStats() if appliance.metrics_port else None
    observers: list[stats_mod.Observe] = [stats.record] if stats is not None else []
    if appliance.log_queries:
        from unikernel.ops.querylog import QueryLog
        observers.append(QueryLog(_write_line, clock=stack.now, wall_clock=time.time,
                                  counters=stack.counters).record)
    server = DnsServer(stack, appliance.port, processor_of_process(chain.local),
                       forwarder=processor_of_process(chain.forwarded) if chain.forwarded else None,
                       fast_lookups=chain.fast_lookups, observe=stats_mod.fan_out(observers),
                       chaos=processor_of_process(labelled("chaos", chaos)), max_kept_bytes=budgets["static"],
                       recursion_for=allowed_clients(appliance) if appliance.forward else None,
                       rrl=rate_limiter(appliance, stack.counters))
    server.tcp_server = DnsTcpServer(stack.tcp, appliance.port, server.handle_tcp,
                                     max_answer_bytes=stream_answer_bytes)
    # the same handler as TCP 53: the same processor, access rules and limits
    dot_server = None
    if dot_context is not None:
        from unikernel.serve.tls import DnsTlsServer
        dot_server = DnsTlsServer(stack.tcp, DOT_PORT, server.handle_tcp, dot_context,
                                  max_answer_bytes=stream_answer_bytes)
    transfers, notify = zone_transfers(appliance, stack, loaded)
    server.transfers = transfers
    if loaded.tsig is not None:
        server.keyring = {loaded.tsig.name: loaded.tsig}
    for item in lifecycle:
        if isinstance(item, SecondaryService):
            server.notify_handler = item.zones.handle_notify
            item.zones.on_change.append(server.forget_kept_answers)
    if notify is not None:
        lifecycle.append(notify)
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
        """SIGHUP: zones, hosts files and blocklists again (all or nothing);
        a zone's new serial goes to the transfer journal and is NOTIFYed."""
        if not reload_sources(lifecycle, server, stack.counters):
            return
        if transfers is not None and loaded.zone_files is not None:
            for zone in transfers.update(loaded.zone_files.zones):
                log.warning("zone %s: serial %d", zone.origin, zone.soa[0].serial)
                if notify is not None:
                    notify.zone_changed(zone.origin, zone.soa)

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
        if dot_server is not None:
            dot_server.start()
        for item in lifecycle:
            start = getattr(item, "start", None)
            if start is not None:
                outcome = start()
                if inspect.isawaitable(outcome):
                    await outcome
            started.append(item)
        zones = ", ".join([str(z) for z in appliance.zones] + [f"secondary {s}" for s in appliance.secondary]) or "none"
        dot = f", DNS over TLS on {dot_server.port}" if dot_server is not None else ""
        started_at = stack.now()
        if stats is not None:
            # once DNS is served; `ready` then says both are up
            ops_http = operator_side(appliance, stack, server, lifecycle, stats, started=started_at,
                                     build_inputs=build_inputs)
            ops_http.start()
        ready(f"ready: DNS on {ipaddress.IPv4Address(stack.address)}:{appliance.port}{dot} "
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
        if dot_server is not None:
            dot_server.close()
        if ops_http is not None:
            ops_http.close()
        server.close()
        stack.close()
        if signals_installed:
            for signum in signals:
                loop.remove_signal_handler(signum)
