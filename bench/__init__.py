"""Benchmarks (``make bench``): bounded load runs in network namespaces.

``auth``: the appliance's authoritative answers against NSD's. ``forwarder``
(when present): the forwarder and cache. Speed is measured here, never
asserted in tests.
"""
