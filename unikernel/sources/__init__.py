"""Answers that are ours: zone files, hosts overrides, special-use names."""
