"""The forwarder validating, over the fake stack of test_forwarder.py, with
records signed at test time (test_dnssec.py's World) and two virtual clocks:
the loop-independent cache clock and the wall clock RRSIGs are checked on."""
from __future__ import annotations

import asyncio

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset

from tests.unit import test_dnssec as signed
from tests.unit.fake_stack import kept_wire
from tests.unit.test_forwarder import CLIENT, SERVER, UP1, Clock, FakeStack
from unikernel import wire
from unikernel.resolver.cache import Cache
from unikernel.resolver.dnssec.chain import ChainOfTrust
from unikernel.resolver.dnssec.validator import Validator
from unikernel.resolver.forwarder import Forwarder
from unikernel.resolver.stub import StubResolver
from unikernel.resolver.validation import Validation


class SignedUpstream:
    """Answers from the World's replies plus ``data`` {(name, type): message}."""

    def __init__(self, stack, world: signed.World, data: dict) -> None:
        self.stack, self.world, self.data = stack, world, data
        self.asked: list[tuple[str, str, bool]] = []
        self.additional: list[dns.rrset.RRset] = []     # what a poisoning upstream adds to every reply
        stack.upstreams[UP1] = self

    def receive(self, payload: bytes, src_port: int) -> None:
        query = dns.message.from_wire(payload)
        q = query.question[0]
        key = (q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype))
        self.asked.append((*key, bool(query.flags & dns.flags.CD)))
        found = self.data.get(key) or self.world.replies.get(key)
        response = dns.message.make_response(query)
        if found is None:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            response.set_rcode(found.rcode())
            response.answer, response.authority = list(found.answer), list(found.authority)
            response.additional = list(self.additional)
        self.stack.udp.deliver(response.to_wire(), UP1[0], UP1[1], src_port)


class Setup:
    def __init__(self, data: dict) -> None:
        self.world = signed.World()
        self.stack = FakeStack()
        self.upstream = SignedUpstream(self.stack, self.world, data)
        self.clock = Clock(1000.0)
        self.wall = Clock(signed.NOW)
        self.cache = Cache(counters=self.stack.counters)
        stub = StubResolver(self.stack, counters=self.stack.counters)

        async def fetch(name, rdtype):
            return await self.forwarder.fetch_for_validation(name, rdtype)

        validation = Validation(Validator(ChainOfTrust(self.world.anchors, fetch)), wall_clock=self.wall,
                                counters=self.stack.counters)
        self.forwarder = Forwarder([UP1], stub=stub, cache=self.cache, allow=["192.0.2.0/24"], clock=self.clock,
                                   randomize_case=False, deadline=0.5, attempt_timeout=0.1, validation=validation)

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds
        self.wall.t += seconds

    async def ask(self, name: str, rdtype: str = "A", *, do: bool = False, ad: bool = False, cd: bool = False):
        query = dns.message.make_query(name, rdtype, want_dnssec=do, use_edns=0 if do else None)
        query.flags = (query.flags & ~dns.flags.AD) | (dns.flags.AD if ad else 0) | (dns.flags.CD if cd else 0)
        answer = await self.forwarder(src=CLIENT, dst=SERVER, query=query)
        return answer.message


def www(world: signed.World, expiration: float = signed.EXPIRATION) -> dns.message.Message:
    return signed.reply([world.tld.sign(signed.rrset("www.example. 300 IN A 192.0.2.1"), expiration=expiration)])


def test_ad_follows_rfc_6840_and_rrsigs_only_with_do():
    setup = Setup({})
    setup.upstream.data[("www.example.", "A")] = www(setup.world)

    async def main():
        return [await setup.ask("www.example.", do=True), await setup.ask("www.example."),
                await setup.ask("www.example.", ad=True)]

    with_do, plain, with_ad = asyncio.run(main())
    assert with_do.flags & dns.flags.AD and any(r.rdtype == dns.rdatatype.RRSIG for r in with_do.answer)
    assert not plain.flags & dns.flags.AD and [r.rdtype for r in plain.answer] == [dns.rdatatype.A]
    assert with_ad.flags & dns.flags.AD
    # one upstream exchange for the answer, with DO and CD, whatever the client set
    assert [a for a in setup.upstream.asked if a[0] == "www.example."] == [("www.example.", "A", True)]


def test_a_validated_answer_is_scrubbed_of_records_off_its_chain():
    """The validating path skipped the scrubber the plain path has: an
    upstream's unrelated additional record went out, and into the cache,
    beside a secure answer."""
    setup = Setup({})
    setup.upstream.data[("www.example.", "A")] = www(setup.world)
    setup.upstream.additional = [dns.rrset.from_text("bank.other.", 300, "IN", "A", "203.0.113.66")]

    async def twice():
        return [await setup.ask("www.example.", do=True) for _ in range(2)]     # relayed, then cached

    for reply in asyncio.run(twice()):
        assert reply.flags & dns.flags.AD
        assert all(r.name != dns.name.from_text("bank.other.") for r in reply.additional)
    assert setup.stack.counters["forward.scrub.additional"] >= 1


def test_fast_path_keeps_ad_only_for_queries_with_ad_or_do():
    setup = Setup({})
    setup.upstream.data[("www.example.", "A")] = www(setup.world)

    async def both():
        await setup.ask("www.example.")
        await setup.ask("www.example.", do=True)        # each DO variant is made when first asked for

    asyncio.run(both())
    lookup = setup.cache.fast_lookup(lambda ip: True)
    for do, ad, expected in ((False, False, False), (False, True, True), (True, False, True)):
        query = dns.message.make_query("www.example.", "A", want_dnssec=do, use_edns=0 if do else None)
        query.flags = (query.flags & ~dns.flags.AD) | (dns.flags.AD if ad else 0)
        payload = query.to_wire()
        key, name_end, _ = wire.parse_query(payload)
        answer = lookup(key, int(CLIENT[0]), setup.clock.t)
        assert kept_wire(answer) is not None               # its sums checked too
        reply = dns.message.from_wire(wire.patch_kept(answer, payload, name_end)[0])
        assert bool(reply.flags & dns.flags.AD) is expected, (do, ad)


def test_cached_no_longer_than_its_signatures_and_expired_while_cached_is_bogus():
    setup = Setup({})
    setup.upstream.data[("www.example.", "A")] = www(setup.world, expiration=signed.NOW + 100)

    async def main():
        first = await setup.ask("www.example.", do=True)
        setup.advance(150)                  # past the RRSIG's expiration, inside the record's TTL
        second = await setup.ask("www.example.", do=True)
        return first, second

    first, second = asyncio.run(main())
    assert first.flags & dns.flags.AD and first.answer[0].ttl <= 100
    assert second.rcode() == dns.rcode.SERVFAIL
    assert [o.code for o in second.options if isinstance(o, dns.edns.EDEOption)] == [dns.edns.EDECode.SIGNATURE_EXPIRED]


def test_bogus_is_kept_a_minute_and_cd_still_gets_the_data():
    setup = Setup({})
    signed_answer = www(setup.world)
    forged = signed.reply([[signed.rrset("www.example. 300 IN A 203.0.113.66"), signed_answer.answer[1]]])
    setup.upstream.data[("www.example.", "A")] = forged

    async def main():
        out = [await setup.ask("www.example."), await setup.ask("www.example.", do=True)]
        asked = len(setup.upstream.asked)
        out.append(await setup.ask("www.example.", do=True, cd=True))
        setup.advance(61)
        out.append(await setup.ask("www.example."))
        return out, asked

    (bogus, bogus_again, checking_disabled, later), asked_before_cd = asyncio.run(main())
    assert bogus.rcode() == bogus_again.rcode() == later.rcode() == dns.rcode.SERVFAIL
    assert [o.code for o in bogus_again.options] == [dns.edns.EDECode.DNSSEC_BOGUS]
    assert sum(1 for a in setup.upstream.asked[:asked_before_cd] if a[0] == "www.example.") == 1
    assert checking_disabled.rcode() == dns.rcode.NOERROR and not checking_disabled.flags & dns.flags.AD
    assert any(r.rdtype == dns.rdatatype.RRSIG for r in checking_disabled.answer)
    assert sum(1 for a in setup.upstream.asked if a[0] == "www.example.") == 3   # bogus, CD, after 60 s


def test_fast_path_never_serves_a_bogus_entry():
    setup = Setup({})
    setup.upstream.data[("www.example.", "A")] = signed.reply([[signed.rrset("www.example. 300 IN A 192.0.2.1")]])
    setup.world.replies[("www.example.", "DS")] = signed.reply(authority=[
        setup.world.soa(), setup.world.tld.sign(signed.nsec("www.example.", "example.", "A RRSIG NSEC"))])
    reply = asyncio.run(setup.ask("www.example."))
    assert reply.rcode() == dns.rcode.SERVFAIL
    payload = dns.message.make_query("www.example.", "A").to_wire()
    key, _, _ = wire.parse_query(payload)
    assert setup.cache.fast_lookup(lambda ip: True)(key, int(CLIENT[0]), setup.clock.t) is None


def test_trust_anchor_and_dnssec_flags(tmp_path):
    import pytest

    from unikernel.cli import parse_serve
    from unikernel.config import ConfigError
    from unikernel.main import check

    anchor = tmp_path / "anchor.ds"
    anchor.write_text(signed.World().root.ds().to_text() + "\n")
    base = ["--forward", "192.0.2.1", "--ipv4", "192.0.2.2/24", "--ipv4-gateway", "192.0.2.1"]
    appliance = parse_serve([*base, "--trust-anchor", str(anchor)])
    assert appliance.dnssec is True and appliance.trust_anchors == [str(anchor)]
    assert len(check(appliance).trust_anchors) == 1
    assert check(parse_serve([*base, "--dnssec", "no"])).trust_anchors is None
    assert [ds.key_tag for ds in check(parse_serve(base)).trust_anchors.by_name[dns.name.root].ds] == [20326, 38696]
    anchor.write_text("not a record\n")
    with pytest.raises(ConfigError, match="anchor.ds"):
        check(appliance)


def test_insecure_for_an_unknown_algorithm_is_noerror_with_ede_1():
    setup = Setup({})
    world = setup.world
    odd = signed.Key("odd.example.")
    ds = dns.rdata.from_text("IN", "DS", f"{dns.dnssec.key_id(odd.dnskey)} 253 2 {'00' * 32}")
    world.replies[("odd.example.", "DS")] = signed.reply([world.tld.sign(
        dns.rrset.from_rdata(dns.name.from_text("odd.example."), 300, ds))])
    setup.upstream.data[("odd.example.", "A")] = signed.reply([odd.sign(signed.rrset("odd.example. 300 IN A 192.0.2.3"))])

    async def main():
        return await setup.ask("odd.example.", do=True), await setup.ask("odd.example.")

    with_do, plain = asyncio.run(main())
    assert with_do.rcode() == dns.rcode.NOERROR and not with_do.flags & dns.flags.AD and with_do.answer
    assert [o.code for o in with_do.options if isinstance(o, dns.edns.EDEOption)] == [
        dns.edns.EDECode.UNSUPPORTED_DNSKEY_ALGORITHM]
    assert plain.rcode() == dns.rcode.NOERROR and [r.rdtype for r in plain.answer] == [dns.rdatatype.A]
