"""The DNS message fuzz (tests/fuzz_dns.py) in its short form: `make fuzz`
runs 100,000 messages, `make test` this. The invariants are the fuzzer's
own (it raises on the first one broken); here the run must also have
reached the parts it is for."""
import asyncio

from tests import fuzz_dns


def test_a_short_fuzz_run_holds_every_invariant_and_reaches_the_inside():
    findings = asyncio.run(fuzz_dns.run(2500, seed=7))
    assert findings["udp"] + findings["tcp"] == 2500
    # it got past the header checks into every part it is meant for
    for reached in ("dns.slow.answered", "dns.formerr", "dns.formerr.records", "dns.notimp", "dns.refused",
                    "dns.fast.hit", "dns.rrl.slipped", "stub.reply.ok", "forward.scrub.additional",
                    "truncated_empty", "rcode.NOERROR", "rcode.NXDOMAIN"):
        assert findings[reached] > 0, reached
