"""Serving: serve_with_processor / serve_with_zonefile over UDP (with its fast
path) and TCP framing."""
