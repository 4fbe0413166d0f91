"""Knot DNS, the second authoritative reference (a primary we transfer from,
a secondary we transfer to): its configuration's common part."""
from __future__ import annotations

from pathlib import Path


def knot_conf(work: Path, listen: str, secret: str, sections: str) -> str:
    """A knot.conf in `work` for knotd run in the foreground by root: listening
    on `listen` (``address@port``), logging and keeping its journal in `work`,
    with the TSIG key ``xfr-key`` (hmac-sha256, base64 `secret`), followed by
    `sections` (remotes, ACLs, templates, zones). Returns its path."""
    (work / "db").mkdir(exist_ok=True)      # the journal, where knotc commits and transfers go
    conf = work / "knot.conf"
    conf.write_text(f"""server:
    listen: {listen}
    rundir: "{work}"
    user: root:root
log:
  - target: "{work}/knot.log"
    any: info
database:
    storage: "{work}/db"
key:
  - id: xfr-key
    algorithm: hmac-sha256
    secret: {secret}
{sections}""")
    return str(conf)
