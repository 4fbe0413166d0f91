"""The appliance, declared (MirageOS's config.ml).

The tutorial's unikernel: static IPv4 192.168.1.2/24 on tap0, gateway
192.168.1.1, serving the zone files in data/. `python -m unikernel serve` with
no flags runs exactly this; `make image` bakes it into the VM.
"""
from unikernel.config import Appliance

appliance = Appliance(
    tap="tap0",
    ipv4="192.168.1.2/24",
    ipv4_gateway="192.168.1.1",
    zones=["data/d1.signpo.st.zone"],
    hosts=["data/hosts"],
    # The tutorial's composition: zones, then hosts overrides, then relay the
    # rest to an upstream resolver (here the host at the other end of tap0).
    # `--forward none` on the command line makes it authoritative-only.
    forward=["192.168.1.1"],
    allow=[],            # [] = the appliance's own subnet may use forwarding
    cache_size=10000,
    # DNSSEC: what is forwarded is validated from the root's built-in KSKs;
    # trust_anchors=["data/FILE"] replaces them, dnssec=False turns it off
    dnssec=True,
)
