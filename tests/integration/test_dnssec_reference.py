"""The validator against Unbound's, on a hierarchy signed at test time
(tests/dnssec_world.py): for every question, what the iterator-only Unbound
relays (asked with DO and CD, as the forwarder asks) is validated by our
validator, and the verdict must be what the validating Unbound concluded:
secure = AD, insecure = no AD, bogus = SERVFAIL."""
from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnssec_world import QUESTIONS, REFERENCE, SignedWorld, missing_tools
from tests.netns import Namespace, needs_root
from unikernel.resolver.dnssec.anchors import TrustAnchors
from unikernel.resolver.dnssec.chain import ChainOfTrust
from unikernel.resolver.dnssec.validator import Validator
from unikernel.resolver.dnssec.verdict import Security

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")]
UPSTREAM = "192.0.2.1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with Namespace("dsref") as ns:
        ns.add_tap("tap0", f"{UPSTREAM}/24")
        with SignedWorld(ns, tmp_path_factory.mktemp("world"), upstream=UPSTREAM) as w:
            yield w


async def _ask(server: str, name: str, rdtype: str, *, cd: bool) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True, payload=1232)
    query.flags |= dns.flags.CD if cd else dns.flags.AD
    return await dns.asyncquery.udp(query, server, timeout=5)


def test_verdicts_agree_with_unbound(world):
    anchors = TrustAnchors.from_files([world.anchor_file])

    async def fetch(name, rdtype):
        return await _ask(UPSTREAM, name.to_text(), dns.rdatatype.to_text(rdtype), cd=True)

    async def compare():
        validator = Validator(ChainOfTrust(anchors, fetch))
        disagreements, seen = [], set()
        for name, rdtype in QUESTIONS:
            reference = await _ask(REFERENCE, name, rdtype, cd=False)
            relayed = await _ask(UPSTREAM, name, rdtype, cd=True)
            verdict = await validator.validate(dns.name.from_text(name), dns.rdatatype.from_text(rdtype),
                                               relayed, time.time())
            seen.add(verdict.security)
            if verdict.security is Security.BOGUS:
                ours = "SERVFAIL"
            else:
                ours = dns.rcode.to_text(relayed.rcode()) + (" AD" if verdict.security is Security.SECURE else "")
            theirs = dns.rcode.to_text(reference.rcode()) + (" AD" if reference.flags & dns.flags.AD else "")
            if ours != theirs:
                disagreements.append(f"{name} {rdtype}: ours {ours} ({verdict.reason}), Unbound {theirs}")
        return disagreements, seen

    with world.ns.entered():
        disagreements, seen = asyncio.run(compare())
    assert not disagreements, "\n".join(disagreements)
    assert seen == {Security.SECURE, Security.INSECURE, Security.BOGUS}
