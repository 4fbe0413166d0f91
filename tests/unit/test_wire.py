"""The fast path: keys read from raw bytes, patched answers, and answers from
the hot path byte-identical to what the slow path renders for the same query."""
import asyncio
import random
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fake_stack import FakeStack, exchange
from unikernel import wire
from unikernel.process import Answer, processor_of_process
from unikernel.serve.server import DnsServer
from unikernel.sources.zone import load_zones, zone_process

ZONES = Path(__file__).resolve().parent.parent / "integration" / "zones"


def make_query(name, rdtype="A", *, edns=-1, payload=1232, do=False, rd=True, cd=False, qid=0x1234):
    q = dns.message.make_query(name, rdtype, use_edns=edns if edns >= 0 else False,
                               payload=payload, want_dnssec=do)
    q.id = qid
    if not rd:
        q.flags &= ~dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    return q.to_wire()


# -- parse_query -----------------------------------------------------------------

def test_key_is_lowercased_name_then_type_and_class_then_edns_byte():
    key, end, size = wire.parse_query(make_query("WwW.Example.", "A"))
    assert key == b"\x03www\x07example\x00" + b"\x00\x01\x00\x01" + b"\x00"
    assert end == 12 + len(b"\x03www\x07example\x00")
    assert size == 512


def test_key_keeps_type_bytes_that_look_like_letters():
    # HTTPS is type 65 (0x0041, 'A'): only the name is case-folded
    key, _, _ = wire.parse_query(make_query("x.example.", "HTTPS"))
    assert key[-5:-1] == b"\x00\x41\x00\x01"
    assert wire.parse_query(make_query("x.example.", 97))[0] != key


@pytest.mark.parametrize("payload, do, flag, size", [
    (1232, False, 1, 1232), (4096, True, 3, 4096), (100, False, 1, 512), (512, True, 3, 512)])
def test_edns_flag_byte_and_client_size(payload, do, flag, size):
    key, _, client = wire.parse_query(make_query("a.example.", edns=0, payload=payload, do=do))
    assert key[-1] == flag and client == size


def key_of(question_name: bytes, qtype: int, qclass: int, edns_flags: int) -> bytes:
    """The fast-path key as unikernel/wire.py documents it."""
    return (question_name.lower() + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
            + bytes((edns_flags,)))


def test_key_of_matches_parse_query():
    for name, rdtype, edns, do in [("A.b.", "MX", -1, False), ("x.", "TXT", 0, True), ("q.z.", "AAAA", 0, False)]:
        key, _, _ = wire.parse_query(make_query(name, rdtype, edns=edns, do=do))
        flags = 0 if edns < 0 else (3 if do else 1)
        assert key_of(dns.name.from_text(name).to_wire(), dns.rdatatype.from_text(rdtype), 1, flags) == key


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(st.text("abcXYZ-09", min_size=1, max_size=12), min_size=1, max_size=5),
       rdtype=st.sampled_from(["A", "AAAA", "TXT", "HTTPS", "MX"]), edns=st.sampled_from([-1, 0]),
       do=st.booleans(), payload=st.integers(0, 65535), cookie=st.booleans())
def test_fast_key_agrees_with_the_validating_parser(labels, rdtype, edns, do, payload, cookie):
    options = [dns.edns.GenericOption(10, b"12345678")] if cookie and edns == 0 else None
    q = dns.message.make_query(".".join(labels) + ".", rdtype, use_edns=edns if edns >= 0 else False,
                               payload=payload, want_dnssec=do and edns == 0, options=options)
    wire_ = q.to_wire()
    assert wire.fast_key(wire_) == wire.parse_query(wire_) is not None or wire.parse_query(wire_) is None


def test_compressed_question_is_answered_but_never_kept():
    # the question's name is a pointer to offset 4 in the header, where a zero
    # byte reads as the root name: legal, parsed by dnspython, never a fast key
    plain = make_query("x.", "NS")
    compressed = plain[:12] + b"\xc0\x04" + plain[-4:]
    assert dns.message.from_wire(compressed).question[0].name == dns.name.root

    async def static_everything(src, dst, query):
        return Answer(dns.message.make_response(query), final=True, static=True)

    async def check():
        stack = FakeStack()
        server = DnsServer(stack, 53, static_everything)
        server.start()
        for _ in range(2):
            reply = await exchange(stack, server, compressed)
            assert dns.message.from_wire(reply).question[0].name == dns.name.root
        assert stack.counters["dns.fast.hit"] == 0 and not server.kept_answers
        await exchange(stack, server, make_query(".", "NS"))      # the plain form is kept
        assert len(server.kept_answers) == 1

    asyncio.run(check())


def _mutate(payload: bytes, offset: int, value: int) -> bytes:
    b = bytearray(payload)
    b[offset] = value
    return bytes(b)


@pytest.mark.parametrize("case", ["response", "opcode", "qdcount2", "ancount", "trailing", "short",
                                  "pointer", "edns_version", "opt_rdlen", "not_opt", "truncated_name"])
def test_unusual_queries_are_left_to_the_slow_path(case):
    plain = make_query("www.example.")
    with_opt = make_query("www.example.", edns=0)
    payload = {
        "response": _mutate(plain, 2, plain[2] | 0x80),
        "opcode": _mutate(plain, 2, plain[2] | (4 << 3)),
        "qdcount2": _mutate(plain, 5, 2),
        "ancount": _mutate(plain, 7, 1),
        "trailing": plain + b"\x00",
        "short": plain[:11],
        "pointer": plain[:12] + b"\xc0\x0c" + plain[-4:],
        "edns_version": _mutate(with_opt, len(with_opt) - 5, 1),
        "opt_rdlen": _mutate(with_opt, len(with_opt) - 1, 4),
        "not_opt": _mutate(with_opt, len(with_opt) - 9, 0x2A),
        "truncated_name": plain[:20],
    }[case]
    assert wire.parse_query(payload) is None


@given(st.binary(max_size=80))
def test_parse_query_never_raises(data):
    result = wire.parse_query(data)
    assert result is None or len(result[0]) >= 6


# -- patch ---------------------------------------------------------------------

def test_patch_copies_id_rd_and_case():
    stored = dns.message.from_wire(make_query("www.example.", qid=1))
    response = dns.message.make_response(stored)
    answer = response.to_wire()
    query = make_query("WWW.eXample.", qid=0xBEEF, rd=False)
    _, end, _ = wire.parse_query(query)
    patched, summed = wire.patch_kept(wire.KeptAnswer(answer, end), query, end)
    assert summed % 0xFFFF == wire.payload_sum(patched) % 0xFFFF
    msg = dns.message.from_wire(patched)
    assert msg.id == 0xBEEF
    assert not msg.flags & dns.flags.RD and msg.flags & dns.flags.QR
    assert msg.question[0].name.to_text() == "WWW.eXample."
    assert patched[12:end] == query[12:end] and len(patched) == len(answer)


def test_error_reply_is_header_only():
    query = make_query("x.example.", qid=7)
    reply = wire.error_reply(query, 1)
    msg = dns.message.from_wire(reply)
    assert msg.id == 7 and msg.rcode() == 1 and not msg.question and msg.flags & dns.flags.QR
    assert wire.error_reply(query[:11], 1) is None
    assert wire.error_reply(_mutate(query, 2, 0x80), 1) is None


# -- fast path == slow path -------------------------------------------------------

NAMES = ["hard.example.", "www.hard.example.", "alias1.hard.example.", "nope.hard.example.",
         "foo.wild.hard.example.", "a.b.ent.hard.example.", "ent.hard.example.", "child.hard.example.",
         "www.child.hard.example.", "big.hard.example.", "med.hard.example.", "med2.hard.example.",
         "_sip._udp.hard.example.", "foo.cwild.hard.example.", "out.hard.example.", "loop1.hard.example.",
         "host.sub.hard.example.", "tosub.hard.example.", "MiXeD.hard.example."]
TYPES = ["A", "AAAA", "MX", "TXT", "NS", "SOA", "SRV", "ANY", "CNAME", "DS"]
EDNS = [(-1, 0, False), (0, 1232, False), (0, 512, True), (0, 4096, True), (0, 700, False)]


@pytest.fixture(scope="module")
def zones():
    return load_zones([ZONES / "hard.example.zone", ZONES / "sub.hard.example.zone"])


def new_server(zones):
    """A server on a fake stack (call from a running loop: it binds)."""
    stack = FakeStack()
    server = DnsServer(stack, 53, processor_of_process(zone_process(zones)))
    server.start()
    return stack, server


def random_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


def test_hot_path_answers_are_byte_identical_to_the_slow_path(zones):
    rng = random.Random(7)

    async def check():
        stack, server = new_server(zones)          # fills its static table as it goes
        _, reference = new_server(zones)           # never asked twice: always the slow path
        hits = 0
        for name in NAMES:
            for rdtype in TYPES:
                for edns, payload, do in EDNS:
                    for round_ in range(3):
                        query = make_query(random_case(name, rng), rdtype, edns=edns, payload=payload,
                                           do=do, rd=rng.random() < 0.5, cd=rng.random() < 0.3,
                                           qid=rng.randrange(65536))
                        before = stack.counters["dns.fast.hit"]
                        got = await exchange(stack, server, query)
                        hits += stack.counters["dns.fast.hit"] - before
                        expected, _ = await reference.respond(query, (1, 1), (2, 53), udp=True)
                        assert got == expected, (name, rdtype, edns, payload, do, round_)
        return hits, len(server.kept_answers)

    hits, kept = asyncio.run(check())
    assert kept > 100
    assert hits > 500        # most repeats came from the hot path


def test_kept_answer_too_big_for_a_smaller_client_goes_the_slow_way(zones):
    async def check():
        stack, server = new_server(zones)
        big = await exchange(stack, server, make_query("big.hard.example.", "TXT", edns=0, payload=4096))
        assert len(big) > 900 and not dns.message.from_wire(big).flags & dns.flags.TC
        small = await exchange(stack, server, make_query("big.hard.example.", "TXT", edns=0, payload=512))
        msg = dns.message.from_wire(small)
        assert msg.flags & dns.flags.TC and len(small) <= 512
        assert stack.counters["dns.fast.hit"] == 0
        again = await exchange(stack, server, make_query("big.hard.example.", "TXT", edns=0, payload=2000))
        assert stack.counters["dns.fast.hit"] == 1 and len(again) == len(big)

    asyncio.run(check())


def test_truncated_answers_are_never_kept(zones):
    async def check():
        stack, server = new_server(zones)
        for _ in range(2):
            reply = await exchange(stack, server, make_query("big.hard.example.", "TXT"))
            assert dns.message.from_wire(reply).flags & dns.flags.TC
        assert stack.counters["dns.fast.hit"] == 0 and not server.kept_answers

    asyncio.run(check())


@settings(max_examples=60, deadline=None)
@given(qid=st.integers(0, 65535), rd=st.booleans(), cd=st.booleans(), case_seed=st.integers(0, 2**32),
       name=st.sampled_from(NAMES), rdtype=st.sampled_from(["A", "MX", "TXT", "NS"]))
def test_patched_answer_echoes_id_rd_cd_and_case(zones, qid, rd, cd, case_seed, name, rdtype):
    asked = random_case(name, random.Random(case_seed))

    async def check():
        stack, server = new_server(zones)
        await exchange(stack, server, make_query(name.lower(), rdtype, qid=1))
        return await exchange(stack, server, make_query(asked, rdtype, qid=qid, rd=rd, cd=cd)), stack

    reply, stack = asyncio.run(check())
    msg = dns.message.from_wire(reply)
    assert msg.id == qid and bool(msg.flags & dns.flags.RD) == rd
    assert bool(msg.flags & dns.flags.CD) == cd          # RFC 4035 3.2.2
    assert msg.question[0].name.to_text() == asked
    if msg.answer and msg.answer[0].name == dns.name.from_text(asked):
        assert msg.answer[0].name.to_text() == asked   # compressed against the question


def test_fast_lookups_are_used_after_static_answers_and_patched(zones):
    calls = []
    canned = dns.message.make_response(dns.message.from_wire(make_query("cached.test.", "A", qid=1)))
    canned_wire = canned.to_wire()

    def lookup(key, src_ip, now):
        calls.append((key, src_ip))
        # kept as the cache keeps its answers: the question's name ends where the key's does
        return wire.KeptAnswer(canned_wire, 12 + len(key) - 5) if key.startswith(b"\x06cached") else None

    async def check():
        stack = FakeStack()

        async def nothing(src, dst, query):
            return None

        server = DnsServer(stack, 53, nothing, fast_lookups=[lookup])
        server.start()
        reply = await exchange(stack, server, make_query("CACHED.test.", "A", qid=99))
        msg = dns.message.from_wire(reply)
        assert msg.id == 99 and msg.question[0].name.to_text() == "CACHED.test."
        assert stack.counters["dns.fast.lookup_hit"] == 1
        refused = await exchange(stack, server, make_query("other.test.", "A"))
        assert dns.message.from_wire(refused).rcode() == dns.rcode.REFUSED
        assert len(calls) == 2 and calls[0][1] == 0xC0000201

    asyncio.run(check())
