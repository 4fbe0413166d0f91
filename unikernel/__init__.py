"""The DNS appliance: the seed's process/processor API, zones, hosts overrides,
a forwarder and cache, a stub client, and the server glue onto netstack.

Nothing here parses frames: the stack hands UDP payloads and TCP streams up.
"""

__version__ = "0.1.0"     # pyproject.toml reads it from here (CHAOS version.bind, /metrics build info)
