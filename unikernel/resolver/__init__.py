"""Answers from elsewhere: the forwarder, its stub resolver, the cache."""
