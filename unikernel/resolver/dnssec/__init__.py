"""DNSSEC validation of what the forwarder relays (RFC 4033-4035, 5155, 6840).

One concern a module, as Unbound's ``validator/`` keeps them:

- :mod:`.verdict`     the outcome of a check: secure, insecure, bogus (with its
                      RFC 8914 Extended DNS Error), and unchecked (CD queries)
- :mod:`.signatures`  RRSIG checks over an RRset, DS against DNSKEY, the
                      per-answer budget of signature checks
- :mod:`.crypto`      the arithmetic: RFC 4034 signed data and DS digests, and
                      signature checks by the system's libcrypto through ctypes
- :mod:`.nsec`        NSEC denial proofs (name error, NODATA, wildcards)
- :mod:`.nsec3`       NSEC3 denial proofs (closest encloser, next closer,
                      opt-out, iteration cap)
- :mod:`.anchors`     trust anchors: the root's built in, files of DS/DNSKEY
- :mod:`.chain`       the chain of trust: DS and DNSKEY fetched through the
                      upstreams, their validated sets cached by TTL
- :mod:`.validator`   a whole response: which sets to check, which proof to ask for

Everything is pure logic with the time passed in (``now``, seconds since the
epoch, as RRSIG validity is); the only I/O is the ``fetch`` callable the
forwarder hands to the chain. The signature arithmetic is libcrypto's
(``libcrypto.so.3``, which the image ships for TLS anyway), not the
``cryptography`` wheel's.
"""
