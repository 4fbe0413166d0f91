"""NSD, the reference authoritative server the tests and benchmarks compare with."""
from __future__ import annotations

from pathlib import Path


def nsd_conf(work: Path, zones: dict[str, Path], *, address: str = "127.0.0.1", port: int = 53,
             verbosity: int = 0, keys: str = "", zone_options: dict[str, str] | None = None) -> Path:
    """An nsd.conf in `work` serving `zones` ({origin: zone file}) on
    address:port, run in the foreground by root without chroot, and with
    response rate limiting off (Debian's NSD rate-limits by default).
    ``keys`` is nsd.conf text put before the zones (``key:`` sections);
    ``zone_options`` adds lines to a zone's section (``request-xfr: ...``)."""
    zone_options = zone_options or {}
    served = "".join(f"zone:\n    name: {name}\n    zonefile: {path}\n"
                     + "".join(f"    {line}\n" for line in zone_options.get(name, "").splitlines())
                     for name, path in zones.items())
    conf = work / "nsd.conf"
    conf.write_text(f"""server:
    ip-address: {address}@{port}
    port: {port}
    username: ""
    chroot: ""
    zonesdir: "{work}"
    pidfile: "{work}/nsd.pid"
    database: ""
    zonelistfile: "{work}/zone.list"
    xfrdfile: "{work}/xfrd.state"
    xfrdir: "{work}"
    server-count: 1
    rrl-ratelimit: 0
    verbosity: {verbosity}
    logfile: "{work}/nsd.log"
remote-control:
    control-enable: no
{keys}{served}""")
    return conf
